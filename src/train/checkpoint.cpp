// Checkpoint files and run folders (see checkpoint.h).
#include "train/checkpoint.h"

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "dist/data_parallel.h"
#include "mixtrain/amp/loss_scaler.h"
#include "mixtrain/io/atomic_file.h"
#include "mixtrain/io/safetensors.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/optim/schedule.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mixtrain::train {

namespace {

constexpr const char* kFormat = "mixtrain-checkpoint-1";

std::string exact(double v) { return fmt::format("{:a}", v); }  // hex float: round-trips exactly

const std::string& meta(const std::map<std::string, std::string>& m, const std::string& key,
                        const fs::path& file) {
  auto it = m.find(key);
  if (it == m.end())
    throw IOError(fmt::format("{}: checkpoint metadata lacks '{}'", file.string(), key));
  return it->second;
}

}  // namespace

json run_identity(const json& config) {
  json j = config;
  j.erase("steps");
  j.erase("epochs");
  // Run control: how often to log, evaluate and checkpoint, how long a collective may wait.
  for (const char* k :
       {"log_every", "eval_every", "eval_batches", "checkpoint_every", "checkpoint_minutes",
        "keep_checkpoints", "diagnose_every", "nonfinite_patience", "comm_timeout"})
    j.erase(k);
  // How the run is spread over ranks is not part of its identity: a checkpoint resumes with
  // or without ZeRO-1, on any number of ranks.
  j.erase("zero");
  j.erase("allreduce");
  j.erase("overlap_allreduce");
  j.erase("bucket_kib");
  j.erase("reshard_after_forward");
  j.erase("prefetch");
  // Recomputing activations changes memory, not one bit of the run: a resume may switch it.
  j.erase("checkpoint_activations");
  if (!j.contains("grad_dtype")) j["grad_dtype"] = "fp32";  // runs from before the flag
  if (!j.contains("fp32_modules")) j["fp32_modules"] = json::array();
  return j;
}

std::vector<fs::path> list_checkpoints(const fs::path& out) {
  std::vector<fs::path> files;
  const fs::path dir = out / "checkpoints";
  if (!fs::exists(dir)) return files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && e.path().extension() == ".safetensors")
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end(), std::greater<>());  // zero-padded: lexical = numeric
  return files;
}

void prepare_run_dir(const fs::path& out, const json& config, bool resume, bool force) {
  std::error_code ec;
  fs::create_directories(out / "checkpoints", ec);
  if (ec)
    throw IOError(fmt::format("cannot create the run folder {}: {}", (out / "checkpoints").string(),
                              ec.message()));
  const fs::path cfg_path = out / "config.json";
  const bool has_run = fs::exists(cfg_path) || !list_checkpoints(out).empty();
  if (resume && !has_run)
    throw ConfigError(fmt::format(
        "--resume {}: no run to resume there (no config.json, no checkpoints); use --out to start "
        "a new run",
        out.string()));
  // A write killed midway leaves its temp file (AtomicFile: .NAME.tmp.XXXXXX; the rename never
  // happened, so no checkpoint or config is damaged). Only one process writes a run folder, so
  // any such file now is garbage from an earlier process.
  for (const fs::path& dir : {out, out / "checkpoints"})
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.size() > 1 && n[0] == '.' && n.find(".tmp.") != std::string::npos)
        fs::remove(e.path(), ec);
    }
  if (has_run && !force) {
    json old;
    try {
      std::ifstream in(cfg_path);
      old = json::parse(in);
    } catch (const std::exception&) {
      throw ConfigError(fmt::format(
          "{} already holds a run whose config.json cannot be read; use --force to start a fresh "
          "run there, or another --out",
          out.string()));
    }
    if (run_identity(old) != run_identity(config)) {
      std::string diff;
      const json id = run_identity(config);  // items() of a temporary would dangle in the loop
      for (auto& [k, v] : id.items())
        if (!old.contains(k) || old[k] != v)
          diff += fmt::format(" {}: {} -> {};", k, old.contains(k) ? old[k].dump() : "-", v.dump());
      throw ConfigError(fmt::format(
          "{} already holds a different run (differs in{}); {}", out.string(), diff,
          resume ? "resume it with its own flags (--resume alone), or start a new run with "
                   "another --out"
                 : "choose another --out, or --force to start a fresh run there (its "
                   "checkpoints are deleted)"));
    }
    if (!resume)
      throw ConfigError(fmt::format(
          "{} already holds this run; use --resume {} to continue it, or --force to start over",
          out.string(), out.string()));
  }
  if (force && resume)
    throw ConfigError("--force cannot be combined with --resume (it would start the run over)");
  // A folder that cannot be written is found now, not when the first checkpoint is due: a
  // probe file in checkpoints/ (config.json, below, probes the folder itself).
  {
    const fs::path probe = out / "checkpoints" / ".write-probe";
    std::ofstream f(probe);
    f << "ok";
    f.close();
    if (!f)
      throw IOError(fmt::format("cannot write checkpoints into {}: {}",
                                (out / "checkpoints").string(), std::strerror(errno)));
    fs::remove(probe, ec);
  }
  // --force: a fresh run. The old run's files go first, then the new config; killed between
  // the two, the folder holds the old config and no checkpoints (a resume starts the old run
  // from its first step), never a config that its checkpoints do not belong to.
  if (force) {
    for (const auto& f : list_checkpoints(out))
      if (!fs::remove(f, ec) && ec)
        throw IOError(fmt::format("--force: cannot delete {}: {}", f.string(), ec.message()));
    for (const char* name : {"metrics.jsonl", "summary.json", "diagnostics.jsonl"})
      fs::remove(out / name, ec);
  }
  // A resume rewrites it too: the identity fields agree, and a longer --steps or another
  // cadence given with the resume is what the next bare --resume continues with.
  const std::string text = config.dump(2) + "\n";
  write_file_atomic(cfg_path.string(), text.data(), text.size());
}

void save_checkpoint(const fs::path& out, const CheckpointState& st, const json& config,
                     int64_t step, int64_t skipped, double train_seconds, int64_t train_items,
                     int64_t keep) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  const bool zero = st.dp && st.dp->zero();
  // ZeRO-1: a collective that also makes every parameter's fp32 master current.
  // ZeRO-1: "param.*" and "optim.*" gathered from the shards to rank 0 (a collective), in
  // the names and shapes a plain run writes.
  if (zero) {
    tensors = st.dp->gather_state(*st.opt);
  } else {
    for (auto& [name, p] : st.task->module().named_parameters())
      tensors.emplace_back("param." + name, p->master);
    for (auto& [name, t] : st.opt->state_tensors()) tensors.emplace_back(name, t);
  }
  if (st.dp && st.dp->rank() != 0) return;  // written once, by rank 0
  for (auto& [name, t] : st.scaler->state().to_tensors()) tensors.emplace_back(name, t);
  std::map<std::string, std::string> m;
  m["mixtrain.format"] = kFormat;
  m["mixtrain.config"] = config.dump();
  m["mixtrain.step"] = std::to_string(step);
  m["mixtrain.skipped"] = std::to_string(skipped);
  m["mixtrain.train_seconds"] = exact(train_seconds);
  m["mixtrain.train_items"] = std::to_string(train_items);
  m["schedule.position"] = std::to_string(st.schedule->position());
  for (auto& [k, v] : st.task->state()) m["task." + k] = v;
  const fs::path file = out / "checkpoints" / fmt::format("step-{:08d}.safetensors", step);
  save_safetensors(file.string(), tensors, m);
  const auto files = list_checkpoints(out);
  for (size_t i = static_cast<size_t>(std::max<int64_t>(keep, 1)); i < files.size(); ++i) {
    std::error_code ec;
    fs::remove(files[i], ec);
  }
}

namespace {

std::map<std::string, std::string> with_prefix(const std::map<std::string, std::string>& m,
                                               const std::string& prefix) {
  std::map<std::string, std::string> r;
  for (auto& [k, v] : m)
    if (k.rfind(prefix, 0) == 0) r[k.substr(prefix.size())] = v;
  return r;
}

RestoredCounters restore_from(const fs::path& file, const CheckpointState& st, const json& config) {
  SafetensorsFile f = load_safetensors(file.string());
  const auto& m = f.metadata();
  if (meta(m, "mixtrain.format", file) != kFormat)
    throw IOError(fmt::format("{}: not a {} file", file.string(), kFormat));
  const json saved = json::parse(meta(m, "mixtrain.config", file));
  if (run_identity(saved) != run_identity(config))
    throw IOError(
        fmt::format("{}: checkpoint belongs to a different run configuration", file.string()));
  // Validate everything before changing anything, so a bad file leaves the model untouched.
  auto params = st.task->module().named_parameters();
  // (ZeRO-1 releases the model's masters: fp32 of the weight's shape is what it saves.)
  for (auto& [name, p] : params)
    f.require("param." + name, p->master.defined() ? p->master.dtype() : DType::f32,
              p->weight.shape());
  std::vector<std::pair<std::string, Tensor>> opt_state, scaler_tensors;
  for (const auto& n : f.names()) {
    if (n.rfind("optim.", 0) == 0) opt_state.emplace_back(n, f.get(n));
    if (n.rfind("loss_scaler.", 0) == 0) scaler_tensors.emplace_back(n, f.get(n));
  }
  const amp::LossScalerState scaler_state = amp::LossScalerState::from_tensors(scaler_tensors);
  const bool zero = st.dp && st.dp->zero();
  if (zero) {
    // This rank's slice of the masters and moments; the compute weights in full.
    for (auto& [name, p] : params) opt_state.emplace_back("param." + name, f.get("param." + name));
    st.dp->load_state(*st.opt, opt_state);
  } else {
    st.opt->load_state(opt_state);
    for (auto& [name, p] : params) {
      p->master.copy_from(f.get("param." + name));
      p->refresh();
    }
  }
  st.scaler->load_state(scaler_state);
  st.schedule->set_position(std::stoll(meta(m, "schedule.position", file)));
  st.task->restore(with_prefix(m, "task."));
  RestoredCounters r;
  r.step = std::stoll(meta(m, "mixtrain.step", file));
  r.skipped = std::stoll(meta(m, "mixtrain.skipped", file));
  r.train_seconds = std::strtod(meta(m, "mixtrain.train_seconds", file).c_str(), nullptr);
  r.train_items = std::stoll(meta(m, "mixtrain.train_items", file));
  r.file = file;
  return r;
}

}  // namespace

std::optional<RestoredCounters> load_latest_checkpoint(const fs::path& out,
                                                       const CheckpointState& st,
                                                       const json& config,
                                                       std::vector<std::string>* warnings) {
  const auto files = list_checkpoints(out);
  std::string why;
  for (const auto& file : files) {
    try {
      return restore_from(file, st, config);
    } catch (const IOError& e) {
      if (warnings)
        warnings->push_back(fmt::format("skipping unreadable checkpoint: {}", e.what()));
      why += fmt::format("\n  {}", e.what());
    }
  }
  // Checkpoints exist but none loads: starting over silently would throw the run away.
  if (!files.empty())
    throw IOError(fmt::format(
        "{}: none of its {} checkpoint(s) could be loaded:{}\nuse --force without --resume to "
        "start the run over",
        out.string(), files.size(), why));
  return std::nullopt;
}

void truncate_metrics(const fs::path& metrics, int64_t step) {
  std::ifstream in(metrics);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (json::parse(line).value("step", int64_t{0}) > step) continue;
    } catch (const std::exception&) {
      continue;  // a line cut by a kill mid-write
    }
    kept += line + "\n";
  }
  in.close();
  write_file_atomic(metrics.string(), kept.data(), kept.size());
}

}  // namespace mixtrain::train
