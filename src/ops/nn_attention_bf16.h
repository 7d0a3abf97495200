// Fused bf16 attention kernels for AVX512-BF16 CPUs (nn_attention_bf16.cpp); the GEMM path in
// nn_attention.cpp runs everything else. Operands are 4-d [B, H, T, D] views (any strides, D
// unit-stride), read and written where they lie.
#pragma once

#include <cstdint>

#include "mixtrain/tensor.h"

namespace mixtrain::nn_detail {

/// Whether the fused kernels take this problem: this CPU has AVX512-BF16 (and MIXTRAIN_ISA
/// allows it), q, k, v and the output gradient are bf16, D is a multiple of 32 and the
/// sequences are at most 8192.
bool attention_bf16_fused_ok(DType qkv_dt, DType g_dt, int64_t Tq, int64_t Tk, int64_t D);

/// o4 (any float dtype) and lse [B·H, Tq] from bf16 q4, k4, v4.
void attention_forward_bf16_fused(const Tensor& q4, const Tensor& k4, const Tensor& v4,
                                  const Tensor& o4, float* lse, bool causal, float scale);

/// dq4, dk4, dv4 (any float dtypes) from bf16 q4, k4, v4, the bf16 output gradient g4 and the
/// forward's lse.
void attention_backward_bf16_fused(const Tensor& q4, const Tensor& k4, const Tensor& v4,
                                   const Tensor& g4, const float* lse, bool causal, float scale,
                                   const Tensor& dq4, const Tensor& dk4, const Tensor& dv4);

}  // namespace mixtrain::nn_detail
