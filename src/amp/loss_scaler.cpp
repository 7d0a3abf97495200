// LossScaler: the scale's update rule (growth, backoff, floor, ceiling, hysteresis), the
// once-per-step unscale, skipped steps, and state serialisation.
#include "mixtrain/amp/loss_scaler.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

#include "mixtrain/error.h"

namespace mixtrain::amp {

void LossScalerOptions::validate() const {
  auto bad = [](const char* what, double v, const char* need) {
    throw ConfigError(fmt::format("loss scaler: {} = {} ({})", what, v, need));
  };
  if (!(init_scale > 0) || !std::isfinite(init_scale)) bad("init_scale", init_scale, "must be > 0");
  if (!(growth_factor > 1) || !std::isfinite(growth_factor))
    bad("growth_factor", growth_factor, "must be > 1");
  if (!(backoff_factor > 0 && backoff_factor < 1))
    bad("backoff_factor", backoff_factor, "must be in (0, 1)");
  if (growth_interval < 1)
    bad("growth_interval", static_cast<double>(growth_interval), "must be >= 1");
  if (!(min_scale > 0)) bad("min_scale", min_scale, "must be > 0");
  if (!(max_scale >= min_scale)) bad("max_scale", max_scale, "must be >= min_scale");
  if (hysteresis < 1) bad("hysteresis", static_cast<double>(hysteresis), "must be >= 1");
  if (max_overflows_at_floor < 1)
    bad("max_overflows_at_floor", static_cast<double>(max_overflows_at_floor), "must be >= 1");
}

LossScaler::LossScaler(LossScalerOptions opt) : opt_(opt) {
  opt_.validate();
  state_.scale = opt_.mode == LossScaling::none ? 1.0f : opt_.init_scale;
  if (opt_.mode == LossScaling::dynamic)
    state_.scale = std::fmin(std::fmax(state_.scale, opt_.min_scale), opt_.max_scale);
  state_.hysteresis_left = opt_.hysteresis;
}

LossScalerOptions LossScaler::options_for(const Policy& policy) {
  LossScalerOptions o;
  o.mode = policy.scaling;
  return o;
}

const optim::GradStats& LossScaler::unscale(optim::Optimizer& opt) {
  return unscale_impl(opt, nullptr);
}

const optim::GradStats& LossScaler::unscale(optim::Optimizer& opt,
                                            const optim::GradStats& reduced) {
  return unscale_impl(opt, &reduced);
}

const optim::GradStats& LossScaler::unscale_impl(optim::Optimizer& opt,
                                                 const optim::GradStats* reduced) {
  PerOptimizer& po = per_opt_[&opt];
  if (po.unscaled)
    throw Error(
        "LossScaler::unscale: already called for this optimizer since the last update() "
        "(unscale once per step, at the accumulation boundary; then clip, step, update)");
  if (po.stepped)
    throw Error(
        "LossScaler::unscale: step() was already called for this optimizer since the "
        "last update()");
  // 1/scale in double, used as fp32 (PyTorch does the same); exact for power-of-two scales.
  const float inv = static_cast<float>(1.0 / static_cast<double>(state_.scale));
  po.stats = reduced ? opt.prepare_gradients(inv, *reduced) : opt.prepare_gradients(inv);
  po.unscaled = true;
  return po.stats;
}

double LossScaler::clip_grad_norm(optim::Optimizer& opt, double max_norm) {
  if (!per_opt_[&opt].unscaled) unscale(opt);
  return opt.clip_grad_norm(max_norm);
}

optim::StepResult LossScaler::step(optim::Optimizer& opt) {
  PerOptimizer& po = per_opt_[&opt];
  if (po.stepped)
    throw Error("LossScaler::step: already called for this optimizer since the last update()");
  if (!po.unscaled) unscale(opt);
  po.stepped = true;
  if (!po.stats.finite()) {
    optim::StepResult r;
    r.reason = po.stats.first_bad_nan ? optim::SkipReason::nan_grad : optim::SkipReason::inf_grad;
    r.bad_param = po.stats.first_bad;
    r.grad_norm = po.stats.norm();
    r.scale = state_.scale;
    return opt.skip(r);
  }
  optim::StepResult r = opt.step();
  r.scale = state_.scale;
  return r;
}

void LossScaler::update() {
  if (per_opt_.empty())
    throw Error("LossScaler::update: no optimizer was unscaled or stepped since the last update");
  bool overflow = false;
  std::string bad;
  bool bad_nan = false;
  for (const auto& [o, po] : per_opt_) {
    if (!po.stats.finite()) {
      overflow = true;
      if (bad.empty()) {
        bad = po.stats.first_bad;
        bad_nan = po.stats.first_bad_nan;
      }
    }
  }
  per_opt_.clear();
  last_overflow_ = overflow;
  LossScalerState& s = state_;
  ++s.steps;
  if (overflow) {
    ++s.skipped_steps;
    // "At the floor": the scale can not back off any further (or never moves: none/fixed).
    const bool at_floor = opt_.mode != LossScaling::dynamic || s.scale <= opt_.min_scale;
    s.overflows_at_floor = at_floor ? s.overflows_at_floor + 1 : 0;
    if (opt_.mode == LossScaling::dynamic) {
      s.growth_tracker = 0;
      if (s.hysteresis_left > 1)
        --s.hysteresis_left;
      else
        s.scale = std::fmax(s.scale * opt_.backoff_factor, opt_.min_scale);
    }
    if (s.overflows_at_floor >= opt_.max_overflows_at_floor)
      throw NumericalError(fmt::format(
          "loss scaler: {} consecutive steps overflowed with the loss scale at its floor ({}, "
          "mode {}); first non-finite gradient: parameter '{}' ({}). The model produces "
          "non-finite gradients at any scale: lower the learning rate, check the data, or use "
          "bf16",
          s.overflows_at_floor, s.scale,
          opt_.mode == LossScaling::dynamic ? "dynamic"
          : opt_.mode == LossScaling::fixed ? "fixed"
                                            : "none",
          bad, bad_nan ? "NaN" : "Inf"));
    return;
  }
  s.overflows_at_floor = 0;
  if (opt_.mode != LossScaling::dynamic) return;
  if (opt_.consecutive_hysteresis) s.hysteresis_left = opt_.hysteresis;
  if (++s.growth_tracker >= opt_.growth_interval) {
    const float grown = s.scale * opt_.growth_factor;
    if (std::isfinite(grown)) s.scale = std::fmin(grown, opt_.max_scale);
    s.growth_tracker = 0;
    s.hysteresis_left = opt_.hysteresis;
  }
}

void LossScaler::load_state(const LossScalerState& s) {
  if (!(s.scale > 0) || !std::isfinite(s.scale))
    throw ConfigError(
        fmt::format("loss scaler load_state: scale {} (must be finite and > 0)", s.scale));
  state_ = s;
  per_opt_.clear();
}

// ---- state serialisation ----------------------------------------------------------------

namespace {
Tensor i64_scalar(int64_t v) {
  Tensor t = Tensor::empty({1}, DType::i64);
  t.data<int64_t>()[0] = v;
  return t;
}
}  // namespace

std::vector<std::pair<std::string, Tensor>> LossScalerState::to_tensors(
    const std::string& prefix) const {
  return {{prefix + "scale", Tensor::from_vector({scale}, {1}, DType::f32)},
          {prefix + "growth_tracker", i64_scalar(growth_tracker)},
          {prefix + "hysteresis_left", i64_scalar(hysteresis_left)},
          {prefix + "overflows_at_floor", i64_scalar(overflows_at_floor)},
          {prefix + "steps", i64_scalar(steps)},
          {prefix + "skipped_steps", i64_scalar(skipped_steps)}};
}

LossScalerState LossScalerState::from_tensors(const std::vector<std::pair<std::string, Tensor>>& t,
                                              const std::string& prefix) {
  auto find = [&](const char* n) -> const Tensor& {
    for (const auto& [k, v] : t)
      if (k == prefix + n) {
        if (v.numel() != 1)
          throw ShapeError(fmt::format(
              "loss scaler state: tensor '{}{}' is {} (expected 1 element)", prefix, n, v.str()));
        return v;
      }
    throw IOError(fmt::format("loss scaler state: tensor '{}{}' is missing", prefix, n));
  };
  auto i64 = [&](const char* n) {
    const Tensor& v = find(n);
    return v.dtype() == DType::i64 ? v.data<int64_t>()[0] : static_cast<int64_t>(v.item());
  };
  LossScalerState s;
  s.scale = find("scale").item();
  s.growth_tracker = i64("growth_tracker");
  s.hysteresis_left = i64("hysteresis_left");
  s.overflows_at_floor = i64("overflows_at_floor");
  s.steps = i64("steps");
  s.skipped_steps = i64("skipped_steps");
  return s;
}

std::map<std::string, std::string> LossScalerState::to_map() const {
  return {{"scale", fmt::format("{}", scale)},
          {"growth_tracker", std::to_string(growth_tracker)},
          {"hysteresis_left", std::to_string(hysteresis_left)},
          {"overflows_at_floor", std::to_string(overflows_at_floor)},
          {"steps", std::to_string(steps)},
          {"skipped_steps", std::to_string(skipped_steps)}};
}

LossScalerState LossScalerState::from_map(const std::map<std::string, std::string>& m) {
  auto get = [&](const char* k) -> const std::string& {
    auto it = m.find(k);
    if (it == m.end()) throw IOError(fmt::format("loss scaler state: key '{}' is missing", k));
    return it->second;
  };
  auto num = [&](const char* k) {
    const std::string& v = get(k);
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (end == v.c_str() || *end)
      throw IOError(fmt::format("loss scaler state: key '{}' = '{}' is not an integer", k, v));
    return static_cast<int64_t>(x);
  };
  LossScalerState s;
  const std::string& sc = get("scale");
  char* end = nullptr;
  s.scale = std::strtof(sc.c_str(), &end);
  if (end == sc.c_str() || *end)
    throw IOError(fmt::format("loss scaler state: key 'scale' = '{}' is not a number", sc));
  s.growth_tracker = num("growth_tracker");
  s.hysteresis_left = num("hysteresis_left");
  s.overflows_at_floor = num("overflows_at_floor");
  s.steps = num("steps");
  s.skipped_steps = num("skipped_steps");
  return s;
}

}  // namespace mixtrain::amp
