// The element-wise maps' per-element math (Backend::map's MapOp list), in fp32, for every
// backend: the CPU's scalar map loop and the CUDA map kernel call these same functions, so
// both compute each op in the same operation order. GELU on the CPU runs its own vectorised
// kernel (cpu/vmath.h); gelu() and gelu_grad() here are the device's, in the same sigmoid form,
// checked against the double formula by the CPU tests (Vmath.SharedGelu...).
#pragma once

#include "mixtrain/detail/scalar.h"

#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

namespace mixtrain::detail {

MIXTRAIN_HD inline float tanh_f32(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  return std::tanh(x);
#endif
}
MIXTRAIN_HD inline float exp_f32(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}
MIXTRAIN_HD inline float log_f32(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  return std::log(x);
#endif
}

MIXTRAIN_HD inline float relu(float x) { return x > 0.0f ? x : 0.0f; }
/// A select, as torch's threshold_backward: an Inf or NaN gradient where y <= 0 gives 0.
MIXTRAIN_HD inline float relu_grad(float g, float y) { return y > 0.0f ? g : 0.0f; }
MIXTRAIN_HD inline float tanh_grad(float g, float y) { return g * (1.0f - y * y); }
MIXTRAIN_HD inline float abs_grad(float g, float x) {
  return x > 0.0f ? g : (x < 0.0f ? -g : 0.0f);
}
MIXTRAIN_HD inline float log_grad(float g, float x) { return g * (1.0f / x); }
/// The divisor's gradient of a / b.
MIXTRAIN_HD inline float div_grad_b(float g, float a, float b) { return -g * a / (b * b); }

/// torch's tanh GELU, 0.5x(1 + tanh u) with u = √(2/π)(x + 0.044715x³), in the sigmoid form
/// x / (1 + e), e = exp(-2u), which keeps full relative accuracy in the negative tail (where
/// 1 + tanh u cancels); the CPU's vectorised kernel (cpu/vmath) computes the same form.
MIXTRAIN_HD inline float gelu(float x) {
  constexpr float kC = 0.7978845608028654f;  // √(2/π)
  const float e = exp_f32(-2.0f * (kC * (x + 0.044715f * x * x * x)));
  return x / (1.0f + e);
}
/// g · gelu'(x) = g · (s + 2x·s·(e·s)·√(2/π)(1 + 3·0.044715x²)), s = 1/(1 + e).
MIXTRAIN_HD inline float gelu_grad(float g, float x) {
  constexpr float kC = 0.7978845608028654f;
  const float e = exp_f32(-2.0f * (kC * (x + 0.044715f * x * x * x)));
  const float s = 1.0f / (1.0f + e);
  // e·s = e / (1 + e) = 1 - s, taken as 1 / (1 + 1/e) where e is large: e overflows to Inf in
  // the negative tail, and Inf · 0 would be NaN.
  const float es = e > 1.0f ? 1.0f / (1.0f + 1.0f / e) : e * s;
  return g * (s + 2.0f * x * s * es * kC * (1.0f + 3.0f * 0.044715f * x * x));
}

}  // namespace mixtrain::detail
