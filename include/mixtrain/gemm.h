// GEMM through oneDNN: C = alpha * op(A) * op(B) + beta * C, fp32 accumulation always.
// Example:
//   Tensor c = Tensor::empty({M, N}, DType::bf16);
//   gemm(a, false, w, true, c);                        // c = a · wᵀ, fp32 sums rounded once
//   gemm_ex(a, false, w, true, c, 1, 0, &bias, Epilogue::gelu);   // fused bias + GELU
#pragma once

#include <cstdint>
#include <string>

#include "mixtrain/tensor.h"

namespace mixtrain {

/// A is [M, K] (or [K, M] with trans_a), B is [K, N] (or [N, K] with trans_b), C is [M, N].
/// Batched: A, B and C may carry one leading batch dim [Bt, ...] (B may also be 2-d, shared;
/// or A 2-d, shared; C is 3-d when A or B is).
/// dtypes: A and B share one of f32, bf16, f16; C is any of f32, bf16, f16 (the fp32 sums are
/// rounded once into C). bf16 runs in oneDNN's bf16 kernels (AVX-512 and up); f16 on CPUs
/// without AVX512-FP16, and bf16 on AVX2-only CPUs, are converted and computed in fp32 (same
/// fp32 accumulation, slower). beta != 0 accumulates into C.
/// Inputs may be strided views whose last dim or second-to-last dim is contiguous (transposes
/// are free); other layouts are copied. Throws ShapeError/DTypeError naming the shapes and
/// dtypes.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
          float alpha = 1.0f, float beta = 0.0f);

/// The element-wise function a fused GEMM applies last.
enum class Epilogue : uint8_t {
  none,
  relu,
  gelu,  ///< torch's tanh approximation (the project's gelu)
};
const char* epilogue_name(Epilogue e);

/// gemm with a fused epilogue, all in fp32 before the single rounding into C:
///   C = epi(alpha · op(A) · op(B) + bias + beta · C)
/// bias (may be null) is 1-d [N] (any compute dtype, any stride), added to every row.
void gemm_ex(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
             float beta, const Tensor* bias, Epilogue epi);

/// Convenience: a fresh C of dtype out_dtype.
Tensor matmul_tensor(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, DType out_dtype);

/// What runs the GEMMs (for `mixtrain info` and benchmark reports).
struct GemmBackendInfo {
  std::string library;  ///< "oneDNN"
  std::string version;  ///< "2.6.3"
  std::string isa;      ///< the ISA oneDNN dispatches to, e.g. "avx512_core_bf16"
  int threads = 1;      ///< OpenMP threads the GEMMs use
};
GemmBackendInfo gemm_backend_info();

/// Primitives created so far by gemm (a cache miss creates one; tests use it to check reuse).
int64_t gemm_cache_size();

}  // namespace mixtrain
