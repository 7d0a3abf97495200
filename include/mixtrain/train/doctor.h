// `mixtrain doctor`: a few fp32 training steps, then the precision diagnostics of the gradients
// (per-layer fp16 underflow/overflow fractions at the initial loss scale) and a recommendation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mixtrain/amp/diagnostics.h"
#include "mixtrain/data/source.h"
#include "mixtrain/train/config.h"
#include "mixtrain/train/model.h"

namespace mixtrain::train {

/// One linear GEMM input under the fp8 recipes: of its nonzero values over every doctor step,
/// how many each recipe would saturate (clamp to the format's max) and flush to zero.
struct Fp8Exposure {
  std::string tensor;  ///< "blocks.0.fc.input"
  DType format = DType::e4m3;
  int64_t values = 0, nonzero = 0;
  float amax = 0;
  int64_t saturated[3] = {}, flushed[3] = {};  ///< by amp::Fp8Recipe: delayed, current, mxfp8
  bool bf16 = false;  ///< its module stays bf16 under --bf16-modules: not in the recommendation
  double frac(int64_t n) const { return nonzero ? static_cast<double>(n) / nonzero : 0.0; }
};

struct DoctorResult {
  amp::GradientReport report;  ///< gradients of every step merged, per tensor
  /// fp8: every linear's input, weight and output gradient (amp/fp8.h), and the recipe with the
  /// fewest values saturated or flushed over those a run would quantize (ties to the cheaper
  /// recipe).
  std::vector<Fp8Exposure> fp8;
  std::string fp8_recommended, fp8_why;
  int64_t steps = 0;
  double activation_max_abs = 0;  ///< largest |logit| seen in the fp32 forward passes
  /// The report as text: table, recommendation, and an activation-overflow warning if any.
  std::string str() const;
  /// The report as a JSON object (per tensor: numel (its parameters), values (numel x steps), the
  /// fractions of those values, max; the total histogram and span_log2 [lo, hi]).
  std::string to_json() const;
};

/// Runs `steps` steps of cfg's model (registered) and data in fp32 (the gradients as they
/// truly are) and evaluates them against fp16's range at cfg.scale_init.
DoctorResult run_doctor(const TrainConfig& cfg, int64_t steps);
/// The same for your model on your data.
DoctorResult run_doctor(const TrainConfig& cfg, int64_t steps, const ModelFactory& model,
                        std::shared_ptr<DataSource> data);

}  // namespace mixtrain::train
