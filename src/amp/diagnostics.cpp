// Gradient precision diagnostics: one pass of exponent extraction and threshold counts over the
// gradients by their backend (Backend::grad_histograms); the recommendation from the totals.
#include "mixtrain/amp/diagnostics.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>

#include "backend/backend.h"
#include "mixtrain/error.h"

namespace mixtrain::amp {

void GradHistogram::merge(const GradHistogram& o) {
  numel += o.numel;
  zero += o.zero;
  inf += o.inf;
  nan += o.nan;
  below += o.below;
  above += o.above;
  for (int k = 0; k < kBins; ++k) bins[k] += o.bins[k];
  max_abs = std::max(max_abs, o.max_abs);
  fp16_zero += o.fp16_zero;
  fp16_subnormal += o.fp16_subnormal;
  fp16_overflow += o.fp16_overflow;
}

void GradHistogram::merge_step(const GradHistogram& o) {
  merge(o);
  steps += o.steps;
}

bool GradHistogram::span(int& lo, int& hi) const {
  int first = -1, last = -1;
  for (int k = 0; k < kBins; ++k)
    if (bins[k]) {
      if (first < 0) first = k;
      last = k;
    }
  if (first < 0 && !below && !above) return false;
  lo = below ? kMinExp : first >= 0 ? kMinExp + first : kMaxExp;
  hi = above ? kMaxExp : last >= 0 ? kMinExp + last + 1 : kMinExp;
  return true;
}

GradientReport diagnose_gradients(const std::vector<std::pair<std::string, Tensor>>& grads,
                                  float carried_scale, float fp16_scale) {
  if (!(carried_scale > 0) || !std::isfinite(carried_scale))
    throw ConfigError(
        fmt::format("diagnose_gradients: carried_scale {} (must be > 0)", carried_scale));
  if (!(fp16_scale > 0)) fp16_scale = carried_scale;
  GradientReport rep;
  rep.carried_scale = carried_scale;
  rep.fp16_scale = fp16_scale;
  std::vector<Tensor> tensors;
  for (size_t t = 0; t < grads.size(); ++t) {
    const Tensor& g = grads[t].second;
    if (g.dtype() != DType::f32 && g.dtype() != DType::bf16 && g.dtype() != DType::f16)
      throw DTypeError(fmt::format("diagnose_gradients: '{}' is {} (expected f32, bf16 or f16)",
                                   grads[t].first, g.str()));
    common_device("diagnose_gradients", {&grads[0].second, &g});
    tensors.push_back(g);
  }
  const float inv_carried = static_cast<float>(1.0 / carried_scale);
  const float to_fp16 = static_cast<float>(static_cast<double>(fp16_scale) / carried_scale);
  std::vector<HistogramScan> scans;
  if (!tensors.empty())
    scans = backend_for(tensors[0].device()).grad_histograms(tensors, inv_carried, to_fp16);
  rep.tensors.resize(grads.size());
  for (size_t t = 0; t < grads.size(); ++t) {
    rep.tensors[t] = scans[t].hist;
    rep.tensors[t].name = grads[t].first;
    if (scans[t].first_bad >= 0 && rep.first_nonfinite.empty()) {
      rep.first_nonfinite = grads[t].first;
      rep.first_nonfinite_nan = scans[t].first_bad_nan;
    }
  }
  rep.total.name = "total";
  for (const auto& h : rep.tensors) rep.total.merge(h);

  rep.recommend();
  return rep;
}

void GradientReport::recommend() {
  GradientReport& rep = *this;
  // Recommendation. Pick the largest power-of-two scale that keeps the largest gradient one
  // binade under fp16's top (|g| * S < 2^15; headroom for the next steps' growth), then ask
  // what share of the nonzero gradients would still fall under fp16's smallest subnormal
  // 2^-24. Up to 0.1% is what dynamic loss scaling lives with in practice (Micikevicius et
  // al. 2018); beyond that fp16 loses real gradient signal and bf16's range is the answer.
  const GradHistogram& h = rep.total;
  const int64_t nonzero = h.numel - h.zero - h.nan - h.inf;
  if (nonzero == 0) {
    rep.recommended = DType::f16;
    rep.recommended_scale = 65536.0f;
    rep.why = "no nonzero finite gradients to judge by: fp16 with the default scale 2^16";
    return;
  }
  int emax = GradHistogram::kMaxExp;
  if (h.above == 0) {
    emax = GradHistogram::kMinExp - 1;
    for (int k = GradHistogram::kBins - 1; k >= 0; --k)
      if (h.bins[k]) {
        emax = GradHistogram::kMinExp + k;
        break;
      }
  }
  const int kexp = std::clamp(14 - emax, 0, 24);  // scale 2^kexp: within [1, 2^24]
  int64_t under = h.below;
  for (int k = 0; k < GradHistogram::kBins; ++k)
    if (GradHistogram::kMinExp + k + kexp < -24) under += h.bins[k];
  int64_t over = h.above;
  for (int k = 0; k < GradHistogram::kBins; ++k)
    if (GradHistogram::kMinExp + k + kexp >= 16) over += h.bins[k];
  const double fu = static_cast<double>(under) / nonzero;
  const double fo = static_cast<double>(over) / nonzero;
  // The same count over all values, the table's denominator: at the table's scale this is its
  // f16->0% column.
  const double fu_all = h.frac(under);
  rep.recommended_scale = std::ldexp(1.0f, kexp);
  std::string nf = rep.first_nonfinite.empty()
                       ? std::string()
                       : fmt::format(" (non-finite values first in '{}': {})", rep.first_nonfinite,
                                     rep.first_nonfinite_nan ? "NaN" : "Inf");
  if (fu <= 1e-3 && fo == 0) {
    rep.recommended = DType::f16;
    // The span from the same histogram the table's rows sum to: 2^hi is above max|g|.
    int lo = 0, hi = 0;
    h.span(lo, hi);
    rep.why = fmt::format(
        "nonzero gradients span 2^{}..2^{} (max |g| {:.3g}); at scale 2^{} fp16 flushes {:.3g}% "
        "of them to zero ({:.3g}% of all values){}",
        lo, hi, h.max_abs, kexp, 100 * fu, 100 * fu_all, nf);
  } else {
    rep.recommended = DType::bf16;
    rep.why = fmt::format(
        "at the best fp16 scale 2^{} {:.3g}% of the nonzero gradients ({:.3g}% of all values) "
        "would flush to zero and {:.3g}% overflow: the range needs bf16{}",
        kexp, 100 * fu, 100 * fu_all, 100 * fo, nf);
  }
}

GradientReport diagnose_gradients(const std::vector<nn::Parameter*>& params, float carried_scale,
                                  float fp16_scale) {
  std::vector<std::pair<std::string, Tensor>> g;
  for (const auto* p : params)
    if (p->grad().defined()) g.emplace_back(p->name, p->grad());
  return diagnose_gradients(g, carried_scale, fp16_scale);
}

std::string GradientReport::str() const {
  std::string s =
      fmt::format("{:<28} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6}\n", "tensor", "numel",
                  "max|g|", "zero%", "f16->0%", "f16sub%", "f16ovf%", "inf/nan");
  auto row = [&](const GradHistogram& h) {
    s += fmt::format("{:<28} {:>10} {:>9.3g} {:>9.3g} {:>8.3g} {:>8.3g} {:>8.3g} {:>6}\n", h.name,
                     h.size(), h.max_abs, 100 * h.frac(h.zero), 100 * h.frac(h.fp16_zero),
                     100 * h.frac(h.fp16_subnormal), 100 * h.frac(h.fp16_overflow), h.inf + h.nan);
  };
  for (const auto& h : tensors) row(h);
  row(total);
  s += fmt::format("fp16 columns at loss scale {} (gradients carry {})\n", fp16_scale,
                   carried_scale);
  if (!first_nonfinite.empty())
    s += fmt::format("first non-finite gradient: '{}' ({})\n", first_nonfinite,
                     first_nonfinite_nan ? "NaN" : "Inf");
  s += recommended == DType::f16 ? fmt::format("recommend: fp16 with initial loss scale {} ({})\n",
                                               recommended_scale, why)
                                 : fmt::format("recommend: bf16 ({})\n", why);
  return s;
}

}  // namespace mixtrain::amp
