// The counter-based random bits (mixtrain::random_bits, random.h) and dropout's per-element
// draw, for every backend: the CPU's dropout and the CUDA dropout kernel call these same
// functions, so an element is kept or dropped identically on either device. Integer arithmetic
// and one exact int -> float conversion: no rounding mode, FTZ or contraction changes a result.
// Checked against fixed values by the CPU tests (RandomBits.*).
#pragma once

#include <cstdint>

#include "mixtrain/detail/scalar.h"  // MIXTRAIN_HD

namespace mixtrain::detail {

/// 64 random bits for (seed, counter): splitmix64 finaliser over a Weyl sequence.
MIXTRAIN_HD constexpr uint64_t random_bits(uint64_t seed, uint64_t counter) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (counter + 1) * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// Uniform in [0, 1) from the top 24 of 64 random bits (exact: a 24-bit integer times 2^-24).
MIXTRAIN_HD constexpr float uniform24(uint64_t bits) {
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

/// Inverted dropout's factor for the element drawn at (seed, counter): `scale` when the draw
/// u = uniform24(random_bits(seed, counter)) is >= p (kept), else 0.
MIXTRAIN_HD constexpr float dropout_factor(uint64_t seed, uint64_t counter, float p, float scale) {
  return uniform24(random_bits(seed, counter)) >= p ? scale : 0.0f;
}

}  // namespace mixtrain::detail
