// Fused attention kernels for AVX-512 CPUs (nn_attention_fused.cpp); the GEMM path in
// nn_attention.cpp runs everything else. Operands are 4-d [B, H, T, D] views (any strides, D
// unit-stride), read and written where they lie.
#pragma once

#include <cstdint>

#include "mixtrain/tensor.h"

namespace mixtrain::nn_detail {

enum class FusedAttention {
  none,  ///< the GEMM path
  bf16,  ///< bf16 q, k, v and output gradient on an AVX512-BF16 CPU
  f32,   ///< fp32 or fp16 (widened) q, k, v and output gradient on an AVX-512 CPU
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

}  // namespace mixtrain::nn_detail
