// A task is a model, its data and its loss: the part of training that differs between the MLP
// classifier and the GPT language model. The trainer drives any task the same way.
#pragma once

#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "mixtrain/amp/policy.h"
#include "mixtrain/nn/module.h"
#include "mixtrain/train/config.h"

namespace mixtrain::train {

struct EvalResult {
  double loss = NAN;
  double accuracy = -1.0;  ///< classification only
};

class Task {
 public:
  virtual ~Task() = default;
  virtual nn::Module& module() = 0;
  /// Optimizer steps in one pass over the training data at this batch size.
  virtual int64_t steps_per_epoch(int64_t batch) const = 0;
  /// Draws the next micro-batch of `rows` rows and returns its mean loss (fp32 scalar). Called
  /// inside the run's precision scope.
  virtual Variable train_loss(int64_t rows) = 0;
  /// Loss (and accuracy) on held-out data, without the tape, in eval mode.
  virtual EvalResult evaluate(const amp::Policy& policy, const TrainConfig& cfg) = 0;
  /// Samples per row (1) or tokens per row (context), and their name for throughput.
  virtual int64_t items_per_sample() const = 0;
  virtual const char* items_name() const = 0;
  virtual bool eval_each_epoch() const { return false; }
  /// Data order and dropout RNG state, for checkpoints.
  virtual std::map<std::string, std::string> state() const = 0;
  virtual void restore(const std::map<std::string, std::string>& state) = 0;

  /// When set, train_loss records the largest |output| (the doctor checks it against fp16's
  /// range; off in training, where it would be an extra pass over the logits).
  bool track_output_max = false;
  double last_output_max_abs() const { return output_max_abs_; }

  /// Data parallel: train_loss draws the global micro-batch (the same on every rank, so data
  /// order and checkpoints do not depend on the rank count) and keeps rows
  /// [rows*rank/count, rows*(rank+1)/count) of it.
  int shard_rank = 0, shard_count = 1;

 protected:
  void observe_output(const Variable& out);
  /// This rank's rows of a global batch tensor (dim 0).
  Tensor shard_rows(const Tensor& t) const;
  double output_max_abs_ = 0;
};

/// The task for cfg.model / cfg.data, with weights in the policy's compute dtype.
std::unique_ptr<Task> make_task(const TrainConfig& cfg, const amp::Policy& policy);

}  // namespace mixtrain::train
