// CpuBackend::attention's two paths: the fused kernels (attention_fused.isa.cpp), built for AVX2
// and AVX-512 levels, and the GEMM path (attention.cpp) for everything they do not take.
// Operands are 4-d [B, H, T, D] views (any strides, D unit-stride), read and written where they
// lie.
#pragma once

#include <cstdint>

#include "cpu/isa.h"
#include "mixtrain/tensor.h"

namespace mixtrain::cpu {

/// The kernels' granularity: query rows per block (AVX-512, AVX2), and the width of a register
/// tile (keys of a score tile, columns of an output one; D must be a multiple of it).
constexpr int64_t kAttnRows = 8, kAttnRowsAvx2 = 6;
constexpr int64_t kAttnCols = 32;

struct FusedAttentionKernels {
  /// o4 (any float dtype) and lse [B·H, Tq] from q4, k4, v4.
  void (*forward)(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& o4,
                  float* lse, bool causal, float scale);
  /// dq4, dk4, dv4 (any float dtypes) from q4, k4, v4, the output gradient g4 and the lse.
  void (*backward)(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& g4,
                   const float* lse, bool causal, float scale, const Tensor& dq4, const Tensor& dk4,
                   const Tensor& dv4);
};
template <Isa>
const FusedAttentionKernels& attention_fused_kernels();  // built for avx2, avx512, avx512bf16

/// The fused kernels of the level in use when they take this problem, else null (the GEMM path
/// runs it): D a multiple of 32 (at most 1024), one head's scores at most 2^20 (T = 1024 causal),
/// float dtypes, and an AVX2 or AVX-512 level.
const FusedAttentionKernels* fused_attention(DType qkv_dt, DType g_dt, int64_t Tq, int64_t Tk,
                                             int64_t D);

/// The GEMM path by itself, whatever the fused kernels would take (CpuBackend::attention picks
/// the path; benchmarks compare the two with these): o4 and lse [B·H, Tq] from q4, k4, v4.
void attention_gemm(const Tensor& q4, const Tensor& k4, const Tensor& v4, bool causal, float scale,
                    const Tensor& o4, float* lse);
/// dq4, dk4, dv4 from q4, k4, v4, the output gradient g4 and the forward's lse.
void attention_gemm_backward(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& g4,
                             const float* lse, bool causal, float scale, const Tensor& dq4,
                             const Tensor& dk4, const Tensor& dv4);

}  // namespace mixtrain::cpu
