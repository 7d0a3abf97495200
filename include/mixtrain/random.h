// Counter-based random numbers: the value at (seed, counter) is a pure function, so a
// parallel loop, a resumed run and a recomputed (checkpointed) block all draw the same bits.
#pragma once

#include <cmath>
#include <cstdint>

#include "mixtrain/detail/random_bits.h"

namespace mixtrain {

/// 64 random bits for (seed, counter): splitmix64 finaliser over a Weyl sequence
/// (detail/random_bits.h, which the device kernels share).
MIXTRAIN_HD inline uint64_t random_bits(uint64_t seed, uint64_t counter) {
  return detail::random_bits(seed, counter);
}

/// A stream: (seed, counter). Its whole state is two integers, saved with checkpoints.
struct Rng {
  uint64_t seed = 0;
  uint64_t counter = 0;
  Rng() = default;
  explicit Rng(uint64_t s, uint64_t c = 0) : seed(s), counter(c) {}
  uint64_t next_u64() { return random_bits(seed, counter++); }
  uint32_t next_u32() { return static_cast<uint32_t>(next_u64() >> 32); }
  /// Uniform in [0, 1) with 24 random bits.
  float uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }
  /// Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return n ? next_u64() % n : 0; }
  /// Standard normal (Box-Muller; one value per call).
  float normal() {
    const double u1 = (static_cast<double>(next_u64() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    const double u2 = static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0);
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  /// Reserves n draws for a parallel kernel: returns the first counter and skips past them.
  uint64_t reserve(uint64_t n) {
    const uint64_t c = counter;
    counter += n;
    return c;
  }
};

}  // namespace mixtrain
