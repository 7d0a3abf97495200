// Gradient precision diagnostics: histogram bins, fp16 underflow/overflow fractions at a
// scale, the first non-finite tensor, and the precision/scale recommendation.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "mixtrain/amp/diagnostics.h"
#include "mixtrain/error.h"
#include "mixtrain/random.h"

using namespace mixtrain;
using amp::GradHistogram;

TEST(Diagnostics, HistogramBinsAndSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  // Unscaled values: 0, 1 (bin 2^0), -0.75 (2^-1), 2^-30, 3e-13 (< 2^-40: below), 2^21
  // (above), and Inf / NaN; the tensor carries scale 4, so stored values are 4x.
  std::vector<float> v = {0, 1, -0.75f, std::ldexp(1.0f, -30), 3e-13f, std::ldexp(1.0f, 21)};
  for (auto& x : v) x *= 4;
  const Tensor a = Tensor::from_vector(v, {6});
  const Tensor b = Tensor::from_vector({1, inf, std::nanf("")}, {3});
  const auto rep = amp::diagnose_gradients({{"a", a}, {"b", b}}, 4.0f);
  const GradHistogram& h = rep.tensors[0];
  EXPECT_EQ(h.numel, 6);
  EXPECT_EQ(h.zero, 1);
  EXPECT_EQ(h.bins[0 - GradHistogram::kMinExp], 1);
  EXPECT_EQ(h.bins[-1 - GradHistogram::kMinExp], 1);
  EXPECT_EQ(h.bins[-30 - GradHistogram::kMinExp], 1);
  EXPECT_EQ(h.below, 1);
  EXPECT_EQ(h.above, 1);
  EXPECT_DOUBLE_EQ(h.max_abs, std::ldexp(1.0, 21));
  // fp16 at the carried scale 4: 4*2^-30 and 4*3e-13 flush to zero, 4*2^21 overflows.
  EXPECT_EQ(h.fp16_zero, 2);
  EXPECT_EQ(h.fp16_subnormal, 2);
  EXPECT_EQ(h.fp16_overflow, 1);
  EXPECT_EQ(rep.tensors[1].inf, 1);
  EXPECT_EQ(rep.tensors[1].nan, 1);
  EXPECT_EQ(rep.first_nonfinite, "b");
  EXPECT_FALSE(rep.first_nonfinite_nan);  // the Inf comes first
  EXPECT_EQ(rep.total.numel, 9);
  EXPECT_NE(rep.str().find("first non-finite gradient: 'b' (Inf)"), std::string::npos) << rep.str();
}

TEST(Diagnostics, Fp16FractionsAtAnotherScale) {
  // Gradients computed at scale 1 (bf16 run); asking about fp16 at 2^10.
  std::vector<float> v(1000);
  for (int i = 0; i < 1000; ++i) v[i] = i < 100 ? 1e-9f : (i < 300 ? 1e-6f : 0.01f);
  const auto rep = amp::diagnose_gradients({{"g", Tensor::from_vector(v, {1000})}}, 1.0f, 1024.0f);
  // 1e-9 * 1024 = 1e-6 < 6.1e-5 (subnormal) but > 6e-8 (not zero); 1e-6 * 1024 = 1e-3 normal.
  EXPECT_EQ(rep.tensors[0].fp16_zero, 0);
  EXPECT_EQ(rep.tensors[0].fp16_subnormal, 100);
  EXPECT_EQ(rep.tensors[0].fp16_overflow, 0);
}

TEST(Diagnostics, RecommendsFp16ScaleOrBf16) {
  Rng r(1);
  // Narrow range around 1e-4: fp16 fits with a scale that lifts the largest to ~2^14.
  std::vector<float> narrow(50000);
  for (auto& x : narrow) x = static_cast<float>(1e-4 * std::exp(2.0 * r.normal()));
  const auto a = amp::diagnose_gradients({{"n", Tensor::from_vector(narrow, {50000})}});
  EXPECT_EQ(a.recommended, DType::f16) << a.why;
  EXPECT_GE(a.recommended_scale, 1024.0f);
}
TEST(Diagnostics, RecommendsBf16ForWideRange) {
  // Values over 2^-38 .. 2^4: no single fp16 scale holds them (42 binades > fp16's 40 with
  // headroom), and a fifth sit below what the best scale can lift over 2^-24.
  Rng r(2);
  std::vector<float> wide(50000);
  for (auto& x : wide) x = std::ldexp(1.0f + r.uniform(), -38 + static_cast<int>(r.below(42)));
  const auto rep = amp::diagnose_gradients({{"w", Tensor::from_vector(wide, {50000})}});
  EXPECT_EQ(rep.recommended, DType::bf16) << rep.why;
  EXPECT_NE(rep.str().find("recommend: bf16"), std::string::npos);
}

TEST(Diagnostics, RecommendedScaleKeepsMaxUnderFp16Top) {
  std::vector<float> v = {std::ldexp(1.0f, -10), std::ldexp(1.5f, -3), std::ldexp(1.0f, -12)};
  const auto rep = amp::diagnose_gradients({{"g", Tensor::from_vector(v, {3}, DType::bf16)}});
  ASSERT_EQ(rep.recommended, DType::f16) << rep.why;
  // Largest is in [2^-3, 2^-2): scale 2^17 would put it at 2^14..2^15; capped at 2^24 anyway.
  EXPECT_EQ(rep.recommended_scale, std::ldexp(1.0f, 17));
  EXPECT_LT(1.5 * std::ldexp(1.0, -3) * rep.recommended_scale, 65504.0);
}

TEST(Diagnostics, ParallelPiecesAndParametersAndErrors) {
  // Larger than one piece: counts add up and "first" follows tensor order, not thread order.
  std::vector<float> v(100000, 0.5f);
  v[99999] = std::nanf("");
  nn::Parameter p0("p0", Tensor::zeros({10}, DType::f32));
  nn::Parameter p1("p1", Tensor::zeros({100000}, DType::f32));
  nn::Parameter p2("p2", Tensor::zeros({10}, DType::f32));
  p1.weight.grad() = Tensor::from_vector(v, {100000});
  v.assign(10, std::numeric_limits<float>::infinity());
  p2.weight.grad() = Tensor::from_vector(v, {10});
  const auto rep = amp::diagnose_gradients(std::vector<nn::Parameter*>{&p0, &p1, &p2});
  ASSERT_EQ(rep.tensors.size(), 2u);  // p0 has no gradient
  EXPECT_EQ(rep.tensors[0].bins[-1 - GradHistogram::kMinExp], 99999);
  EXPECT_EQ(rep.first_nonfinite, "p1");
  EXPECT_TRUE(rep.first_nonfinite_nan);
  EXPECT_THROW(amp::diagnose_gradients({{"i", Tensor::zeros({2}, DType::i32)}}), DTypeError);
  EXPECT_THROW(amp::diagnose_gradients({{"g", Tensor::zeros({2}, DType::f32)}}, 0.0f), ConfigError);
}
