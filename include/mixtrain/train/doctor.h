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

struct DoctorResult {
  amp::GradientReport report;  ///< gradients of every step merged, per tensor
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
