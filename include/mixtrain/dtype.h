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

namespace detail {

inline uint32_t f32_bits(float f) { return std::bit_cast<uint32_t>(f); }
inline float f32_from_bits(uint32_t u) { return std::bit_cast<float>(u); }

/// RNE of fp32 to a format with E exponent and M mantissa bits (E < 8), as an unsigned code.
/// kHasInf: IEEE-like (all-ones exponent is Inf/NaN). Otherwise OCP "fn": only the all-ones
/// code is NaN and overflow gives NaN, or the largest finite value when `saturate`.
template <int E, int M, bool kHasInf>
constexpr uint32_t encode_small_float(float f, bool saturate) {
  constexpr int kBias = (1 << (E - 1)) - 1;
  constexpr uint32_t kSignBit = 1u << (E + M);
  constexpr uint32_t kAllOnes = (1u << (E + M)) - 1;  // magnitude bits all set
  constexpr uint32_t kInf = kHasInf ? ((1u << E) - 1) << M : 0;
  constexpr uint32_t kMaxFinite = kHasInf ? kInf - 1 : kAllOnes - 1;
  constexpr uint32_t kNaN = kHasInf ? kInf | (1u << (M - 1)) : kAllOnes;

  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 31) ? kSignBit : 0;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) {  // NaN: quiet it, keep the top payload bits
    if constexpr (kHasInf) return sign | kNaN | ((a & 0x7fffffu) >> (23 - M));
    return sign | kNaN;
  }
  if (a == 0x7f800000u) return sign | (kHasInf ? kInf : (saturate ? kMaxFinite : kNaN));
  const int exp32 = static_cast<int>(a >> 23);
  if (exp32 == 0) return sign;  // fp32 subnormals are far below every target's half-ulp
  const int e = exp32 - 127;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;  // 24 significant bits
  constexpr int kMinNormalExp = 1 - kBias;
  const bool subnormal = e < kMinNormalExp;
  const int shift = (23 - M) + (subnormal ? kMinNormalExp - e : 0);
  if (shift > 24) return sign;  // below half the smallest subnormal: rounds to zero
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  // Normal: the implicit bit in q carries into the exponent field, so a mantissa that rounds
  // up to 2.0 correctly bumps the exponent. Subnormal: q is the code (and may become the
  // smallest normal).
  const uint32_t code = subnormal ? q : (static_cast<uint32_t>(e + kBias - 1) << M) + q;
  if (code > kMaxFinite) return sign | (kHasInf ? kInf : (saturate ? kMaxFinite : kNaN));
  return sign | code;
}

/// Exact decode of a small float code to fp32 (every such value is representable in fp32).
template <int E, int M, bool kHasInf>
constexpr float decode_small_float(uint32_t code) {
  constexpr int kBias = (1 << (E - 1)) - 1;
  const uint32_t sign = (code >> (E + M)) & 1u;
  const uint32_t exp = (code >> M) & ((1u << E) - 1);
  const uint32_t man = code & ((1u << M) - 1);
  uint32_t out;
  if (exp == (1u << E) - 1 && (kHasInf || man == (1u << M) - 1)) {
    if (kHasInf && man == 0)
      out = 0x7f800000u;
    else  // NaN: keep the payload in the top mantissa bits (quiet)
      out = 0x7fc00000u | (kHasInf ? man << (23 - M) : 0);
  } else if (exp == 0) {
    if (man == 0) {
      out = 0;
    } else {  // subnormal: normalise
      int e = 1 - kBias;
      uint32_t mm = man;
      while (!(mm & (1u << M))) {
        mm <<= 1;
        --e;
      }
      out = (static_cast<uint32_t>(e + 127) << 23) | ((mm & ((1u << M) - 1)) << (23 - M));
    }
  } else {
    out = (static_cast<uint32_t>(static_cast<int>(exp) - kBias + 127) << 23) | (man << (23 - M));
  }
  return std::bit_cast<float>(out | (sign << 31));
}

/// RNE fp32 -> bf16 bits. bf16 shares fp32's exponent, so rounding the top half is enough;
/// carries into the exponent give the right result up to and including overflow to Inf.
constexpr uint16_t bf16_bits_rne(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// Stochastic rounding to a format whose values are fp32 values with the low `drop` bits
/// cleared: add `random` (uniform in [0, 2^drop)) to the magnitude and truncate. Rounds up
/// with probability equal to the fraction dropped, so E[result] = x.
inline uint32_t stochastic_truncate(uint32_t u, uint32_t random, int drop) {
  const uint32_t mask = (1u << drop) - 1;
  return (u + (random & mask)) & ~mask;
}

}  // namespace detail

/// bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
struct bf16 {
  uint16_t x = 0;
  bf16() = default;
  /// Round to nearest even.
  explicit constexpr bf16(float f) : x(detail::bf16_bits_rne(f)) {}
  explicit constexpr operator float() const {
    return std::bit_cast<float>(static_cast<uint32_t>(x) << 16);
  }
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
    const uint32_t u = detail::f32_bits(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return bf16(f);
    return from_bits(static_cast<uint16_t>(detail::stochastic_truncate(u, random, 16) >> 16));
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
