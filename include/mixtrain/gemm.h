// GEMM through oneDNN: C = alpha * op(A) * op(B) + beta * C, fp32 accumulation always.
#pragma once

#include "mixtrain/tensor.h"

namespace mixtrain {

/// A is [M, K] (or [K, M] with trans_a), B is [K, N] (or [N, K] with trans_b), C is [M, N].
/// Batched: A, B and C may carry one leading batch dim [Bt, ...] (B may also be 2-d, shared).
/// dtypes: f32 x f32 -> f32; bf16 x bf16 -> f32 or bf16; f16 x f16 -> f32 or f16 (computed
/// in fp32 on CPUs without fp16 arithmetic). beta != 0 accumulates into C. Inputs may be
/// strided views whose last dim or second-to-last dim is contiguous (transposes are free).
/// Throws ShapeError/DTypeError naming the shapes and dtypes.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
          float alpha = 1.0f, float beta = 0.0f);

/// Convenience: a fresh C of dtype out_dtype.
Tensor matmul_tensor(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                     DType out_dtype);

}  // namespace mixtrain
