// Run folders and checkpoints: OUT/config.json, OUT/metrics.jsonl, OUT/summary.json and
// OUT/checkpoints/step-NNNNNNNN.safetensors (the last K kept). A checkpoint holds the fp32
// masters, the optimizer state, the loss scaler, the schedule, the data order and RNG states,
// and the config; it is written atomically, and a corrupt newest one falls back to the one before.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "train/task.h"

namespace mixtrain::dist {
class DataParallel;
}
namespace mixtrain::amp {
class LossScaler;
}
namespace mixtrain::optim {
class Optimizer;
class LrScheduler;
}  // namespace mixtrain::optim

namespace mixtrain::train {

/// Pointers to everything a checkpoint saves and restores.
struct CheckpointState {
  Task* task;
  optim::Optimizer* opt;
  amp::LossScaler* scaler;
  optim::LrScheduler* schedule;
  /// Data parallel (may be null): only rank 0 writes; ZeRO-1 shards are gathered first.
  dist::DataParallel* dp = nullptr;
};

struct RestoredCounters {
  int64_t step = 0, skipped = 0, train_items = 0;
  double train_seconds = 0;
  std::filesystem::path file;
};

nlohmann::json config_to_json(const TrainConfig& c);
/// The fields of a config that make two runs the same run: all but steps and epochs (a resume
/// may extend a run), the rank layout (ZeRO, wire dtype, buckets), activation recomputation
/// (memory only, same bits) and run control (logging, evaluation and checkpoint cadence).
nlohmann::json run_identity(const nlohmann::json& config);

/// Creates OUT (and OUT/checkpoints) and checks both can be written. Refuses (ConfigError) an
/// OUT that already holds a run unless resuming a run with the same config, or `force` (which
/// deletes the old run's checkpoints and metrics and starts a fresh one; never with resume),
/// and a resume of an OUT that holds no run. Removes temp files left by a save that was killed.
void prepare_run_dir(const std::filesystem::path& out, const nlohmann::json& config, bool resume,
                     bool force);

/// Writes OUT/checkpoints/step-<step>.safetensors atomically, then deletes all but the newest
/// `keep` checkpoints.
void save_checkpoint(const std::filesystem::path& out, const CheckpointState& st,
                     const nlohmann::json& config, int64_t step, int64_t skipped,
                     double train_seconds, int64_t train_items, int64_t keep);

/// Restores the newest checkpoint that loads cleanly (a corrupt one is skipped, with a line in
/// `warnings`). std::nullopt when OUT has none; IOError, naming each file's fault, when it has
/// some but none loads.
std::optional<RestoredCounters> load_latest_checkpoint(const std::filesystem::path& out,
                                                       const CheckpointState& st,
                                                       const nlohmann::json& config,
                                                       std::vector<std::string>* warnings);

/// Drops metrics lines logged after `step` (they belong to the part of the run being redone).
void truncate_metrics(const std::filesystem::path& metrics, int64_t step);

/// Checkpoint files in OUT, newest first.
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& out);

}  // namespace mixtrain::train
