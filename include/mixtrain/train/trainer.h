// The trainer: model + data + policy + optimizer + loss scaler, the step loop, evaluation,
// metrics.jsonl, summary.json, atomic checkpoints and bit-exact resume.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "mixtrain/train/config.h"

namespace mixtrain::train {

/// What a finished run reports (also written as OUT/summary.json).
struct TrainSummary {
  std::string precision;       ///< the policy, e.g. "bf16 (p=f32,c=bf16,o=f32, no loss scaling)"
  std::string precision_name;  ///< fp32 | bf16 | fp16 | custom (after auto is resolved)
  std::string model;
  std::string data;
  int64_t parameters = 0;
  int64_t steps = 0;
  int64_t skipped_steps = 0;
  double final_loss_scale = 1.0;
  double final_train_loss = 0.0;  ///< mean training loss over the last logging window
  double val_loss = 0.0;
  double test_accuracy = -1.0;  ///< classification only (fraction in [0, 1]); -1 otherwise
  double wall_s = 0.0;
  double throughput = 0.0;  ///< samples/s (mlp) or tokens/s (gpt), training steps only
  std::string throughput_unit;
  double train_s = 0.0;     ///< seconds inside training steps (throughput's denominator)
  double diagnose_s = 0.0;  ///< of train_s: the --diagnose-every passes
  int64_t peak_tensor_bytes = 0;
  int64_t peak_rss_bytes = 0;
  /// Tensor bytes the tape keeps for backward at the end of a forward pass, per dtype
  /// ({"bf16": n, ...}; the largest micro-batch of the run): what activation checkpointing
  /// and 16-bit activations shrink.
  std::map<std::string, int64_t> activation_bytes;
  std::string out_dir;
  // data parallel (reported when ranks > 1 or zero): rank 0's figures
  int64_t ranks = 1;
  bool zero = false;
  int64_t comm_bytes_per_step = 0;             ///< payload bytes this rank sent in the last step
  int64_t optimizer_state_bytes_per_rank = 0;  ///< fp32 master + moments this rank holds
  int64_t master_bytes_per_rank = 0;           ///< of which fp32 master
  /// The summary as a JSON object (the contents of summary.json).
  std::string to_json() const;
};

/// The checks the Trainer's constructor runs on a config, without building anything: throws
/// ConfigError naming the flag (the CLI's parse-only path and its fuzz target use it).
void validate_config(const TrainConfig& cfg);

class Trainer {
 public:
  /// Validates the config (throws ConfigError naming the flag) and prepares the run folder.
  explicit Trainer(TrainConfig cfg);
  ~Trainer();
  /// Trains to the end (resuming first if asked), evaluates, writes summary.json.
  TrainSummary run();
  /// The resolved precision policy in words (auto says what it chose and why).
  std::string policy_description() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Writes the weights of the latest checkpoint in RUN_DIR as a safetensors file of `dtype`
/// (f32, bf16 or f16) loadable by Python's safetensors and torch. Returns the tensor count.
int64_t export_weights(const std::string& run_dir, const std::string& dtype,
                       const std::string& out_path);

/// Peak resident set size of this process since the last reset_peak_rss() (or its start), in
/// bytes: Linux's VmHWM.
int64_t peak_rss_bytes();
/// Starts a new peak RSS window (Linux: writes 5 to /proc/self/clear_refs; elsewhere a no-op,
/// and the peak stays the process's). Trainer::run calls it, so each run of `compare` reports
/// its own peak, not the largest of the runs before it.
void reset_peak_rss();

}  // namespace mixtrain::train
