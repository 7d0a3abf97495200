// The CUDA backend's GEMM through cuBLASLt (gemm_cublaslt.cpp): mixtrain::gemm_ex's contract
// (gemm.h) with fp32 accumulation, the bias and ReLU/GELU fused in cuBLASLt's epilogue, on the
// backend's stream. Host-side header, no CUDA types.
//
// TF32: fp32 products run in full fp32 (CUBLAS_COMPUTE_32F) by default. TF32 tensor cores
// (CUBLAS_COMPUTE_32F_FAST_TF32: inputs rounded to 10 mantissa bits, fp32 accumulation) are an
// opt-in, process-wide: the environment variable MIXTRAIN_CUDA_TF32=1 (read once, at the first
// GEMM) or set_tf32(true), which overrides it. bf16 and fp16 products are not affected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mixtrain/dtype.h"
#include "mixtrain/gemm.h"
#include "mixtrain/tensor.h"

namespace mixtrain::cuda {

/// Whether fp32 GEMMs may use TF32 tensor cores (default off; see above).
void set_tf32(bool on);
bool tf32();

/// Backend::gemm: C = epi(alpha · op(A) · op(B) + bias + beta · C), the arguments checked by
/// the caller (ops/gemm.cpp); all tensors on the CUDA device.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
          float alpha, float beta, const Tensor* bias, Epilogue epi);

/// cuBLASLt's throughput on this GPU for C [m, n] = A [m, k] · B [k, n], all of dtype `dt`
/// (f32, bf16 or f16; fp32 accumulation), in TFLOP/s (2·m·n·k per product): the mean over
/// repeated calls after a warm-up, timed with CUDA events on the backend's stream.
double gemm_peak_tflops(int m, int n, int k, DType dt);

/// The process's cuBLASLt handle (a cublasLtHandle_t, as void*: this header has no CUDA types)
/// and its workspace (device memory, *bytes long), created at the first use and shared with the
/// fp8 GEMM (gemm_fp8.cpp). Use them on the backend's stream only.
/// Hash and equality of a plan-cache key: a struct of int64_t fields without padding, compared
/// and hashed as its bytes (the GEMM caches of gemm_cublaslt.cpp and gemm_fp8.cpp).
template <class Key>
struct PodKeyHash {
  size_t operator()(const Key& k) const {
    static_assert(sizeof(Key) % 8 == 0, "a key is whole 64-bit words");
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof(Key) / 8; ++i) {
      uint64_t w;
      std::memcpy(&w, reinterpret_cast<const char*>(&k) + 8 * i, 8);
      h ^= w + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    }
    return static_cast<size_t>(h);
  }
};
template <class Key>
struct PodKeyEq {
  bool operator()(const Key& x, const Key& y) const {
    return std::memcmp(&x, &y, sizeof(Key)) == 0;
  }
};

void* cublaslt_handle();
void* cublaslt_workspace(size_t* bytes);

/// cuBLASLt plans (descriptors and chosen algorithm) created so far; a repeated shape reuses
/// its plan.
int64_t gemm_plan_count();

}  // namespace mixtrain::cuda
