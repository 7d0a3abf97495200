// The doctor: fp32 steps, merged gradient histograms, a recommendation.
#include "mixtrain/train/doctor.h"

#include <fmt/format.h>
#include <cmath>
#include <nlohmann/json.hpp>

#include "mixtrain/amp/policy.h"
#include "mixtrain/cpu.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/train/trainer.h"
#include "train/task.h"

namespace mixtrain::train {

namespace {

DoctorResult doctor(const TrainConfig& cfg, int64_t steps, std::unique_ptr<Task> task) {
  const amp::Policy fp32 = amp::Policy::fp32();
  task->track_output_max = true;
  auto params = task->module().parameters();
  auto opt = optim::make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay, cfg.momentum);
  const float scale = static_cast<float>(cfg.scale_init);
  DoctorResult res;
  for (int64_t s = 0; s < steps; ++s) {
    Variable loss;
    {
      amp::PolicyScope scope(fp32);
      loss = task->train_loss(cfg.batch);
    }
    loss.backward();
    amp::GradientReport r = amp::diagnose_gradients(params, 1.0f, scale);
    if (s == 0) {
      res.report = r;
    } else {
      for (size_t i = 0; i < r.tensors.size() && i < res.report.tensors.size(); ++i)
        res.report.tensors[i].merge_step(r.tensors[i]);
      res.report.total.merge_step(r.total);
      if (res.report.first_nonfinite.empty()) res.report.first_nonfinite = r.first_nonfinite;
    }
    opt->prepare_gradients(1.0f);
    opt->step();
    opt->zero_grad();
    res.activation_max_abs = std::max(res.activation_max_abs, task->last_output_max_abs());
  }
  // The advice from the merged histograms, so that its span and fractions speak of the same
  // gradients as the table (the first step's alone can disagree with the table's max|g|).
  res.report.recommend();
  res.steps = steps;
  return res;
}

void check_steps(int64_t steps) {
  if (steps <= 0) throw ConfigError(fmt::format("--doctor-steps: must be positive, got {}", steps));
}

}  // namespace

DoctorResult run_doctor(const TrainConfig& cfg, int64_t steps) {
  check_steps(steps);
  validate_config(cfg);
  return doctor(cfg, steps, make_task(cfg));
}

DoctorResult run_doctor(const TrainConfig& cfg, int64_t steps, const ModelFactory& model,
                        std::shared_ptr<DataSource> data) {
  check_steps(steps);
  return doctor(cfg, steps, make_task(cfg, model, std::move(data)));
}

std::string DoctorResult::str() const {
  std::string s = fmt::format("gradients of {} fp32 steps, fp16 evaluated at loss scale {:g}\n\n",
                              steps, report.fp16_scale);
  s += report.str();
  int lo = 0, hi = 0;
  if (report.total.span(lo, hi))
    s += fmt::format(
        "nonzero finite gradients of all {} steps: |g| in [2^{}, 2^{}), max|g| {:.3g}\n", steps, lo,
        hi, report.total.max_abs);
  s += fmt::format(
      "(numel: the tensor's parameters; max|g| and the percentages are over all {} steps' "
      "gradients)\n",
      steps);
  // The gradients decide whether fp16 can work and at what scale; the CPU decides which 16-bit
  // type is fast. bf16 needs no loss scale (fp32's exponent range).
  if (cpu_features().native_bf16())
    s += fmt::format(
        "this CPU computes bf16 natively: use --precision bf16 (no loss scaling needed){}\n",
        report.recommended == DType::f16
            ? fmt::format("; for fp16, start the loss scale at {:g}", report.recommended_scale)
            : "");
  else
    s +=
        fmt::format("this CPU has no native bf16: fp16 with --scale-init {:g} is the fast choice\n",
                    report.recommended_scale);
  if (activation_max_abs > 65504.0)
    s += fmt::format(
        "\nwarning: activations reach {:.3g}, above fp16's maximum 65504: fp16 compute would "
        "overflow in the forward pass whatever the loss scale; use bf16\n",
        activation_max_abs);
  else
    s += fmt::format("\nlargest output activation seen: {:.3g} (fp16 max 65504)\n",
                     activation_max_abs);
  return s;
}

std::string DoctorResult::to_json() const {
  using nlohmann::json;
  json tensors = json::array();
  auto hist = [](const amp::GradHistogram& h) {
    return json{{"name", h.name},
                {"numel", h.size()},
                {"values", h.numel},
                {"max_abs", h.max_abs},
                {"zero", h.frac(h.zero)},
                {"fp16_flush_to_zero", h.frac(h.fp16_zero)},
                {"fp16_subnormal", h.frac(h.fp16_subnormal)},
                {"fp16_overflow", h.frac(h.fp16_overflow)},
                {"nonfinite", h.frac(h.inf + h.nan)}};
  };
  for (const auto& t : report.tensors) tensors.push_back(hist(t));
  json bins = json::array();
  for (int k = 0; k < amp::GradHistogram::kBins; ++k) bins.push_back(report.total.bins[k]);
  // The nonzero finite gradients lie in [2^lo, 2^hi) (null when there are none).
  int lo = 0, hi = 0;
  const json span = report.total.span(lo, hi) ? json::array({lo, hi}) : json(nullptr);
  json j = {{"steps", steps},
            {"fp16_scale", report.fp16_scale},
            {"recommended", dtype_name(report.recommended)},
            {"recommended_scale", report.recommended_scale},
            {"why", report.why},
            {"first_nonfinite", report.first_nonfinite},
            {"activation_max_abs", activation_max_abs},
            {"total", hist(report.total)},
            {"span_log2", span},
            {"histogram",
             {{"min_exp", amp::GradHistogram::kMinExp},
              {"max_exp", amp::GradHistogram::kMaxExp},
              {"below", report.total.below},
              {"above", report.total.above},
              {"zero", report.total.zero},
              {"bins", bins}}},
            {"tensors", tensors}};
  return j.dump(2);
}

}  // namespace mixtrain::train
