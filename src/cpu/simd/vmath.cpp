// vmath.h: the same operation sequence in three builds. The body is written once over a tiny
// lane type (V) so the AVX-512, AVX2 and scalar variants cannot drift apart.
#include "cpu/simd/vmath.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <string>

#include "mixtrain/cpu.h"

namespace mixtrain::simd {

namespace {

// exp's constants (Cephes expf). Results below 2^-124 flush to 0 and the input is clamped so
// that 2^(n-1) stays a normal float (the scale is applied as 2^(n-1)·2).
constexpr float kLo = -86.0f, kHi = 88.72283935546875f;
constexpr float kLog2e = 1.44269504088896341f, kC1 = 0.693359375f, kC2 = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kSqrt2OverPi = 0.7978845608028654f, kGeluC = 0.044715f;

// ---- scalar lanes ----
struct S {
  using V = float;
  static V set(float a) { return a; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V div(V a, V b) { return a / b; }
  static V fma(V a, V b, V c) { return std::fma(a, b, c); }
  static V min(V a, V b) { return a < b ? a : b; }  // as minps: b when either is NaN
  static V max(V a, V b) { return a > b ? a : b; }  // as maxps
  static V round(V a) { return std::nearbyint(a); }
  static V pow2m1(V n) {  // 2^(n-1), n integral in [-124, 128]
    const int32_t bits = (static_cast<int32_t>(n) - 1 + 127) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  // where(x < lo) 0; where(x > hi) inf; where(x is NaN) x; else y
  static V fix(V x, V y) {
    if (x != x) return x;
    if (x < kLo) return 0.0f;
    if (x > kHi) return INFINITY;
    return y;
  }
  static constexpr int W = 1;
};

#define MIXTRAIN_VMATH_TARGET_512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define MIXTRAIN_VMATH_TARGET_256 __attribute__((target("avx2,fma")))

struct A512 {
  using V = __m512;
  MIXTRAIN_VMATH_TARGET_512 static V set(float a) { return _mm512_set1_ps(a); }
  MIXTRAIN_VMATH_TARGET_512 static V load(const float* p) { return _mm512_loadu_ps(p); }
  MIXTRAIN_VMATH_TARGET_512 static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  MIXTRAIN_VMATH_TARGET_512 static V add(V a, V b) { return _mm512_add_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_512 static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_512 static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_512 static V div(V a, V b) { return _mm512_div_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_512 static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  MIXTRAIN_VMATH_TARGET_512 static V min(V a, V b) { return _mm512_min_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_512 static V max(V a, V b) { return _mm512_max_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_512 static V round(V a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  MIXTRAIN_VMATH_TARGET_512 static V pow2m1(V n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(126));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  MIXTRAIN_VMATH_TARGET_512 static V fix(V x, V y) {
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(kLo), _CMP_LT_OQ),
                           _mm512_setzero_ps());
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(kHi), _CMP_GT_OQ),
                           _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
  }
  static constexpr int W = 16;
};

struct A256 {
  using V = __m256;
  MIXTRAIN_VMATH_TARGET_256 static V set(float a) { return _mm256_set1_ps(a); }
  MIXTRAIN_VMATH_TARGET_256 static V load(const float* p) { return _mm256_loadu_ps(p); }
  MIXTRAIN_VMATH_TARGET_256 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  MIXTRAIN_VMATH_TARGET_256 static V add(V a, V b) { return _mm256_add_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_256 static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_256 static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_256 static V div(V a, V b) { return _mm256_div_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_256 static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  MIXTRAIN_VMATH_TARGET_256 static V min(V a, V b) { return _mm256_min_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_256 static V max(V a, V b) { return _mm256_max_ps(a, b); }
  MIXTRAIN_VMATH_TARGET_256 static V round(V a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  MIXTRAIN_VMATH_TARGET_256 static V pow2m1(V n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  MIXTRAIN_VMATH_TARGET_256 static V fix(V x, V y) {
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(kLo), _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY),
                         _mm256_cmp_ps(x, _mm256_set1_ps(kHi), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  static constexpr int W = 8;
};

template <class L>
[[gnu::always_inline]] inline typename L::V exp_v(typename L::V x0) {
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

// The scalar tail runs the same sequence one lane at a time.
template <class L, class F, class FS>
[[gnu::always_inline]] inline void lanes(int64_t n, F&& body, FS&& tail) {
  int64_t i = 0;
  for (; i + L::W <= n; i += L::W) body(i);
  for (; i < n; ++i) tail(i);
}

template <class L>
[[gnu::always_inline]] inline void exp_shift_body(float* x, int64_t n, float shift) {
  lanes<L>(
      n, [&](int64_t i) { L::store(x + i, exp_v<L>(L::sub(L::load(x + i), L::set(shift)))); },
      [&](int64_t i) { x[i] = exp_v<S>(x[i] - shift); });
}

// gelu(x) = x / (1 + e), e = exp(-2u): full relative accuracy in the negative tail.
template <class L>
[[gnu::always_inline]] inline typename L::V gelu_v(typename L::V x) {
  using V = typename L::V;
  const V x3 = L::mul(L::mul(x, x), x);
  const V u = L::mul(L::set(kSqrt2OverPi), L::fma(L::set(kGeluC), x3, x));
  const V e = exp_v<L>(L::mul(L::set(-2.0f), u));
  return L::div(x, L::add(L::set(1.0f), e));
}

// gelu'(x) = s + 2x·s·(e·s)·√(2/π)(1 + 3c·x²), s = 1/(1 + e).
template <class L>
[[gnu::always_inline]] inline typename L::V gelu_grad_v(typename L::V x) {
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

template <class L>
[[gnu::always_inline]] inline void gelu_body(const float* x, float* y, int64_t n) {
  lanes<L>(
      n, [&](int64_t i) { L::store(y + i, gelu_v<L>(L::load(x + i))); },
      [&](int64_t i) { y[i] = gelu_v<S>(x[i]); });
}

template <class L>
[[gnu::always_inline]] inline void gelu_grad_body(const float* x, const float* g, float* dx,
                                                  int64_t n) {
  lanes<L>(
      n,
      [&](int64_t i) { L::store(dx + i, L::mul(L::load(g + i), gelu_grad_v<L>(L::load(x + i)))); },
      [&](int64_t i) { dx[i] = g[i] * gelu_grad_v<S>(x[i]); });
}

#define MIXTRAIN_VMATH_VARIANT(suffix, L, attr)                                              \
  attr void exp_shift_##suffix(float* x, int64_t n, float s) { exp_shift_body<L>(x, n, s); } \
  attr void gelu_##suffix(const float* x, float* y, int64_t n) { gelu_body<L>(x, y, n); }    \
  attr void gelu_grad_##suffix(const float* x, const float* g, float* dx, int64_t n) {       \
    gelu_grad_body<L>(x, g, dx, n);                                                          \
  }
MIXTRAIN_VMATH_VARIANT(avx512, A512, MIXTRAIN_VMATH_TARGET_512 __attribute__((flatten)))
MIXTRAIN_VMATH_VARIANT(avx2, A256, MIXTRAIN_VMATH_TARGET_256 __attribute__((flatten)))
MIXTRAIN_VMATH_VARIANT(scalar, S, __attribute__((flatten)))
#undef MIXTRAIN_VMATH_VARIANT

// The widest variant the bulk kernels use (simd_level honours the MIXTRAIN_ISA cap).
int level() {
  static const int idx = [] {
    const std::string lvl = simd_level();
    return lvl.rfind("avx512", 0) == 0 ? 2 : lvl == "avx2" ? 1 : 0;
  }();
  return idx;
}

}  // namespace

void exp_shift(float* x, int64_t n, float shift) {
  static void (*const f[3])(float*, int64_t, float) = {exp_shift_scalar, exp_shift_avx2,
                                                       exp_shift_avx512};
  f[level()](x, n, shift);
}

void gelu(const float* x, float* y, int64_t n) {
  static void (*const f[3])(const float*, float*, int64_t) = {gelu_scalar, gelu_avx2, gelu_avx512};
  f[level()](x, y, n);
}

void gelu_grad(const float* x, const float* g, float* dx, int64_t n) {
  static void (*const f[3])(const float*, const float*, float*, int64_t) = {
      gelu_grad_scalar, gelu_grad_avx2, gelu_grad_avx512};
  f[level()](x, g, dx, n);
}

const char* vmath_level() {
  static const char* names[3] = {"scalar", "avx2", "avx512"};
  return names[level()];
}

}  // namespace mixtrain::simd
