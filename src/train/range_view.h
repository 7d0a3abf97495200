// Where a tensor's values sit against the 16- and 8-bit formats' ranges: a histogram of
// log2|x| for TensorBoard, the fractions each format would flush to zero or overflow at a
// given loss scale, and a markdown description that names the formats' limits on the
// histogram's own axis.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mixtrain/io/tensorboard.h"

namespace mixtrain::train {

/// One format's limits (magnitudes).
struct FormatRange {
  const char* name;
  double min_subnormal, min_normal, max;
};
/// fp16, bf16, e4m3 and e5m2 (OCP FP8: e4m3 has no infinities, its max is 448).
const std::vector<FormatRange>& format_ranges();

struct RangeView {
  io::Histogram log2;  ///< of log2(|x| / scale) over the nonzero finite values
  int64_t numel = 0, zero = 0, nonfinite = 0;
  /// Per format_ranges() entry: fractions of all values that, at |x| (the scaled values), are
  /// nonzero and below the smallest subnormal (flushed to zero), or above the max (or Inf/NaN).
  std::vector<double> underflow, overflow;
};

/// `values` carry `scale` (gradients from a backward seeded with the loss scale; 1 for values
/// that carry none): the histogram is of the unscaled values, the fractions of the scaled ones.
RangeView range_view(const std::vector<float>& values, double scale);

/// Markdown for the histogram's description: what it shows (`what`), the counts left out, the
/// values' span, and each format's limits on this histogram's axis with the fractions.
std::string range_description(const RangeView& v, const std::string& what, double scale);

}  // namespace mixtrain::train
