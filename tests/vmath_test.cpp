// The vectorised exp and GELU (src/cpu/vmath.h) against double-precision math, on every fp32
// exponent range they serve, plus their edge cases, at every ISA level this CPU runs: each
// level's outputs must be the same bits (one operation sequence on every level).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/isa.h"
#include "cpu/vmath.h"
#include "mixtrain/detail/map_math.h"

using namespace mixtrain;
using cpu::Isa;

namespace {

// Distance in units in the last place between two finite floats of the same sign.
int64_t ulps(float a, double want) {
  const float w = static_cast<float>(want);
  int32_t ia, iw;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&iw, &w, 4);
  return std::llabs(static_cast<int64_t>(ia) - iw);
}

uint64_t checksum(const std::vector<float>& v) {
  uint64_t h = 1469598103934665603ull;
  for (float f : v) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    h = (h ^ b) * 1099511628211ull;
  }
  return h;
}

}  // namespace

TEST(Vmath, ExpWithinTwoUlpOfDoubleExp) {
  // Every 97th float bit pattern in [-86, 88.7] (both signs, all exponents), plus a shift.
  std::vector<float> x;
  for (uint32_t b = 0; b < 0x42b17218u; b += 97) {  // 0 .. 88.72
    float f;
    std::memcpy(&f, &b, 4);
    x.push_back(f);
    if (f <= 86.0f) x.push_back(-f);
  }
  uint64_t first_sum = 0;
  for (Isa level : cpu::supported_isas()) {
    const cpu::IsaCap cap(level);
    std::vector<float> y = x;
    cpu::exp_shift(y.data(), static_cast<int64_t>(y.size()), 0.0f);
    int64_t worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double want = std::exp(static_cast<double>(x[i]));
      if (want > 3.4028234663852886e38) continue;  // rounds to inf in fp32
      worst = std::max(worst, ulps(y[i], want));
    }
    EXPECT_LE(worst, 2) << cpu::isa_name(level) << ": worst error in ulp over " << x.size()
                        << " inputs";
    const uint64_t sum = checksum(y);
    if (level == Isa::scalar) first_sum = sum;
    EXPECT_EQ(sum, first_sum) << cpu::isa_name(level) << " differs from the scalar build";
    std::printf("exp level %s checksum %016llx (%zu inputs, worst %lld ulp)\n",
                cpu::isa_name(level), static_cast<unsigned long long>(sum), y.size(),
                static_cast<long long>(worst));
  }
  // The shift is subtracted first: exp(x - m).
  float a[3] = {1.0f, 2.0f, 3.0f};
  cpu::exp_shift(a, 3, 3.0f);
  EXPECT_NEAR(a[0], std::exp(-2.0), 1e-7);
  EXPECT_EQ(a[2], 1.0f);
}

TEST(Vmath, ExpEdgeCases) {
  for (Isa level : cpu::supported_isas()) {
    SCOPED_TRACE(cpu::isa_name(level));
    const cpu::IsaCap cap(level);
    std::vector<float> x = {-INFINITY, -1000.0f, -87.0f,   -86.0f, 0.0f, -0.0f, 88.0f,
                            88.75f,    1000.0f,  INFINITY, NAN,    -NAN, 1e-30f};
    // Odd length: the last lanes go through the scalar tail.
    std::vector<float> y = x;
    cpu::exp_shift(y.data(), static_cast<int64_t>(y.size()), 0.0f);
    EXPECT_EQ(y[0], 0.0f);
    EXPECT_EQ(y[1], 0.0f);
    EXPECT_EQ(y[2], 0.0f);  // below 2^-124: flushed (callers add it to values near 1)
    EXPECT_NEAR(y[3], std::exp(-86.0), 1e-44);
    EXPECT_EQ(y[4], 1.0f);
    EXPECT_EQ(y[5], 1.0f);
    EXPECT_NEAR(y[6] / std::exp(88.0), 1.0, 3e-7);
    EXPECT_EQ(y[7], INFINITY);
    EXPECT_EQ(y[8], INFINITY);
    EXPECT_EQ(y[9], INFINITY);
    EXPECT_TRUE(std::isnan(y[10]));
    EXPECT_TRUE(std::isnan(y[11]));
    EXPECT_EQ(y[12], 1.0f);
    // The same values in a long array (vector lanes) give the same bits as the tail.
    std::vector<float> big;
    for (int r = 0; r < 5; ++r) big.insert(big.end(), x.begin(), x.end());
    cpu::exp_shift(big.data(), static_cast<int64_t>(big.size()), 0.0f);
    for (size_t i = 0; i < big.size(); ++i) {
      const float want = y[i % x.size()];
      if (std::isnan(want))
        EXPECT_TRUE(std::isnan(big[i]));
      else
        EXPECT_EQ(big[i], want) << i;
    }
  }
}

TEST(Vmath, GeluAndItsGradientMatchDoubleFormula) {
  uint64_t first_y = 0, first_dx = 0;
  for (Isa level : cpu::supported_isas()) {
    SCOPED_TRACE(cpu::isa_name(level));
    const cpu::IsaCap cap(level);
    std::vector<float> x, g;
    for (int i = -20000; i <= 20000; ++i) {
      x.push_back(static_cast<float>(i) * 1e-3f);
      g.push_back(1.0f - 2.0f * static_cast<float>(i & 1));
    }
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<float> y(x.size()), dx(x.size());
    cpu::gelu(x.data(), y.data(), n);
    cpu::gelu_grad(x.data(), g.data(), dx.data(), n);
    const double k = std::sqrt(2.0 / M_PI);
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = x[i];
      const double u = k * (v + 0.044715 * v * v * v);
      // 0.5(1 + tanh u) = σ(2u), 1 - tanh² u = 4σ(2u)(1 - σ(2u)): the sigmoid form keeps the
      // double reference exact in the negative tail, where 1 + tanh u cancels.
      const double sg = 1.0 / (1.0 + std::exp(-2.0 * u));
      const double want = v * sg;
      const double dwant = g[i] * (sg + 2.0 * v * sg * (1 - sg) * k * (1 + 3 * 0.044715 * v * v));
      // fp32 evaluation of a handful of operations: ~1e-6 relative. The exp argument 2u carries
      // a few fp32 roundings (relative 2^-23 each), which exp turns into a relative error of
      // |2u|·2^-23 per rounding: allow 3·|2u|·2^-23 more (up to 2e-5 at x = -20). Near the zeros
      // of gelu' (x ~ -0.75) the derivative is a difference of O(1) terms: 2e-6 absolute there.
      const double rel = 2e-6 + 3.0 * std::fabs(2.0 * u) * 0x1p-23;
      EXPECT_NEAR(y[i], want, rel * std::fabs(want) + 1e-37) << "x " << v;
      EXPECT_NEAR(dx[i], dwant, rel * std::fabs(dwant) + 2e-6) << "x " << v;
    }
    if (level == Isa::scalar) first_y = checksum(y), first_dx = checksum(dx);
    EXPECT_EQ(checksum(y), first_y) << "gelu differs from the scalar build";
    EXPECT_EQ(checksum(dx), first_dx) << "gelu' differs from the scalar build";
    std::printf("gelu level %s checksum %016llx %016llx\n", cpu::isa_name(level),
                static_cast<unsigned long long>(checksum(y)),
                static_cast<unsigned long long>(checksum(dx)));
  }
}

// The per-element GELU the CUDA kernels use (mixtrain/detail/map_math.h), held to the double
// formula with the vectorised kernel's tolerances (libm's expf instead of vmath's exp: a few
// fp32 roundings, ~1e-6 relative, plus |2u|·2^-23 per rounding of the exp argument).
TEST(Vmath, SharedGeluForTheDeviceMatchesDoubleFormula) {
  const double k = std::sqrt(2.0 / M_PI);
  for (int i = -20000; i <= 20000; ++i) {
    const float xf = static_cast<float>(i) * 1e-3f;
    const float gf = 1.0f - 2.0f * static_cast<float>(i & 1);
    const double v = xf;
    const double u = k * (v + 0.044715 * v * v * v);
    const double sg = 1.0 / (1.0 + std::exp(-2.0 * u));
    const double want = v * sg;
    const double dwant = gf * (sg + 2.0 * v * sg * (1 - sg) * k * (1 + 3 * 0.044715 * v * v));
    const double rel = 2e-6 + 3.0 * std::fabs(2.0 * u) * 0x1p-23;
    EXPECT_NEAR(mixtrain::detail::gelu(xf), want, rel * std::fabs(want) + 1e-37) << "x " << v;
    EXPECT_NEAR(mixtrain::detail::gelu_grad(gf, xf), dwant, rel * std::fabs(dwant) + 2e-6)
        << "x " << v;
  }
}
