// Classification data in memory (features [N, F] + labels i64 [N]) and a resumable batch
// iterator with deterministic per-epoch shuffling.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mixtrain/data/source.h"
#include "mixtrain/random.h"
#include "mixtrain/tensor.h"

namespace mixtrain {

/// N examples: features [N, F] and labels i64 [N]. Features stay as they came: an image set's
/// u8 pixels (a quarter of fp32's bytes: Fashion-MNIST's 70000 images are 55 MB, not 220) or
/// floats. The model takes them as fp32, from rows(), gather() and the batch iterator: a u8 value v
/// is v / 255 (torchvision's ToTensor), a float one itself, and with `standardize` every feature x
/// then becomes (x - mean) * inv_std. Decoded as the data set was once stored (fp32 features
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

/// One batch: fp32 features [B, F] (decoded), labels i64 [B] (B may be smaller for an epoch's
/// last batch).
struct Batch {
  Tensor features;
  Tensor labels;
  int64_t epoch = 0;  ///< the epoch this batch belongs to
  int64_t index = 0;  ///< its index within that epoch
};

/// Iterates over a data set in batches, epoch after epoch. The order of epoch e is a
/// Fisher-Yates shuffle drawn from the counter-based Rng, so it depends only on the seed and
/// the epoch: a resumed run sees exactly the batches an uninterrupted one would.
///   BatchIterator it(train, 128, seed);
///   for (int64_t s = 0; s < steps; ++s) { Batch b = it.next(); ... }
///   auto st = it.state();  // save in a checkpoint; later: it.restore(st)
class BatchIterator {
 public:
  /// shuffle (default true), drop_last (skip an epoch's final partial batch; default false).
  using Options = EpochSampler::Options;
  /// The resumable state: epoch, position (examples consumed in this epoch) and the Rng as it
  /// stood before this epoch's shuffle; to_metadata()/from_metadata() for checkpoints.
  using State = EpochSampler::State;

  /// Keeps a reference to data (which must outlive the iterator). Throws ConfigError for a
  /// batch size < 1 or an empty data set (or drop_last with fewer examples than one batch).
  BatchIterator(const ClassificationData& data, int64_t batch_size, uint64_t seed);
  BatchIterator(const ClassificationData& data, int64_t batch_size, uint64_t seed, Options opt);

  /// The next batch; moves to the next epoch (reshuffling) when this one is used up.
  Batch next();
  /// Batches per epoch (counting a final partial batch unless drop_last).
  int64_t batches_per_epoch() const;
  int64_t epoch() const { return sampler_.state().epoch; }
  const State& state() const { return sampler_.state(); }
  /// Resumes from a saved state; throws ConfigError if it does not fit this data set.
  void restore(const State& s);
  /// This epoch's order (example indices).
  const std::vector<int64_t>& order() const { return sampler_.order(); }

 private:
  const ClassificationData& data_;
  EpochSampler sampler_;  // the order: BatchIterator only adds the rows and labels
};

/// Fisher-Yates shuffle of 0..n-1 drawing n-1 values from rng.
std::vector<int64_t> shuffled_indices(int64_t n, Rng& rng);

}  // namespace mixtrain
