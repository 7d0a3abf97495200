// FP8 training's pieces, after Transformer Engine's recipe tests: the amax history, the scale
// rule and its edge cases, E8M0 block scales, saturating and non-saturating rounding, the CPU's
// quantization kernels, and the emulated fp8 GEMM (forward and both backward products) against
// a scalar fp8 reference, bit for bit.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "mixtrain/amp/fp8.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/detail/fp8_math.h"
#include "mixtrain/nn/layers.h"
#include "mixtrain/ops.h"

using namespace mixtrain;
using amp::AmaxHistory;
using amp::AmaxReduce;

namespace {

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, 4) == 0 || (std::isnan(a) && std::isnan(b));
}

// The reference: the fp8 casts of dtype.h, then their exact decode.
float ref_round(float v, bool e5m2, bool saturate) {
  if (e5m2) return static_cast<float>(saturate ? fp8_e5m2::saturate(v) : fp8_e5m2(v));
  return static_cast<float>(saturate ? fp8_e4m3::saturate(v) : fp8_e4m3(v));
}

float fast_round(float v, bool e5m2, bool saturate) {
  return e5m2 ? detail::fp8_round<true>(v, saturate) : detail::fp8_round<false>(v, saturate);
}

// E8M0 by definition: the smallest e with amax <= fmt_max · 2^e, searched in double.
int ref_e8m0_exponent(float amax, float fmt_max) {
  for (int e = -127; e <= 127; ++e)
    if (static_cast<double>(amax) <= static_cast<double>(fmt_max) * std::ldexp(1.0, e)) return e;
  return 127;
}

}  // namespace

// ---- the amax history ------------------------------------------------------------------------

TEST(Fp8, AmaxHistoryRollsForLengths1And31And1024) {
  for (int64_t len : {1, 31, 1024}) {
    AmaxHistory h(len);
    std::vector<float> pushed;
    std::mt19937 rng(static_cast<uint32_t>(len));
    std::uniform_real_distribution<float> u(0.0f, 100.0f);
    EXPECT_EQ(h.reduced(AmaxReduce::max), 0.0f);
    for (int step = 0; step < 3 * len + 5; ++step) {
      const float a = u(rng);
      h.push(a);
      pushed.push_back(a);
      const size_t n = std::min<size_t>(pushed.size(), static_cast<size_t>(len));
      const std::vector<float> window(pushed.end() - static_cast<ptrdiff_t>(n), pushed.end());
      ASSERT_EQ(h.filled(), static_cast<int64_t>(n));
      ASSERT_EQ(h.values(), window) << "length " << len << " step " << step;
      ASSERT_EQ(h.reduced(AmaxReduce::max), *std::max_element(window.begin(), window.end()));
      ASSERT_EQ(h.reduced(AmaxReduce::most_recent), a);
    }
    // A restored history continues as the original does.
    AmaxHistory r(len);
    r.assign(h.values());
    for (int step = 0; step < len + 3; ++step) {
      h.push(static_cast<float>(step));
      r.push(static_cast<float>(step));
      ASSERT_EQ(h.values(), r.values());
      ASSERT_EQ(h.reduced(AmaxReduce::max), r.reduced(AmaxReduce::max));
    }
  }
  EXPECT_THROW(AmaxHistory(0), ConfigError);
}

TEST(Fp8, AmaxHistoryMaxPropagatesNaN) {
  AmaxHistory h(4);
  h.push(1.0f);
  h.push(std::nanf(""));
  h.push(2.0f);
  EXPECT_TRUE(std::isnan(h.reduced(AmaxReduce::max)));
  EXPECT_EQ(h.reduced(AmaxReduce::most_recent), 2.0f);
}

// ---- the scale rule --------------------------------------------------------------------------

TEST(Fp8, ScaleIsFormatMaxOverAmaxOverTwoToTheMargin) {
  for (float fmax : {448.0f, 57344.0f})
    for (int margin : {0, 1, 3})
      for (float amax : {1.0f, 3.5f, 0.01f, 1234.5f}) {
        const float want = (fmax / amax) / std::ldexp(1.0f, margin);
        EXPECT_EQ(amp::fp8_scale(amax, fmax, margin, 7.0f), want) << fmax << " " << margin;
      }
}

TEST(Fp8, ScaleEdgeCases) {
  // amax 0: nothing to scale, 1.
  EXPECT_EQ(amp::fp8_scale(0.0f, 448.0f, 0, 5.0f), 1.0f);
  // A tiny amax whose quotient overflows: the largest float, not Inf.
  EXPECT_EQ(amp::fp8_scale(bits_float(1), 448.0f, 0, 5.0f), FLT_MAX);
  EXPECT_EQ(amp::fp8_scale(1e-38f, 448.0f, 0, 5.0f), FLT_MAX);
  // Inf or NaN: the previous scale.
  EXPECT_EQ(amp::fp8_scale(INFINITY, 448.0f, 0, 5.0f), 5.0f);
  EXPECT_EQ(amp::fp8_scale(std::nanf(""), 448.0f, 0, 5.0f), 5.0f);

  // Through a meta: a non-finite step keeps the scale, is counted, and stays out of the history.
  amp::Fp8Options o;
  o.amax_history = 4;
  amp::Fp8TensorMeta m(4);
  m.observe(2.0f);
  m.observe(4.0f);  // the step's amax is the max over its uses
  EXPECT_TRUE(m.end_step(o, DType::e4m3));
  EXPECT_EQ(m.scale, 448.0f / 4.0f);
  m.observe(1.0f);
  m.observe(std::nanf(""));
  m.observe(3.0f);  // NaN wins over later numbers
  EXPECT_FALSE(m.end_step(o, DType::e4m3));
  EXPECT_EQ(m.scale, 448.0f / 4.0f);
  EXPECT_EQ(m.nonfinite, 1);
  EXPECT_EQ(m.history.values(), std::vector<float>{4.0f});
  m.observe(1.0f);
  EXPECT_TRUE(m.end_step(o, DType::e4m3));
  EXPECT_EQ(m.scale, 448.0f / 4.0f);  // the window's max is still 4
  o.reduce = AmaxReduce::most_recent;
  m.observe(2.0f);
  EXPECT_TRUE(m.end_step(o, DType::e5m2));
  EXPECT_EQ(m.scale, 57344.0f / 2.0f);
}

// ---- E8M0 ------------------------------------------------------------------------------------

TEST(Fp8, E8M0EncodeAndDecodeMatchTheReference) {
  for (int code = 0; code < 255; ++code) {
    const float s = detail::e8m0_decode(static_cast<uint8_t>(code));
    ASSERT_EQ(static_cast<double>(s), std::ldexp(1.0, code - 127)) << code;
    ASSERT_EQ(static_cast<double>(detail::e8m0_inverse(static_cast<uint8_t>(code))),
              std::ldexp(1.0, 127 - code))
        << code;
  }
  EXPECT_TRUE(std::isnan(detail::e8m0_decode(255)));
  std::mt19937 rng(3);
  for (float fmax : {448.0f, 57344.0f}) {
    for (int i = 0; i < 200000; ++i) {
      // Every exponent fp32 has, subnormals included, and the boundaries fmax · 2^e exactly.
      const uint32_t bits = rng() & 0x7f7fffffu;
      float amax = bits_float(bits);
      if (i % 4 == 0) amax = std::ldexp(fmax, static_cast<int>(rng() % 200) - 100);
      if (amax == 0.0f) continue;
      const int want = std::clamp(ref_e8m0_exponent(amax, fmax), -127, 127);
      ASSERT_EQ(static_cast<int>(detail::e8m0_ceil_code(amax, fmax)) - 127, want) << amax;
      // Rounding the scale up means the block never saturates.
      if (want > -127 && want < 127)
        ASSERT_LE(static_cast<double>(amax) / std::ldexp(1.0, want), fmax);
    }
    EXPECT_EQ(detail::e8m0_ceil_code(0.0f, fmax), 0);
    EXPECT_EQ(detail::e8m0_ceil_code(INFINITY, fmax), 255);
    EXPECT_EQ(detail::e8m0_ceil_code(std::nanf(""), fmax), 255);
  }
  // The OCP rule, floor(log2 amax) - emax, would give 2^0 for a block whose amax is 500 in
  // E4M3 (500 > 448 saturates); rounding up gives 2^1.
  EXPECT_EQ(detail::e8m0_ceil_code(500.0f, 448.0f), 128);
  EXPECT_EQ(detail::e8m0_ceil_code(448.0f, 448.0f), 127);
}

// ---- rounding onto the grid --------------------------------------------------------------------

TEST(Fp8, RoundingMatchesTheCastsOnEveryPatternStride) {
  for (bool e5m2 : {false, true})
    for (bool sat : {false, true})
      for (uint64_t u = 0; u < (1ull << 32); u += 61) {
        const float v = bits_float(static_cast<uint32_t>(u));
        const float want = ref_round(v, e5m2, sat), got = fast_round(v, e5m2, sat);
        ASSERT_TRUE(same_bits(want, got)) << std::hexfloat << v << " e5m2 " << e5m2 << " sat "
                                          << sat << ": " << got << " vs " << want;
      }
}

TEST(Fp8, RoundingMatchesTheCastsAtEveryTieAndItsNeighbours) {
  for (bool e5m2 : {false, true}) {
    std::vector<float> grid;
    for (int c = 0; c < 128; ++c) {
      const float v = e5m2 ? static_cast<float>(fp8_e5m2::from_bits(static_cast<uint8_t>(c)))
                           : static_cast<float>(fp8_e4m3::from_bits(static_cast<uint8_t>(c)));
      if (std::isfinite(v)) grid.push_back(v);
    }
    std::sort(grid.begin(), grid.end());
    grid.push_back(e5m2 ? 65536.0f : 512.0f);  // the step past the max
    for (size_t i = 0; i + 1 < grid.size(); ++i) {
      const float mid = (grid[i] + grid[i + 1]) / 2;  // exact: a few bits
      for (float v : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY), grid[i]})
        for (float sv : {v, -v})
          for (bool sat : {false, true})
            ASSERT_TRUE(same_bits(ref_round(sv, e5m2, sat), fast_round(sv, e5m2, sat)))
                << std::hexfloat << sv << " e5m2 " << e5m2 << " sat " << sat;
    }
  }
}

TEST(Fp8, SaturatingAgainstNonSaturatingCasts) {
  // E4M3 has no Inf: an overflow is NaN unless saturated to 448; 464 ties down to 448.
  EXPECT_EQ(detail::fp8_round<false>(500.0f, true), 448.0f);
  EXPECT_TRUE(std::isnan(detail::fp8_round<false>(500.0f, false)));
  EXPECT_EQ(detail::fp8_round<false>(464.0f, false), 448.0f);
  EXPECT_TRUE(std::isnan(detail::fp8_round<false>(464.5f, false)));
  EXPECT_EQ(detail::fp8_round<false>(-INFINITY, true), -448.0f);
  EXPECT_TRUE(std::isnan(detail::fp8_round<false>(INFINITY, false)));
  // E5M2 overflows to Inf; 61440 ties up to it.
  EXPECT_EQ(detail::fp8_round<true>(70000.0f, true), 57344.0f);
  EXPECT_EQ(detail::fp8_round<true>(61440.0f, false), INFINITY);
  EXPECT_EQ(detail::fp8_round<true>(61439.0f, false), 57344.0f);
  EXPECT_EQ(detail::fp8_round<true>(-70000.0f, false), -INFINITY);
  // NaN stays NaN either way.
  EXPECT_TRUE(std::isnan(detail::fp8_round<true>(std::nanf(""), true)));
  EXPECT_TRUE(std::isnan(detail::fp8_round<false>(std::nanf(""), true)));
}

// ---- the CPU kernels -------------------------------------------------------------------------

TEST(Fp8, QuantizeKernelMatchesTheScalarRoundingAndAmaxSeesNaN) {
  Backend& be = backend_for(Device::cpu);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> v(10007);
  for (float& x : v) x = nd(rng);
  v[17] = 0.0f;
  v[99] = 1e-30f;  // far below the grid: flushes
  for (DType src : {DType::f32, DType::bf16}) {
    const Tensor x = Tensor::from_vector(v, {static_cast<int64_t>(v.size())}).to(src);
    const std::vector<float> xv = x.to(DType::f32).to_vector();
    float want_amax = 0;
    for (float a : xv) want_amax = std::max(want_amax, std::fabs(a));
    ASSERT_EQ(be.amax(x), want_amax);
    for (DType fmt : {DType::e4m3, DType::e5m2})
      for (DType qdt : {DType::bf16, fmt}) {
        const float scale = amp::fp8_max(fmt) / want_amax * 3.0f;  // some values saturate
        Tensor q = Tensor::empty(x.shape(), qdt);
        be.fp8_quantize(x, scale, fmt, q);
        const std::vector<float> qv = q.to(DType::f32).to_vector();
        for (size_t i = 0; i < xv.size(); ++i)
          ASSERT_TRUE(same_bits(qv[i], fast_round(xv[i] * scale, fmt == DType::e5m2, true)))
              << i << " " << dtype_name(qdt);
      }
  }
  v[5000] = std::nanf("");
  EXPECT_TRUE(std::isnan(be.amax(Tensor::from_vector(v, {static_cast<int64_t>(v.size())}))));
  v[5000] = INFINITY;
  EXPECT_EQ(be.amax(Tensor::from_vector(v, {static_cast<int64_t>(v.size())})), INFINITY);
}

TEST(Fp8, MxQuantizeMatchesTheScalarReferenceAndNeverSaturates) {
  Backend& be = backend_for(Device::cpu);
  std::mt19937 rng(6);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t R = 7, K = 100;  // 100 = 3 blocks of 32 and one of 4
  std::vector<float> v(R * K);
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = nd(rng) * std::ldexp(1.0f, static_cast<int>(i % 40) - 20);
  const Tensor x = Tensor::from_vector(v, {R, K}).to(DType::bf16);
  const std::vector<float> xv = x.to(DType::f32).to_vector();
  for (DType fmt : {DType::e4m3, DType::e5m2}) {
    Tensor q = Tensor::empty({R, K}, DType::bf16), sc = Tensor::empty({R, 4}, DType::u8);
    float want_amax = 0;
    for (float a : xv) want_amax = std::max(want_amax, std::fabs(a));
    EXPECT_EQ(be.mx_quantize(x, fmt, q, sc), want_amax);
    const std::vector<float> qv = q.to(DType::f32).to_vector();
    const uint8_t* codes = sc.data<uint8_t>();
    const float fmax = amp::fp8_max(fmt);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t b = 0; b < 4; ++b) {
        float amax = 0;
        for (int64_t k = b * 32; k < std::min(K, b * 32 + 32); ++k)
          amax = std::max(amax, std::fabs(xv[r * K + k]));
        const int e = ref_e8m0_exponent(amax, fmax);
        ASSERT_EQ(codes[r * 4 + b], e + 127) << r << " " << b;
        for (int64_t k = b * 32; k < std::min(K, b * 32 + 32); ++k) {
          const float scaled = static_cast<float>(xv[r * K + k] / std::ldexp(1.0, e));
          ASSERT_LE(std::fabs(scaled), fmax);  // rounded up: nothing saturates
          const float want = static_cast<float>(fast_round(scaled, fmt == DType::e5m2, false) *
                                                std::ldexp(1.0, e));
          ASSERT_EQ(qv[r * K + k], want) << r << " " << k;
        }
      }
  }
}

// ---- the emulated GEMM -------------------------------------------------------------------------

namespace {

// Integers in [-m, m] with ±m present: under current scaling their fp8 values are multiples of
// a power of two no smaller than 1/1024 of the largest, so the products' sums are exact in fp32
// in any order and the emulated GEMM must agree with the scalar one bit for bit.
std::vector<float> small_ints(int64_t n, int m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(static_cast<int>(rng() % (2 * m + 1)) - m);
  v[0] = static_cast<float>(m);
  return v;
}

float bf16_round(float f) { return static_cast<float>(bf16(f)); }

struct RefQuant {
  std::vector<float> q;  // fp8 values (exact)
  float inv = 1;         // 1 / scale
};

RefQuant ref_quant(const std::vector<float>& v, DType fmt) {
  float amax = 0;
  for (float x : v) amax = std::max(amax, std::fabs(x));
  const float s = amp::fp8_scale(amax, amp::fp8_max(fmt), 0, 1.0f);
  RefQuant r;
  r.inv = 1.0f / s;
  for (float x : v) r.q.push_back(fast_round(x * s, fmt == DType::e5m2, true));
  return r;
}

}  // namespace

TEST(Fp8, EmulatedLinearMatchesTheScalarFp8ReferenceBitForBit) {
  const int64_t N = 48, IN = 64, OUT = 40;
  const std::vector<float> xv = small_ints(N * IN, 5, 1), wv = small_ints(OUT * IN, 3, 2),
                           gv = small_ints(N * OUT, 2, 3);
  amp::Fp8Options o;
  o.recipe = amp::Fp8Recipe::current;
  amp::PolicyScope scope(amp::Policy::fp8(o));
  Variable x(Tensor::from_vector(xv, {N, IN}).to(DType::bf16), true);
  Variable w(Tensor::from_vector(wv, {OUT, IN}).to(DType::bf16), true);
  Variable y = linear(x, w, Variable());
  ASSERT_EQ(y.dtype(), DType::bf16);
  y.backward(Tensor::from_vector(gv, {N, OUT}).to(DType::bf16));

  const RefQuant qx = ref_quant(xv, DType::e4m3), qw = ref_quant(wv, DType::e4m3),
                 qg = ref_quant(gv, DType::e5m2);
  const std::vector<float> yv = y.data().to(DType::f32).to_vector();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < OUT; ++j) {
      double acc = 0;  // exact, and so the fp32 sum in any order
      for (int64_t k = 0; k < IN; ++k) acc += double(qx.q[i * IN + k]) * qw.q[j * IN + k];
      const float want = bf16_round(static_cast<float>(acc) * (qx.inv * qw.inv));
      ASSERT_EQ(yv[i * OUT + j], want) << i << " " << j;
    }
  // dX = dY · W, dW = dYᵀ · X from the quantized values, fp32 for the leaves.
  const std::vector<float> dx = x.grad().to(DType::f32).to_vector(),
                           dw = w.grad().to(DType::f32).to_vector();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < IN; ++k) {
      double acc = 0;
      for (int64_t j = 0; j < OUT; ++j) acc += double(qg.q[i * OUT + j]) * qw.q[j * IN + k];
      ASSERT_EQ(dx[i * IN + k], static_cast<float>(acc) * (qg.inv * qw.inv)) << i << " " << k;
    }
  for (int64_t j = 0; j < OUT; ++j)
    for (int64_t k = 0; k < IN; ++k) {
      double acc = 0;
      for (int64_t i = 0; i < N; ++i) acc += double(qg.q[i * OUT + j]) * qx.q[i * IN + k];
      ASSERT_EQ(dw[j * IN + k], static_cast<float>(acc) * (qg.inv * qx.inv)) << j << " " << k;
    }
}

TEST(Fp8, EmulatedMxfp8LinearMatchesTheScalarReferenceBitForBit) {
  const int64_t N = 32, IN = 64, OUT = 32;
  const std::vector<float> xv = small_ints(N * IN, 5, 4), wv = small_ints(OUT * IN, 3, 5);
  amp::Fp8Options o;
  o.recipe = amp::Fp8Recipe::mxfp8;
  amp::PolicyScope scope(amp::Policy::fp8(o));
  Variable x(Tensor::from_vector(xv, {N, IN}).to(DType::bf16), false);
  Variable w(Tensor::from_vector(wv, {OUT, IN}).to(DType::bf16), false);
  const std::vector<float> yv = linear(x, w, Variable()).data().to(DType::f32).to_vector();
  // Each row's blocks of 32 along IN, scaled by their own power of two.
  auto mx_rows = [](const std::vector<float>& v, int64_t rows, int64_t k) {
    std::vector<float> q(v.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < k; b += 32) {
        float amax = 0;
        for (int64_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(v[r * k + i]));
        const int e = ref_e8m0_exponent(amax, 448.0f);
        for (int64_t i = b; i < b + 32; ++i)
          q[r * k + i] = static_cast<float>(
              fast_round(static_cast<float>(v[r * k + i] / std::ldexp(1.0, e)), false, true) *
              std::ldexp(1.0, e));
      }
    return q;
  };
  const std::vector<float> qx = mx_rows(xv, N, IN), qw = mx_rows(wv, OUT, IN);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < OUT; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < IN; ++k) acc += double(qx[i * IN + k]) * qw[j * IN + k];
      ASSERT_EQ(yv[i * OUT + j], bf16_round(static_cast<float>(acc))) << i << " " << j;
    }
}

TEST(Fp8, EmulatedLinearOnRandomDataIsWithinSummationOrderOfTheReference) {
  // General data: the products are still exact; only the fp32 summation order may differ, by
  // at most K ulps of the sum of |products| (then one bf16 rounding of the result).
  const int64_t N = 33, IN = 257, OUT = 19;
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> xv(N * IN), wv(OUT * IN);
  for (float& v : xv) v = nd(rng);
  for (float& v : wv) v = 0.02f * nd(rng);
  for (auto recipe : {amp::Fp8Recipe::current, amp::Fp8Recipe::delayed}) {
    amp::Fp8Options o;
    o.recipe = recipe;
    amp::PolicyScope scope(amp::Policy::fp8(o));
    const Tensor xb = Tensor::from_vector(xv, {N, IN}).to(DType::bf16),
                 wb = Tensor::from_vector(wv, {OUT, IN}).to(DType::bf16);
    const std::vector<float> yv =
        linear(Variable(xb), Variable(wb), Variable()).data().to(DType::f32).to_vector();
    const RefQuant qx = ref_quant(xb.to(DType::f32).to_vector(), DType::e4m3),
                   qw = ref_quant(wb.to(DType::f32).to_vector(), DType::e4m3);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < OUT; ++j) {
        double acc = 0, mag = 0;
        for (int64_t k = 0; k < IN; ++k) {
          acc += double(qx.q[i * IN + k]) * qw.q[j * IN + k];
          mag += std::fabs(double(qx.q[i * IN + k]) * qw.q[j * IN + k]);
        }
        const double want = acc * qx.inv * qw.inv;
        const double tol = (IN * 0x1p-24 * mag + 0x1p-24 * std::fabs(acc)) * qx.inv * qw.inv +
                           std::fabs(want) * 0x1p-8;
        ASSERT_NEAR(yv[i * OUT + j], want, tol) << i << " " << j;
      }
  }
}

// ---- delayed scaling through a module ------------------------------------------------------

TEST(Fp8, DelayedScalingStartsFromTheFirstAmaxThenFollowsTheHistory) {
  Rng rng(1);
  nn::Linear lin(16, 8, true, rng);
  lin.set_compute_dtype(DType::bf16);
  amp::Fp8Options o;
  o.amax_history = 3;
  amp::PolicyScope scope(amp::Policy::fp8(o));
  std::vector<float> xv(4 * 16);
  for (size_t i = 0; i < xv.size(); ++i) xv[i] = static_cast<float>(i % 7) - 3.0f;
  const amp::Fp8States states = nn::fp8_states(lin, o.amax_history);
  ASSERT_EQ(states.size(), 1u);
  amp::Fp8LinearState& st = *states[0].second;
  for (int step = 1; step <= 5; ++step) {
    const float mult = step == 4 ? 8.0f : 1.0f;  // one step with larger inputs
    std::vector<float> v = xv;
    for (float& a : v) a *= mult;
    Variable y = lin.forward(Variable(Tensor::from_vector(v, {4, 16}).to(DType::bf16)));
    y.backward(Tensor::full(y.shape(), 1.0f, DType::bf16));
    EXPECT_TRUE(st.input.seen);
    EXPECT_EQ(st.input.step_amax, 3.0f * mult);
    const amp::Fp8StepReport rep = amp::fp8_end_step(states, o);
    EXPECT_EQ(rep.tensors, 3);
    EXPECT_EQ(rep.nonfinite, 0);
    // The window's max amax of the last 3 steps sets the next scale.
    const float window_max = step >= 4 && step <= 6 ? 24.0f : 3.0f;
    EXPECT_EQ(st.input.scale, 448.0f / window_max) << step;
    EXPECT_EQ(st.grad.scale, 57344.0f / 1.0f) << step;
  }
  // The state as checkpoint tensors, and back.
  const auto tensors = amp::fp8_state_tensors(states);
  ASSERT_EQ(tensors.size(), 3u);
  EXPECT_EQ(tensors[0].first, "fp8.input");
  Rng rng2(1);
  nn::Linear other(16, 8, true, rng2);
  const amp::Fp8States restored = nn::fp8_states(other, o.amax_history);
  amp::load_fp8_state(restored, tensors);
  EXPECT_EQ(restored[0].second->input.scale, st.input.scale);
  EXPECT_EQ(restored[0].second->input.history.values(), st.input.history.values());
  EXPECT_EQ(restored[0].second->grad.history.values(), st.grad.history.values());
  EXPECT_THROW(amp::load_fp8_state(restored, {}), IOError);
}

TEST(Fp8, ModulesKeptOutOfFp8AndEvalDoNotRecord) {
  Rng rng(2);
  nn::Sequential net;
  net.add<nn::Linear>(8, 8, true, rng);
  net.add<nn::ReLU>();
  auto& head = net.add<nn::Linear>(8, 4, true, rng);
  net.set_compute_dtype(DType::bf16);
  head.set_fp8(false);
  const amp::Fp8States states = nn::fp8_states(net, 16);
  ASSERT_EQ(states.size(), 1u);  // the head has none
  EXPECT_EQ(states[0].first, "0");
  amp::PolicyScope scope(amp::Policy::fp8());
  const Tensor x = Tensor::full({2, 8}, 0.5f, DType::bf16);
  net.eval();
  net.forward(Variable(x));
  EXPECT_FALSE(states[0].second->input.seen);  // evaluation leaves the scaling state alone
  net.train();
  net.forward(Variable(x));
  EXPECT_TRUE(states[0].second->input.seen);
  EXPECT_EQ(head.fp8_state(), nullptr);
}
