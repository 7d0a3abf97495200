// The gradient passes' per-element math, shared by every backend: how one gradient value falls
// into the diagnostics histogram (amp::GradHistogram's counters and binades). The CPU's
// Backend::grad_histograms (cpu/optimizer.cpp) and the CUDA histogram kernel
// (cuda/multi_tensor.cu) both classify with hist_classify().
#pragma once

#include <cstdint>

#include "mixtrain/detail/scalar.h"

#include <cmath>

namespace mixtrain::detail {

/// fp16's largest finite value, smallest subnormal (2^-24) and smallest normal (2^-14).
constexpr float kFp16Max = 65504.0f;
constexpr float kFp16MinSub = 5.9604644775390625e-08f;
constexpr float kFp16MinNormal = 6.103515625e-05f;

/// One value's place in the histogram.
struct HistClass {
  enum Kind : uint8_t { nan, inf, zero, finite } kind;
  // finite only:
  bool fp16_zero, fp16_subnormal, fp16_overflow;  ///< at the fp16 scale (|g| · to_fp16)
  int bin;  ///< -1: below 2^kMinExp; kMaxExp - kMinExp: at or above 2^kMaxExp; else the binade
  float u;  ///< |g| · inv_carried (the unscaled magnitude)
};

/// |g| classified: NaN, Inf (which also counts as an fp16 overflow), zero, or a finite nonzero
/// value with its fp16 flags (evaluated at |g| · to_fp16) and its binade k (2^(kMinExp+k) <=
/// |g| · inv_carried < 2^(kMinExp+k+1)).
template <int kMinExp, int kMaxExp>
MIXTRAIN_HD inline HistClass hist_classify(float g, float inv_carried, float to_fp16) {
  HistClass c{};
#if defined(__CUDA_ARCH__)
  const float x = fabsf(g);
  const bool is_nan = isnan(x), is_inf = isinf(x);
#else
  const float x = std::fabs(g);
  const bool is_nan = std::isnan(x), is_inf = std::isinf(x);
#endif
  if (is_nan) {
    c.kind = HistClass::nan;
    return c;
  }
  if (is_inf) {
    c.kind = HistClass::inf;
    return c;
  }
  if (x == 0.0f) {
    c.kind = HistClass::zero;
    return c;
  }
  c.kind = HistClass::finite;
  const float y = x * to_fp16;  // the value fp16 would have to hold
  c.fp16_zero = y < kFp16MinSub;
  c.fp16_subnormal = y < kFp16MinNormal;
  c.fp16_overflow = y > kFp16Max;
  const float u = x * inv_carried;
  c.u = u;
  const int exp = static_cast<int>(f32_bits(u) >> 23) - 127;  // fp32 subnormals give -127
  const bool u_inf = f32_bits(u) == 0x7f800000u;  // -Inf has an exponent >= kMaxExp anyway
  if (exp < kMinExp || u == 0.0f)
    c.bin = -1;
  else if (exp >= kMaxExp || u_inf)
    c.bin = kMaxExp - kMinExp;
  else
    c.bin = exp - kMinExp;
  return c;
}

}  // namespace mixtrain::detail
