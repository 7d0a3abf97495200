// Number formats: the runtime dtype enum and the 16- and 8-bit value types.
//
// Every conversion from float rounds to nearest, ties to even (RNE), handles ±0, ±Inf,
// subnormals (fp32 subnormal inputs are converted exactly, never flushed) and overflow, and
// is integer-only, so it ignores the MXCSR rounding mode and FTZ/DAZ. Formats:
//   bf16      1-8-7   8 significant bits   max 3.39e38 (fp32's range)   overflow -> Inf
//   fp16      1-5-10  11 bits  max 65504   min subnormal 2^-24           overflow -> Inf
//   fp8_e5m2  1-5-2   3 bits   max 57344   min subnormal 2^-16           overflow -> Inf
//   fp8_e4m3  1-4-3   4 bits   max 448, no Inf (OCP "fn")                overflow -> NaN,
//                                                         or ±448 with saturate()
// NaN rule (the x86 conversion instructions vcvtneps2bf16, vcvtps2ph and vcvtph2ps do the
// same, so the bulk SIMD paths and these scalar ones agree bit for bit):
//   fp32 -> bf16/fp16/e5m2: a quiet NaN of the same sign whose payload is the top payload bits
//     of the fp32 NaN, with the quiet bit set (a signalling NaN is quieted);
//   fp32 -> e4m3: the format's only NaN of that sign, 0x7f or 0xff;
//   fp16/e5m2/e4m3 -> fp32: a quiet NaN of the same sign, payload in the top bits;
//   bf16 -> fp32: the exact 16-bit shift (a signalling bf16 NaN stays signalling).
// So every non-NaN bit pattern round-trips exactly, and a NaN pattern comes back as a NaN of
// the same sign and payload with the quiet bit set (canonicalised, as libraries may do too).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mixtrain/detail/scalar.h"

namespace mixtrain {

/// The element type of a tensor, chosen at run time.
enum class DType : uint8_t { f32, f64, bf16, f16, e4m3, e5m2, i32, i64, u8 };

/// Bytes per element.
size_t dtype_size(DType dt);
/// Short name: "f32", "bf16", ... (the names parse_dtype accepts; "fp32" etc. also accepted).
const char* dtype_name(DType dt);
/// Parses a dtype name; throws mixtrain::Error naming the bad string.
DType parse_dtype(std::string_view name);
/// True for the floating-point dtypes.
bool is_floating(DType dt);

/// bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
struct bf16 {
  uint16_t x = 0;
  bf16() = default;
  /// Round to nearest even.
  explicit constexpr bf16(float f) : x(detail::bf16_bits_rne(f)) {}
  explicit constexpr operator float() const { return detail::bf16_bits_to_f32(x); }
  static constexpr bf16 from_bits(uint16_t b) {
    bf16 r;
    r.x = b;
    return r;
  }
  constexpr uint16_t bits() const { return x; }
  /// Stochastic rounding: `random` is 32 uniform random bits from the caller's stream; its low
  /// 16 decide. Rounds away from zero with probability (|f| - |lo|) / (|hi| - |lo|) for the
  /// bf16 neighbours lo <= |f| < hi, so E[result] = f exactly (subnormals too). Inf and NaN
  /// go as in bf16(f); a finite value above the largest bf16 rounds up to Inf with the same
  /// rule, Inf taking the place of the next value 2^128.
  static bf16 round_stochastic(float f, uint32_t random) {
    return from_bits(detail::bf16_bits_stochastic(f, random));
  }
};

/// IEEE binary16: 1 sign, 5 exponent, 10 mantissa bits.
struct fp16 {
  uint16_t x = 0;
  fp16() = default;
  explicit constexpr fp16(float f)
      : x(static_cast<uint16_t>(detail::encode_small_float<5, 10, true>(f, false))) {}
  explicit constexpr operator float() const { return detail::decode_small_float<5, 10, true>(x); }
  static constexpr fp16 from_bits(uint16_t b) {
    fp16 r;
    r.x = b;
    return r;
  }
  constexpr uint16_t bits() const { return x; }
  /// Stochastic rounding with 32 random bits from the caller's stream (normal range: the low
  /// 13 decide; subnormal range: up to all 32): rounds away from zero with probability equal
  /// to the distance to the lower neighbour over the gap, so E[result] = f (to 2^-32 of a
  /// subnormal step for |f| < 2^-32). As for bf16, a finite value above 65504 rounds up to
  /// Inf (standing for 65536) with that probability; Inf and NaN go as in fp16(f).
  static fp16 round_stochastic(float f, uint32_t random);
};

/// OCP FP8 E4M3 ("fn"): no Inf, max 448, overflow -> NaN (0x7f / 0xff).
struct fp8_e4m3 {
  uint8_t x = 0;
  fp8_e4m3() = default;
  explicit constexpr fp8_e4m3(float f)
      : x(static_cast<uint8_t>(detail::encode_small_float<4, 3, false>(f, false))) {}
  explicit constexpr operator float() const { return detail::decode_small_float<4, 3, false>(x); }
  /// Saturating conversion for scaled use: out-of-range values and ±Inf clamp to ±448.
  static constexpr fp8_e4m3 saturate(float f) {
    return from_bits(static_cast<uint8_t>(detail::encode_small_float<4, 3, false>(f, true)));
  }
  static constexpr fp8_e4m3 from_bits(uint8_t b) {
    fp8_e4m3 r;
    r.x = b;
    return r;
  }
  constexpr uint8_t bits() const { return x; }
};

/// OCP FP8 E5M2: IEEE-like (has Inf), max 57344, overflow -> Inf.
struct fp8_e5m2 {
  uint8_t x = 0;
  fp8_e5m2() = default;
  explicit constexpr fp8_e5m2(float f)
      : x(static_cast<uint8_t>(detail::encode_small_float<5, 2, true>(f, false))) {}
  explicit constexpr operator float() const { return detail::decode_small_float<5, 2, true>(x); }
  /// Saturating conversion: out-of-range values and ±Inf clamp to ±57344.
  static constexpr fp8_e5m2 saturate(float f) {
    const uint32_t c = detail::encode_small_float<5, 2, true>(f, false);
    if ((c & 0x7fu) == 0x7cu) return from_bits(static_cast<uint8_t>((c & 0x80u) | 0x7bu));
    return from_bits(static_cast<uint8_t>(c));
  }
  static constexpr fp8_e5m2 from_bits(uint8_t b) {
    fp8_e5m2 r;
    r.x = b;
    return r;
  }
  constexpr uint8_t bits() const { return x; }
};

/// The DType of a C++ element type.
template <class T>
constexpr DType dtype_of();
// clang-format off
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<fp16>() { return DType::f16; }
template <> constexpr DType dtype_of<fp8_e4m3>() { return DType::e4m3; }
template <> constexpr DType dtype_of<fp8_e5m2>() { return DType::e5m2; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }
// clang-format on

/// Bulk conversion between any two dtypes of host memory (n elements, contiguous). fp32<->bf16
/// and fp32<->fp16 use the SIMD kernels of the CPU's level (see simd_level());
/// results are bit-identical to the scalar conversions above. Large n runs on OpenMP threads
/// (element-wise, so the result does not depend on the thread count). f64 and integers round
/// once (RNE) straight to the target, never through an intermediate rounding; float ->
/// integer truncates toward zero and saturates at the integer's range, NaN -> 0; integer ->
/// narrower integer wraps, as static_cast does.
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

/// Stochastic-rounding bulk conversion fp32 -> bf16/fp16; `seed` and `offset` define the
/// random stream (counter-based, so a parallel split gives the same bits as a serial one):
/// element i uses T::round_stochastic(src[i], random_bits(seed, offset + i) >> 32).
/// Throws DTypeError for any other dst_dtype.
void convert_stochastic(const float* src, void* dst, DType dst_dtype, size_t n, uint64_t seed,
                        uint64_t offset = 0);

}  // namespace mixtrain
