// Vectorised fp32 math for the op kernels: exp and the tanh-form GELU with its derivative.
// One algorithm (Cephes' exp: x = n·ln2 + r, a degree-6 polynomial in r, scaled by 2^n) built
// for AVX-512, AVX2+FMA and plain C++ with std::fma, so every ISA gives the same bits; picked
// at run time (MIXTRAIN_ISA caps it). Within 2 ulp of the correctly rounded exp for results
// above 2^-124 (smaller ones flush to 0; every caller sums them with values near 1); +Inf and
// NaN as std::exp. Checked against double-precision exp in tests/vmath_test.cpp.
#pragma once

#include <cstdint>

namespace mixtrain::simd {

/// x[i] = exp(x[i] - shift), in place.
void exp_shift(float* x, int64_t n, float shift);
/// y[i] = gelu(x[i]) = x·σ(2u), u = √(2/π)(x + 0.044715x³)  (torch's tanh approximation).
void gelu(const float* x, float* y, int64_t n);
/// dx[i] = g[i] · gelu'(x[i]).
void gelu_grad(const float* x, const float* g, float* dx, int64_t n);
/// The variant in use: "avx512", "avx2" or "scalar".
const char* vmath_level();

}  // namespace mixtrain::simd
