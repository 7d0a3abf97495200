// A task is a model, its data and its loss: what the trainer asks for a micro-batch's loss, an
// evaluation, and the data order and dropout state a checkpoint keeps. One class serves every
// model on every source: examples (classes or values) are drawn in shuffled epochs, token
// streams as windows at random starts.
#pragma once

#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "mixtrain/amp/policy.h"
#include "mixtrain/data/source.h"
#include "mixtrain/train/config.h"
#include "mixtrain/train/model.h"

namespace mixtrain::train {

struct EvalResult {
  double loss = NAN;
  double accuracy = -1.0;  ///< classes only
};

// Distinct streams from one seed: model init, data order, dropout.
constexpr uint64_t kInitStream = 0x1000, kDataStream = 0x2000, kDropoutStream = 0x3000;

class Task {
 public:
  /// Checks that the source can feed a run of cfg (a window needs context + 1 tokens, the
  /// validation split at least one example or window) before anything is built.
  Task(Model model, std::shared_ptr<DataSource> data, Loss loss, const TrainConfig& cfg);

  nn::Module& module() { return *model_.module; }
  /// The modules `--precision fp8` keeps in bf16 under --bf16-modules `asked` (empty or "auto":
  /// the model's edges, Model::input and Model::head; "auto" in a list adds them; "none": no
  /// module), each checked to exist: ConfigError names an unknown one.
  std::vector<std::string> bf16_under_fp8(const std::vector<std::string>& asked);
  /// Where the model lives and its batches are uploaded to (cfg.device).
  Device device() const { return device_; }
  const DataSource& data() const { return *data_; }
  Loss loss() const { return loss_; }
  /// Optimizer steps in one pass over the training data at this batch size.
  int64_t steps_per_epoch(int64_t batch) const;
  /// Draws the next micro-batch of `rows` rows and returns its mean loss (fp32 scalar). Called
  /// inside the run's precision scope.
  Variable train_loss(int64_t rows);
  /// Loss (and accuracy) on the validation split, without the tape, in eval mode.
  EvalResult evaluate(const amp::Policy& policy, const TrainConfig& cfg);
  /// Samples per row (1) or tokens per row (context), and their name for throughput.
  int64_t items_per_sample() const { return tokens() ? context_ : 1; }
  const char* items_name() const { return tokens() ? "tokens" : "samples"; }
  /// Examples: an evaluation after each epoch (token streams have no epochs to speak of).
  bool eval_each_epoch() const { return !tokens(); }
  /// Data order and dropout RNG state, for checkpoints.
  std::map<std::string, std::string> state() const;
  void restore(const std::map<std::string, std::string>& state);

  /// When set, train_loss records the largest |output| (the doctor checks it against fp16's
  /// range; off in training, where it would be an extra pass over the outputs).
  bool track_output_max = false;
  double last_output_max_abs() const { return output_max_abs_; }

  /// Data parallel: train_loss draws the global micro-batch (the same on every rank, so data
  /// order and checkpoints do not depend on the rank count) and keeps rows
  /// [rows*rank/count, rows*(rank+1)/count) of it.
  int shard_rank = 0, shard_count = 1;

 private:
  bool tokens() const { return data_->target_kind() == TargetKind::next_token; }
  Tensor shard_rows(const Tensor& t) const;
  Model model_;
  Device device_ = Device::cpu;
  std::shared_ptr<DataSource> data_;
  Loss loss_;
  int64_t micro_, context_;
  std::optional<EpochSampler> sampler_;  ///< examples
  Rng data_rng_;                         ///< token streams: window starts
  Rng dropout_rng_;
  double output_max_abs_ = 0;
};

/// cfg.device selected for this process (select_device) and returned: ConfigError for a
/// malformed spec, BackendError "--device SPEC: why" when the device cannot be used (a build
/// without CUDA, no GPU). The same spec again selects nothing new.
Device use_device(const std::string& spec);

/// The task for cfg.model (registered) on cfg.data, weights initialised from cfg.seed.
std::unique_ptr<Task> make_task(const TrainConfig& cfg);
/// The task for a factory's model on a source.
std::unique_ptr<Task> make_task(const TrainConfig& cfg, const ModelFactory& model,
                                std::shared_ptr<DataSource> data);

}  // namespace mixtrain::train
