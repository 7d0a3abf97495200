// Vectorised fp32 math for the CPU kernels: exp and the tanh-form GELU with its derivative.
// One algorithm (Cephes' exp: x = n·ln2 + r, a degree-6 polynomial in r, scaled by 2^n) built
// per level (vmath.isa.cpp) as one operation sequence, so every level gives the same bits.
// Within 2 ulp of the correctly rounded exp for results above 2^-124 (smaller ones flush to 0;
// every caller sums them with values near 1); +Inf and NaN as std::exp. Checked against
// double-precision exp in tests/vmath_test.cpp.
#pragma once

#include <cstdint>

#include "cpu/isa.h"

namespace mixtrain::cpu {

struct VmathKernels {
  /// x[i] = exp(x[i] - shift), in place.
  void (*exp_shift)(float* x, int64_t n, float shift);
  /// y[i] = gelu(x[i]) = x·σ(2u), u = √(2/π)(x + 0.044715x³)  (torch's tanh approximation).
  void (*gelu)(const float* x, float* y, int64_t n);
  /// dx[i] = g[i] · gelu'(x[i]).
  void (*gelu_grad)(const float* x, const float* g, float* dx, int64_t n);
};
template <Isa>
const VmathKernels& vmath_kernels();  // built for scalar, avx2, avx512
/// The kernels of the level in use.
const VmathKernels& vmath();

inline void exp_shift(float* x, int64_t n, float shift) { vmath().exp_shift(x, n, shift); }
inline void gelu(const float* x, float* y, int64_t n) { vmath().gelu(x, y, n); }
inline void gelu_grad(const float* x, const float* g, float* dx, int64_t n) {
  vmath().gelu_grad(x, g, dx, n);
}

}  // namespace mixtrain::cpu
