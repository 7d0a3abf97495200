// Checkpoint files and run folders (see checkpoint.h).
#include "train/checkpoint.h"

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "dist/data_parallel.h"
#include "mixtrain/amp/fp8.h"
#include "mixtrain/amp/loss_scaler.h"
#include "mixtrain/dist/comm.h"
#include "mixtrain/io/atomic_file.h"
#include "mixtrain/io/safetensors.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/optim/schedule.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mixtrain::train {

namespace {

constexpr const char* kFormat = "mixtrain-checkpoint-1";
// A sharded checkpoint: its manifest's format and version, and each rank file's format.
constexpr const char* kManifestFormat = "mixtrain-sharded-checkpoint";
constexpr int kManifestVersion = 1;
constexpr const char* kShardFormat = "mixtrain-checkpoint-shard-1";
constexpr const char* kManifest = "manifest.json";

std::string exact(double v) { return fmt::format("{:a}", v); }  // hex float: round-trips exactly

const std::string& meta(const std::map<std::string, std::string>& m, const std::string& key,
                        const fs::path& file) {
  auto it = m.find(key);
  if (it == m.end())
    throw IOError(fmt::format("{}: checkpoint metadata lacks '{}'", file.string(), key));
  return it->second;
}

// The step of "step-NNNNNNNN.safetensors" or "step-NNNNNNNN"; -1 for any other name.
int64_t step_of(const fs::path& p) {
  std::string n = p.filename().string();
  if (p.extension() == ".safetensors") n = p.stem().string();
  if (n.size() != 13 || n.rfind("step-", 0) != 0) return -1;
  for (size_t i = 5; i < n.size(); ++i)
    if (n[i] < '0' || n[i] > '9') return -1;
  return std::stoll(n.substr(5));
}

// A single file is complete once it exists (its rename was the last step of the write); a
// sharded directory once its manifest does (written after every rank's shard).
bool is_complete(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec) ? fs::exists(p / kManifest, ec) : true;
}

// Temp files a killed AtomicFile write left (.NAME.tmp.XXXXXX).
bool is_temp(const fs::path& p) {
  const std::string n = p.filename().string();
  return n.size() > 1 && n[0] == '.' && n.find(".tmp.") != std::string::npos;
}

}  // namespace

json run_identity(const json& config) {
  json j = config;
  j.erase("steps");
  j.erase("epochs");
  // Run control: how often to log, evaluate and checkpoint, how long a collective may wait.
  for (const char* k :
       {"log_every", "eval_every", "eval_batches", "checkpoint_every", "checkpoint_minutes",
        "keep_checkpoints", "diagnose_every", "nonfinite_patience", "comm_timeout", "tensorboard"})
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
  std::vector<std::pair<int64_t, fs::path>> found;
  const fs::path dir = out / "checkpoints";
  if (!fs::exists(dir)) return {};
  for (const auto& e : fs::directory_iterator(dir)) {
    const int64_t step = step_of(e.path());
    if (step < 0) continue;
    // step-N.safetensors is a file, step-N/ a sharded checkpoint's directory.
    if (e.path().extension() == ".safetensors" ? e.is_regular_file() : e.is_directory())
      found.emplace_back(step, e.path());
  }
  std::sort(found.begin(), found.end(), std::greater<>());
  std::vector<fs::path> files;
  for (auto& [step, path] : found) files.push_back(path);
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
  std::vector<fs::path> dirs{out, out / "checkpoints"};
  for (const auto& c : list_checkpoints(out))
    if (fs::is_directory(c, ec)) dirs.push_back(c);
  for (const fs::path& dir : dirs)
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (is_temp(e.path())) fs::remove(e.path(), ec);
  // A sharded save killed before its manifest leaves a step directory that can never load.
  // Those older than the newest complete checkpoint go; newer ones stay until the run reaches
  // their step again (a resume names each one it skips, and the save at that step or the
  // pruning after a later one removes it).
  {
    bool newer_complete = false;
    for (const auto& c : list_checkpoints(out)) {
      if (is_complete(c))
        newer_complete = true;
      else if (newer_complete)
        fs::remove_all(c, ec);
    }
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
      if (fs::remove_all(f, ec) == static_cast<std::uintmax_t>(-1) || ec)
        throw IOError(fmt::format("--force: cannot delete {}: {}", f.string(), ec.message()));
    for (const char* name : {"metrics.jsonl", "summary.json", "diagnostics.jsonl"})
      fs::remove(out / name, ec);
  }
  // A resume rewrites it too: the identity fields agree, and a longer --steps or another
  // cadence given with the resume is what the next bare --resume continues with.
  const std::string text = config.dump(2) + "\n";
  write_file_atomic(cfg_path.string(), text.data(), text.size());
}

namespace {

// Deletes all but the newest `keep` complete checkpoints up to `step`, and incomplete ones
// before it (a newer complete one exists, so they can never be chosen). Checkpoints after
// `step` are left: an earlier attempt wrote them and the resume could not use them; the run
// replaces them when it gets there.
void prune(const fs::path& out, int64_t step, int64_t keep) {
  int64_t kept = 0;
  for (const auto& c : list_checkpoints(out)) {
    const int64_t s = step_of(c);
    if (s > step) continue;
    const bool complete = is_complete(c);
    if (complete && kept < std::max<int64_t>(keep, 1)) {
      ++kept;
      continue;
    }
    if (!complete && s == step) continue;
    std::error_code ec;
    fs::remove_all(c, ec);
  }
}

// Every rank's string, on rank 0 (empty elsewhere). Collective.
std::vector<std::string> gather_strings(const std::string& s) {
  const int n = dist::size();
  if (n == 1) return {s};
  const bool root = dist::rank() == 0;
  int64_t len = static_cast<int64_t>(s.size());
  std::vector<int64_t> lens(root ? n : 0), eight(n, 8), at(n);
  for (int j = 0; j < n; ++j) at[j] = 8 * j;
  dist::gatherv(&len, 8, lens.data(), eight.data(), at.data(), 0);
  std::vector<int64_t> off(root ? n : 0);
  int64_t total = 0;
  for (int j = 0; root && j < n; ++j) {
    off[j] = total;
    total += lens[j];
  }
  std::string all(static_cast<size_t>(total), '\0');
  dist::gatherv(s.data(), len, all.data(), lens.data(), off.data(), 0);
  std::vector<std::string> out;
  for (int j = 0; root && j < n; ++j) out.push_back(all.substr(off[j], lens[j]));
  return out;
}

// The sharded save (see save_checkpoint): every rank writes its pieces to
// step-N/rank-R-of-N.safetensors, rank 0 collects every rank's piece list (which also waits
// for every write to finish) and writes manifest.json last. `meta`: the single file's metadata.
void save_sharded(const fs::path& out, const CheckpointState& st,
                  const std::map<std::string, std::string>& meta, int64_t step, int64_t keep) {
  dist::DataParallel& dp = *st.dp;
  const int rank = dp.rank(), ranks = dp.size();
  // Names this save in every file: a shard left by an earlier, interrupted save of the same
  // step never passes for one of this save's.
  std::string save_id;
  if (rank == 0) {
    std::random_device rd;
    save_id = fmt::format("{:08x}{:08x}-{}", rd(), rd(), step);
  }
  save_id = dist::broadcast_string(save_id);
  const fs::path dir = out / "checkpoints" / fmt::format("step-{:08d}", step);
  const std::string name = fmt::format("rank-{}-of-{}.safetensors", rank, ranks);
  json pieces = json::array();
  for (const auto& sp : dp.state_pieces(*st.opt))
    pieces.push_back(
        {{"param", sp.param}, {"begin", sp.begin}, {"end", sp.end}, {"tensors", sp.tensors}});
  std::vector<std::string> scalars{"optim.step", "optim.rng_step"};
  std::string err;
  try {
    auto tensors = dp.shard_state(*st.opt);
    for (auto& [n, t] : tensors) t = t.to(Device::cpu);  // written from host copies
    if (rank == 0)  // the scalar state is the same on every rank: rank 0's file holds it
    {
      for (auto& [n, t] : st.scaler->state().to_tensors()) {
        tensors.emplace_back(n, t);
        scalars.push_back(n);
      }
      // fp8 scaling states: their amaxes are reduced over the ranks, so every rank's agree.
      for (auto& [n, t] : amp::fp8_state_tensors(nn::fp8_states(st.task->module(), 0))) {
        tensors.emplace_back(n, t);
        scalars.push_back(n);
      }
    }
    std::map<std::string, std::string> m;
    m["mixtrain.format"] = kShardFormat;
    m["mixtrain.save_id"] = save_id;
    m["mixtrain.step"] = std::to_string(step);
    m["mixtrain.rank"] = std::to_string(rank);
    m["mixtrain.ranks"] = std::to_string(ranks);
    m["mixtrain.pieces"] = pieces.dump();
    fs::create_directories(dir);
    save_safetensors((dir / name).string(), tensors, m);
  } catch (const std::exception& e) {
    err = e.what();
    if (err.empty()) err = "write failed";
  }
  const auto all = gather_strings(json{{"file", name}, {"pieces", pieces}, {"error", err}}.dump());
  std::string fail;
  if (rank == 0) {
    try {
      json mf;
      mf["format"] = kManifestFormat;
      mf["version"] = kManifestVersion;
      mf["save_id"] = save_id;
      mf["step"] = step;
      mf["ranks"] = ranks;
      mf["zero_stage"] = dp.zero_stage();
      std::map<std::string, json> by_param;
      json files = json::array();
      std::vector<std::string> buffers;
      for (const auto& text : all) {
        const json r = json::parse(text);
        if (!r.at("error").get<std::string>().empty())
          fail += fmt::format("{}: {}; ", r.at("file").get<std::string>(),
                              r.at("error").get<std::string>());
        files.push_back(r.at("file"));
        for (const auto& pc : r.at("pieces")) {
          by_param[pc.at("param").get<std::string>()].push_back(
              {{"file", r.at("file")}, {"begin", pc.at("begin")}, {"end", pc.at("end")}});
          if (buffers.empty())  // the same optimizer everywhere: "optim.<param>.<buf>"
            for (const auto& t : pc.at("tensors")) {
              const std::string n = t.get<std::string>();
              const std::string prefix = "optim." + pc.at("param").get<std::string>() + ".";
              if (n.rfind(prefix, 0) == 0) buffers.push_back(n.substr(prefix.size()));
            }
        }
      }
      if (!fail.empty()) throw IOError(fail);
      mf["files"] = files;
      mf["buffers"] = buffers;
      mf["params"] = json::array();
      for (auto& [pname, p] : st.task->module().named_parameters())
        mf["params"].push_back(
            {{"name", pname}, {"shape", p->weight.shape()}, {"pieces", by_param[pname]}});
      mf["scalars"] = {{"file", files.at(0)}, {"tensors", scalars}};
      mf["metadata"] = meta;
      const std::string text = mf.dump(1) + "\n";
      write_file_atomic((dir / kManifest).string(), text.data(), text.size());
      // Files of an earlier, interrupted save of this step (another rank count) are not this
      // checkpoint's.
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        bool listed = n == kManifest;
        for (const auto& f : files) listed |= n == f.get<std::string>();
        if (!listed) fs::remove(e.path(), ec);
      }
      prune(out, step, keep);
    } catch (const std::exception& e) {
      fail = e.what();
    }
  }
  fail = dist::broadcast_string(fail);
  if (!fail.empty())
    throw IOError(fmt::format("checkpoint {} not written: {}", dir.string(), fail));
}

}  // namespace

void save_checkpoint(const fs::path& out, const CheckpointState& st, const json& config,
                     int64_t step, int64_t skipped, double train_seconds, int64_t train_items,
                     int64_t keep) {
  std::map<std::string, std::string> m;
  m["mixtrain.format"] = kFormat;
  m["mixtrain.config"] = config.dump();
  m["mixtrain.step"] = std::to_string(step);
  m["mixtrain.skipped"] = std::to_string(skipped);
  m["mixtrain.train_seconds"] = exact(train_seconds);
  m["mixtrain.train_items"] = std::to_string(train_items);
  m["schedule.position"] = std::to_string(st.schedule->position());
  for (auto& [k, v] : st.task->state()) m["task." + k] = v;
  // ZeRO: each rank holds only its shard of the masters and moments, and writes just that.
  if (st.dp && st.dp->zero()) {
    save_sharded(out, st, m, step, keep);
    return;
  }
  // Otherwise every rank holds the same state: rank 0 writes it, in one file.
  if (st.dp && st.dp->rank() != 0) return;
  std::vector<std::pair<std::string, Tensor>> tensors;
  // The file holds host copies, whatever device the run is on: the same bytes, so a checkpoint
  // written on a GPU resumes on the CPU and back (load_state copies across devices).
  for (auto& [name, p] : st.task->module().named_parameters())
    tensors.emplace_back("param." + name, p->master.to(Device::cpu));
  for (auto& [name, t] : st.opt->state_tensors()) tensors.emplace_back(name, t.to(Device::cpu));
  for (auto& [name, t] : st.scaler->state().to_tensors()) tensors.emplace_back(name, t);
  for (auto& [name, t] : amp::fp8_state_tensors(nn::fp8_states(st.task->module(), 0)))
    tensors.emplace_back(name, t);
  const fs::path file = out / "checkpoints" / fmt::format("step-{:08d}.safetensors", step);
  save_safetensors(file.string(), tensors, m);
  prune(out, step, keep);
}

namespace {

std::map<std::string, std::string> with_prefix(const std::map<std::string, std::string>& m,
                                               const std::string& prefix) {
  std::map<std::string, std::string> r;
  for (auto& [k, v] : m)
    if (k.rfind(prefix, 0) == 0) r[k.substr(prefix.size())] = v;
  return r;
}

// A sharded checkpoint's manifest, read and checked: every parameter's pieces cover its
// elements exactly once, from files the manifest lists and that exist.
struct Manifest {
  struct Piece {
    std::string file;
    int64_t begin, end;
  };
  struct Param {
    std::string name;
    Shape shape;
    int64_t numel = 1;
    std::vector<Piece> pieces;  ///< by begin
  };
  fs::path dir;
  std::string save_id;
  std::vector<std::string> files, buffers, scalars;
  std::string scalar_file;
  std::vector<Param> params;
  std::map<std::string, size_t> index;
  std::map<std::string, std::string> metadata;

  std::string where() const { return (dir / kManifest).string(); }
  const Param& param(const std::string& name) const {
    auto it = index.find(name);
    if (it == index.end()) throw IOError(fmt::format("{}: has no parameter '{}'", where(), name));
    return params[it->second];
  }
};

Manifest read_manifest(const fs::path& dir) {
  Manifest mf;
  mf.dir = dir;
  const fs::path path = dir / kManifest;
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw IOError(
        fmt::format("{}: no {} (an incomplete sharded checkpoint: the save did not "
                    "finish)",
                    dir.string(), kManifest));
  try {
    std::ifstream in(path);
    const json j = json::parse(in);
    if (j.at("format") != kManifestFormat || j.at("version") != kManifestVersion)
      throw IOError(fmt::format("{}: not a {} version {} manifest", path.string(), kManifestFormat,
                                kManifestVersion));
    mf.save_id = j.at("save_id").get<std::string>();
    for (const auto& f : j.at("files")) {
      const std::string n = f.get<std::string>();
      if (n.empty() || n.find('/') != std::string::npos || n == "." || n == "..")
        throw IOError(fmt::format("{}: bad shard file name '{}'", path.string(), n));
      if (!fs::is_regular_file(dir / n, ec))
        throw IOError(
            fmt::format("{}: shard file {} is missing", path.string(), (dir / n).string()));
      mf.files.push_back(n);
    }
    auto listed = [&](const std::string& f) {
      if (std::find(mf.files.begin(), mf.files.end(), f) == mf.files.end())
        throw IOError(fmt::format("{}: names file '{}' outside its file list", path.string(), f));
      return f;
    };
    mf.buffers = j.at("buffers").get<std::vector<std::string>>();
    mf.scalar_file = listed(j.at("scalars").at("file").get<std::string>());
    mf.scalars = j.at("scalars").at("tensors").get<std::vector<std::string>>();
    mf.metadata = j.at("metadata").get<std::map<std::string, std::string>>();
    for (const auto& p : j.at("params")) {
      Manifest::Param P;
      P.name = p.at("name").get<std::string>();
      for (const auto& d : p.at("shape")) {
        P.shape.push_back(d.get<int64_t>());
        if (P.shape.back() < 0)
          throw IOError(
              fmt::format("{}: parameter '{}' has a negative dimension", path.string(), P.name));
        P.numel *= P.shape.back();
      }
      for (const auto& pc : p.at("pieces"))
        P.pieces.push_back({listed(pc.at("file").get<std::string>()), pc.at("begin").get<int64_t>(),
                            pc.at("end").get<int64_t>()});
      std::sort(P.pieces.begin(), P.pieces.end(),
                [](const auto& a, const auto& b) { return a.begin < b.begin; });
      int64_t at = 0;  // the pieces must tile [0, numel)
      for (const auto& pc : P.pieces) {
        if (pc.begin != at || pc.end <= pc.begin || pc.end > P.numel)
          throw IOError(fmt::format(
              "{}: the pieces of '{}' do not cover its {} elements exactly once (piece [{}, {}) "
              "in {} after element {})",
              path.string(), P.name, P.numel, pc.begin, pc.end, pc.file, at));
        at = pc.end;
      }
      if (at != P.numel)
        throw IOError(fmt::format("{}: the pieces of '{}' cover {} of its {} elements",
                                  path.string(), P.name, at, P.numel));
      if (!mf.index.emplace(P.name, mf.params.size()).second)
        throw IOError(fmt::format("{}: parameter '{}' listed twice", path.string(), P.name));
      mf.params.push_back(std::move(P));
    }
  } catch (const json::exception& e) {
    throw IOError(fmt::format("{}: malformed manifest: {}", path.string(), e.what()));
  }
  return mf;
}

// An element range [begin, end) of a full tensor ("param.<p>" or "optim.<p>.<buf>") to read
// from a sharded checkpoint into dst (f32, end - begin elements).
struct Request {
  std::string tensor, param;
  int64_t begin, end;
  Tensor dst;
  int64_t filled = 0;
};

Request request(const Manifest& mf, const std::string& tensor, const std::string& param,
                int64_t begin, int64_t end) {
  const auto& P = mf.param(param);
  if (begin < 0 || end > P.numel || begin > end)
    throw IOError(fmt::format("{}: elements [{}, {}) of '{}' are outside its {}", mf.where(), begin,
                              end, tensor, P.numel));
  return {tensor, param, begin, end, Tensor::empty({end - begin}, DType::f32)};
}

// Fills the requests, and reads the scalar tensors when `scalars` is given, opening each shard
// file that holds a needed range once (load_safetensors checks it whole: size, CRC32s).
void fill(const Manifest& mf, std::vector<Request>& reqs,
          std::vector<std::pair<std::string, Tensor>>* scalars) {
  for (const auto& file : mf.files) {
    const bool for_scalars = scalars && file == mf.scalar_file;
    bool needed = for_scalars;
    for (const auto& r : reqs)
      for (const auto& pc : mf.param(r.param).pieces)
        needed |= pc.file == file && pc.begin < r.end && r.begin < pc.end;
    if (!needed) continue;
    const fs::path path = mf.dir / file;
    const SafetensorsFile f = load_safetensors(path.string());
    const auto& m = f.metadata();
    if (meta(m, "mixtrain.format", path) != kShardFormat)
      throw IOError(fmt::format("{}: not a {} file", path.string(), kShardFormat));
    if (meta(m, "mixtrain.save_id", path) != mf.save_id)
      throw IOError(
          fmt::format("{}: written by another save than {} (a shard left by an "
                      "interrupted save)",
                      path.string(), mf.where()));
    // The ranges the file says it holds must be the manifest's.
    std::map<std::string, std::pair<int64_t, int64_t>> own;
    try {
      for (const auto& pc : json::parse(meta(m, "mixtrain.pieces", path)))
        own[pc.at("param").get<std::string>()] = {pc.at("begin").get<int64_t>(),
                                                  pc.at("end").get<int64_t>()};
    } catch (const json::exception& e) {
      throw IOError(fmt::format("{}: malformed mixtrain.pieces: {}", path.string(), e.what()));
    }
    for (auto& r : reqs)
      for (const auto& pc : mf.param(r.param).pieces) {
        if (pc.file != file) continue;
        const int64_t a = std::max(r.begin, pc.begin), b = std::min(r.end, pc.end);
        if (a >= b) continue;
        auto it = own.find(r.param);
        if (it == own.end() || it->second != std::make_pair(pc.begin, pc.end))
          throw IOError(fmt::format("{}: does not hold elements [{}, {}) of '{}' as {} says",
                                    path.string(), pc.begin, pc.end, r.param, mf.where()));
        const Tensor& src = f.require(r.tensor, DType::f32, {pc.end - pc.begin});
        r.dst.slice(0, a - r.begin, b - r.begin)
            .copy_from(src.slice(0, a - pc.begin, b - pc.begin));
        r.filled += b - a;
      }
    if (for_scalars)
      for (const auto& n : mf.scalars) scalars->emplace_back(n, f.get(n).clone());
  }
  for (const auto& r : reqs)
    if (r.filled != r.end - r.begin)
      throw IOError(fmt::format("{}: elements [{}, {}) of '{}' are not all in its shards",
                                mf.where(), r.begin, r.end, r.tensor));
}

// Everything a resume needs, read and validated; nothing in the run changed yet.
struct Staged {
  fs::path file;
  std::map<std::string, std::string> meta;
  /// Without ZeRO: the optimizer's tensors as a single file holds them. With ZeRO: this
  /// rank's pieces (DataParallel::state_pieces names) and the counters.
  std::vector<std::pair<std::string, Tensor>> opt_state;
  /// Full masters by parameter name, in the parameter's shape (with ZeRO only when the full
  /// weights are resident).
  std::map<std::string, Tensor> masters;
  amp::LossScalerState scaler;
  /// fp8 scaling states ("fp8.<module>.<role>"), for an fp8 run.
  std::vector<std::pair<std::string, Tensor>> fp8;
};

void check_run(const std::map<std::string, std::string>& m, const fs::path& file,
               const json& config) {
  if (meta(m, "mixtrain.format", file) != kFormat)
    throw IOError(fmt::format("{}: not a {} checkpoint", file.string(), kFormat));
  const json saved = json::parse(meta(m, "mixtrain.config", file));
  if (run_identity(saved) != run_identity(config))
    throw IOError(
        fmt::format("{}: checkpoint belongs to a different run configuration", file.string()));
}

Staged stage_file(const fs::path& file, const CheckpointState& st, const json& config) {
  SafetensorsFile f = load_safetensors(file.string());
  Staged g;
  g.file = file;
  g.meta = f.metadata();
  check_run(g.meta, file, config);
  auto params = st.task->module().named_parameters();
  // (ZeRO releases the model's masters: fp32 of the weight's shape is what it saves.)
  for (auto& [name, p] : params)
    g.masters[name] = f.require(
        "param." + name, p->master.defined() ? p->master.dtype() : DType::f32, p->weight.shape());
  std::vector<std::pair<std::string, Tensor>> scaler_tensors;
  for (const auto& n : f.names())
    if (n.rfind("loss_scaler.", 0) == 0) scaler_tensors.emplace_back(n, f.get(n));
  g.scaler = amp::LossScalerState::from_tensors(scaler_tensors);
  for (const auto& n : f.names())
    if (n.rfind("fp8.", 0) == 0) g.fp8.emplace_back(n, f.get(n));
  if (st.dp && st.dp->zero()) {
    // This rank's slice of each full tensor.
    std::map<std::string, int64_t> numel;
    for (auto& [name, p] : params) numel[name] = p->numel();
    for (const auto& sp : st.dp->state_pieces(*st.opt))
      for (const auto& n : sp.tensors) {
        const Tensor& t = f.get(n);
        if (t.dtype() != DType::f32 || t.numel() != numel.at(sp.param))
          throw IOError(fmt::format("{}: tensor '{}' is {} (expected {} elements)", file.string(),
                                    n, t.str(), numel.at(sp.param)));
        g.opt_state.emplace_back(n, t.contiguous().view({-1}).slice(0, sp.begin, sp.end));
      }
    for (const char* n : {"optim.step", "optim.rng_step"}) g.opt_state.emplace_back(n, f.get(n));
    if (!st.dp->full_weights_resident()) g.masters.clear();
  } else {
    for (const auto& n : f.names())
      if (n.rfind("optim.", 0) == 0) g.opt_state.emplace_back(n, f.get(n));
  }
  return g;
}

Staged stage_sharded(const fs::path& dir, const CheckpointState& st, const json& config) {
  const Manifest mf = read_manifest(dir);
  Staged g;
  g.file = dir;
  g.meta = mf.metadata;
  check_run(g.meta, dir / kManifest, config);
  auto params = st.task->module().named_parameters();
  for (auto& [name, p] : params)
    if (mf.param(name).shape != p->weight.shape())
      throw IOError(fmt::format("{}: parameter '{}' is {} (the model's is {})", mf.where(), name,
                                shape_str(mf.param(name).shape), shape_str(p->weight.shape())));
  const bool zero = st.dp && st.dp->zero();
  std::vector<Request> reqs;
  // Full masters: without ZeRO, and with ZeRO while every rank holds the full weights.
  if (!zero || st.dp->full_weights_resident())
    for (auto& [name, p] : params)
      reqs.push_back(request(mf, "param." + name, name, 0, p->numel()));
  const size_t nfull = reqs.size();
  if (zero) {
    for (const auto& sp : st.dp->state_pieces(*st.opt))
      for (const auto& n : sp.tensors)
        if (nfull == 0 || n.rfind("param.", 0) != 0)  // else sliced from the full master
          reqs.push_back(request(mf, n, sp.param, sp.begin, sp.end));
  } else {
    for (auto& [name, p] : params)
      for (const auto& b : mf.buffers)
        reqs.push_back(request(mf, fmt::format("optim.{}.{}", name, b), name, 0, p->numel()));
  }
  std::vector<std::pair<std::string, Tensor>> scalars;
  fill(mf, reqs, &scalars);
  for (size_t i = 0; i < nfull; ++i)
    g.masters[reqs[i].param] = reqs[i].dst.view(mf.param(reqs[i].param).shape);
  if (zero) {
    if (nfull)
      for (const auto& sp : st.dp->state_pieces(*st.opt))
        g.opt_state.emplace_back("param." + sp.param,
                                 g.masters.at(sp.param).view({-1}).slice(0, sp.begin, sp.end));
    for (size_t i = nfull; i < reqs.size(); ++i)
      g.opt_state.emplace_back(reqs[i].tensor, reqs[i].dst);
  } else {
    for (size_t i = nfull; i < reqs.size(); ++i)
      g.opt_state.emplace_back(reqs[i].tensor, reqs[i].dst.view(mf.param(reqs[i].param).shape));
  }
  std::vector<std::pair<std::string, Tensor>> scaler_tensors;
  for (auto& [n, t] : scalars) {
    if (n.rfind("loss_scaler.", 0) == 0) scaler_tensors.emplace_back(n, t);
    if (n.rfind("optim.", 0) == 0) g.opt_state.emplace_back(n, t);
    if (n.rfind("fp8.", 0) == 0) g.fp8.emplace_back(n, t);
  }
  g.scaler = amp::LossScalerState::from_tensors(scaler_tensors);
  return g;
}

RestoredCounters apply(Staged& g, const CheckpointState& st) {
  const auto& m = g.meta;
  const fs::path& file = g.file;
  if (st.dp && st.dp->zero()) {
    st.dp->load_shard_state(*st.opt, g.opt_state, g.masters);
  } else {
    st.opt->load_state(g.opt_state);  // validates before changing anything
    for (auto& [name, p] : st.task->module().named_parameters()) {
      p->master.copy_from(g.masters.at(name));
      p->refresh();
    }
  }
  st.scaler->load_state(g.scaler);
  try {
    amp::load_fp8_state(nn::fp8_states(st.task->module(), 0), g.fp8);
  } catch (const IOError& e) {
    throw IOError(fmt::format("{}: {}", file.string(), e.what()));
  }
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

// Data parallel: every rank must take the same checkpoint, though each reads its own parts
// of a sharded one. Returns the fault of the highest-numbered rank that found one ("" when
// none did), on every rank. Collective.
std::string agree(const CheckpointState& st, const std::string& err) {
  if (!st.dp || st.dp->size() == 1) return err;
  int64_t worst = err.empty() ? 0 : st.dp->rank() + 1;
  dist::allreduce_max(&worst, 1);
  if (worst == 0) return "";
  std::string msg = err;
  int64_t len = static_cast<int64_t>(msg.size());
  dist::broadcast(&len, sizeof len, static_cast<int>(worst - 1));
  msg.resize(static_cast<size_t>(len));
  dist::broadcast(msg.data(), len, static_cast<int>(worst - 1));
  return worst - 1 == st.dp->rank() ? msg : fmt::format("rank {}: {}", worst - 1, msg);
}

}  // namespace

CheckpointContents read_checkpoint(const fs::path& path, const std::string& prefix) {
  CheckpointContents c;
  auto wanted = [&](const std::string& n) { return n.rfind(prefix, 0) == 0; };
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    SafetensorsFile f = load_safetensors(path.string());
    for (const auto& n : f.names())
      if (wanted(n)) c.tensors.emplace_back(n, f.get(n));
    c.metadata = f.metadata();
    return c;
  }
  const Manifest mf = read_manifest(path);
  std::vector<Request> reqs;
  for (const auto& p : mf.params)
    if (wanted("param." + p.name))
      reqs.push_back(request(mf, "param." + p.name, p.name, 0, p.numel));
  for (const auto& p : mf.params)  // per parameter, its buffers: a single file's order
    for (const auto& b : mf.buffers) {
      const std::string n = fmt::format("optim.{}.{}", p.name, b);
      if (wanted(n)) reqs.push_back(request(mf, n, p.name, 0, p.numel));
    }
  bool any_scalar = false;
  for (const auto& n : mf.scalars) any_scalar |= wanted(n);
  std::vector<std::pair<std::string, Tensor>> scalars;
  fill(mf, reqs, any_scalar ? &scalars : nullptr);
  for (auto& r : reqs) c.tensors.emplace_back(r.tensor, r.dst.view(mf.param(r.param).shape));
  for (const char* group : {"optim.", "loss_scaler.", "fp8."})
    for (auto& [n, t] : scalars)
      if (wanted(n) && n.rfind(group, 0) == 0) c.tensors.emplace_back(n, t);
  c.metadata = mf.metadata;
  return c;
}

std::optional<RestoredCounters> load_latest_checkpoint(const fs::path& out,
                                                       const CheckpointState& st,
                                                       const json& config,
                                                       std::vector<std::string>* warnings) {
  const auto files = list_checkpoints(out);
  std::string why;
  // A sharded directory without its manifest is a save that never finished, not a checkpoint:
  // a run whose every save was interrupted so has none and starts over, as a run whose single
  // file was never renamed into place does.
  int64_t complete = 0;
  for (const auto& file : files) {
    std::error_code ec;
    if (!fs::is_directory(file, ec) || fs::exists(file / "manifest.json", ec)) ++complete;
    std::optional<Staged> staged;
    std::string err;
    // Any fault here is this checkpoint's (the ranks must stay in step: no exception leaves
    // before agree()).
    try {
      std::error_code ec;
      staged = fs::is_directory(file, ec) ? stage_sharded(file, st, config)
                                          : stage_file(file, st, config);
    } catch (const Error& e) {
      err = e.what();
    } catch (const std::exception& e) {
      err = fmt::format("{}: {}", file.string(), e.what());
    }
    err = agree(st, err);
    if (err.empty()) {
      try {
        return apply(*staged, st);
      } catch (const IOError& e) {
        err = e.what();
      }
    }
    if (warnings) warnings->push_back(fmt::format("skipping unreadable checkpoint: {}", err));
    why += fmt::format("\n  {}", err);
  }
  // Checkpoints exist but none loads: starting over silently would throw the run away.
  if (complete > 0)
    throw IOError(fmt::format(
        "{}: none of its {} checkpoint(s) could be loaded:{}\nuse --force without --resume to "
        "start the run over",
        out.string(), complete, why));
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
