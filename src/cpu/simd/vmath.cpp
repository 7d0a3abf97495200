// vmath.h: the same operation sequence in three builds. The body is written once over a tiny
// lane type (V) so the AVX-512, AVX2 and scalar variants cannot drift apart.
#include "cpu/simd/vmath.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <string>

#include "mixtrain/cpu.h"

// GCC 12 reports its own _mm512_undefined_*() placeholders inside the min/max/convert
// intrinsics as "may be used uninitialized" once inlined (a known false positive; the optimizer
// kernels and convert_avx512.cpp say the same).
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

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

// The algorithm, once: vmath_body.inc, included per ISA below with its lane type and target
// attribute (clang wants the attribute on every function that touches the vector types, so
// the body cannot be one template called from attributed wrappers).
namespace vscalar {
using L = S;
#define VM_ATTR
#include "cpu/simd/vmath_body.inc"
#undef VM_ATTR
}  // namespace vscalar
namespace vavx2 {
using L = A256;
#define VM_ATTR MIXTRAIN_VMATH_TARGET_256
#include "cpu/simd/vmath_body.inc"
#undef VM_ATTR
}  // namespace vavx2
namespace vavx512 {
using L = A512;
#define VM_ATTR MIXTRAIN_VMATH_TARGET_512
#include "cpu/simd/vmath_body.inc"
#undef VM_ATTR
}  // namespace vavx512

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
  static void (*const f[3])(float*, int64_t, float) = {vscalar::exp_shift, vavx2::exp_shift,
                                                       vavx512::exp_shift};
  f[level()](x, n, shift);
}

void gelu(const float* x, float* y, int64_t n) {
  static void (*const f[3])(const float*, float*, int64_t) = {vscalar::gelu, vavx2::gelu,
                                                              vavx512::gelu};
  f[level()](x, y, n);
}

void gelu_grad(const float* x, const float* g, float* dx, int64_t n) {
  static void (*const f[3])(const float*, const float*, float*, int64_t) = {
      vscalar::gelu_grad, vavx2::gelu_grad, vavx512::gelu_grad};
  f[level()](x, g, dx, n);
}

const char* vmath_level() {
  static const char* names[3] = {"scalar", "avx2", "avx512"};
  return names[level()];
}

}  // namespace mixtrain::simd
