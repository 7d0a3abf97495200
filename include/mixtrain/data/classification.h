// Classification data in memory (features [N, F] + labels i64 [N]), decoded to fp32 per batch,
// and the Fisher-Yates shuffle EpochSampler (data/source.h) draws its epochs with.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "mixtrain/random.h"
#include "mixtrain/tensor.h"

namespace mixtrain {

/// N examples: features [N, F] and labels i64 [N]. Features stay as they came: an image set's
/// u8 pixels (a quarter of fp32's bytes: Fashion-MNIST's 70000 images are 55 MB, not 220) or
/// floats. The model takes them as fp32, from rows() and gather(): a u8 value v is v / 255
/// (torchvision's ToTensor), a float one itself, and with `standardize` every feature x then
/// becomes (x - mean) * inv_std. Decoded as the data set was once stored (fp32 features
/// divided, then standardised in place): the same bits.
struct ClassificationData {
  struct Standardize {
    float mean = 0.0f;
    float inv_std = 1.0f;
  };
  Tensor features;
  Tensor labels;
  std::optional<Standardize> standardize;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  int64_t num_features() const { return features.defined() ? features.size(1) : 0; }
  /// Examples [start, end) as a new (copied, contiguous) data set, stored and decoded as this.
  ClassificationData slice(int64_t start, int64_t end) const;
  /// fp32 features [end - start, F] of examples [start, end), decoded.
  Tensor rows(int64_t start, int64_t end) const;
  /// fp32 features [n, F] of examples idx[0], ..., idx[n - 1], decoded.
  Tensor gather(const int64_t* idx, int64_t n) const;
};

/// u8 images [N, H, W] (any [N, ...] of two or more dimensions) and u8 labels [N] -> u8 features
/// [N, H*W] (rows() gives them as fp32 in [0, 1]) and i64 labels [N]: an IDX set as
/// open_data("fashion-mnist[:DIR]") holds it. Throws DTypeError for other dtypes, ShapeError when
/// the counts do not pair up.
ClassificationData images_to_classification(const Tensor& images_u8, const Tensor& labels_u8);

/// Fisher-Yates shuffle of 0..n-1 drawing n-1 values from rng.
std::vector<int64_t> shuffled_indices(int64_t n, Rng& rng);

}  // namespace mixtrain
