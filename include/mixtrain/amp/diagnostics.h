// Precision diagnostics for gradients: per tensor, a histogram of magnitudes in log2 bins,
// the fractions that fp16 would flush to zero, make subnormal, or overflow at a given loss
// scale, the first tensor holding Inf/NaN, and a recommended precision and initial scale.
// One parallel pass over the gradients.
//
//   auto rep = amp::diagnose_gradients(params, scaler.scale());
//   fmt::print("{}", rep.str());   // table + "recommend: fp16 with initial loss scale 2^12"
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mixtrain/dtype.h"
#include "mixtrain/nn/parameter.h"
#include "mixtrain/tensor.h"

namespace mixtrain::amp {

/// Magnitude histogram of one gradient tensor (of its unscaled values |g| / carried_scale).
struct GradHistogram {
  static constexpr int kMinExp = -40;  ///< bins[k] counts 2^(kMinExp+k) <= |g| < 2^(kMinExp+k+1)
  static constexpr int kMaxExp = 20;
  static constexpr int kBins = kMaxExp - kMinExp;  // 60
  std::string name;
  int64_t numel = 0;
  int64_t zero = 0, inf = 0, nan = 0;
  int64_t below = 0;  ///< nonzero, < 2^kMinExp
  int64_t above = 0;  ///< finite, >= 2^kMaxExp
  std::array<int64_t, kBins> bins{};
  double max_abs = 0;  ///< unscaled
  // At the evaluated fp16 scale (|g| / carried * fp16_scale):
  int64_t fp16_zero = 0;       ///< nonzero values below 2^-24 (fp16's smallest subnormal)
  int64_t fp16_subnormal = 0;  ///< nonzero values below 2^-14 = 6.1e-5 (includes fp16_zero)
  int64_t fp16_overflow = 0;   ///< values above 65504 (and Inf)
  /// How many gradients of the tensor the counts cover (steps merged by merge_step): numel
  /// and every count are summed over them, so the fractions are over all of them.
  int64_t steps = 1;
  double frac(int64_t count) const { return numel ? static_cast<double>(count) / numel : 0.0; }
  /// The tensor's element count (numel over the steps merged).
  int64_t size() const { return steps ? numel / steps : numel; }
  /// Adds another tensor's counts (the same step: `total` is every tensor merged).
  void merge(const GradHistogram& o);
  /// Adds the same tensor's counts at another step.
  void merge_step(const GradHistogram& o);
  /// The lowest and highest binade holding a nonzero finite value: the span is 2^lo..2^hi
  /// with every such |g| in [2^lo, 2^hi) (kMinExp / kMaxExp stand for below / above the
  /// bins). False when there is none.
  bool span(int& lo, int& hi) const;
};

struct GradientReport {
  std::vector<GradHistogram> tensors;  ///< in the order given
  GradHistogram total;                 ///< all tensors together (name "total")
  float carried_scale = 1.0f;          ///< the loss scale the gradients carry
  float fp16_scale = 1.0f;             ///< the scale the fp16 fractions are evaluated at
  std::string first_nonfinite;         ///< first tensor (in order) holding Inf or NaN
  bool first_nonfinite_nan = false;    ///< whether its first bad value is NaN
  DType recommended = DType::bf16;     ///< bf16 or f16
  float recommended_scale = 1.0f;      ///< initial loss scale for fp16 (a power of two)
  std::string why;                     ///< one sentence
  /// A table (one row per tensor: range, fp16 fractions) and the recommendation.
  std::string str() const;
  /// Sets recommended, recommended_scale and why from `total` (diagnose_gradients calls it;
  /// call it again after merging steps, so the advice speaks of the same gradients).
  void recommend();
};

/// Gradients as (name, tensor) (f32/bf16/f16, any layout). `carried_scale`: the loss scale
/// they were produced with; `fp16_scale`: where to evaluate fp16's range (<= 0: the same).
GradientReport diagnose_gradients(const std::vector<std::pair<std::string, Tensor>>& grads,
                                  float carried_scale = 1.0f, float fp16_scale = 0.0f);
/// The parameters' gradients (undefined ones skipped).
GradientReport diagnose_gradients(const std::vector<nn::Parameter*>& params,
                                  float carried_scale = 1.0f, float fp16_scale = 0.0f);

}  // namespace mixtrain::amp
