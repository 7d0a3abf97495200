// Optimizer base (gradient stats pass, folded unscale x clip, the parallel fused step, state
// tensors, master-free modes) and SGD / Adam / AdamW / RMSProp.
#include "mixtrain/optim/optimizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "backend/backend.h"
#include "mixtrain/error.h"

namespace mixtrain::optim {
namespace {

void check_grad(const nn::Parameter& p, const char* op) {
  const Tensor& g = p.grad();
  if (g.numel() != p.numel() || !g.is_contiguous())
    throw ShapeError(fmt::format("{}: parameter '{}' {} has gradient {}{}", op, p.name,
                                 shape_str(p.master.shape()), g.str(),
                                 g.is_contiguous() ? "" : " (not contiguous)"));
  if (g.dtype() != DType::f32 && g.dtype() != DType::bf16 && g.dtype() != DType::f16)
    throw DTypeError(fmt::format("{}: parameter '{}' gradient {}: expected f32, bf16 or f16", op,
                                 p.name, g.str()));
}

}  // namespace

const char* master_mode_name(MasterMode m) {
  switch (m) {
    case MasterMode::fp32:
      return "fp32";
    case MasterMode::bf16_stochastic:
      return "bf16-sr";
    case MasterMode::bf16_kahan:
      return "bf16-kahan";
    case MasterMode::split16:
      return "split16";
  }
  return "?";
}

MasterMode parse_master_mode(const char* name) {
  const std::string s(name);
  if (s == "fp32" || s == "f32") return MasterMode::fp32;
  if (s == "bf16-sr" || s == "bf16_stochastic" || s == "bf16-stochastic")
    return MasterMode::bf16_stochastic;
  if (s == "bf16-kahan" || s == "bf16_kahan") return MasterMode::bf16_kahan;
  if (s == "split16") return MasterMode::split16;
  throw ConfigError(
      fmt::format("master mode '{}': expected fp32, bf16-sr, bf16-kahan or split16", s));
}

MasterMode auto_master_mode(DType param, DType compute, bool every_weight_computes_in_compute) {
  return param == DType::f32 && compute == DType::bf16 && every_weight_computes_in_compute
             ? MasterMode::split16
             : MasterMode::fp32;
}

std::string StepResult::str() const {
  if (applied) {
    std::string s = grad_norm >= 0 ? fmt::format("applied (grad norm {:.4g}", grad_norm)
                                   : std::string("applied (grad norm not measured");
    if (clip_coef < 1.0f) s += fmt::format(", clipped x{:.4g}", clip_coef);
    return s + fmt::format(", scale {})", scale);
  }
  return fmt::format("skipped: {} gradient in '{}' (scale {})",
                     reason == SkipReason::nan_grad ? "NaN" : "Inf", bad_param, scale);
}

double GradStats::norm() const {
  return finite() ? std::sqrt(sumsq) : std::numeric_limits<double>::quiet_NaN();
}

GradStats gradient_stats(const std::vector<nn::Parameter*>& params, float grad_mult) {
  // The defined gradients, by device, in parameter order: one backend pass each.
  std::vector<Tensor> grads;
  std::vector<const nn::Parameter*> owners;
  for (const auto* p : params)
    if (p->grad().defined()) {
      check_grad(*p, "gradient_stats");
      grads.push_back(p->grad());
      owners.push_back(p);
    }
  GradStats st;
  if (grads.empty()) return st;
  for (const Tensor& g : grads) common_device("gradient_stats", {&grads.front(), &g});
  const GradScan scan = backend_for(grads.front().device()).grad_scan(grads);
  st.found_inf = scan.found_inf;
  st.found_nan = scan.found_nan;
  if (scan.first_bad >= 0) {
    st.first_bad = owners[scan.first_bad]->name;
    st.first_bad_nan = scan.first_bad_nan;
  }
  const double m = grad_mult;
  st.sumsq = scan.sumsq * m * m;
  return st;
}

BytesPerParam bytes_per_parameter(MasterMode mode, DType compute, DType grad, int state_floats) {
  BytesPerParam b;
  b.grad = static_cast<double>(dtype_size(grad));
  b.state = 4.0 * state_floats;
  switch (mode) {
    case MasterMode::fp32:
      b.master = 4;
      b.weight = compute == DType::f32 ? 0 : static_cast<double>(dtype_size(compute));
      b.note = "fp32 master + compute copy: the reference (no saving)";
      break;
    case MasterMode::bf16_stochastic:
      b.weight = 2;
      b.note =
          "bf16 weight only, stochastic rounding: saves the 4-byte fp32 master; "
          "unbiased but noisier updates";
      break;
    case MasterMode::bf16_kahan:
      b.weight = 2;
      b.master = 2;
      b.note =
          "bf16 weight + bf16 Kahan compensation: saves 2 bytes; recovers most of the "
          "update lost to rounding";
      break;
    case MasterMode::split16:
      b.weight = 2;
      b.master = 2;
      b.note =
          "bf16 weight + 16 low bits of the fp32 master: saves 2 bytes (the separate bf16 "
          "copy); lossless, bit-identical to fp32 master";
      break;
  }
  return b;
}

// ---- Optimizer ------------------------------------------------------------------------------

Optimizer::~Optimizer() = default;

Optimizer::Optimizer(std::vector<nn::Parameter*> params, double lr, CommonOptions common,
                     int state_buffers)
    : params_(std::move(params)), lr_(lr), common_(common) {
  if (!(lr >= 0) || !std::isfinite(lr))
    throw ConfigError(fmt::format("optimizer: learning rate {} (must be finite and >= 0)", lr));
  slots_.resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    nn::Parameter& p = *params_[i];
    if (!p.master.defined())
      throw ConfigError(fmt::format("optimizer: parameter '{}' has no master tensor", p.name));
    Slot& s = slots_[i];
    const Device dev = p.master.device();
    // Per parameter (not one flat buffer per kind): a master-free mode releases each fp32 master
    // as it goes, and the next parameter's state of that size reuses its pages (one flat buffer
    // kept them cached beside it: bf16 MLP bench peak RSS 107 -> 122 MiB).
    for (int k = 0; k < state_buffers; ++k)
      s.s[k] = Tensor::zeros(p.master.shape(), DType::f32, dev);
    s.offset = total_numel_;
    total_numel_ += static_cast<uint64_t>(p.numel());
    if (common_.master == MasterMode::fp32) {
      if (p.master.dtype() != DType::f32 || !p.master.is_contiguous())
        throw DTypeError(fmt::format(
            "optimizer (master fp32): parameter '{}' master is {} (expected contiguous f32)",
            p.name, p.master.str()));
      continue;
    }
    // Master-free: the bf16 weight becomes the parameter's only full-size copy; the fp32
    // master, if any, seeds it (and split16's low bits) and is then released.
    if (p.compute_dtype() != DType::bf16)
      throw ConfigError(
          fmt::format("optimizer: master mode {} needs bf16 weights; parameter '{}' computes in {}",
                      master_mode_name(common_.master), p.name, dtype_name(p.compute_dtype())));
    Tensor w = p.weight.data();
    if (!w.is_contiguous())
      throw ShapeError(
          fmt::format("optimizer: parameter '{}' weight {} is not contiguous", p.name, w.str()));
    if (common_.master != MasterMode::bf16_stochastic)
      s.aux = Tensor::zeros(p.master.shape(), DType::bf16, dev);
    if (common_.master == MasterMode::split16)
      backend_for(dev).split16_split(p.master.to(DType::f32).contiguous(), w, s.aux);
    p.master = w;  // the master is the bf16 weight now: the fp32 tensor is freed
  }
}

const GradStats& Optimizer::prepare_gradients(float grad_mult) {
  stats_ = gradient_stats(params_, grad_mult);
  grad_mult_ = grad_mult;
  clip_coef_ = 1.0f;
  prepared_ = true;
  return stats_;
}

const GradStats& Optimizer::prepare_gradients(float grad_mult, const GradStats& reduced) {
  stats_ = reduced;
  const double m = grad_mult;  // as gradient_stats: the double sum times mult^2
  stats_.sumsq = reduced.sumsq * m * m;
  grad_mult_ = grad_mult;
  clip_coef_ = 1.0f;
  prepared_ = true;
  return stats_;
}

double Optimizer::clip_grad_norm(double max_norm) {
  if (!(max_norm > 0))
    throw ConfigError(fmt::format("clip_grad_norm: max_norm {} (must be > 0)", max_norm));
  if (!prepared_) prepare_gradients(1.0f);
  const double norm = stats_.norm();
  clip_coef_ = 1.0f;
  // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1. A
  // non-finite norm leaves it at 1: the loss scaler skips that step anyway.
  if (std::isfinite(norm)) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) clip_coef_ = static_cast<float>(coef);
  }
  return norm;
}

StepResult Optimizer::skip(StepResult why) {
  why.applied = false;
  prepared_ = false;
  grad_mult_ = 1.0f;
  clip_coef_ = 1.0f;
  return why;
}

StepResult Optimizer::step() {
  StepResult res;
  res.grad_norm = prepared_ ? stats_.norm() : -1.0;
  res.scale = grad_mult_ > 0 ? static_cast<float>(1.0 / grad_mult_) : 1.0f;
  res.clip_coef = clip_coef_;
  for (const auto* p : params_)
    if (p->grad().defined()) check_grad(*p, name());
  // The folded multiplier: 1/scale times the clip coefficient, one fp32 multiply per element.
  const float mult = static_cast<float>(static_cast<double>(grad_mult_) * clip_coef_);
  ++steps_;
  const detail::Rule r = rule();
  const uint64_t rng_base = rng_step_ * total_numel_;
  // One fused pass per device over every parameter with a gradient (a parameter the backward
  // did not reach keeps its value and state).
  std::vector<detail::UpdateArgs> args;
  Device dev = Device::cpu;
  for (size_t i = 0; i < params_.size(); ++i) {
    nn::Parameter& p = *params_[i];
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    Slot& s = slots_[i];
    detail::UpdateArgs a;
    a.mode = common_.master;
    a.grad_mult = mult;
    a.n = p.numel();
    a.grad = g.raw_data();
    a.grad_dtype = g.dtype();
    for (int j = 0; j < 3; ++j)
      if (s.s[j].defined()) (j == 0 ? a.s0 : j == 1 ? a.s1 : a.s2) = s.s[j].data<float>();
    const Tensor& w = p.weight.data();
    if (common_.master == MasterMode::fp32) {
      a.master = p.master.data<float>();
      if (!p.shares_master()) {
        a.weight = w.raw_data();
        a.weight_dtype = w.dtype();
      }
    } else {
      a.weight = w.raw_data();
      a.weight_dtype = DType::bf16;
      if (s.aux.defined()) a.aux = static_cast<uint16_t*>(s.aux.raw_data());
      a.seed = common_.seed;
      a.counter = rng_base + s.offset;
    }
    if (!args.empty() && g.device() != dev)
      throw BackendError(fmt::format("{}: parameter '{}' is on {}, the others on {}", name(),
                                     p.name, device_name(g.device()), device_name(dev)));
    dev = g.device();
    args.push_back(a);
  }
  if (!args.empty()) backend_for(dev).optimizer_update(r, args);
  ++rng_step_;
  prepared_ = false;
  grad_mult_ = 1.0f;
  clip_coef_ = 1.0f;
  return res;
}

void Optimizer::zero_grad() {
  for (auto* p : params_) p->zero_grad();
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  const auto names = state_names();
  for (size_t i = 0; i < params_.size(); ++i) {
    for (int j = 0; j < 3; ++j)
      if (slots_[i].s[j].defined())
        out.emplace_back(fmt::format("optim.{}.{}", params_[i]->name, names[j]), slots_[i].s[j]);
    if (slots_[i].aux.defined())
      out.emplace_back(
          fmt::format("optim.{}.{}", params_[i]->name,
                      common_.master == MasterMode::split16 ? "master_low16" : "kahan_comp"),
          slots_[i].aux);
  }
  auto scalar = [](int64_t v) {
    Tensor t = Tensor::empty({1}, DType::i64);
    t.data<int64_t>()[0] = v;
    return t;
  };
  out.emplace_back("optim.step", scalar(steps_));
  out.emplace_back("optim.rng_step", scalar(static_cast<int64_t>(rng_step_)));
  return out;
}

void Optimizer::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : tensors) by_name[n] = &t;
  auto find = [&](const std::string& n) -> const Tensor& {
    auto it = by_name.find(n);
    if (it == by_name.end())
      throw IOError(fmt::format("{} load_state: tensor '{}' is missing", name(), n));
    return *it->second;
  };
  auto check_shape = [&](const std::string& n, const Tensor& got, const Tensor& want) {
    if (got.shape() != want.shape())
      throw ShapeError(fmt::format("{} load_state: tensor '{}' is {} (expected shape {})", name(),
                                   n, got.str(), shape_str(want.shape())));
  };
  // Validate everything first, so a bad checkpoint leaves the optimizer untouched.
  std::vector<std::pair<Tensor, const Tensor*>> copies;
  for (const auto& [n, t] : state_tensors()) {
    const Tensor& src = find(n);
    if (t.dtype() == DType::i64) {
      if (src.numel() != 1)
        throw ShapeError(fmt::format("{} load_state: tensor '{}' is {} (expected 1 element)",
                                     name(), n, src.str()));
      continue;
    }
    check_shape(n, src, t);
    if (t.dtype() == DType::bf16 && src.dtype() != DType::bf16)  // 16-bit containers: bits
      throw DTypeError(
          fmt::format("{} load_state: tensor '{}' is {} (expected bf16)", name(), n, src.str()));
    copies.emplace_back(t, &src);
  }
  // (16-bit containers copy bit for bit: the dtypes are equal.)
  for (auto& [dst, src] : copies) {
    Tensor d = dst;
    d.copy_from(*src);
  }
  auto get_i64 = [&](const std::string& n) {
    const Tensor& t = find(n);
    return t.dtype() == DType::i64 ? t.data<int64_t>()[0] : static_cast<int64_t>(t.item());
  };
  steps_ = get_i64("optim.step");
  rng_step_ = static_cast<uint64_t>(get_i64("optim.rng_step"));
}

Tensor Optimizer::master_value(size_t i) const {
  const nn::Parameter& p = *params_.at(i);
  if (common_.master == MasterMode::fp32) return p.master.clone();
  const Tensor& w = p.weight.data();
  if (common_.master != MasterMode::split16) return w.to(DType::f32).view(p.master.shape());
  Tensor out = Tensor::empty(p.master.shape(), DType::f32, w.device());
  backend_for(w.device()).split16_join(w, slots_[i].aux, out);
  return out;
}

BytesPerParam Optimizer::bytes_per_param() const {
  int floats = 0;
  for (const auto& n : state_names())
    if (!n.empty()) ++floats;
  const DType compute = params_.empty() ? DType::bf16 : params_[0]->compute_dtype();
  const DType grad =
      params_.empty() || !params_[0]->grad().defined() ? DType::f32 : params_[0]->grad().dtype();
  return bytes_per_parameter(common_.master, compute, grad, floats);
}

// ---- the four optimizers --------------------------------------------------------------------

namespace {
void check_hyper(const char* opt, const char* what, double v, double lo, double hi) {
  if (!(v >= lo && v <= hi))
    throw ConfigError(fmt::format("{}: {} = {} (must be in [{}, {}])", opt, what, v, lo, hi));
}
}  // namespace

SGD::SGD(std::vector<nn::Parameter*> params, SgdOptions opt)
    : Optimizer(std::move(params), opt.lr, opt.common, opt.momentum != 0 ? 1 : 0), opt_(opt) {
  check_hyper("sgd", "momentum", opt.momentum, 0, 1);
  check_hyper("sgd", "dampening", opt.dampening, 0, 1);
  check_hyper("sgd", "weight_decay", opt.weight_decay, 0, 1e30);
  if (opt.nesterov && (opt.momentum <= 0 || opt.dampening != 0))
    throw ConfigError("sgd: nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD)");
}
detail::Rule SGD::rule() const {
  detail::Rule r;
  r.kind = detail::Rule::Kind::sgd;
  r.sgd.lr = static_cast<float>(lr_);
  r.sgd.momentum = static_cast<float>(opt_.momentum);
  r.sgd.dampening = static_cast<float>(opt_.dampening);
  r.sgd.weight_decay = static_cast<float>(opt_.weight_decay);
  r.sgd.nesterov = opt_.nesterov;
  r.sgd.first_step = steps_ == 1;
  return r;
}
std::vector<std::string> SGD::state_names() const { return {"momentum_buffer", "", ""}; }

Adam::Adam(std::vector<nn::Parameter*> params, AdamOptions opt)
    : Adam(std::move(params), opt, false) {}
Adam::Adam(std::vector<nn::Parameter*> params, AdamOptions opt, bool decoupled)
    : Optimizer(std::move(params), opt.lr, opt.common, 2), opt_(opt), decoupled_(decoupled) {
  const char* n = decoupled ? "adamw" : "adam";
  check_hyper(n, "beta1", opt.beta1, 0, 0.999999999);
  check_hyper(n, "beta2", opt.beta2, 0, 0.999999999);
  check_hyper(n, "eps", opt.eps, 0, 1);
  check_hyper(n, "weight_decay", opt.weight_decay, 0, 1e30);
}
detail::Rule Adam::rule() const {
  detail::Rule r;
  r.kind = detail::Rule::Kind::adam;
  r.adam.lr = static_cast<float>(lr_);
  r.adam.beta1 = static_cast<float>(opt_.beta1);
  r.adam.beta2 = static_cast<float>(opt_.beta2);
  r.adam.eps = static_cast<float>(opt_.eps);
  r.adam.weight_decay = static_cast<float>(opt_.weight_decay);
  r.adam.decoupled = decoupled_;
  r.adam.step = steps_;
  return r;
}
std::vector<std::string> Adam::state_names() const { return {"exp_avg", "exp_avg_sq", ""}; }

AdamW::AdamW(std::vector<nn::Parameter*> params, AdamOptions opt)
    : Adam(std::move(params), opt, true) {}

RMSProp::RMSProp(std::vector<nn::Parameter*> params, RMSPropOptions opt)
    : Optimizer(std::move(params), opt.lr, opt.common,
                opt.momentum > 0 ? 3
                : opt.centered   ? 2
                                 : 1),
      opt_(opt) {
  check_hyper("rmsprop", "alpha", opt.alpha, 0, 1);
  check_hyper("rmsprop", "momentum", opt.momentum, 0, 1);
  check_hyper("rmsprop", "eps", opt.eps, 0, 1);
  check_hyper("rmsprop", "weight_decay", opt.weight_decay, 0, 1e30);
  // Unused middle buffer (momentum without centering) is dropped so state holds only what
  // the rule reads.
  if (opt.momentum > 0 && !opt.centered)
    for (auto& s : slots_) s.s[1] = Tensor();
}
detail::Rule RMSProp::rule() const {
  detail::Rule r;
  r.kind = detail::Rule::Kind::rmsprop;
  r.rms.lr = static_cast<float>(lr_);
  r.rms.alpha = static_cast<float>(opt_.alpha);
  r.rms.eps = static_cast<float>(opt_.eps);
  r.rms.weight_decay = static_cast<float>(opt_.weight_decay);
  r.rms.momentum = static_cast<float>(opt_.momentum);
  r.rms.centered = opt_.centered;
  return r;
}
std::vector<std::string> RMSProp::state_names() const {
  return {"square_avg", "grad_avg", "momentum_buffer"};
}

std::unique_ptr<Optimizer> make_optimizer(const std::string& kind,
                                          std::vector<nn::Parameter*> params, double lr,
                                          double weight_decay, double momentum,
                                          CommonOptions common) {
  if (kind == "adamw")
    return std::make_unique<AdamW>(
        std::move(params), AdamOptions{.lr = lr, .weight_decay = weight_decay, .common = common});
  if (kind == "adam")
    return std::make_unique<Adam>(
        std::move(params), AdamOptions{.lr = lr, .weight_decay = weight_decay, .common = common});
  if (kind == "sgd")
    return std::make_unique<SGD>(
        std::move(params),
        SgdOptions{.lr = lr, .momentum = momentum, .weight_decay = weight_decay, .common = common});
  if (kind == "rmsprop")
    return std::make_unique<RMSProp>(
        std::move(params),
        RMSPropOptions{
            .lr = lr, .weight_decay = weight_decay, .momentum = momentum, .common = common});
  throw ConfigError(fmt::format("optimizer '{}': expected adamw, adam, sgd or rmsprop", kind));
}

}  // namespace mixtrain::optim
