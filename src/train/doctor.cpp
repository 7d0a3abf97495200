// The doctor: fp32 steps, merged gradient histograms, a recommendation.
#include "mixtrain/train/doctor.h"

#include <fmt/format.h>
#include <cmath>
#include <nlohmann/json.hpp>

#include <map>

#include "mixtrain/amp/fp8.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/cpu.h"
#include "mixtrain/detail/fp8_math.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/train/trainer.h"
#include "train/task.h"

namespace mixtrain::train {

namespace {

// Counts what one recipe's quantization at `scale` does to v's nonzero values: saturated where
// rounding would leave the format (the cast clamps it to the max), flushed where it gives 0.
void expose(const std::vector<float>& v, size_t begin, size_t end, float scale, DType fmt,
            int64_t& saturated, int64_t& flushed) {
  for (size_t i = begin; i < end; ++i) {
    if (v[i] == 0.0f || !std::isfinite(v[i])) continue;
    const float s = v[i] * scale;
    const float r =
        fmt == DType::e5m2 ? detail::fp8_round<true>(s, false) : detail::fp8_round<false>(s, false);
    if (!std::isfinite(r))
      ++saturated;
    else if (r == 0.0f)
      ++flushed;
  }
}

// The doctor's fp8 side: what each recipe would do to every linear GEMM input of the fp32 steps.
// Delayed scaling uses the largest amax of the earlier steps (the first step: its own, as the
// trainer's delayed recipe does); MXFP8's blocks run along each tensor's rows.
struct Fp8Doctor {
  std::map<std::pair<const amp::Fp8LinearState*, int>, size_t> index;
  std::vector<float> history_amax, step_amax;
  std::vector<Fp8Exposure> rows;

  std::vector<std::string> bf16_modules;  // the run's --bf16-modules, resolved

  void see(const std::string& name, const amp::Fp8LinearState* st, amp::Fp8Role role,
           const Tensor& t) {
    const auto key = std::make_pair(st, static_cast<int>(role));
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, rows.size()).first;
      Fp8Exposure e;
      e.tensor = name.empty() ? amp::fp8_role_name(role) : name + "." + amp::fp8_role_name(role);
      e.format = amp::fp8_format(role);
      for (const std::string& m : bf16_modules) e.bf16 |= name == m || name.rfind(m + ".", 0) == 0;
      rows.push_back(e);
      history_amax.push_back(0.0f);
      step_amax.push_back(0.0f);
    }
    const size_t r = it->second;
    Fp8Exposure& e = rows[r];
    const std::vector<float> v = t.to(DType::f32).to_vector();
    float amax = 0;
    for (float x : v) {
      if (std::isfinite(x)) amax = std::max(amax, std::fabs(x));
      e.nonzero += x != 0.0f;
    }
    e.values += static_cast<int64_t>(v.size());
    e.amax = std::max(e.amax, amax);
    step_amax[r] = std::max(step_amax[r], amax);
    const float fmax = amp::fp8_max(e.format);
    const float current = amp::fp8_scale(amax, fmax, 0, 1.0f);
    const float delayed =
        history_amax[r] > 0 ? amp::fp8_scale(history_amax[r], fmax, 0, 1.0f) : current;
    expose(v, 0, v.size(), delayed, e.format, e.saturated[0], e.flushed[0]);
    expose(v, 0, v.size(), current, e.format, e.saturated[1], e.flushed[1]);
    const size_t k = static_cast<size_t>(t.size(-1));
    for (size_t row = 0; k && row < v.size(); row += k)
      for (size_t b = row; b < row + k; b += 32) {
        const size_t end = std::min(b + 32, row + k);
        float bmax = 0;
        for (size_t i = b; i < end; ++i) bmax = std::max(bmax, std::fabs(v[i]));
        expose(v, b, end, detail::e8m0_inverse(detail::e8m0_ceil_code(bmax, fmax)), e.format,
               e.saturated[2], e.flushed[2]);
      }
  }
  void end_step() {
    for (size_t r = 0; r < rows.size(); ++r) {
      history_amax[r] = std::max(history_amax[r], step_amax[r]);
      step_amax[r] = 0.0f;
    }
  }
  void recommend(DoctorResult& res) {
    int64_t bad[3] = {}, sat[3] = {}, nz = 0;
    for (const Fp8Exposure& e : rows) {
      if (e.bf16) continue;
      nz += e.nonzero;
      for (int k = 0; k < 3; ++k) {
        bad[k] += e.saturated[k] + e.flushed[k];
        sat[k] += e.saturated[k];
      }
    }
    int best = 0;
    for (int k = 1; k < 3; ++k)
      if (bad[k] < bad[best]) best = k;
    res.fp8 = rows;
    res.fp8_recommended = amp::fp8_recipe_name(static_cast<amp::Fp8Recipe>(best));
    auto pct = [&](int64_t n) { return nz ? 100.0 * static_cast<double>(n) / nz : 0.0; };
    res.fp8_why = fmt::format(
        "of the fp8 linears' nonzero GEMM inputs, delayed scaling would saturate or flush {:.3g}% "
        "({:.3g}% saturated), current {:.3g}% ({:.3g}%), mxfp8 {:.3g}% ({:.3g}%)",
        pct(bad[0]), pct(sat[0]), pct(bad[1]), pct(sat[1]), pct(bad[2]), pct(sat[2]));
  }
};

DoctorResult doctor(const TrainConfig& cfg, int64_t steps, std::unique_ptr<Task> task) {
  const amp::Policy fp32 = amp::Policy::fp32();
  // Every linear gets a scaling state, which names it to the fp8 probe.
  std::map<const amp::Fp8LinearState*, std::string> linear_names;
  for (const auto& [name, st] : nn::fp8_states(task->module(), 1)) linear_names[st] = name;
  Fp8Doctor fp8;
  fp8.bf16_modules = task->bf16_under_fp8(cfg.bf16_modules);
  amp::Fp8ProbeScope probe([&](const amp::Fp8LinearState* st, amp::Fp8Role role, const Tensor& t) {
    auto it = linear_names.find(st);
    if (it != linear_names.end()) fp8.see(it->second, st, role, t);
  });
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
    fp8.end_step();
  }
  fp8.recommend(res);
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
  if (!fp8.empty()) {
    s += fmt::format(
        "\nfp8 (--precision fp8): the linears' GEMM inputs, % of nonzero values saturated / "
        "flushed to zero (bf16: a module --bf16-modules keeps out of fp8)\n{:<28} {:>6} {:>10} "
        "{:>17} {:>17} {:>17}\n",
        "tensor", "format", "max|x|", "delayed", "current", "mxfp8");
    for (const Fp8Exposure& e : fp8) {
      s += fmt::format("{:<28} {:>6} {:>10.3g}", e.tensor, dtype_name(e.format), e.amax);
      for (int k = 0; k < 3; ++k)
        s += fmt::format(" {:>7.3f} / {:>7.3f}", 100 * e.frac(e.saturated[k]),
                         100 * e.frac(e.flushed[k]));
      s += e.bf16 ? "  bf16\n" : "\n";
    }
    s += fmt::format("fp8 recipe: {} ({})\n", fp8_recommended, fp8_why);
  }
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
  json f = json::array();
  for (const Fp8Exposure& e : fp8) {
    json r = {{"tensor", e.tensor}, {"format", dtype_name(e.format)},
              {"values", e.values}, {"nonzero", e.nonzero},
              {"max_abs", e.amax},  {"bf16", e.bf16}};
    for (int k = 0; k < 3; ++k)
      r[amp::fp8_recipe_name(static_cast<amp::Fp8Recipe>(k))] = {
          {"saturated", e.frac(e.saturated[k])}, {"flushed", e.frac(e.flushed[k])}};
    f.push_back(r);
  }
  j["fp8"] = {{"recommended", fp8_recommended}, {"why", fp8_why}, {"tensors", f}};
  return j.dump(2);
}

}  // namespace mixtrain::train
