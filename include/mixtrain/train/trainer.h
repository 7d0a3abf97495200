// The trainer: any model (train/model.h) on any data source (data/source.h) under a precision
// policy, with the optimizer, the loss scaler, gradient accumulation, clipping, schedules, data
// parallelism, evaluation, metrics.jsonl, summary.json, atomic checkpoints and bit-exact
// resume. It prints nothing: what a run has to say reaches the caller through Callbacks.
//
//   train::TrainConfig cfg;
//   cfg.precision = "bf16";
//   cfg.steps = 500;
//   cfg.out = "runs/mine";
//   train::Trainer t(cfg, train::Model::of(net), open_data("npy:x.npy,y.npy"));
//   train::TrainSummary s = t.run();    // s.val_loss, s.test_accuracy, ...
#pragma once

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mixtrain/data/source.h"
#include "mixtrain/train/config.h"
#include "mixtrain/train/model.h"

namespace mixtrain::train {

/// What a finished run reports (also written as OUT/summary.json).
struct TrainSummary {
  std::string precision;       ///< the policy, e.g. "bf16 (p=f32,c=bf16,o=f32, no loss scaling)"
  std::string precision_name;  ///< fp32 | bf16 | fp16 | custom (after auto is resolved)
  std::string model;
  std::string data;
  std::string loss;  ///< loss_name: cross-entropy, mse or l1
  int64_t parameters = 0;
  int64_t steps = 0;
  int64_t skipped_steps = 0;
  double final_loss_scale = 1.0;
  double final_train_loss = 0.0;  ///< mean training loss over the last logging window
  double val_loss = 0.0;          ///< the loss on the validation split (NaN when stopped early)
  double test_accuracy = -1.0;    ///< classification only (fraction in [0, 1]); -1 otherwise
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
  /// The model state this rank holds (every run): compute weights + the fp32 gradients it keeps
  /// (its shard with ZeRO-2) + fp32 masters held apart from the weights + optimizer moments.
  int64_t model_state_bytes_per_rank = 0;
  int64_t weight_bytes_per_rank = 0, gradient_bytes_per_rank = 0, moment_bytes_per_rank = 0;
  /// ZeRO-3, of the weights and gradients: the most gathered at once, the most held before
  /// their reduce-scatter at once
  int64_t gathered_weight_bytes_per_rank = 0, unreduced_gradient_bytes_per_rank = 0;
  std::string out_dir;
  std::string device = "cpu";  ///< where it ran (--device; in summary.json unless cpu)
  /// Callbacks::on_step asked to stop: the run was checkpointed at `steps` and not evaluated
  /// (summary.json is not written); Trainer::run on the same folder with resume continues it.
  bool stopped = false;
  // data parallel (reported when ranks > 1 or zero): rank 0's figures
  int64_t ranks = 1;
  bool zero = false;
  int64_t zero_stage = 0;  ///< 0, 1 (optimizer state sharded), 2 (and gradients), 3 (weights)
  int64_t comm_bytes_per_step = 0;  ///< payload bytes this rank sent in the last step
  /// of which, by collective ("alltoallv": the gradient reduce-scatter; "allgatherv": the
  /// weight all-gathers; "allreduce": scalars)
  std::map<std::string, int64_t> comm_bytes_by_collective;
  int64_t optimizer_state_bytes_per_rank = 0;  ///< fp32 master + moments this rank holds
  int64_t master_bytes_per_rank = 0;           ///< of which fp32 master
  /// The summary as a JSON object (the contents of summary.json).
  std::string to_json() const;
};

/// What a run reports at the start.
struct RunStart {
  std::string model, data, out_dir;
  std::string policy;      ///< the resolved precision policy in words
  std::string policy_why;  ///< how auto chose it ("" when the policy was given)
  std::string loss;        ///< loss_name of the loss in use
  std::string device;      ///< --device: cpu, cuda, cuda:N
  int64_t parameters = 0;
  int64_t total_steps = 0;
  int64_t resumed_at = -1;  ///< the step a resumed run continues from; -1 for a fresh run
  const char* items_name = "samples";  ///< what throughput counts: samples or tokens
};

/// One logged step (each --log-every steps, each evaluation during the run, and the last step):
/// the line also written to OUT/metrics.jsonl. The evaluation after the last step is the
/// summary's (on_end).
struct StepLog {
  int64_t step = 0, total_steps = 0;
  double loss = NAN;       ///< this step's mean loss over its micro-batches (NaN: non-finite)
  double mean_loss = NAN;  ///< mean over the finite steps since the last line
  double lr = 0, loss_scale = 1, grad_norm = NAN;
  bool skipped = false;  ///< this step's update was skipped (non-finite gradients)
  std::string skip_reason;
  int64_t skipped_total = 0;
  double throughput = 0;  ///< items/s over the window since the last line
  const char* items_name = "samples";
  double eta_s = NAN;      ///< training time left at the run's mean step time
  bool evaluated = false;  ///< an evaluation ran at this step: val_loss (and accuracy) are set
  double val_loss = NAN;
  double accuracy = -1;  ///< classes only
};

/// How a run talks to its caller. Every method has a default that does nothing; they are
/// called on the thread that called run() (on every rank under mpirun: only rank 0 usually
/// prints, and dist::rank() says which this is).
class Callbacks {
 public:
  virtual ~Callbacks() = default;
  virtual void on_start(const RunStart&) {}
  virtual void on_log(const StepLog&) {}
  /// After every optimizer step; false stops the run: it is checkpointed and run() returns
  /// with summary.stopped set (under mpirun every rank must answer alike).
  virtual bool on_step(int64_t step) { return true; }
  /// After every optimizer step, just before on_step, whatever log_every says: the step's
  /// training loss (the mean over its micro-batches and ranks; NaN or Inf when non-finite).
  /// compare records the curves this way without logging every step.
  virtual void on_train_loss(int64_t step, double loss) {}
  /// Something worth saying that does not stop the run (a skipped corrupt checkpoint, a data
  /// file that looks like another format), one sentence.
  virtual void on_warning(const std::string& message) {}
  virtual void on_end(const TrainSummary&) {}
};

/// The checks the Trainer's constructor runs on a config, without building anything or
/// reading data: throws ConfigError naming the flag (the CLI runs them before it touches disk;
/// its parse-only path and fuzz target use them alone).
void validate_config(const TrainConfig& cfg);

/// The config a run folder's config.json holds (IOError naming the file when it is missing or
/// unreadable; ConfigError when a value is malformed).
TrainConfig load_run_config(const std::string& run_dir);
/// A field in which one config would be another run than another: its config.json key
/// ("grad_accum") and both values as JSON ("\"bf16\"", "4"; "-" where one lacks it).
struct ConfigDifference {
  std::string key, run_value, given_value;
};
/// The fields in which `given` would be another run than `run`: a resume must agree on them
/// (steps, epochs, the rank layout and run control may change).
std::vector<ConfigDifference> run_differences(const TrainConfig& run, const TrainConfig& given);

class Trainer {
 public:
  /// A registered model (cfg.model, train/model.h) on cfg.data (open_data; the model's default
  /// data when empty). Validates the config (ConfigError naming the flag), opens the data,
  /// builds the model and prepares the run folder (checked writable) in that order, so a bad
  /// value or file creates nothing on disk.
  explicit Trainer(TrainConfig cfg, Callbacks* callbacks = nullptr);
  /// Your model, built by `model` from the data and an Rng seeded by cfg.seed (compare builds
  /// one per precision this way). cfg.model names it in the run folder ("custom" when empty);
  /// cfg.data is set to data->name().
  Trainer(TrainConfig cfg, ModelFactory model, std::shared_ptr<DataSource> data,
          Callbacks* callbacks = nullptr);
  /// Your model, already built (its weights as they are; the Trainer sets their compute dtype).
  Trainer(TrainConfig cfg, Model model, std::shared_ptr<DataSource> data,
          Callbacks* callbacks = nullptr);
  ~Trainer();
  /// Trains to the end (resuming first if cfg.resume), evaluates, writes summary.json.
  TrainSummary run();
  /// The resolved precision policy in words (auto says what it chose and why).
  std::string policy_description() const;
  /// The config as the run uses it (defaults resolved; what config.json holds).
  const TrainConfig& config() const;
  /// The model being trained: after run(), its trained weights (save with nn::save_module).
  nn::Module& module();
  const DataSource& data() const;
  /// Where the TensorBoard event files go (cfg.tensorboard; default OUT/tensorboard). compare
  /// points each precision at its own sub-folder of one folder, so TensorBoard overlays them.
  void set_tensorboard_dir(const std::string& dir);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Runs cfg once per precision (same seed, same data order), fp32 first as the control when
/// listed; each run in OUT/<precision>. A spec PREC:MODE sets the loss scaling ("fp16:none").
/// With cfg.tensorboard the event files go to OUT/tensorboard/<precision>. OUT/compare.json
/// holds the summaries and, per run, these per-step curves ("per_step").
struct CompareRun {
  std::string label;
  TrainSummary summary;
  std::vector<int64_t> steps;  ///< every step the run took
  std::vector<double> loss;    ///< its training loss at each of them (NaN: non-finite)
  /// loss minus the fp32 control's at the same step (the first plain "fp32" spec; 0 for the
  /// control itself, NaN where either is non-finite); empty when no fp32 run is compared.
  std::vector<double> gap_to_fp32;
  /// gap_to_fp32 smoothed by a trailing mean over compare_smoothing_window steps.
  std::vector<double> gap_to_fp32_smoothed;
};
/// The window of compare's smoothed gap for runs of `steps` steps: max(1, steps / 20).
int64_t compare_smoothing_window(int64_t steps);
/// A trailing moving average: out[i] is the mean of the finite values among v[i-window+1..i]
/// (fewer at the start), NaN when there are none.
std::vector<double> trailing_mean(const std::vector<double>& v, int64_t window);
std::vector<CompareRun> compare(const TrainConfig& cfg, const std::vector<std::string>& precisions,
                                ModelFactory model, std::shared_ptr<DataSource> data,
                                Callbacks* callbacks = nullptr);
/// compare for a registered model (cfg.model) on cfg.data.
std::vector<CompareRun> compare(const TrainConfig& cfg, const std::vector<std::string>& precisions,
                                Callbacks* callbacks = nullptr);

struct ExportResult {
  int64_t tensors = 0;
  std::string source;                 ///< the checkpoint file exported
  std::vector<std::string> warnings;  ///< newer checkpoints skipped as unreadable, and why
};
/// Writes the weights of the newest checkpoint in RUN_DIR that loads (a corrupt newer one is
/// skipped with a warning, as resume does) as a safetensors file of `dtype` (fp32, bf16 or
/// fp16) loadable by Python's safetensors and torch.
ExportResult export_weights(const std::string& run_dir, const std::string& dtype,
                            const std::string& out_path);

/// Peak resident set size of this process since the last reset_peak_rss() (or its start), in
/// bytes: Linux's VmHWM.
int64_t peak_rss_bytes();
/// Starts a new peak RSS window (Linux: writes 5 to /proc/self/clear_refs; elsewhere a no-op,
/// and the peak stays the process's). Trainer::run calls it, so each run of `compare` reports
/// its own peak, not the largest of the runs before it.
void reset_peak_rss();

}  // namespace mixtrain::train
