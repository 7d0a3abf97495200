// The CUDA backend's native fp8 GEMM through cuBLASLt (gemm_fp8.cpp): Backend::has_fp8_gemm and
// Backend::fp8_gemm (backend/backend.h). Host-side header, no CUDA types.
#pragma once

#include "mixtrain/tensor.h"

namespace mixtrain::cuda {

/// Whether the current device multiplies fp8 on its tensor cores (compute capability >= 8.9).
bool fp8_gemm_supported();

/// Backend::fp8_gemm: C = scale_a_inv · scale_b_inv · op(A) · op(B) (+ bias) from fp8 codes, fp32
/// accumulation; false (nothing written) where the device or the product is outside what
/// cuBLASLt's FP8 GEMMs run (see backend.h).
bool fp8_gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
              float scale_a_inv, float scale_b_inv, const Tensor* bias);

}  // namespace mixtrain::cuda
