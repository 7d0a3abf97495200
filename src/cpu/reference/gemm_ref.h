// Scalar fp32 reference GEMM (plain loops, no SIMD, no threads, no oneDNN): the oracle the
// oneDNN path of mixtrain::gemm / gemm_ex is tested against.
#pragma once

#include "mixtrain/gemm.h"
#include "mixtrain/tensor.h"

namespace mixtrain::reference {

/// Same contract as mixtrain::gemm_ex: C = epi(alpha·op(A)·op(B) + bias + beta·C), batched
/// and shared operands alike, any strides. Inputs of any float dtype are read as their exact
/// fp32 values; the dot products and the epilogue run in double, so an fp32 C holds the exact
/// answer rounded once (to 2^-24 relative); a 16-bit C gets that fp32 value rounded again.
/// beta == 0 does not read C. Throws ShapeError on mismatched shapes.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
          float beta, const Tensor* bias = nullptr, Epilogue epi = Epilogue::none);

}  // namespace mixtrain::reference
