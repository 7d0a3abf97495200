// isa: scalar avx2 avx512 avx512bf16
// The fp32 <-> bf16/fp16 conversion kernels, one build per level (cpu/convert.h). Each level
// rounds exactly as dtype.h's scalar conversions (RNE, subnormals exact, NaN quieted), so every
// level gives the same bits; tests check every 16-bit pattern on every level this CPU runs.
#include "cpu/isa_target.h"

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "cpu/convert.h"

namespace mixtrain::cpu {
namespace {

#if MT_ISA == 0

void f32_to_bf16(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = bf16(s[i]).bits();
}
void bf16_to_f32(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<float>(bf16::from_bits(s[i]));
}
void f32_to_f16(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = fp16(s[i]).bits();
}
void f16_to_f32(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<float>(fp16::from_bits(s[i]));
}

#elif MT_ISA == 1

// RNE fp32 -> bf16 in integer arithmetic, 8 lanes (results in the low 16 bits of each lane).
// Same rule as detail::bf16_bits_rne: add 0x7fff plus the kept LSB, then truncate; carries
// walk into the exponent and up to Inf correctly. NaN: top half with the quiet bit set.
MT_INLINE __m256i bf16_rne8(__m256i u) {
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  const __m256i r =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(r, nan, is_nan);
}

// 16 floats -> 16 bf16 (values <= 0xffff, so the unsigned-saturating pack is exact; it works
// per 128-bit lane, hence the cross-lane permute).
MT_INLINE __m256i bf16_rne16(const float* s) {
  const __m256i a = bf16_rne8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  const __m256i b = bf16_rne8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 8)));
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
}

MT_TARGET void f32_to_bf16(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), bf16_rne16(src + i));
  if (i < n) {  // tail through a zero-padded buffer so it runs the very same code
    alignas(32) float in[16] = {};
    alignas(32) uint16_t out[16];
    for (size_t j = 0; j < n - i; ++j) in[j] = src[i + j];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), bf16_rne16(in));
    for (size_t j = 0; j < n - i; ++j) dst[i + j] = out[j];
  }
}

MT_TARGET void bf16_to_f32(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_slli_epi32(w, 16));
  }
  for (; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
    __builtin_memcpy(dst + i, &u, 4);
  }
}

// vcvtps2ph with an immediate rounding mode: RNE whatever MXCSR says; it produces fp16
// subnormals and quiets NaN exactly as detail::encode_small_float does.
MT_TARGET void f32_to_f16(const float* src, uint16_t* dst, size_t n) {
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRne));
  if (i < n) {
    alignas(32) float in[8] = {};
    alignas(16) uint16_t out[8];
    for (size_t j = 0; j < n - i; ++j) in[j] = src[i + j];
    _mm_store_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(_mm256_load_ps(in), kRne));
    for (size_t j = 0; j < n - i; ++j) dst[i + j] = out[j];
  }
}

MT_TARGET void f16_to_f32(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (i < n) {
    alignas(16) uint16_t in[8] = {};
    alignas(32) float out[8];
    for (size_t j = 0; j < n - i; ++j) in[j] = src[i + j];
    _mm256_store_ps(out, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(in))));
    for (size_t j = 0; j < n - i; ++j) dst[i + j] = out[j];
  }
}

#else  // AVX-512: MT_ISA 2 and 3 (3 narrows to bf16 with vcvtne2ps2bf16 instead)

MT_INLINE __mmask16 tail_mask16(size_t k) {
  return static_cast<__mmask16>((1u << k) - 1u);  // k < 16
}

// RNE fp32 -> bf16 in integer arithmetic, 16 lanes (result in the low half of each lane);
// the rule of detail::bf16_bits_rne, NaN included.
MT_INLINE __m512i bf16_rne16(__m512i u) {
  const __m512i abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f800000));
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  return _mm512_mask_or_epi32(r, is_nan, hi, _mm512_set1_epi32(0x40));
}

[[maybe_unused]] MT_TARGET void f32_to_bf16(const float* src, uint16_t* dst, size_t n) {
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

MT_TARGET void bf16_to_f32(const uint16_t* src, float* dst, size_t n) {
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
MT_TARGET void f32_to_f16(const float* src, uint16_t* dst, size_t n) {
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

MT_TARGET void f16_to_f32(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(
        dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

#if MT_ISA == 3
// vcvtne2ps2bf16 rounds to nearest even and quiets NaN as (bits >> 16) | 0x40, like the
// scalar rule, but treats fp32 subnormal inputs as zero (0x00400000 -> 0x0000 where exact RNE
// gives 0x0040). Lanes holding a subnormal (|bits| in [1, 0x7fffff]) are redone with the
// integer rounding; the check costs two compares per 32 elements and the fix-up runs only
// when such a lane exists.
MT_INLINE __m512i bf16_32(__m512i a, __m512i b) {
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

MT_TARGET void f32_to_bf16_native(const float* src, uint16_t* dst, size_t n) {
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

#endif

#endif

}  // namespace

#if MT_ISA == 3
template <>
const ConvertKernels& convert_kernels<kIsa>() {
  static constexpr ConvertKernels k{f32_to_bf16_native, bf16_to_f32, f32_to_f16, f16_to_f32};
  return k;
}
#else
template <>
const ConvertKernels& convert_kernels<kIsa>() {
  static constexpr ConvertKernels k{f32_to_bf16, bf16_to_f32, f32_to_f16, f16_to_f32};
  return k;
}
#endif

}  // namespace mixtrain::cpu
