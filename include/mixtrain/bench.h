// Micro-benchmark helpers shared by the CLI (`mixtrain bench`) and the trainer's MFU report:
// GEMM throughput through mixtrain and through oneDNN directly, memcpy and convert bandwidth.
// Each is the median of several timed repeats after a warm-up, so one noisy repeat (other
// processes on the cores) does not move it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mixtrain/dtype.h"

namespace mixtrain {

/// GFLOP/s (2·n³ per call) of C[n, n] = A[n, n]·B[n, n] through mixtrain::gemm, A, B and C
/// all of `dtype` (f32, bf16, f16; fp32 accumulation). Runs for about min_seconds.
double gemm_gflops(DType dtype, int64_t n, double min_seconds = 0.5);

/// The same product with oneDNN called directly (one matmul primitive on raw dnnl::memory
/// buffers): the ceiling mixtrain's path is measured against. NaN when this oneDNN/CPU has no
/// matmul for the dtype (fp16 on CPUs without AVX512-FP16: mixtrain then converts to fp32).
double onednn_gemm_gflops(DType dtype, int64_t n, double min_seconds = 0.5);

/// memcpy bandwidth in GB/s (1e9 bytes/s) over two buffers of `bytes`, counting the bytes
/// read plus the bytes written (2·bytes per copy).
double memcpy_gbps(size_t bytes, double min_seconds = 0.3);

/// mixtrain::convert bandwidth in GB/s for n elements from -> to, counting bytes read plus
/// bytes written (n·(size(from) + size(to)) per call), comparable with memcpy_gbps.
double convert_gbps(DType from, DType to, size_t n, double min_seconds = 0.3);

}  // namespace mixtrain
