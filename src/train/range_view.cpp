// Range views of gradients and updates (src/train/range_view.h).
#include "train/range_view.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace mixtrain::train {

namespace {
// Histogram buckets a quarter of a binade wide: TensorBoard re-bins for display, and a quarter
// binade still shows where a threshold cuts a distribution.
constexpr double kBucketsPerBinade = 4.0;
// 65504 is 2^15.99996: at the scale 2^16 its exponent prints as 0.00, not -0.00.
double no_negative_zero(double x) { return std::round(x * 100) / 100 + 0.0; }
}  // namespace

const std::vector<FormatRange>& format_ranges() {
  static const std::vector<FormatRange> r = {
      {"fp16", std::ldexp(1.0, -24), std::ldexp(1.0, -14), 65504.0},
      {"bf16", std::ldexp(1.0, -133), std::ldexp(1.0, -126), 3.3895313892515355e38},
      {"e4m3", std::ldexp(1.0, -9), std::ldexp(1.0, -6), 448.0},
      {"e5m2", std::ldexp(1.0, -16), std::ldexp(1.0, -14), 57344.0},
  };
  return r;
}

RangeView range_view(const std::vector<float>& values, double scale) {
  const auto& formats = format_ranges();
  RangeView v;
  v.numel = static_cast<int64_t>(values.size());
  std::vector<int64_t> under(formats.size()), over(formats.size());
  std::map<int64_t, int64_t> buckets;  // floor(log2 * kBucketsPerBinade) -> count
  const double log2_scale = std::log2(scale);
  io::Histogram& h = v.log2;
  h.min = INFINITY;
  h.max = -INFINITY;
  for (float x : values) {
    const double a = std::fabs(static_cast<double>(x));
    if (!std::isfinite(a)) {
      ++v.nonfinite;
      for (size_t f = 0; f < formats.size(); ++f) ++over[f];
      continue;
    }
    if (a == 0) {
      ++v.zero;
      continue;
    }
    for (size_t f = 0; f < formats.size(); ++f) {
      if (a < formats[f].min_subnormal) ++under[f];
      if (a > formats[f].max) ++over[f];
    }
    const double l = std::log2(a) - log2_scale;
    h.min = std::min(h.min, l);
    h.max = std::max(h.max, l);
    h.num += 1;
    h.sum += l;
    h.sum_squares += l * l;
    ++buckets[static_cast<int64_t>(std::floor(l * kBucketsPerBinade))];
  }
  if (h.num == 0) h.min = h.max = 0;
  for (const auto& [k, n] : buckets) {
    h.bucket_limit.push_back(static_cast<double>(k + 1) / kBucketsPerBinade);
    h.bucket.push_back(static_cast<double>(n));
  }
  for (size_t f = 0; f < formats.size(); ++f) {
    v.underflow.push_back(v.numel ? static_cast<double>(under[f]) / v.numel : 0.0);
    v.overflow.push_back(v.numel ? static_cast<double>(over[f]) / v.numel : 0.0);
  }
  return v;
}

std::string range_description(const RangeView& v, const std::string& what, double scale) {
  const double ls = std::log2(scale);
  std::string s = fmt::format(
      "{}: log2 of the magnitudes, {} nonzero finite values of {} (zeros left out: {}, "
      "non-finite: {}).",
      what, static_cast<int64_t>(v.log2.num), v.numel, v.zero, v.nonfinite);
  if (v.log2.num > 0) s += fmt::format(" They span 2^{:.1f} .. 2^{:.1f}", v.log2.min, v.log2.max);
  if (scale != 1.0)
    s += fmt::format(
        "; at the loss scale 2^{:.0f} they are held as 2^{:.1f} .. 2^{:.1f}, so each format's "
        "limits below are moved down by {:.0f} onto this chart's axis (log2 of the unscaled "
        "value).",
        ls, v.log2.min + ls, v.log2.max + ls, ls);
  else
    s += ".";
  s +=
      "\n\n| format | flush to zero below | smallest normal | max | here: flushed | here: overflow "
      "|\n|---|---|---|---|---|---|\n";
  const auto& formats = format_ranges();
  for (size_t f = 0; f < formats.size(); ++f) {
    const FormatRange& r = formats[f];
    s += fmt::format("| {} | 2^{:.1f} | 2^{:.1f} | {:g} (2^{:.2f}) | {:.3g}% | {:.3g}% |\n",
                     f == 1 ? "bf16 (fp32's exponent range)" : r.name,
                     std::log2(r.min_subnormal) - ls, std::log2(r.min_normal) - ls, r.max,
                     no_negative_zero(std::log2(r.max) - ls), 100 * v.underflow[f],
                     100 * v.overflow[f]);
  }
  s += "\nfp32 itself: subnormals from 2^-149, normals from 2^-126, max ~2^128. fp16's "
       "flush point is its smallest subnormal 2^-24, its smallest normal 2^-14 and its max "
       "65504; e4m3: 2^-9, 2^-6, 448; e5m2: 2^-16, 2^-14, 57344.";
  return s;
}

}  // namespace mixtrain::train
