// AVX-512 (F+BW+VL) and AVX-512 BF16 conversion kernels. Only this file's functions carry the
// target attributes; it includes nothing but intrinsics, so no inline library code is emitted
// with AVX-512 encodings. Tails use masked loads/stores, so every element runs vector code.
// GCC 12 reports its own _mm512_undefined_*() placeholders inside the intrinsics as "may be
// used uninitialized" once they are inlined; a known false positive.
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "cpu/simd/kernels.h"

#define MT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c")))
#define MT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,f16c")))

namespace mixtrain::simd {
namespace {

MT_AVX512 inline __mmask16 tail_mask16(size_t k) {
  return static_cast<__mmask16>((1u << k) - 1u);  // k < 16
}

// RNE fp32 -> bf16 in integer arithmetic, 16 lanes (result in the low half of each lane);
// the rule of detail::bf16_bits_rne, NaN included.
MT_AVX512 inline __m512i bf16_rne16(__m512i u) {
  const __m512i abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f800000));
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  return _mm512_mask_or_epi32(r, is_nan, hi, _mm512_set1_epi32(0x40));
}

MT_AVX512 void f32_to_bf16(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i u = _mm512_loadu_si512(src + i);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(bf16_rne16(u)));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512i u = _mm512_maskz_loadu_epi32(m, src + i);
    _mm512_mask_cvtepi32_storeu_epi16(dst + i, m, bf16_rne16(u));
  }
}

MT_AVX512 void bf16_to_f32(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    _mm512_storeu_si512(dst + i, _mm512_slli_epi32(w, 16));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
    _mm512_mask_storeu_epi32(dst + i, m, _mm512_slli_epi32(w, 16));
  }
}

// vcvtps2ph with an immediate RNE: ignores MXCSR's rounding mode; produces subnormals and
// quiets NaN exactly as detail::encode_small_float does (the tests check every pattern).
MT_AVX512 void f32_to_f16(const float* src, uint16_t* dst, size_t n) {
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kRne));
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), kRne));
  }
}

MT_AVX512 void f16_to_f32(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(
        dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

// vcvtne2ps2bf16 rounds to nearest even and quiets NaN as (bits >> 16) | 0x40, like the
// scalar rule, but treats fp32 subnormal inputs as zero (0x00400000 -> 0x0000 where exact RNE
// gives 0x0040). Lanes holding a subnormal (|bits| in [1, 0x7fffff]) are redone with the
// integer rounding; the check costs two compares per 32 elements and the fix-up runs only
// when such a lane exists.
MT_AVX512BF16 inline __m512i bf16_32(__m512i a, __m512i b) {
  __m512i r = reinterpret_cast<__m512i>(
      _mm512_cvtne2ps_pbh(_mm512_castsi512_ps(b), _mm512_castsi512_ps(a)));
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(1);
  const __m512i lim = _mm512_set1_epi32(0x007fffff);
  const __mmask16 sa =
      _mm512_cmplt_epu32_mask(_mm512_sub_epi32(_mm512_and_si512(a, abs_mask), one), lim);
  const __mmask16 sb =
      _mm512_cmplt_epu32_mask(_mm512_sub_epi32(_mm512_and_si512(b, abs_mask), one), lim);
  if (__builtin_expect((sa | sb) != 0, 0)) {
    const __m256i fa = _mm512_cvtepi32_epi16(bf16_rne16(a));
    const __m256i fb = _mm512_cvtepi32_epi16(bf16_rne16(b));
    const __m512i fix = _mm512_inserti64x4(_mm512_castsi256_si512(fa), fb, 1);
    const __mmask32 m = static_cast<__mmask32>(sa) | (static_cast<__mmask32>(sb) << 16);
    r = _mm512_mask_blend_epi16(m, r, fix);
  }
  return r;
}

MT_AVX512BF16 void f32_to_bf16_native(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i a = _mm512_loadu_si512(src + i);
    const __m512i b = _mm512_loadu_si512(src + i + 16);
    _mm512_storeu_si512(dst + i, bf16_32(a, b));
  }
  if (i < n) {
    const size_t k = n - i;  // 1..31
    const __mmask32 m = static_cast<__mmask32>((1ull << k) - 1);
    const __m512i a = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(m), src + i);
    const __m512i b = _mm512_maskz_loadu_epi32(static_cast<__mmask16>(m >> 16), src + i + 16);
    _mm512_mask_storeu_epi16(dst + i, m, bf16_32(a, b));
  }
}

}  // namespace

const Kernels kAvx512Kernels = {f32_to_bf16, bf16_to_f32, f32_to_f16, f16_to_f32};
const Kernels kAvx512Bf16Kernels = {f32_to_bf16_native, bf16_to_f32, f32_to_f16, f16_to_f32};

}  // namespace mixtrain::simd
