// The CUDA backend's optimizer and gradient passes (Backend::optimizer_update, grad_scan,
// grad_histograms, split16_split/join): the library's arguments turned into the plain
// descriptors of multi_tensor.h's launchers, and their results back into the library's types.
#include <fmt/format.h>

#include <vector>

#include "cuda/multi_tensor.h"
#include "cuda/runtime.h"
#include "mixtrain/error.h"

namespace mixtrain::cuda {

namespace {

using optim::MasterMode;
using optim::detail::Rule;

static_assert(kHistMinExp == amp::GradHistogram::kMinExp &&
                  kHistMaxExp == amp::GradHistogram::kMaxExp,
              "the device histogram's binades are GradHistogram's");

bool is_float(DType dt) { return dt == DType::f32 || dt == DType::bf16 || dt == DType::f16; }

[[noreturn]] void bad_dtype(const char* op, const char* role, DType dt) {
  throw DTypeError(
      fmt::format("{}: {} dtype {} (expected f32, bf16, f16)", op, role, dtype_name(dt)));
}

detail::Home home_of(const UpdateArgs& a) {
  switch (a.mode) {
    case MasterMode::fp32:
      if (!a.weight) return detail::Home::f32;
      switch (a.weight_dtype) {
        case DType::bf16:
          return detail::Home::f32_copy_bf16;
        case DType::f32:
          return detail::Home::f32_copy_f32;
        case DType::f16:
          return detail::Home::f32_copy_f16;
        default:
          bad_dtype("optimizer update", "weight copy", a.weight_dtype);
      }
    case MasterMode::bf16_stochastic:
      return detail::Home::stochastic;
    case MasterMode::bf16_kahan:
      return detail::Home::kahan;
    case MasterMode::split16:
      return detail::Home::split16;
  }
  throw BackendError("cuda: optimizer update: unknown master mode");
}

MtRule rule_of(const Rule& r) {
  MtRule m;
  switch (r.kind) {
    case Rule::Kind::adam: {
      const auto& h = r.adam;
      m.variant = h.decoupled ? MtRule::adamw : MtRule::adam_l2;
      m.adam = detail::adam_consts(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.step);
      break;
    }
    case Rule::Kind::sgd: {
      const auto& h = r.sgd;
      m.variant = h.momentum == 0.0f ? MtRule::sgd_plain
                  : h.nesterov       ? MtRule::sgd_nesterov
                                     : MtRule::sgd_momentum;
      m.sgd = detail::sgd_consts(h.lr, h.momentum, h.dampening, h.weight_decay, h.first_step);
      break;
    }
    case Rule::Kind::rmsprop: {
      const auto& h = r.rms;
      const bool mom = h.momentum > 0.0f;
      m.variant = h.centered ? (mom ? MtRule::rms_centered_momentum : MtRule::rms_centered)
                             : (mom ? MtRule::rms_momentum : MtRule::rms_plain);
      m.rms = detail::rms_consts(h.lr, h.alpha, h.eps, h.weight_decay, h.momentum);
      break;
    }
  }
  return m;
}

// The gradients as launcher descriptors (contiguous: strided ones are copied into `keep`).
std::vector<MtGrad> grads_of(const char* op, std::span<const Tensor> grads,
                             std::vector<Tensor>& keep) {
  std::vector<MtGrad> out(grads.size());
  keep.resize(grads.size());
  for (size_t t = 0; t < grads.size(); ++t) {
    if (!is_float(grads[t].dtype())) bad_dtype(op, "gradient", grads[t].dtype());
    keep[t] = grads[t].contiguous();
    out[t].data = keep[t].raw_data();
    out[t].n = keep[t].numel();
    out[t].dtype = static_cast<int>(keep[t].dtype());
  }
  return out;
}

}  // namespace

void optimizer_update(const Rule& rule, std::span<const UpdateArgs> tensors) {
  std::vector<MtUpdate> ts;
  ts.reserve(tensors.size());
  for (const UpdateArgs& a : tensors) {
    if (a.n == 0) continue;
    if (!is_float(a.grad_dtype)) bad_dtype("optimizer update", "gradient", a.grad_dtype);
    MtUpdate u;
    u.master = a.master;
    u.weight = a.weight;
    u.aux = a.aux;
    u.grad = a.grad;
    u.s0 = a.s0;
    u.s1 = a.s1;
    u.s2 = a.s2;
    u.n = a.n;
    u.seed = a.seed;
    u.counter = a.counter;
    u.grad_mult = a.grad_mult;
    u.home = static_cast<int>(home_of(a));
    u.grad_dtype = static_cast<int>(a.grad_dtype);
    ts.push_back(u);
  }
  if (ts.empty()) return;
  check(static_cast<cudaError_t>(
            launch_update(rule_of(rule), ts.data(), static_cast<int>(ts.size()))),
        "optimizer update");
}

GradScan grad_scan(std::span<const Tensor> grads) {
  std::vector<Tensor> keep;
  const std::vector<MtGrad> g = grads_of("gradient scan", grads, keep);
  MtScan s;
  check(static_cast<cudaError_t>(scan_grads(g.data(), static_cast<int>(g.size()), &s)),
        "gradient scan");
  GradScan out;
  out.sumsq = s.sumsq;
  out.found_inf = s.found_inf;
  out.found_nan = s.found_nan;
  out.first_bad = s.first_bad;
  out.first_bad_nan = s.first_bad_nan;
  return out;
}

std::vector<HistogramScan> grad_histograms(std::span<const Tensor> grads, float inv_carried,
                                           float to_fp16) {
  std::vector<Tensor> keep;
  const std::vector<MtGrad> g = grads_of("gradient histograms", grads, keep);
  std::vector<MtHist> h(g.size());
  check(static_cast<cudaError_t>(cuda::grad_histograms(g.data(), static_cast<int>(g.size()),
                                                       inv_carried, to_fp16, h.data())),
        "gradient histograms");
  std::vector<HistogramScan> out(g.size());
  for (size_t t = 0; t < g.size(); ++t) {
    const MtHist& d = h[t];
    amp::GradHistogram& o = out[t].hist;
    auto n = [&](int k) { return static_cast<int64_t>(d.counts[k]); };
    o.numel = g[t].n;
    o.zero = n(MtHist::zero);
    o.inf = n(MtHist::inf);
    o.nan = n(MtHist::nan);
    o.below = n(MtHist::below);
    o.above = n(MtHist::above);
    for (int k = 0; k < amp::GradHistogram::kBins; ++k)
      o.bins[static_cast<size_t>(k)] = n(MtHist::bins + k);
    o.max_abs = d.max_abs;
    o.fp16_zero = n(MtHist::fp16_zero);
    o.fp16_subnormal = n(MtHist::fp16_subnormal);
    o.fp16_overflow = n(MtHist::fp16_overflow);
    out[t].first_bad = d.first_bad;
    out[t].first_bad_nan = d.first_bad_nan;
  }
  return out;
}

void split16_split(const Tensor& master, const Tensor& hi, const Tensor& lo) {
  check(static_cast<cudaError_t>(
            launch_split16_split(master.data<float>(), static_cast<uint16_t*>(hi.raw_data()),
                                 static_cast<uint16_t*>(lo.raw_data()), master.numel())),
        "split16");
}

void split16_join(const Tensor& hi, const Tensor& lo, const Tensor& out) {
  check(static_cast<cudaError_t>(launch_split16_join(static_cast<const uint16_t*>(hi.raw_data()),
                                                     static_cast<const uint16_t*>(lo.raw_data()),
                                                     out.data<float>(), out.numel())),
        "split16");
}

}  // namespace mixtrain::cuda
