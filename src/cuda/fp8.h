// The CUDA backend's fp8 quantization kernels (fp8.cu) behind plain launchers: the amax, the
// per-tensor quantization and MXFP8's block quantization, with the per-element math the CPU's
// kernels use (mixtrain/detail/fp8_math.h). Host-side header, no CUDA types: pointers are device
// memory, dtypes mixtrain::DType's values; each launcher returns the launch's cudaError_t as an
// int (0: success). Semantics: Backend::amax, fp8_quantize and mx_quantize (backend/backend.h).
#pragma once

#include <cstdint>

namespace mixtrain::cuda {

/// *amax_bits (a device uint32, zeroed here) = the bits of max |x| over n contiguous elements
/// of dtype dt (NaN above Inf above every number: non-negative floats order as their bits).
int launch_amax(const void* x, int dt, int64_t n, uint32_t* amax_bits);
/// q[i] = x[i] · scale on the grid of e4m3 (e5m2 false) or e5m2, saturating, stored in q_dt
/// (bf16, or the fp8 format's code).
int launch_fp8_quantize(const void* x, int dt, int64_t n, float scale, bool e5m2, void* q,
                        int q_dt);
/// MXFP8 over the rows of a contiguous [R, K] x: scales[R, ceil(K / 32)] the E8M0 codes, q
/// (bf16) the values on the grid times their block's scale; *amax_bits as launch_amax's.
int launch_mx_quantize(const void* x, int dt, int64_t R, int64_t K, bool e5m2, uint16_t* q,
                       uint8_t* scales, uint32_t* amax_bits);

}  // namespace mixtrain::cuda
