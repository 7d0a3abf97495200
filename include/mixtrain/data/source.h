// Where training data comes from: a DataSource holds a train and a validation split of either
// examples (rows: an input and a target each) or one token stream (a language model's), and
// hands out batches of them on the host. open_data() reads the formats users have:
//
//   fashion-mnist[:DIR]          Fashion-MNIST, or any MNIST-layout IDX set, from DIR (each file
//                                gzipped or plain): the train-* files are the training split,
//                                the t10k-* files the validation split; classes: max label + 1
//   text:PATH                    a file's bytes as tokens (vocabulary 256); warns when the file
//                                looks like a token file
//   tokens:TRAIN[,VAL]           uint16 token files: llm.c's (a 256 × int32 header, magic
//                                20240520, version 1, the token count in slot 2) or headerless
//                                nanoGPT ones; VAL, when given, is the validation split
//   npy:FEATURES.npy,TARGETS.npy float32 or uint8 features [N, ...] (a 1-d array: one feature
//                                each), C order; integer (or bool) targets [N] are classes,
//                                float targets [N] or [N, K] values to regress
//   csv:PATH[,target=COLUMN]     numeric columns, a header row when the first row is not all
//                                numbers; the target column by name or 0-based index (the last
//                                by default); integer targets >= 0 are classes, others values
//
//   auto data = open_data("npy:x.npy,y.npy");  // the last 10% held out for validation
//   std::vector<int64_t> idx{0, 5, 9};
//   Examples b = data->rows(Split::train, idx);  // inputs f32 [3, F], targets i64 [3]
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mixtrain/random.h"
#include "mixtrain/tensor.h"

namespace mixtrain {

enum class Split : uint8_t { train, validation };
/// "train", "validation".
const char* split_name(Split s);

/// What a source's targets are, which says which loss fits them.
enum class TargetKind : uint8_t {
  classes,     ///< one class index per example, i64 [B]: cross-entropy; accuracy reported
  values,      ///< K float values per example, f32 [B, K]: a regression (MSE)
  next_token,  ///< a token stream: each position's target is the next token, i64 [B, T]
};
const char* target_kind_name(TargetKind k);

/// A batch on the host. classes/values: inputs f32 [B, input_shape...] (decoded: u8 pixels are
/// v / 255), targets i64 [B] or f32 [B, K]. next_token: inputs and targets i64 [B, T], targets
/// the inputs shifted by one token.
struct Examples {
  Tensor inputs;
  Tensor targets;
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  /// The spec it was opened from (or a name): every message about the data names it.
  virtual std::string name() const = 0;
  virtual TargetKind target_kind() const = 0;
  /// Examples in a split; for a token stream, tokens.
  virtual int64_t size(Split s) const = 0;
  /// One example's input shape ([784] for Fashion-MNIST); [] for a token stream.
  virtual Shape input_shape() const = 0;
  /// classes: the number of classes; values: values per example (K); next_token: the vocabulary.
  virtual int64_t output_size() const = 0;
  /// Examples idx[0], idx[1], ... of a split (classes and values sources). Throws ShapeError
  /// naming the source, the split and an index out of range. The base class's throws
  /// ConfigError: a token stream has no rows ("text:PATH is a token stream: ask for windows").
  virtual Examples rows(Split s, std::span<const int64_t> idx) const;
  /// Windows of context + 1 consecutive tokens starting at starts[0], starts[1], ... of a
  /// split (next_token sources): inputs tokens [start, start + context), targets one further.
  /// Throws ShapeError naming a window past the split's end, ConfigError for context < 1. The
  /// base class's throws ConfigError: examples have no windows.
  virtual Examples windows(Split s, std::span<const int64_t> starts, int64_t context) const;
  /// What opening it found worth saying but not refusing (a file that looks like another
  /// format, say), one sentence each; the trainer passes them to its callbacks.
  const std::vector<std::string>& warnings() const { return warnings_; }

 protected:
  std::vector<std::string> warnings_;
};

/// Where open_data("fashion-mnist") looks (Debian's dataset-fashion-mnist package), and the
/// names of Fashion-MNIST's 10 classes, by label.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
inline constexpr std::array<const char*, 10> kFashionMnistClasses = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

struct DataOptions {
  /// Sources without a validation split of their own (all but fashion-mnist and tokens with
  /// VAL) hold out this fraction from the end, rounded down, keeping at least one example or
  /// token for training. In [0, 1), else ConfigError.
  double validation_fraction = 0.1;
  /// tokens: the vocabulary (0: the largest token in the files + 1); a token at or above it is
  /// an IOError naming the file and its offset.
  int64_t vocab = 0;
};

/// Opens a data spec (the forms above). Each file is validated as it is read: IOError names the
/// file, the offset and what is wrong (a bad magic, a truncated array, an unsupported dtype, a
/// shape that does not match); ConfigError names a malformed spec.
std::shared_ptr<DataSource> open_data(const std::string& spec, const DataOptions& options = {});

/// The examples of a split in shuffled epochs, resumable: the order of epoch e is a
/// Fisher-Yates shuffle of 0..n-1 drawn from the counter-based Rng (shuffled_indices), and the
/// next epoch's Rng continues where that shuffle stopped (counter + n - 1), so a resumed run
/// draws exactly the batches an uninterrupted one would.
///   EpochSampler s(data->size(Split::train), 128, seed);
///   Examples b = data->rows(Split::train, s.next());
///   auto meta = s.state().to_metadata();  // in a checkpoint; later s.restore(from_metadata)
class EpochSampler {
 public:
  struct Options {
    bool shuffle = true;     ///< false: every epoch in index order
    bool drop_last = false;  ///< skip an epoch's final partial batch
  };
  struct State {
    int64_t epoch = 0;
    int64_t position = 0;  ///< examples consumed in this epoch
    Rng rng;               ///< as it stood before this epoch's shuffle
    bool operator==(const State& o) const {
      return epoch == o.epoch && position == o.position && rng.seed == o.rng.seed &&
             rng.counter == o.rng.counter;
    }
    /// As string pairs (for a checkpoint's safetensors __metadata__), keys prefixed by prefix:
    /// epoch, position, rng_seed, rng_counter.
    std::map<std::string, std::string> to_metadata(const std::string& prefix = "data.") const;
    /// Parses to_metadata()'s output; throws ConfigError naming a missing or malformed key.
    static State from_metadata(const std::map<std::string, std::string>& m,
                               const std::string& prefix = "data.");
  };
  /// n examples in batches of `batch`; ConfigError for n < 1 or batch < 1 (or drop_last with
  /// fewer than one batch of examples).
  EpochSampler(int64_t n, int64_t batch, uint64_t seed);
  EpochSampler(int64_t n, int64_t batch, uint64_t seed, Options opt);
  /// The next batch's example indices (an epoch's last batch may be smaller unless
  /// drop_last); moves to the next epoch, reshuffled, when this one is used up.
  std::vector<int64_t> next();
  /// Batches per epoch (counting a final partial batch unless drop_last).
  int64_t batches_per_epoch() const {
    return opt_.drop_last ? n_ / batch_ : (n_ + batch_ - 1) / batch_;
  }
  int64_t size() const { return n_; }
  int64_t batch() const { return batch_; }
  const State& state() const { return state_; }
  /// This epoch's order (example indices).
  const std::vector<int64_t>& order() const { return order_; }
  /// Resumes from a saved state; ConfigError if it does not fit (a position past n).
  void restore(const State& s);

 private:
  void start_epoch();
  int64_t n_, batch_;
  Options opt_;
  State state_;
  std::vector<int64_t> order_;
};

}  // namespace mixtrain
