// The element-wise maps' per-element math (Backend::map's MapOp list), in fp32, for every
// backend: the CPU's scalar map loop and the CUDA map kernel call these same functions, so
// both compute each op in the same operation order. GELU on the CPU runs its own vectorised
// kernel (cpu/vmath.h); gelu() and gelu_grad() here are the plain tanh form the device uses,
// checked against the CPU's scalar reference by the CPU tests.
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

/// torch's tanh GELU: 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))).
MIXTRAIN_HD inline float gelu(float x) {
  constexpr float kC = 0.7978845608028654f;  // √(2/π)
  return 0.5f * x * (1.0f + tanh_f32(kC * (x + 0.044715f * x * x * x)));
}
/// g · gelu'(x).
MIXTRAIN_HD inline float gelu_grad(float g, float x) {
  constexpr float kC = 0.7978845608028654f;
  const float t = tanh_f32(kC * (x + 0.044715f * x * x * x));
  return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kC * (1.0f + 3.0f * 0.044715f * x * x));
}

}  // namespace mixtrain::detail
