// AVX2 + F16C conversion kernels. Only this file's functions carry the target attribute; it
// includes nothing but intrinsics so no inline library code is emitted with AVX2 encodings.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "cpu/simd/kernels.h"

#define MT_AVX2 __attribute__((target("avx2,f16c")))

namespace mixtrain::simd {
namespace {

// RNE fp32 -> bf16 in integer arithmetic, 8 lanes (results in the low 16 bits of each lane).
// Same rule as detail::bf16_bits_rne: add 0x7fff plus the kept LSB, then truncate; carries
// walk into the exponent and up to Inf correctly. NaN: top half with the quiet bit set.
MT_AVX2 inline __m256i bf16_rne8(__m256i u) {
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
MT_AVX2 inline __m256i bf16_rne16(const float* s) {
  const __m256i a = bf16_rne8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  const __m256i b = bf16_rne8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 8)));
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
}

MT_AVX2 void f32_to_bf16(const float* src, uint16_t* dst, size_t n) {
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

MT_AVX2 void bf16_to_f32(const uint16_t* src, float* dst, size_t n) {
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
MT_AVX2 void f32_to_f16(const float* src, uint16_t* dst, size_t n) {
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

MT_AVX2 void f16_to_f32(const uint16_t* src, float* dst, size_t n) {
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

}  // namespace

const Kernels kAvx2Kernels = {f32_to_bf16, bf16_to_f32, f32_to_f16, f16_to_f32};

}  // namespace mixtrain::simd
