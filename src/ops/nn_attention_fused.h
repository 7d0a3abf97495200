// Fused attention kernels for AVX-512 and AVX2 CPUs (nn_attention_fused_impl.h, built once per
// ISA); the GEMM path in nn_attention.cpp runs everything else. Operands are 4-d [B, H, T, D]
// views (any strides, D unit-stride), read and written where they lie.
#pragma once

#include <cstdint>

#include "mixtrain/tensor.h"

namespace mixtrain::nn_detail {

/// The kernels' granularity: query rows per block (AVX-512, AVX2), and the width of a register
/// tile (keys of a score tile, columns of an output one; D must be a multiple of it).
constexpr int64_t kAttnRows = 8, kAttnRowsAvx2 = 6;
constexpr int64_t kAttnCols = 32;

enum class FusedAttention {
  none,      ///< the GEMM path
  bf16,      ///< bf16 q, k, v and output gradient on an AVX512-BF16 CPU: vdpbf16ps tiles
  f32,       ///< any float dtypes (16-bit widened) on an AVX-512 CPU: fp32 FMA tiles
  f32_avx2,  ///< the same on an AVX2 + FMA CPU
};

/// Which fused kernels take this problem on this CPU (MIXTRAIN_ISA caps the choice): D must be
/// a multiple of 32 (at most 1024) and one head's scores at most 2^20 (T = 1024 causal).
FusedAttention attention_fused_kind(DType qkv_dt, DType g_dt, int64_t Tq, int64_t Tk, int64_t D);

/// o4 (any float dtype) and lse [B·H, Tq] from q4, k4, v4.
void attention_forward_fused(FusedAttention kind, const Tensor& q4, const Tensor& k4,
                             const Tensor& v4, const Tensor& o4, float* lse, bool causal,
                             float scale);

/// dq4, dk4, dv4 (any float dtypes) from q4, k4, v4, the output gradient g4 and the forward's lse.
void attention_backward_fused(FusedAttention kind, const Tensor& q4, const Tensor& k4,
                              const Tensor& v4, const Tensor& g4, const float* lse, bool causal,
                              float scale, const Tensor& dq4, const Tensor& dk4, const Tensor& dv4);

// The per-ISA builds behind the two calls above (nn_attention_fused_avx512.cpp, _avx2.cpp).
#define MT_ATT_DECLARE(isa)                                                                        \
  void attention_forward_##isa(FusedAttention kind, const Tensor& q4, const Tensor& k4,            \
                               const Tensor& v4, const Tensor& o4, float* lse, bool causal,        \
                               float scale);                                                       \
  void attention_backward_##isa(FusedAttention kind, const Tensor& q4, const Tensor& k4,           \
                                const Tensor& v4, const Tensor& g4, const float* lse, bool causal, \
                                float scale, const Tensor& dq4, const Tensor& dk4,                 \
                                const Tensor& dv4);
MT_ATT_DECLARE(avx512)
MT_ATT_DECLARE(avx2)
#undef MT_ATT_DECLARE

}  // namespace mixtrain::nn_detail
