// The shared random bits and dropout draw (mixtrain/detail/random_bits.h), which the CPU's and
// the CUDA backend's dropout both call: fixed values of the splitmix64 stream (so a change to
// the function, on either device, shows here), the public Rng on top of it, and the dropout
// decision against its definition from Rng::uniform.
#include <gtest/gtest.h>

#include <cstdint>

#include "mixtrain/detail/random_bits.h"
#include "mixtrain/random.h"

using namespace mixtrain;

namespace {

struct Golden {
  uint64_t seed, counter, bits;
};
// The values random_bits has always given (computed from the function before it moved into
// the shared header): checkpoints and resumed runs depend on them.
constexpr Golden kGolden[] = {
    {0ull, 0ull, 0x8209b480faed1b10ull},
    {1ull, 0ull, 0x2d0f28c7e7e786b2ull},
    {42ull, 7ull, 0x644a1d1984561d77ull},
    {3735928559ull, 123456789ull, 0xcb933f1d29cced4aull},
    {18446744073709551615ull, 18446744073709551614ull, 0x3a391231209043fdull},
    {36ull, 0ull, 0x743cdbc1719a6c7aull},
};

// Usable in constant expressions, as the device's copy is compiled from the same text.
static_assert(detail::random_bits(0, 0) == 0x8209b480faed1b10ull);
static_assert(detail::uniform24(~0ull) < 1.0f && detail::uniform24(0) == 0.0f);

}  // namespace

TEST(RandomBits, FixedValues) {
  for (const Golden& g : kGolden) {
    EXPECT_EQ(detail::random_bits(g.seed, g.counter), g.bits) << g.seed << ", " << g.counter;
    EXPECT_EQ(random_bits(g.seed, g.counter), g.bits);
  }
}

TEST(RandomBits, RngDrawsTheSharedStream) {
  Rng rng(1234, 99);
  for (uint64_t i = 0; i < 1000; ++i) EXPECT_EQ(rng.next_u64(), detail::random_bits(1234, 99 + i));
}

TEST(RandomBits, Uniform24IsRngUniform) {
  Rng rng(7);
  for (uint64_t i = 0; i < 1000; ++i) {
    const float u = rng.uniform();
    EXPECT_EQ(u, detail::uniform24(detail::random_bits(7, i)));
    EXPECT_GE(u, 0.0f);
    EXPECT_LT(u, 1.0f);
  }
  EXPECT_EQ(detail::uniform24(uint64_t{1} << 40), 1.0f / 16777216.0f);
  EXPECT_EQ(detail::uniform24(~0ull), 1.0f - 1.0f / 16777216.0f);
}

TEST(RandomBits, DropoutFactorKeepsDrawsAtOrAboveP) {
  const float p = 0.3f, scale = 1.0f / (1.0f - p);
  Rng rng(36, 5);
  int64_t kept = 0;
  const int64_t n = 100000;
  for (int64_t i = 0; i < n; ++i) {
    const float u = rng.uniform();
    const float f = detail::dropout_factor(36, 5 + static_cast<uint64_t>(i), p, scale);
    EXPECT_EQ(f, u >= p ? scale : 0.0f) << i;
    kept += f != 0.0f;
  }
  // 70% kept, within 5 standard deviations (0.0014 of n).
  EXPECT_NEAR(static_cast<double>(kept) / n, 0.7, 0.0075);
  // p = 0 keeps every element, whatever the draw (u >= 0 always).
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(detail::dropout_factor(1, i, 0.0f, 1.0f), 1.0f);
}
