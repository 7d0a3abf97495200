// Per-element number-format math that every backend shares: the host's conversions (dtype.h's
// value types and bulk paths are built on these) and the CUDA kernels include this one header,
// so a value rounded on the device has the host's bits and the CPU tests, which check these
// functions exhaustively against references, check the device's arithmetic too.
//
// Integer-only: no rounding mode, FTZ or contraction can change a result.
#pragma once

#include <cstdint>
#if !defined(__CUDACC__)
#include <bit>
#endif

#if defined(__CUDACC__)
#define MIXTRAIN_HD __host__ __device__
#else
#define MIXTRAIN_HD
#endif

namespace mixtrain::detail {

// nvcc compiles the CUDA sources as C++17 (the CMake it is built with knows no newer CUDA
// dialect), where std::bit_cast is missing: its host pass uses the builtin std::bit_cast is
// made of, its device pass the intrinsics.
MIXTRAIN_HD constexpr uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#elif defined(__CUDACC__)
  return __builtin_bit_cast(uint32_t, f);
#else
  return std::bit_cast<uint32_t>(f);
#endif
}
MIXTRAIN_HD constexpr float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#elif defined(__CUDACC__)
  return __builtin_bit_cast(float, u);
#else
  return std::bit_cast<float>(u);
#endif
}

/// RNE of fp32 to a format with E exponent and M mantissa bits (E < 8), as an unsigned code.
/// kHasInf: IEEE-like (all-ones exponent is Inf/NaN). Otherwise OCP "fn": only the all-ones
/// code is NaN and overflow gives NaN, or the largest finite value when `saturate`.
template <int E, int M, bool kHasInf>
MIXTRAIN_HD constexpr uint32_t encode_small_float(float f, bool saturate) {
  constexpr int kBias = (1 << (E - 1)) - 1;
  constexpr uint32_t kSignBit = 1u << (E + M);
  constexpr uint32_t kAllOnes = (1u << (E + M)) - 1;  // magnitude bits all set
  constexpr uint32_t kInf = kHasInf ? ((1u << E) - 1) << M : 0;
  constexpr uint32_t kMaxFinite = kHasInf ? kInf - 1 : kAllOnes - 1;
  constexpr uint32_t kNaN = kHasInf ? kInf | (1u << (M - 1)) : kAllOnes;

  const uint32_t u = f32_bits(f);
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
MIXTRAIN_HD constexpr float decode_small_float(uint32_t code) {
  constexpr int kBias = (1 << (E - 1)) - 1;
  const uint32_t sign = (code >> (E + M)) & 1u;
  const uint32_t exp = (code >> M) & ((1u << E) - 1);
  const uint32_t man = code & ((1u << M) - 1);
  uint32_t out = 0;
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
  return f32_from_bits(out | (sign << 31));
}

/// RNE fp32 -> bf16 bits. bf16 shares fp32's exponent, so rounding the top half is enough;
/// carries into the exponent give the right result up to and including overflow to Inf.
MIXTRAIN_HD constexpr uint16_t bf16_bits_rne(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
/// bf16 bits -> fp32: the exact 16-bit shift.
MIXTRAIN_HD constexpr float bf16_bits_to_f32(uint16_t b) {
  return f32_from_bits(static_cast<uint32_t>(b) << 16);
}
/// RNE fp32 -> IEEE binary16 bits, and back (exact).
MIXTRAIN_HD constexpr uint16_t f16_bits_rne(float f) {
  return static_cast<uint16_t>(encode_small_float<5, 10, true>(f, false));
}
MIXTRAIN_HD constexpr float f16_bits_to_f32(uint16_t h) {
  return decode_small_float<5, 10, true>(h);
}

/// Stochastic rounding to a format whose values are fp32 values with the low `drop` bits
/// cleared: add `random` (uniform in [0, 2^drop)) to the magnitude and truncate. Rounds up
/// with probability equal to the fraction dropped, so E[result] = x.
MIXTRAIN_HD constexpr uint32_t stochastic_truncate(uint32_t u, uint32_t random, int drop) {
  const uint32_t mask = (1u << drop) - 1;
  return (u + (random & mask)) & ~mask;
}

/// Stochastic rounding fp32 -> bf16 bits with 32 random bits (their low 16 decide): E[result]
/// = f; Inf and NaN go as bf16_bits_rne; a finite value above the largest bf16 rounds up to Inf
/// with the same rule.
MIXTRAIN_HD constexpr uint16_t bf16_bits_stochastic(float f, uint32_t random) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return bf16_bits_rne(f);
  return static_cast<uint16_t>(stochastic_truncate(u, random, 16) >> 16);
}

}  // namespace mixtrain::detail
