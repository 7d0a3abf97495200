// isa: scalar avx2 avx512
// The vector math every build shares (cpu/vmath.h): exp and the tanh-form GELU with its
// derivative, written once over a lane type (L: S one float, A256 eight, A512 sixteen) as one
// operation sequence, so every level gives the same bits; a build's tails run the scalar lanes.
#include "cpu/isa_target.h"

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/vmath.h"

namespace mixtrain::cpu {
namespace {

// exp's constants (Cephes expf). Results below 2^-124 flush to 0 and the input is clamped so
// that 2^(n-1) stays a normal float (the scale is applied as 2^(n-1)·2).
constexpr float kLo = -86.0f, kHi = 88.72283935546875f;
constexpr float kLog2e = 1.44269504088896341f, kC1 = 0.693359375f, kC2 = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kSqrt2OverPi = 0.7978845608028654f, kGeluC = 0.044715f;

// ---- lanes ----
struct S {
  using V = float;
  MT_INLINE static V set(float a) { return a; }
  MT_INLINE static V load(const float* p) { return *p; }
  MT_INLINE static void store(float* p, V v) { *p = v; }
  MT_INLINE static V add(V a, V b) { return a + b; }
  MT_INLINE static V sub(V a, V b) { return a - b; }
  MT_INLINE static V mul(V a, V b) { return a * b; }
  MT_INLINE static V div(V a, V b) { return a / b; }
  MT_INLINE static V fma(V a, V b, V c) { return std::fma(a, b, c); }
  MT_INLINE static V min(V a, V b) { return a < b ? a : b; }  // as minps: b when either is NaN
  MT_INLINE static V max(V a, V b) { return a > b ? a : b; }  // as maxps
  MT_INLINE static V round(V a) { return std::nearbyint(a); }
  MT_INLINE static V pow2m1(V n) {  // 2^(n-1), n integral in [-124, 128]
    const int32_t bits = (static_cast<int32_t>(n) - 1 + 127) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  // where(x < lo) 0; where(x > hi) inf; where(x is NaN) x; else y
  MT_INLINE static V fix(V x, V y) {
    if (x != x) return x;
    if (x < kLo) return 0.0f;
    if (x > kHi) return INFINITY;
    return y;
  }
  static constexpr int W = 1;
};

#if MT_ISA == 1
struct A256 {
  using V = __m256;
  MT_INLINE static V set(float a) { return _mm256_set1_ps(a); }
  MT_INLINE static V load(const float* p) { return _mm256_loadu_ps(p); }
  MT_INLINE static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  MT_INLINE static V add(V a, V b) { return _mm256_add_ps(a, b); }
  MT_INLINE static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  MT_INLINE static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  MT_INLINE static V div(V a, V b) { return _mm256_div_ps(a, b); }
  MT_INLINE static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  MT_INLINE static V min(V a, V b) { return _mm256_min_ps(a, b); }
  MT_INLINE static V max(V a, V b) { return _mm256_max_ps(a, b); }
  MT_INLINE static V round(V a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  MT_INLINE static V pow2m1(V n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  MT_INLINE static V fix(V x, V y) {
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(kLo), _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY),
                         _mm256_cmp_ps(x, _mm256_set1_ps(kHi), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  static constexpr int W = 8;
};

using L = A256;
#elif MT_ISA == 2
struct A512 {
  using V = __m512;
  MT_INLINE static V set(float a) { return _mm512_set1_ps(a); }
  MT_INLINE static V load(const float* p) { return _mm512_loadu_ps(p); }
  MT_INLINE static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  MT_INLINE static V add(V a, V b) { return _mm512_add_ps(a, b); }
  MT_INLINE static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  MT_INLINE static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  MT_INLINE static V div(V a, V b) { return _mm512_div_ps(a, b); }
  MT_INLINE static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  MT_INLINE static V min(V a, V b) { return _mm512_min_ps(a, b); }
  MT_INLINE static V max(V a, V b) { return _mm512_max_ps(a, b); }
  MT_INLINE static V round(V a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  MT_INLINE static V pow2m1(V n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(126));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  MT_INLINE static V fix(V x, V y) {
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(kLo), _CMP_LT_OQ),
                           _mm512_setzero_ps());
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(kHi), _CMP_GT_OQ),
                           _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
  }
  static constexpr int W = 16;
};

using L = A512;
#else
using L = S;
#endif

// ---- the algorithm, once ----

template <class L>
MT_INLINE typename L::V exp_v(typename L::V x0) {
  using V = typename L::V;
  const V x = L::max(L::min(x0, L::set(kHi)), L::set(kLo));
  const V n = L::round(L::mul(x, L::set(kLog2e)));
  V r = L::fma(n, L::set(-kC1), x);
  r = L::fma(n, L::set(-kC2), r);
  V p = L::set(kP0);
  p = L::fma(p, r, L::set(kP1));
  p = L::fma(p, r, L::set(kP2));
  p = L::fma(p, r, L::set(kP3));
  p = L::fma(p, r, L::set(kP4));
  p = L::fma(p, r, L::set(kP5));
  p = L::add(L::fma(p, L::mul(r, r), r), L::set(1.0f));
  const V y = L::mul(L::mul(p, L::pow2m1(n)), L::set(2.0f));
  return L::fix(x0, y);
}

// gelu(x) = x / (1 + e), e = exp(-2u): full relative accuracy in the negative tail.
template <class L>
MT_INLINE typename L::V gelu_v(typename L::V x) {
  using V = typename L::V;
  const V x3 = L::mul(L::mul(x, x), x);
  const V u = L::mul(L::set(kSqrt2OverPi), L::fma(L::set(kGeluC), x3, x));
  const V e = exp_v<L>(L::mul(L::set(-2.0f), u));
  return L::div(x, L::add(L::set(1.0f), e));
}

// gelu'(x) = s + 2x·s·(e·s)·√(2/π)(1 + 3c·x²), s = 1/(1 + e).
template <class L>
MT_INLINE typename L::V gelu_grad_v(typename L::V x) {
  using V = typename L::V;
  const V x2 = L::mul(x, x);
  const V u = L::mul(L::set(kSqrt2OverPi), L::fma(L::set(kGeluC), L::mul(x2, x), x));
  const V e = exp_v<L>(L::mul(L::set(-2.0f), u));
  const V s = L::div(L::set(1.0f), L::add(L::set(1.0f), e));
  const V du = L::mul(L::set(kSqrt2OverPi), L::fma(L::set(3.0f * kGeluC), x2, L::set(1.0f)));
  // e·s = e/(1+e) <= 1; where e overflows (x << 0) it is inf·0: the min (NaN -> its second
  // operand, as minps) gives the limit 1.
  const V es = L::min(L::mul(e, s), L::set(1.0f));
  const V t = L::mul(L::mul(L::mul(L::set(2.0f), x), s), es);
  return L::fma(t, du, s);
}

MT_TARGET void exp_shift_kernel(float* x, int64_t n, float shift) {
  int64_t i = 0;
  for (; i + L::W <= n; i += L::W) L::store(x + i, exp_v<L>(L::sub(L::load(x + i), L::set(shift))));
  for (; i < n; ++i) x[i] = exp_v<S>(x[i] - shift);
}

MT_TARGET void gelu_kernel(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + L::W <= n; i += L::W) L::store(y + i, gelu_v<L>(L::load(x + i)));
  for (; i < n; ++i) y[i] = gelu_v<S>(x[i]);
}

MT_TARGET void gelu_grad_kernel(const float* x, const float* g, float* dx, int64_t n) {
  int64_t i = 0;
  for (; i + L::W <= n; i += L::W)
    L::store(dx + i, L::mul(L::load(g + i), gelu_grad_v<L>(L::load(x + i))));
  for (; i < n; ++i) dx[i] = g[i] * gelu_grad_v<S>(x[i]);
}

}  // namespace

template <>
const VmathKernels& vmath_kernels<kIsa>() {
  static constexpr VmathKernels k{exp_shift_kernel, gelu_kernel, gelu_grad_kernel};
  return k;
}

}  // namespace mixtrain::cpu
