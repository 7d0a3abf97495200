// Run folders and checkpoints: OUT/config.json, OUT/metrics.jsonl, OUT/summary.json and
// OUT/checkpoints/step-NNNNNNNN.safetensors, or with ZeRO the directory
// OUT/checkpoints/step-NNNNNNNN/ (each rank's rank-R-of-N.safetensors and a manifest.json);
// the last K are kept. A checkpoint holds the fp32 masters, the optimizer state, the loss
// scaler, the schedule, the data order and RNG states, and the config; it is written
// atomically (a sharded one is complete once its manifest, written last, exists), and a corrupt
// or incomplete newest one falls back to the one before.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

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
  /// Data parallel (may be null): without ZeRO rank 0 writes one file; with ZeRO every rank
  /// writes its own shard and rank 0 the manifest.
  dist::DataParallel* dp = nullptr;
};

struct RestoredCounters {
  int64_t step = 0, skipped = 0, train_items = 0;
  double train_seconds = 0;
  std::filesystem::path file;
};

/// A checkpoint's full tensors, in a single file's names and shapes ("param.<name>" fp32
/// masters, "optim.*", "loss_scaler.*"), and its metadata (the single file's keys).
struct CheckpointContents {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads a checkpoint of either layout (a step-N.safetensors file or a sharded step-N/
/// directory, whose shards are consolidated); `prefix` selects the tensors ("param." for the
/// weights alone). No MPI. Throws IOError naming the file and tensor at fault.
CheckpointContents read_checkpoint(const std::filesystem::path& path,
                                   const std::string& prefix = "");

nlohmann::json config_to_json(const TrainConfig& c);
/// The fields of a config that make two runs the same run: all but steps and epochs (a resume
/// may extend a run), the rank layout (ZeRO, wire dtype, buckets), activation recomputation
/// (memory only, same bits) and run control (logging, evaluation and checkpoint cadence).
nlohmann::json run_identity(const nlohmann::json& config);

/// Creates OUT (and OUT/checkpoints) and checks both can be written. Refuses (ConfigError) an
/// OUT that already holds a run unless resuming a run with the same config, or `force` (which
/// deletes the old run's checkpoints and metrics and starts a fresh one; never with resume),
/// and a resume of an OUT that holds no run. Removes temp files left by a save that was killed,
/// and sharded step directories a killed save left without a manifest when a newer checkpoint
/// is complete.
void prepare_run_dir(const std::filesystem::path& out, const nlohmann::json& config, bool resume,
                     bool force);

/// Writes OUT/checkpoints/step-<step>.safetensors atomically (rank 0), or with ZeRO the sharded
/// step-<step>/ (collective: every rank its file, then rank 0 the manifest), then deletes all
/// but the newest `keep` complete checkpoints up to this one and incomplete ones before it.
void save_checkpoint(const std::filesystem::path& out, const CheckpointState& st,
                     const nlohmann::json& config, int64_t step, int64_t skipped,
                     double train_seconds, int64_t train_items, int64_t keep);

/// Restores the newest checkpoint that loads cleanly (a corrupt or incomplete one is skipped,
/// with a line in `warnings`), whatever rank count and ZeRO stage wrote it: each rank reads the
/// parts it holds. Collective with data parallel (every rank takes the same checkpoint).
/// std::nullopt when OUT has none; IOError, naming each file's fault, when it has some but none
/// loads.
std::optional<RestoredCounters> load_latest_checkpoint(const std::filesystem::path& out,
                                                       const CheckpointState& st,
                                                       const nlohmann::json& config,
                                                       std::vector<std::string>* warnings);

/// Drops metrics lines logged after `step` (they belong to the part of the run being redone).
void truncate_metrics(const std::filesystem::path& metrics, int64_t step);

/// Checkpoints in OUT (files and step directories, complete or not), newest first.
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& out);

}  // namespace mixtrain::train
