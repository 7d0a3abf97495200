// Per-element fp8 math shared by the CPU kernels and the CUDA ones (__host__ __device__ under
// nvcc): rounding a scaled value onto the E4M3 or E5M2 grid, saturating or not, and the E8M0
// power-of-two block scale of MXFP8. A value rounded here is the value that the fp8 cast
// (dtype.h) followed by its decode gives, computed branch-light so that a loop over a tensor
// vectorises; the CPU tests hold the two to the same bits.
#pragma once

#include <cstdint>

#include "mixtrain/detail/scalar.h"

namespace mixtrain::detail {

/// The two formats of fp8 training, as constants of the rounding below.
template <bool kE5M2>
struct Fp8Grid {
  static constexpr int kMantissa = kE5M2 ? 2 : 3;   ///< stored mantissa bits
  static constexpr int kMinExp = kE5M2 ? -14 : -6;  ///< exponent of the smallest normal
  static constexpr float kMax = kE5M2 ? 57344.0f : 448.0f;
  /// Half an ulp above kMax, where RNE leaves the format: E4M3's 464 ties to 448 (even), and
  /// anything above would be 480, its NaN code; E5M2's 61440 ties up to 65536, i.e. Inf.
  static constexpr float kOverflow = kE5M2 ? 61440.0f : 464.0f;
};

/// v rounded to nearest-even onto the E4M3 (kE5M2 = false) or E5M2 grid, as fp32 (every such
/// value is exact in bf16). `saturate`: finite values beyond the format's max and ±Inf clamp to
/// ±max, as Transformer Engine's and cuBLASLt's casts do; without it an overflow gives what the
/// cast gives (E4M3 has no Inf: NaN; E5M2: ±Inf). NaN stays NaN; fp32 subnormals give ±0.
template <bool kE5M2>
MIXTRAIN_HD inline float fp8_round(float v, bool saturate) {
  using G = Fp8Grid<kE5M2>;
  constexpr int kDrop = 23 - G::kMantissa;
  constexpr uint32_t kMask = (1u << kDrop) - 1;
  const uint32_t u = f32_bits(v);
  const uint32_t sign = u & 0x80000000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f32_from_bits(u | 0x00400000u);  // NaN, quieted
  if ((a >> 23) == 0) return f32_from_bits(sign);              // fp32 zero or subnormal
  const float av = f32_from_bits(a);
  if (kE5M2 ? !(av < G::kOverflow) : !(av <= G::kOverflow)) {
    if (saturate) return f32_from_bits(sign | f32_bits(G::kMax));
    return f32_from_bits(kE5M2 ? (sign | 0x7f800000u) : (sign | 0x7fc00000u));
  }
  if (av < f32_from_bits(static_cast<uint32_t>(127 + G::kMinExp) << 23)) {
    // Subnormal in fp8: a fixed quantum 2^(kMinExp - kMantissa). Adding 2^(23 + that) moves
    // the value to where fp32's own ulp is the quantum, so fp32's RNE addition rounds it; the
    // subtraction is exact.
    constexpr float kShift =
        static_cast<float>(1u << 23) / static_cast<float>(1u << (G::kMantissa - G::kMinExp));
    a = f32_bits((av + kShift) - kShift);
  } else {
    a = (a + (kMask >> 1) + ((a >> kDrop) & 1u)) & ~kMask;  // RNE on the fp32 bits
  }
  return f32_from_bits(sign | a);
}

/// The MXFP8 block scale: the smallest power of two 2^e with amax / 2^e <= fmt_max, so that no
/// element of the block saturates (the OCP spec's floor(log2(amax)) - emax can leave the block's
/// largest element up to 2x above the format's max; the MXFP8 recipe paper rounds up instead).
/// Returned as the E8M0 code e + 127, clamped to [0, 254] (255 is E8M0's NaN). amax 0 gives 0
/// (the scale 2^-127); a non-finite amax gives 255.
MIXTRAIN_HD inline uint8_t e8m0_ceil_code(float amax, float fmt_max) {
  const uint32_t ua = f32_bits(amax) & 0x7fffffffu;
  if (ua >= 0x7f800000u) return 255;
  if (ua == 0) return 0;
  // amax = ma·2^ea and fmt_max = mm·2^em with ma, mm in [1, 2) (fp32 subnormals read as their
  // exact exponent): 2^(ea - em) holds amax when ma <= mm, else one power more.
  int ea;
  uint32_t ma;
  if ((ua >> 23) == 0) {  // subnormal: normalise the mantissa
    int shift = 0;
    uint32_t m = ua;
    while (!(m & 0x800000u)) {
      m <<= 1;
      ++shift;
    }
    ea = -126 - shift;
    ma = m & 0x7fffffu;
  } else {
    ea = static_cast<int>(ua >> 23) - 127;
    ma = ua & 0x7fffffu;
  }
  const uint32_t um = f32_bits(fmt_max);
  const int em = static_cast<int>(um >> 23) - 127;
  const uint32_t mm = um & 0x7fffffu;
  int e = ea - em + (ma > mm ? 1 : 0);
  if (e < -127) e = -127;
  if (e > 127) e = 127;
  return static_cast<uint8_t>(e + 127);
}

/// 2^(code - 127) for an E8M0 code; NaN for 255. Exact (2^-127 is an fp32 subnormal).
MIXTRAIN_HD inline float e8m0_decode(uint8_t code) {
  if (code == 255) return f32_from_bits(0x7fc00000u);
  if (code == 0) return f32_from_bits(0x00400000u);  // 2^-127
  return f32_from_bits(static_cast<uint32_t>(code) << 23);
}

/// 2^(127 - code): the factor that brings a block into the format's range (1 / e8m0_decode),
/// exact; 0 for 255.
MIXTRAIN_HD inline float e8m0_inverse(uint8_t code) {
  if (code == 255) return 0.0f;
  const int e = 127 - static_cast<int>(code);        // in [-127, 127]
  if (e == -127) return f32_from_bits(0x00400000u);  // 2^-127, an fp32 subnormal
  return f32_from_bits(static_cast<uint32_t>(e + 127) << 23);
}

}  // namespace mixtrain::detail
