// The training loop: one optimizer step = grad_accum micro-batches forward/backward under the
// precision policy, one reduction over the gradients (finite check, norm), a fused optimizer
// pass or a reported skip, then the loss-scale update. Checkpoints hold everything a resumed run
// needs to end bit-identical to one that never stopped. Nothing here prints: the caller hears
// through Callbacks.
#include "mixtrain/train/trainer.h"

#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "dist/data_parallel.h"
#include "mixtrain/amp/diagnostics.h"
#include "mixtrain/amp/fp8.h"
#include "mixtrain/amp/loss_scaler.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/dist/comm.h"
#include "mixtrain/io/atomic_file.h"
#include "mixtrain/io/safetensors.h"
#include "mixtrain/io/tensorboard.h"
#include "mixtrain/nn/checkpoint.h"
#include "mixtrain/ops.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/optim/schedule.h"
#include "train/checkpoint.h"
#include "train/overflow.h"
#include "train/range_view.h"
#include "train/task.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mixtrain::train {

int64_t peak_rss_bytes() {
  // VmHWM follows reset_peak_rss(); ru_maxrss (the fallback) is the whole process's peak.
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // kB
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

std::string TrainSummary::to_json() const {
  json j = {{"precision", precision_name},
            {"policy", precision},
            {"model", model},
            {"data", data},
            {"loss", loss},
            {"parameters", parameters},
            {"steps", steps},
            {"skipped_steps", skipped_steps},
            {"final_loss_scale", final_loss_scale},
            {"final_train_loss", final_train_loss},
            {"val_loss", val_loss},
            {"wall_s", wall_s},
            {"throughput", throughput},
            {"throughput_unit", throughput_unit},
            {"train_s", train_s},
            {"diagnose_s", diagnose_s},
            {"peak_tensor_bytes", peak_tensor_bytes},
            {"peak_rss_bytes", peak_rss_bytes},
            {"activation_bytes", activation_bytes},
            {"model_state_bytes_per_rank", model_state_bytes_per_rank},
            {"weight_bytes_per_rank", weight_bytes_per_rank},
            {"gradient_bytes_per_rank", gradient_bytes_per_rank},
            {"moment_bytes_per_rank", moment_bytes_per_rank},
            {"gathered_weight_bytes_per_rank", gathered_weight_bytes_per_rank},
            {"unreduced_gradient_bytes_per_rank", unreduced_gradient_bytes_per_rank},
            {"out_dir", out_dir}};
  if (test_accuracy >= 0) j["test_accuracy"] = test_accuracy;
  if (device != "cpu") j["device"] = device;
  if (stopped) j["stopped"] = true;
  if (ranks > 1 || zero) {  // data parallel: this rank's traffic and state
    j["ranks"] = ranks;
    j["zero"] = zero;
    j["zero_stage"] = zero_stage;
    j["comm_bytes_per_step"] = comm_bytes_per_step;
    j["comm_bytes_by_collective"] = comm_bytes_by_collective;
    j["optimizer_state_bytes_per_rank"] = optimizer_state_bytes_per_rank;
    j["master_bytes_per_rank"] = master_bytes_per_rank;
  }
  return j.dump(2);
}

namespace {

using Clock = std::chrono::steady_clock;

// An evaluation allocates outside the step plan (no_grad forwards of other shapes): the idle
// arena's pages go back first and the evaluation's kept buffers after, so the two are never
// resident at once (GPT batch 8 bf16 on the AVX2 EPYC: the run's peak RSS had been the arena
// plus the evaluation's ~55 MiB).
EvalResult evaluate_between_steps(Task& task, const amp::Policy& policy, const TrainConfig& cfg) {
  trim_idle_memory();
  EvalResult r = task.evaluate(policy, cfg);
  trim_idle_memory();
  return r;
}

int64_t total_bytes(const std::map<std::string, int64_t>& by_dtype) {
  int64_t n = 0;
  for (const auto& [dt, b] : by_dtype) n += b;
  return n;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The data spec's form (no file is read): the prefixes open_data knows.
void check_data_spec(const std::string& spec) {
  if (spec.empty() || spec == "fashion-mnist") return;
  for (const char* p : {"fashion-mnist:", "text:", "tokens:", "npy:", "csv:"})
    if (spec.rfind(p, 0) == 0) {
      if (spec.size() == std::strlen(p))
        throw ConfigError(fmt::format("--data {}: names no file", spec));
      return;
    }
  throw ConfigError(
      fmt::format("--data: unknown data '{}' (fashion-mnist[:DIR], text:PATH, tokens:TRAIN[,VAL], "
                  "npy:FEATURES,TARGETS or csv:PATH[,target=COLUMN])",
                  spec));
}

bool spec_is_tokens(const std::string& spec) {
  return spec.rfind("text:", 0) == 0 || spec.rfind("tokens:", 0) == 0;
}

void check_config(const TrainConfig& c) {
  auto bad = [](const std::string& flag, const std::string& why) {
    throw ConfigError(fmt::format("--{}: {}", flag, why));
  };
  if (c.model.empty()) bad("model", "empty");
  try {
    parse_device_spec(c.device);
  } catch (const ConfigError& e) {
    bad("device", e.what());
  }
  check_data_spec(c.data);
  if (c.vocab < 0) bad("vocab", fmt::format("must be >= 0, got {}", c.vocab));
  if (c.vocab > 0 && c.data.rfind("tokens:", 0) != 0)
    bad("vocab", "only tokens: data takes a vocabulary (text has 256 bytes; examples classes)");
  if (c.loss != "auto" && c.loss != "cross-entropy" && c.loss != "mse" && c.loss != "l1")
    bad("loss", fmt::format("unknown loss '{}' (auto, cross-entropy, mse or l1)", c.loss));
  if (c.batch <= 0) bad("batch", fmt::format("must be positive, got {}", c.batch));
  if (c.grad_accum <= 0) bad("grad-accum", fmt::format("must be positive, got {}", c.grad_accum));
  if (c.batch % c.grad_accum != 0)
    bad("grad-accum", fmt::format("{} does not divide the batch {}", c.grad_accum, c.batch));
  if (!(c.lr > 0) || !std::isfinite(c.lr))
    bad("lr", fmt::format("must be positive and finite, got {}", c.lr));
  if (c.steps < 0) bad("steps", fmt::format("must be >= 0, got {}", c.steps));
  if (c.steps == 0 && c.epochs <= 0)
    bad("epochs", fmt::format("must be positive, got {}", c.epochs));
  if (c.log_every <= 0) bad("log-every", fmt::format("must be positive, got {}", c.log_every));
  if (c.weight_decay < 0) bad("weight-decay", "must be >= 0");
  if (c.clip_grad < 0) bad("clip-grad", "must be >= 0");
  if (!(c.scale_init > 0) || !std::isfinite(c.scale_init))
    bad("scale-init", "must be positive and finite");
  if (c.scale_growth_interval <= 0) bad("scale-growth-interval", "must be positive");
  for (int64_t h : c.hidden)
    if (h <= 0) bad("hidden", fmt::format("every size must be positive, got {}", h));
  for (const auto& [flag, v] : {std::pair<const char*, int64_t>{"layers", c.layers},
                                {"width", c.width},
                                {"heads", c.heads},
                                {"context", c.context}})
    if (v <= 0) bad(flag, fmt::format("must be positive, got {}", v));
  if (c.width % c.heads != 0)
    bad("heads", fmt::format("width {} is not a multiple of heads {}", c.width, c.heads));
  if (c.dropout < 0 || c.dropout >= 1) bad("dropout", "must be in [0, 1)");
  try {
    nn::parse_activation_checkpointing(c.checkpoint_activations);
  } catch (const ConfigError& e) {
    bad("checkpoint-activations", e.what());
  }
  if (c.grad_dtype != "fp32" && c.grad_dtype != "compute")
    bad("grad-dtype", fmt::format("unknown '{}' (fp32 or compute)", c.grad_dtype));
  if (c.diagnose_every < 0)
    bad("diagnose-every", fmt::format("must be >= 0, got {}", c.diagnose_every));
  try {
    amp::parse_fp8_recipe(c.fp8_recipe);
  } catch (const ConfigError& e) {
    bad("fp8-recipe", e.what());
  }
  try {
    amp::parse_amax_reduce(c.fp8_amax_reduce);
  } catch (const ConfigError& e) {
    bad("fp8-amax-reduce", e.what());
  }
  if (c.fp8_amax_history < 1)
    bad("fp8-amax-history", fmt::format("must be at least 1, got {}", c.fp8_amax_history));
  if (c.fp8_margin < 0 || c.fp8_margin > 64)
    bad("fp8-margin", fmt::format("must be in [0, 64], got {}", c.fp8_margin));
  if (c.schedule != "constant" && c.schedule != "cosine")
    bad("schedule", fmt::format("unknown schedule '{}' (constant or cosine)", c.schedule));
  if (c.warmup < 0) bad("warmup", fmt::format("must be >= 0, got {}", c.warmup));
  if (c.eval_every < 0) bad("eval-every", fmt::format("must be >= 0, got {}", c.eval_every));
  if (c.eval_batches <= 0)
    bad("eval-batches", fmt::format("must be positive, got {}", c.eval_batches));
  if (c.checkpoint_every < 0)
    bad("checkpoint-every", fmt::format("must be >= 0, got {}", c.checkpoint_every));
  if (!(c.checkpoint_minutes >= 0) || !std::isfinite(c.checkpoint_minutes))
    bad("checkpoint-minutes", fmt::format("must be >= 0 and finite, got {}", c.checkpoint_minutes));
  if (c.force && c.resume)
    bad("force", "cannot be combined with --resume (it would start the run over)");
  if (c.keep_checkpoints <= 0)
    bad("keep-checkpoints", fmt::format("must be positive, got {}", c.keep_checkpoints));
  if (c.nonfinite_patience <= 0)
    bad("nonfinite-patience", fmt::format("must be positive, got {}", c.nonfinite_patience));
  if (!(c.init_scale > 0) || !std::isfinite(c.init_scale))
    bad("init-scale", fmt::format("must be positive and finite, got {}", c.init_scale));
  for (int64_t st : c.inject_nonfinite_grad)
    if (st <= 0) bad("inject-nonfinite-grad", fmt::format("steps count from 1, got {}", st));
}

// --bf16-modules as left at its default (the model's edges), which every precision accepts.
bool default_bf16_modules(const std::vector<std::string>& m) {
  return m.empty() || m == std::vector<std::string>{"auto"};
}

}  // namespace

json config_to_json(const TrainConfig& c) {
  json j{{"model", c.model},
         {"data", c.data},
         {"precision", c.precision},
         {"loss_scale", c.loss_scale},
         {"optimizer", c.optimizer},
         {"master", c.master},
         {"grad_dtype", c.grad_dtype},
         {"fp32_modules", c.fp32_modules},
         {"fp8_recipe", c.fp8_recipe},
         {"fp8_amax_history", c.fp8_amax_history},
         {"fp8_amax_reduce", c.fp8_amax_reduce},
         {"fp8_margin", c.fp8_margin},
         {"bf16_modules", c.bf16_modules},
         {"epochs", c.epochs},
         {"steps", c.steps},
         {"batch", c.batch},
         {"grad_accum", c.grad_accum},
         {"lr", c.lr},
         {"weight_decay", c.weight_decay},
         {"momentum", c.momentum},
         {"schedule", c.schedule},
         {"warmup", c.warmup},
         {"clip_grad", c.clip_grad},
         {"scale_init", c.scale_init},
         {"scale_growth_interval", c.scale_growth_interval},
         {"hidden", c.hidden},
         {"layers", c.layers},
         {"width", c.width},
         {"heads", c.heads},
         {"context", c.context},
         {"dropout", c.dropout},
         {"checkpoint_activations", c.checkpoint_activations},
         {"seed", c.seed},
         {"zero", c.zero},
         {"allreduce", c.allreduce},
         {"overlap_allreduce", c.overlap_allreduce},
         {"bucket_kib", c.bucket_kib}};
  if (!c.reshard_after_forward) j["reshard_after_forward"] = false;
  if (!c.prefetch) j["prefetch"] = false;
  // Fields added later, and testing aids, are written only when they differ from the default,
  // so runs from before them keep their identity and still resume.
  if (c.vocab != 0) j["vocab"] = c.vocab;
  if (c.loss != "auto") j["loss"] = c.loss;
  if (c.init_scale != 1.0) j["init_scale"] = c.init_scale;
  if (!c.inject_nonfinite_grad.empty()) j["inject_nonfinite_grad"] = c.inject_nonfinite_grad;
  return j;
}

namespace {

// The run-control fields a run folder also remembers (a resume reuses them; they are not part
// of what makes two runs the same run).
json run_control_to_json(const TrainConfig& c) {
  return {{"log_every", c.log_every},
          {"eval_every", c.eval_every},
          {"eval_batches", c.eval_batches},
          {"checkpoint_every", c.checkpoint_every},
          {"checkpoint_minutes", c.checkpoint_minutes},
          {"keep_checkpoints", c.keep_checkpoints},
          {"diagnose_every", c.diagnose_every},
          {"nonfinite_patience", c.nonfinite_patience},
          {"comm_timeout", c.comm_timeout},
          {"tensorboard", c.tensorboard}};
}

TrainConfig config_from_json(const json& j, const std::string& where) {
  TrainConfig c;
  auto get = [&](const char* key, auto& field) {
    if (!j.contains(key)) return;
    try {
      j.at(key).get_to(field);
    } catch (const json::exception& e) {
      throw ConfigError(
          fmt::format("{}: \"{}\" is {}, not a value of its type", where, key, j.at(key).dump()));
    }
  };
  get("model", c.model);
  get("data", c.data);
  get("vocab", c.vocab);
  get("loss", c.loss);
  get("precision", c.precision);
  get("loss_scale", c.loss_scale);
  get("optimizer", c.optimizer);
  get("master", c.master);
  get("grad_dtype", c.grad_dtype);
  get("fp32_modules", c.fp32_modules);
  get("fp8_recipe", c.fp8_recipe);
  get("fp8_amax_history", c.fp8_amax_history);
  get("fp8_amax_reduce", c.fp8_amax_reduce);
  get("fp8_margin", c.fp8_margin);
  get("bf16_modules", c.bf16_modules);
  get("epochs", c.epochs);
  get("steps", c.steps);
  get("batch", c.batch);
  get("grad_accum", c.grad_accum);
  get("lr", c.lr);
  get("weight_decay", c.weight_decay);
  get("momentum", c.momentum);
  get("schedule", c.schedule);
  get("warmup", c.warmup);
  get("clip_grad", c.clip_grad);
  get("scale_init", c.scale_init);
  get("scale_growth_interval", c.scale_growth_interval);
  get("hidden", c.hidden);
  get("layers", c.layers);
  get("width", c.width);
  get("heads", c.heads);
  get("context", c.context);
  get("dropout", c.dropout);
  get("checkpoint_activations", c.checkpoint_activations);
  get("seed", c.seed);
  get("zero", c.zero);
  get("allreduce", c.allreduce);
  get("overlap_allreduce", c.overlap_allreduce);
  get("bucket_kib", c.bucket_kib);
  get("reshard_after_forward", c.reshard_after_forward);
  get("prefetch", c.prefetch);
  get("init_scale", c.init_scale);
  get("inject_nonfinite_grad", c.inject_nonfinite_grad);
  get("log_every", c.log_every);
  get("eval_every", c.eval_every);
  get("eval_batches", c.eval_batches);
  get("checkpoint_every", c.checkpoint_every);
  get("checkpoint_minutes", c.checkpoint_minutes);
  get("keep_checkpoints", c.keep_checkpoints);
  get("diagnose_every", c.diagnose_every);
  get("nonfinite_patience", c.nonfinite_patience);
  get("comm_timeout", c.comm_timeout);
  get("tensorboard", c.tensorboard);
  return c;
}

}  // namespace

TrainConfig load_run_config(const std::string& run_dir) {
  const fs::path path = fs::path(run_dir) / "config.json";
  std::ifstream in(path);
  if (!in)
    throw IOError(fmt::format("{}: no run there ({} cannot be read)", run_dir, path.string()));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw IOError(fmt::format("{}: not JSON: {}", path.string(), e.what()));
  }
  if (!j.is_object()) throw IOError(fmt::format("{}: not a JSON object", path.string()));
  TrainConfig c = config_from_json(j, path.string());
  c.out = run_dir;
  return c;
}

std::vector<ConfigDifference> run_differences(const TrainConfig& run, const TrainConfig& given) {
  const json a = run_identity(config_to_json(run)), b = run_identity(config_to_json(given));
  std::vector<ConfigDifference> out;
  for (auto& [k, v] : b.items())
    if (!a.contains(k) || a[k] != v)
      out.push_back({k, a.contains(k) ? a[k].dump() : "-", v.dump()});
  for (auto& [k, v] : a.items())
    if (!b.contains(k)) out.push_back({k, v.dump(), "-"});
  return out;
}

void validate_config(const TrainConfig& c) {
  check_config(c);
  // A registered model's data, from the spec alone (the opened source is checked again).
  const ModelEntry& m = find_model(c.model);
  if (!c.data.empty() && m.takes != ModelEntry::Takes::any) {
    const bool tokens = spec_is_tokens(c.data);
    if (tokens != (m.takes == ModelEntry::Takes::tokens))
      throw ConfigError(fmt::format("--data {}: the {} model trains on {}", c.data, c.model,
                                    m.takes == ModelEntry::Takes::tokens
                                        ? "a token stream (text:PATH or tokens:FILE)"
                                        : "examples (fashion-mnist, npy:X,Y or csv:PATH)"));
  }
  amp::Policy::parse(c.precision);
  if (c.master != "auto") optim::parse_master_mode(c.master.c_str());
}

// --master auto: optim::auto_master_mode, with ZeRO-1 (which shards an fp32 master) and
// --fp32-modules (fp32 weights) taking fp32. A resumed run keeps the mode its config.json
// names, so runs begun before auto was the default resume as they started.
std::string resolve_master(const TrainConfig& c, const amp::Policy& policy) {
  if (c.master != "auto") return c.master;
  if (c.resume && !c.out.empty()) {
    try {
      std::ifstream in(fs::path(c.out) / "config.json");
      if (in) {
        const json old = json::parse(in);
        if (old.contains("master") && old["master"].is_string() && old["master"] != "auto")
          return old["master"].get<std::string>();
      }
    } catch (const json::exception&) {  // unreadable: prepare_run_dir reports it
    }
  }
  const bool all_compute = c.fp32_modules.empty() && c.zero == 0;
  return optim::master_mode_name(
      optim::auto_master_mode(policy.param, policy.compute, all_compute));
}

// ---------------------------------------------------------------------------------------------

struct Trainer::Impl {
  TrainConfig cfg;
  amp::Policy policy;
  std::string policy_why;
  std::unique_ptr<Task> task;
  std::unique_ptr<optim::Optimizer> opt;
  std::unique_ptr<optim::LrScheduler> schedule;
  std::unique_ptr<dist::DataParallel> dp;  ///< ranks under mpirun; ZeRO-1 (src/dist/)
  amp::LossScaler scaler;
  amp::Fp8States fp8;  ///< --precision fp8: every fp8 linear's scaling state
  fs::path out;
  int64_t total_steps = 0;
  int64_t step = 0;  ///< optimizer steps taken (applied or skipped)
  int64_t skipped = 0;
  int64_t nonfinite_run = 0;
  double train_seconds = 0.0;     ///< time inside training steps (excludes eval and checkpoints)
  int64_t train_items = 0;        ///< samples or tokens processed by training steps
  double diagnose_seconds = 0.0;  ///< inside train_seconds: the --diagnose-every passes
  std::map<std::string, int64_t> activation_bytes;  ///< kept by the tape at the end of forward
  std::ofstream diagnostics;                        ///< OUT/diagnostics.jsonl
  fs::path tensorboard_dir;                         ///< "" = OUT/tensorboard
  std::unique_ptr<io::EventWriter> tb;              ///< rank 0, with cfg.tensorboard
  /// On a diagnose step: each parameter's fp32 weights before the update (for log2|update|).
  std::vector<std::pair<nn::Parameter*, std::vector<float>>> weights_before;

  std::string forward_overflow;  ///< an fp16 forward overflow seen after the first steps
  Callbacks none;                ///< when the caller gives none
  Callbacks* cb = &none;

  Impl(TrainConfig c, Callbacks* callbacks) : cfg(std::move(c)) {
    if (callbacks) cb = callbacks;
  }

  // Everything after the task is built (both constructors).
  void setup();
  void setup_fp8();

  // fp16 compute and a non-finite loss: did an fp16 op overflow in the forward pass? No loss
  // scale can fix that (it scales only the backward pass), so within the first steps of a
  // process the run stops at once, with the op and the doctor's advice; later (a transient
  // overflow the skip may ride out) it is remembered for the non-finite-loss abort message.
  void check_forward_overflow(const Variable& loss, int64_t at_step, int64_t steps_done) {
    std::map<const VariableImpl*, std::string> names;
    for (auto& [n, p] : task->module().named_parameters()) names[p->weight.impl()] = n;
    const std::string where = find_fp16_forward_overflow(loss, names);
    if (where.empty()) return;
    const std::string msg = fmt::format(
        "fp16 overflow in the forward pass at step {}: {}. The loss scale cannot fix this (it "
        "scales only the backward pass). The doctor's diagnosis: activations above fp16's "
        "maximum 65504 overflow in the forward pass whatever the loss scale; use --precision "
        "bf16 (fp32's exponent range) or fp32",
        at_step, where);
    if (steps_done < 3) throw NumericalError(msg);
    if (forward_overflow.empty()) forward_overflow = msg;
  }

  // Testing aid (--inject-nonfinite-grad): +Inf (NaN at odd list positions) into element 0 of
  // the first parameter's gradient, as an fp16 backward overflow would leave it.
  void inject_fault(int64_t at_step) {
    const auto& steps = cfg.inject_nonfinite_grad;
    for (size_t k = 0; k < steps.size(); ++k) {
      if (steps[k] != at_step) continue;
      for (nn::Parameter* p : task->module().parameters()) {
        Tensor g = p->weight.grad();
        if (!g.defined() || g.numel() == 0) continue;
        const float v = k % 2 ? NAN : INFINITY;
        g.view({-1}).slice(0, 0, 1).copy_from(Tensor::full({1}, v, g.dtype()));
        break;
      }
      return;
    }
  }

  // Precision diagnostics of this step's gradients (they still carry the loss scale): one line
  // of OUT/diagnostics.jsonl with the whole-model fractions, the worst tensors and the advice.
  void log_gradient_ranges(int64_t at_step, float scale);
  void log_updates(int64_t at_step);
  static std::vector<float> current_weights(const nn::Parameter& p);

  void diagnose(int64_t at_step, float scale) {
    const auto t0 = std::chrono::steady_clock::now();
    const amp::GradientReport rep = amp::diagnose_gradients(task->module().parameters(), scale);
    auto fractions = [](const amp::GradHistogram& h) {
      return json{{"name", h.name},
                  {"max_abs", h.max_abs},
                  {"zero", h.frac(h.zero)},
                  {"fp16_flush", h.frac(h.fp16_zero)},
                  {"fp16_subnormal", h.frac(h.fp16_subnormal)},
                  {"fp16_overflow", h.frac(h.fp16_overflow)},
                  {"nonfinite", h.frac(h.inf + h.nan)}};
    };
    json tensors = json::array();
    for (const auto& h : rep.tensors) tensors.push_back(fractions(h));
    // fp8: each GEMM input's amax this step and the scale it was quantized with.
    json fp8_log = json::array();
    for (const auto& [name, st] : fp8)
      for (amp::Fp8Role r : {amp::Fp8Role::input, amp::Fp8Role::weight, amp::Fp8Role::grad}) {
        const amp::Fp8TensorMeta& m = (*st)[r];
        if (!m.seen) continue;
        const std::string tensor = name + "." + amp::fp8_role_name(r);
        auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
        json e{{"tensor", tensor},
               {"format", dtype_name(amp::fp8_format(r))},
               {"amax", num(m.step_amax)}};
        if (policy.fp8_gemms->recipe == amp::Fp8Recipe::delayed) e["scale"] = num(m.scale);
        fp8_log.push_back(e);
        if (tb && std::isfinite(m.step_amax)) {
          tb->scalar("fp8_amax/" + tensor, at_step, m.step_amax);
          if (policy.fp8_gemms->recipe == amp::Fp8Recipe::delayed)
            tb->scalar("fp8_scale/" + tensor, at_step, m.scale);
        }
      }
    json line = {{"step", at_step},
                 {"loss_scale", scale},
                 {"total", fractions(rep.total)},
                 {"tensors", tensors},
                 {"first_nonfinite",
                  rep.first_nonfinite.empty() ? json(nullptr) : json(rep.first_nonfinite)},
                 {"recommended", dtype_name(rep.recommended)},
                 {"recommended_scale", rep.recommended_scale},
                 {"why", rep.why}};
    if (policy.fp8_gemms)
      line["fp8"] = {{"recipe", amp::fp8_recipe_name(policy.fp8_gemms->recipe)},
                     {"tensors", fp8_log}};
    if (!diagnostics.is_open()) diagnostics.open(out / "diagnostics.jsonl", std::ios::app);
    diagnostics << line.dump() << "\n";
    diagnostics.flush();
    if (tb) log_gradient_ranges(at_step, scale);
    diagnose_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

// TensorBoard, on a diagnose step: per parameter, the histogram of log2|g| (unscaled) with
// the formats' ranges in its description, and the fractions each format would flush to zero
// or overflow at this step's loss scale. The weights are kept for the update's histogram.
void Trainer::Impl::log_gradient_ranges(int64_t at_step, float scale) {
  const auto& formats = format_ranges();
  weights_before.clear();
  for (nn::Parameter* p : task->module().parameters()) {
    if (!p->grad().defined()) continue;
    const RangeView v = range_view(p->grad().to(DType::f32).to_vector(), scale);
    tb->histogram(
        "grad/" + p->name, at_step, v.log2,
        range_description(v, fmt::format("Gradient of {} at step {}", p->name, at_step), scale));
    for (size_t f = 0; f < formats.size(); ++f) {
      if (std::string(formats[f].name) == "bf16") continue;  // never within reach of gradients
      tb->scalar(fmt::format("range/{}_underflow/{}", formats[f].name, p->name), at_step,
                 v.underflow[f]);
      tb->scalar(fmt::format("range/{}_overflow/{}", formats[f].name, p->name), at_step,
                 v.overflow[f]);
    }
    weights_before.emplace_back(p, current_weights(*p));
  }
  tb->flush();
}

// A parameter's weights as fp32 values: the master where this rank holds it whole (its high
// half for split16), else the compute copy.
std::vector<float> Trainer::Impl::current_weights(const nn::Parameter& p) {
  const Tensor& w =
      p.master.defined() && p.master.numel() == p.weight.numel() ? p.master : p.weight.data();
  return w.to(DType::f32).to_vector();
}

// After the diagnose step's update: the histogram of log2|w_after - w_before| per parameter.
void Trainer::Impl::log_updates(int64_t at_step) {
  for (auto& [p, before] : weights_before) {
    std::vector<float> d = current_weights(*p);
    if (d.size() != before.size()) continue;
    for (size_t i = 0; i < d.size(); ++i) d[i] -= before[i];
    const RangeView v = range_view(d, 1.0);
    tb->histogram(
        "update/" + p->name, at_step, v.log2,
        range_description(
            v, fmt::format("Update of {} at step {} (w after - w before)", p->name, at_step), 1.0));
  }
  weights_before.clear();
  tb->flush();
}

namespace {

// The data-parallel engine for cfg (--zero, --allreduce fp32|compute, --overlap-allreduce,
// --bucket-kib, --comm-timeout) on this process's ranks. ConfigError names the flag (a
// micro-batch that the ranks cannot split evenly, ...).
std::unique_ptr<dist::DataParallel> make_data_parallel(const TrainConfig& cfg, DType compute,
                                                       nn::Module& model,
                                                       optim::CommonOptions common) {
  if (cfg.zero < 0 || cfg.zero > 3)
    throw ConfigError(fmt::format("--zero: {} (expected 0, 1, 2 or 3)", cfg.zero));
  // ZeRO-2 and 3 on several ranks keep no whole gradient on any rank after backward.
  if (cfg.zero >= 2 && dist::size() > 1 && cfg.diagnose_every > 0)
    throw ConfigError(fmt::format(
        "--diagnose-every: the gradient diagnostics read whole gradients, which --zero {} shards "
        "across the ranks; use --zero 1 (or one rank) to diagnose",
        cfg.zero));
  if (cfg.zero >= 2 && dist::size() > 1 && !cfg.inject_nonfinite_grad.empty())
    throw ConfigError(
        fmt::format("--inject-nonfinite-grad: not with --zero {} on several ranks", cfg.zero));
  if (cfg.allreduce != "fp32" && cfg.allreduce != "compute")
    throw ConfigError(fmt::format("--allreduce: '{}' (expected fp32 or compute)", cfg.allreduce));
  dist::set_timeout(cfg.comm_timeout);
  const int n = dist::size();
  const int64_t micro = cfg.batch / cfg.grad_accum;
  if (micro % n != 0)
    throw ConfigError(fmt::format(
        "--batch {} / --grad-accum {} gives micro-batches of {} rows, which {} ranks cannot split "
        "evenly (each rank takes an equal slice of every global micro-batch)",
        cfg.batch, cfg.grad_accum, micro, n));
  dist::DataParallelOptions o;
  o.zero = static_cast<int>(cfg.zero);
  // fp16 compute puts fp16 on the wire; an fp32 compute dtype makes "compute" mean fp32.
  o.reduce_dtype = cfg.allreduce == "compute" ? compute : DType::f32;
  o.overlap = cfg.overlap_allreduce;
  o.reshard_after_forward = cfg.reshard_after_forward;
  o.prefetch = cfg.prefetch;
  if (cfg.bucket_kib < 1)
    throw ConfigError(fmt::format("--bucket-kib: {} (must be >= 1)", cfg.bucket_kib));
  o.bucket_bytes = cfg.bucket_kib * 1024;
  o.optimizer = cfg.optimizer;
  o.lr = cfg.lr;
  o.common = common;
  o.weight_decay = cfg.weight_decay;
  o.momentum = cfg.momentum;
  return std::make_unique<dist::DataParallel>(model, o);
}

amp::LossScaler make_scaler(const TrainConfig& cfg, const amp::Policy& policy) {
  // Loss scaling: the policy's default unless the flag says otherwise.
  amp::LossScalerOptions sc = amp::LossScaler::options_for(policy);
  sc.init_scale = static_cast<float>(cfg.scale_init);
  sc.growth_interval = cfg.scale_growth_interval;
  const std::string& ls = cfg.loss_scale;
  if (ls == "default") {
    if (sc.mode == amp::LossScaling::none) sc.init_scale = 1.0f;
  } else if (ls == "dynamic") {
    sc.mode = amp::LossScaling::dynamic;
  } else if (ls == "none") {
    sc.mode = amp::LossScaling::none;
    sc.init_scale = 1.0f;
  } else if (ls.rfind("static:", 0) == 0) {
    sc.mode = amp::LossScaling::fixed;
    try {
      sc.init_scale = std::stof(ls.substr(7));
    } catch (...) {
      throw ConfigError(fmt::format("--loss-scale: bad static scale in '{}'", ls));
    }
    if (!(sc.init_scale > 0) || !std::isfinite(sc.init_scale))
      throw ConfigError(fmt::format("--loss-scale: static scale must be positive, got '{}'", ls));
  } else {
    throw ConfigError(
        fmt::format("--loss-scale: unknown mode '{}' (dynamic, static:S or none)", ls));
  }
  return amp::LossScaler(sc);
}

// A model already built, as a factory (the Trainer builds models through one).
ModelFactory built(Model m) {
  return [m = std::move(m)](const TrainConfig&, const DataSource&, Rng&) { return m; };
}

}  // namespace

Trainer::Trainer(TrainConfig cfg, Callbacks* callbacks)
    : impl_(std::make_unique<Impl>(std::move(cfg), callbacks)) {
  Impl& s = *impl_;
  validate_config(s.cfg);
  const ModelEntry& m = find_model(s.cfg.model);
  if (s.cfg.data.empty()) s.cfg.data = m.default_data;
  // The GPU is chosen before anything touches it; auto's precision depends on it.
  const Device device = use_device(s.cfg.device);
  s.policy = amp::Policy::parse(s.cfg.precision, device, &s.policy_why);
  s.scaler = make_scaler(s.cfg, s.policy);
  DataOptions o;
  o.vocab = s.cfg.vocab;
  s.task = make_task(s.cfg, m.make, open_data(s.cfg.data, o));
  s.setup();
}

Trainer::Trainer(TrainConfig cfg, ModelFactory model, std::shared_ptr<DataSource> data,
                 Callbacks* callbacks)
    : impl_(std::make_unique<Impl>(std::move(cfg), callbacks)) {
  Impl& s = *impl_;
  if (!data) throw ConfigError("Trainer: no data source");
  if (!model) throw ConfigError("Trainer: no model factory");
  if (s.cfg.model.empty() || s.cfg.model == TrainConfig{}.model) s.cfg.model = "custom";
  s.cfg.data = data->name();
  check_config(s.cfg);
  const Device device = use_device(s.cfg.device);
  s.policy = amp::Policy::parse(s.cfg.precision, device, &s.policy_why);
  if (s.cfg.master != "auto") optim::parse_master_mode(s.cfg.master.c_str());
  s.scaler = make_scaler(s.cfg, s.policy);
  s.task = make_task(s.cfg, model, std::move(data));
  s.setup();
}

Trainer::Trainer(TrainConfig cfg, Model model, std::shared_ptr<DataSource> data,
                 Callbacks* callbacks)
    : Trainer(std::move(cfg), built(std::move(model)), std::move(data), callbacks) {}

// --precision fp8: the recipe from the flags, --bf16-modules (by default the model's edges)
// kept out of fp8, and the scaling state of every fp8 linear made now (a resume loads into it).
void Trainer::Impl::setup_fp8() {
  Impl& s = *this;
  const std::vector<std::string>& asked = s.cfg.bf16_modules;
  if (!s.policy.fp8_gemms) {
    if (!default_bf16_modules(asked))
      throw ConfigError("--bf16-modules: applies to --precision fp8 only");
    return;
  }
  amp::Fp8Options o;
  o.recipe = amp::parse_fp8_recipe(s.cfg.fp8_recipe);
  o.amax_history = s.cfg.fp8_amax_history;
  o.reduce = amp::parse_amax_reduce(s.cfg.fp8_amax_reduce);
  o.margin = static_cast<int>(s.cfg.fp8_margin);
  s.policy.fp8_gemms = o;
  for (const std::string& name : s.task->bf16_under_fp8(asked))
    s.task->module().find(name)->set_fp8(false);
  s.fp8 = nn::fp8_states(s.task->module(), o.amax_history);
}

void Trainer::Impl::setup() {
  Impl& s = *this;
  // config.json records what auto chose, so a resume on another CPU (where auto could choose
  // otherwise) continues in the run's precision. Runs recorded as auto resume as auto.
  if (s.cfg.precision == "auto" && !s.cfg.resume &&
      (s.policy.name == "fp32" || s.policy.name == "bf16" || s.policy.name == "fp16"))
    s.cfg.precision = s.policy.name;
  for (const std::string& w : s.task->data().warnings()) s.cb->on_warning(w);
  s.task->module().set_compute_dtype(s.policy.compute);
  if (s.cfg.init_scale != 1.0) {  // testing aid: every initial weight times the factor
    for (nn::Parameter* p : s.task->module().parameters()) {
      std::vector<float> v = p->master.to_vector();
      for (float& x : v) x *= static_cast<float>(s.cfg.init_scale);
      p->master.copy_from(Tensor::from_vector(v, p->master.shape()).to(p->master.dtype()));
      p->refresh();
    }
  }
  s.total_steps =
      s.cfg.steps > 0 ? s.cfg.steps : s.cfg.epochs * s.task->steps_per_epoch(s.cfg.batch);

  optim::CommonOptions common;
  s.cfg.master = resolve_master(s.cfg, s.policy);  // config.json records the mode used
  common.master = optim::parse_master_mode(s.cfg.master.c_str());
  common.seed = s.cfg.seed;
  // Data parallel: every rank trains its slice of each global batch; with ZeRO-1 the real
  // update runs on this rank's shard and s.opt is its proxy (see dist/data_parallel.h). On
  // cuda the collectives run on device buffers where the build has NCCL (comm.h).
  dist::set_device(s.task->device());
  s.dp = make_data_parallel(s.cfg, s.policy.compute, s.task->module(), common);
  for (const std::string& name : s.cfg.fp32_modules) {
    nn::Module* m = s.task->module().find(name);
    if (!m) {
      std::string names;
      for (const auto& n : s.task->module().module_names())
        names += (names.empty() ? "" : ", ") + n;
      throw ConfigError(fmt::format("--fp32-modules: the {} model has no module '{}' (it has: {})",
                                    s.cfg.model, name, names));
    }
    m->set_compute_override(DType::f32);
  }
  s.setup_fp8();
  if (s.cfg.grad_dtype == "compute") {
    if (s.dp->size() > 1 || s.dp->zero())
      throw ConfigError(
          "--grad-dtype compute: data-parallel runs reduce fp32 gradients; use --allreduce compute "
          "instead");
    for (nn::Parameter* p : s.task->module().parameters()) p->set_grad_dtype(s.policy.compute);
  }
  s.task->shard_rank = s.dp->rank();
  s.task->shard_count = s.dp->size();
  s.opt = s.dp->make_optimizer();  // ZeRO-1: the same optimizer over this rank's shard
  optim::ScheduleOptions so;
  so.kind = optim::parse_schedule(s.cfg.schedule);
  so.base_lr = s.cfg.lr;
  so.min_lr = so.kind == optim::LrSchedule::cosine ? 0.1 * s.cfg.lr : 0.0;
  so.warmup = s.cfg.warmup;
  so.total = s.total_steps;
  s.schedule = std::make_unique<optim::LrScheduler>(so);

  if (s.cfg.out.empty()) {  // a fresh folder per run: runs/<model>-<precision>-<date-time>
    const std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
    s.cfg.out = fmt::format("runs/{}-{}-{}", s.cfg.model, s.policy.name, stamp);
    for (int k = 2; fs::exists(s.cfg.out); ++k)
      s.cfg.out = fmt::format("runs/{}-{}-{}-{}", s.cfg.model, s.policy.name, stamp, k);
  }
  s.cfg.out = dist::broadcast_string(s.cfg.out);  // rank 0's time stamp names the folder
  s.out = s.cfg.out;
  json config = config_to_json(s.cfg);
  config.update(run_control_to_json(s.cfg));
  dist::run_on_root([&] { prepare_run_dir(s.out, config, s.cfg.resume, s.cfg.force); });
}

Trainer::~Trainer() = default;

std::string Trainer::policy_description() const {
  return impl_->policy.str() + (impl_->policy_why.empty() ? "" : "; " + impl_->policy_why);
}
const TrainConfig& Trainer::config() const { return impl_->cfg; }
nn::Module& Trainer::module() { return impl_->task->module(); }
const DataSource& Trainer::data() const { return impl_->task->data(); }
void Trainer::set_tensorboard_dir(const std::string& dir) { impl_->tensorboard_dir = dir; }

TrainSummary Trainer::run() {
  Impl& s = *impl_;
  const auto t_start = Clock::now();
  // Each run measures its own memory: buffers an earlier run in this process left in the
  // storage cache go back (they would fill the cache's budget with sizes this run never asks
  // for, so its own buffers could not be kept), and the peaks start again.
  release_cached_memory();
  reset_peak_memory();
  reset_peak_rss();

  CheckpointState ck{s.task.get(), s.opt.get(), &s.scaler, s.schedule.get(), s.dp.get()};
  const json config = config_to_json(s.cfg);
  RunStart start;
  if (s.cfg.resume) {
    std::vector<std::string> warnings;
    const auto restored = load_latest_checkpoint(s.out, ck, config, &warnings);
    for (const auto& w : warnings) s.cb->on_warning(w);
    if (restored) {
      s.step = restored->step;
      s.skipped = restored->skipped;
      s.train_seconds = restored->train_seconds;
      s.train_items = restored->train_items;
      if (s.dp->rank() == 0) truncate_metrics(s.out / "metrics.jsonl", s.step);
      start.resumed_at = s.step;
    }
  }
  auto checkpoint = [&] {
    save_checkpoint(s.out, ck, config, s.step, s.skipped, s.train_seconds, s.train_items,
                    s.cfg.keep_checkpoints);
  };

  std::ofstream metrics;  // rank 0 writes the run's files
  if (s.dp->rank() == 0) metrics.open(s.out / "metrics.jsonl", std::ios::app);
  if (s.dp->rank() == 0 && !metrics)
    throw IOError(fmt::format("cannot open {}", (s.out / "metrics.jsonl").string()));
  if (s.dp->rank() == 0 && s.cfg.tensorboard) {
    s.tb = std::make_unique<io::EventWriter>(
        (s.tensorboard_dir.empty() ? s.out / "tensorboard" : s.tensorboard_dir).string());
    // What an earlier process logged after the checkpoint this one resumes from (or anything
    // a run replaced by --force logged) is dropped by TensorBoard from the first step on.
    s.tb->session_start(s.step + 1);
  }
  start.model = s.cfg.model;
  start.data = s.cfg.data;
  start.out_dir = s.out.string();
  start.policy = s.policy.str();
  start.policy_why = s.policy_why;
  start.device = s.cfg.device;
  start.loss = loss_name(s.task->loss());
  start.parameters = s.task->module().num_parameters();
  start.total_steps = s.total_steps;
  start.items_name = s.task->items_name();
  s.cb->on_start(start);

  double window_loss = 0.0, last_window_loss = NAN;
  int64_t window_steps = 0, window_items = 0;
  double window_seconds = 0.0;
  EvalResult last_eval;
  const int64_t micro = s.cfg.batch / s.cfg.grad_accum;
  int64_t last_step_bytes = 0;
  std::map<std::string, int64_t> last_step_bytes_by;
  // --checkpoint-minutes counts training time since the last checkpoint (or the start).
  double checkpoint_due_s = s.cfg.checkpoint_minutes * 60.0;
  const auto t_checkpoint = Clock::now();
  bool stopped = false;

  const int64_t first_step = s.step;  // where this process started (after a resume)
  while (s.step < s.total_steps) {
    const auto t0 = Clock::now();
    const int64_t bytes0 = dist::bytes_sent();
    int64_t by0[dist::kCollectives];
    for (int c = 0; c < dist::kCollectives; ++c) by0[c] = dist::bytes_sent(dist::Collective(c));
    // Forward, backward and update: the same buffers every step (evaluation and checkpoints,
    // after it, are not part of the plan).
    std::optional<StepMemoryScope> step_memory(std::in_place);
    // ---- forward/backward over the micro-batches; the scale stays fixed inside the window.
    const float scale = s.scaler.scale();
    double step_loss = 0.0;
    for (int64_t m = 0; m < s.cfg.grad_accum; ++m) {
      Variable loss;
      const MemoryStats before_forward = memory_stats(s.task->device());
      {
        amp::PolicyScope scope(s.policy);
        // fp16: the tape keeps every activation, so a non-finite loss can be traced to the op
        // whose output overflowed (check_forward_overflow); otherwise only what backward needs.
        KeepActivationsGuard keep(s.policy.compute == DType::f16);
        loss = s.task->train_loss(micro);
      }
      // What the tape keeps for backward (the largest over the run's micro-batches).
      auto kept = memory_growth_by_dtype(before_forward, s.task->device());
      if (total_bytes(kept) > total_bytes(s.activation_bytes)) s.activation_bytes = std::move(kept);
      const float lv = loss.data().item();
      if (!std::isfinite(lv) && s.policy.compute == DType::f16)
        s.check_forward_overflow(loss, s.step + 1, s.step - first_step);
      step_loss += static_cast<double>(lv) / static_cast<double>(s.cfg.grad_accum);
      // The seed carries the loss scale and the 1/accum averaging, so the loss tensor itself is
      // never rescaled (no fp16 overflow in the forward).
      // With N ranks the seed also carries 1/N: the summed gradients are the global mean.
      s.dp->before_backward(m + 1 == s.cfg.grad_accum);
      loss.backward(scale / static_cast<float>(s.cfg.grad_accum * s.dp->size()));
      if (m + 1 < s.cfg.grad_accum) s.dp->after_backward();  // ZeRO-2: into the shard
    }
    s.dp->reduce_gradients();
    step_loss = dist::mean_over_ranks(step_loss);
    s.inject_fault(s.step + 1);
    if (s.cfg.diagnose_every > 0 && (s.step + 1) % s.cfg.diagnose_every == 0 && s.dp->rank() == 0)
      s.diagnose(s.step + 1, scale);
    // ---- one reduction (finite check, global norm), then a fused update or a reported skip.
    // ZeRO-1: the verdict and norm come from every rank's shard, so all ranks agree.
    if (s.dp->zero())
      s.scaler.unscale(*s.opt, s.dp->reduced_stats());
    else
      s.scaler.unscale(*s.opt);
    if (s.cfg.clip_grad > 0) s.scaler.clip_grad_norm(*s.opt, s.cfg.clip_grad);
    const double step_lr = s.schedule->lr();
    s.schedule->apply(*s.opt);
    optim::StepResult r = s.scaler.step(*s.opt);
    s.dp->after_step(r);  // ZeRO-1: all-gather the updated compute weights
    if (s.tb && !s.weights_before.empty()) s.log_updates(s.step + 1);
    s.scaler.update();
    if (s.policy.fp8_gemms) {
      const amp::Fp8StepReport fr = amp::fp8_end_step(s.fp8, *s.policy.fp8_gemms);
      if (fr.nonfinite && s.dp->rank() == 0)
        s.cb->on_warning(fmt::format(
            "step {}: fp8 amax of {} GEMM input{} not finite (first: {}); {}", s.step + 1,
            fr.nonfinite, fr.nonfinite == 1 ? " was" : "s were", fr.first_nonfinite,
            s.policy.fp8_gemms->recipe == amp::Fp8Recipe::delayed ? "kept the previous scale"
                                                                  : "the step used it as it was"));
    }
    s.opt->zero_grad();
    if (s.dp->zero()) s.dp->zero_grad();
    step_memory.reset();
    const int64_t step_bytes = dist::bytes_sent() - bytes0;
    std::map<std::string, int64_t> step_bytes_by;  // the step's bytes by collective
    for (int c = 0; c < dist::kCollectives; ++c)
      if (const int64_t b = dist::bytes_sent(dist::Collective(c)) - by0[c])
        step_bytes_by[dist::collective_name(dist::Collective(c))] = b;
    last_step_bytes = step_bytes;
    last_step_bytes_by = step_bytes_by;
    if (!r.applied) ++s.skipped;
    s.schedule->step(r);
    ++s.step;
    const double dt = seconds_since(t0);
    s.train_seconds += dt;
    s.train_items += s.task->items_per_sample() * s.cfg.batch;
    window_seconds += dt;
    window_items += s.task->items_per_sample() * s.cfg.batch;

    if (std::isfinite(step_loss)) {
      s.nonfinite_run = 0;
      window_loss += step_loss;
      ++window_steps;
    } else if (++s.nonfinite_run >= s.cfg.nonfinite_patience) {
      throw NumericalError(fmt::format(
          "training stopped at step {}: the loss was non-finite for {} consecutive steps ({}); "
          "last skipped step: {}{}",
          s.step, s.nonfinite_run, impl_->policy.str(), r.str(),
          s.forward_overflow.empty() ? "" : "; earlier: " + s.forward_overflow));
    }

    const bool eval_now =
        (s.cfg.eval_every > 0 && s.step % s.cfg.eval_every == 0) ||
        (s.task->eval_each_epoch() && s.step % s.task->steps_per_epoch(s.cfg.batch) == 0 &&
         s.step < s.total_steps);
    if (eval_now) last_eval = evaluate_between_steps(*s.task, s.policy, s.cfg);

    if (s.step % s.cfg.log_every == 0 || s.step == s.total_steps || eval_now) {
      StepLog log;
      log.step = s.step;
      log.total_steps = s.total_steps;
      log.loss = step_loss;
      log.mean_loss = window_steps ? window_loss / window_steps : NAN;
      log.lr = step_lr;
      log.loss_scale = s.scaler.scale();
      log.grad_norm = std::isfinite(r.grad_norm) && r.grad_norm >= 0 ? r.grad_norm : NAN;
      log.skipped = !r.applied;
      if (!r.applied) log.skip_reason = r.str();
      log.skipped_total = s.skipped;
      log.throughput = window_seconds > 0 ? window_items / window_seconds : 0.0;
      log.items_name = s.task->items_name();
      log.eta_s = s.train_seconds / s.step * (s.total_steps - s.step);
      if (eval_now) {
        log.evaluated = true;
        log.val_loss = last_eval.loss;
        log.accuracy = last_eval.accuracy;
      }
      if (window_steps) last_window_loss = log.mean_loss;
      auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
      json line = {{"step", log.step},
                   {"loss", num(log.loss)},
                   {"mean_loss", num(log.mean_loss)},
                   {"lr", log.lr},
                   {"loss_scale", log.loss_scale},
                   {"skipped", log.skipped},
                   {"skipped_total", log.skipped_total},
                   {"grad_norm", num(log.grad_norm)},
                   {"throughput", log.throughput}};
      {  // the model state this rank holds (every run: one rank and no ZeRO too)
        const dist::ModelStateBytes ms = s.dp->model_state_bytes(*s.opt);
        line["model_state_bytes_per_rank"] = ms.total();
        line["weight_bytes_per_rank"] = ms.weights;
        line["gradient_bytes_per_rank"] = ms.gradients;
        line["gathered_weight_bytes_per_rank"] = ms.gathered_weights;
        line["unreduced_gradient_bytes_per_rank"] = ms.unreduced_gradients;
      }
      if (s.dp->size() > 1 || s.dp->zero()) {  // data parallel: this rank's traffic and state
        line["ranks"] = s.dp->size();
        line["comm_bytes_per_step"] = step_bytes;
        line["comm_bytes_by_collective"] = step_bytes_by;
        line["comm_seconds_per_step"] = s.dp->take_comm_seconds();
        const dist::StateBytes sb = s.dp->state_bytes(*s.opt);
        line["optimizer_state_bytes_per_rank"] = sb.total();
        line["master_bytes_per_rank"] = sb.master;
        line["moment_bytes_per_rank"] = sb.moments;
      }
      if (!r.applied) line["skip_reason"] = log.skip_reason;
      if (eval_now) {
        line["val_loss"] = last_eval.loss;
        if (last_eval.accuracy >= 0) line["test_accuracy"] = last_eval.accuracy;
      }
      if (metrics.is_open()) {
        metrics << line.dump() << "\n";
        metrics.flush();
      }
      if (s.tb) {  // the same values as the metrics line (non-finite ones left out, as null there)
        auto scalar = [&](const char* tag, double v) {
          if (std::isfinite(v)) s.tb->scalar(tag, log.step, v);
        };
        scalar("loss", log.loss);
        if (eval_now) scalar("val_loss", last_eval.loss);
        if (eval_now && last_eval.accuracy >= 0) scalar("test_accuracy", last_eval.accuracy);
        scalar("lr", log.lr);
        scalar("loss_scale", log.loss_scale);
        scalar("skipped_steps", static_cast<double>(log.skipped_total));
        scalar("grad_norm", log.grad_norm);
        scalar(fmt::format("throughput/{}_per_s", log.items_name).c_str(), log.throughput);
        s.tb->flush();
      }
      s.cb->on_log(log);
      window_loss = 0;
      window_steps = 0;
      window_items = 0;
      window_seconds = 0;
    }

    // After every step the caller may ask to stop (ignored after the last: the run is done).
    // Rank 0 decides whether to checkpoint or stop here (the ranks' clocks and callbacks may
    // differ; a checkpoint and a stop are collective) and tells the others.
    s.cb->on_train_loss(s.step, step_loss);
    const bool keep_going = s.cb->on_step(s.step);
    if (s.step == s.total_steps) break;  // the final checkpoint follows the loop
    uint8_t decide[2] = {0, 0};
    if (s.dp->rank() == 0) {
      const bool by_steps = s.cfg.checkpoint_every > 0 && s.step % s.cfg.checkpoint_every == 0;
      const bool by_time =
          s.cfg.checkpoint_minutes > 0 && seconds_since(t_checkpoint) >= checkpoint_due_s;
      decide[0] = by_steps || by_time;
      decide[1] = !keep_going;
    }
    if (s.dp->size() > 1) dist::broadcast(decide, sizeof decide, 0);
    if (decide[0] || decide[1]) {
      checkpoint();
      checkpoint_due_s = seconds_since(t_checkpoint) + s.cfg.checkpoint_minutes * 60.0;
    }
    if (decide[1]) {
      stopped = true;
      break;
    }
  }

  TrainSummary sum;
  if (!stopped) {
    checkpoint();
    last_eval = evaluate_between_steps(*s.task, s.policy, s.cfg);
  }
  sum.stopped = stopped;
  sum.precision = s.policy.str();
  sum.precision_name = s.policy.name;
  sum.model = s.cfg.model;
  sum.data = s.cfg.data;
  sum.loss = loss_name(s.task->loss());
  sum.parameters = s.task->module().num_parameters();
  sum.steps = s.step;
  sum.skipped_steps = s.skipped;
  sum.final_loss_scale = s.scaler.scale();
  sum.final_train_loss = last_window_loss;
  sum.val_loss = stopped ? NAN : last_eval.loss;
  sum.test_accuracy = stopped ? -1.0 : last_eval.accuracy;
  sum.wall_s = seconds_since(t_start);
  sum.train_s = s.train_seconds;
  sum.throughput = s.train_seconds > 0 ? s.train_items / s.train_seconds : 0.0;
  sum.throughput_unit = std::string(s.task->items_name()) + "/s";
  sum.diagnose_s = s.diagnose_seconds;
  sum.peak_tensor_bytes = memory_stats(s.task->device()).peak_bytes;
  sum.device = s.cfg.device;
  sum.peak_rss_bytes = peak_rss_bytes();
  sum.activation_bytes = s.activation_bytes;
  sum.out_dir = s.out.string();
  sum.ranks = s.dp->size();
  sum.zero = s.dp->zero();
  sum.zero_stage = s.dp->zero_stage();
  const dist::ModelStateBytes ms = s.dp->model_state_bytes(*s.opt);
  sum.model_state_bytes_per_rank = ms.total();
  sum.weight_bytes_per_rank = ms.weights;
  sum.gradient_bytes_per_rank = ms.gradients;
  sum.moment_bytes_per_rank = ms.moments;
  sum.gathered_weight_bytes_per_rank = ms.gathered_weights;
  sum.unreduced_gradient_bytes_per_rank = ms.unreduced_gradients;
  sum.comm_bytes_per_step = last_step_bytes;
  sum.comm_bytes_by_collective = last_step_bytes_by;
  const dist::StateBytes sb = s.dp->state_bytes(*s.opt);
  sum.optimizer_state_bytes_per_rank = sb.total();
  sum.master_bytes_per_rank = sb.master;
  if (s.dp->rank() == 0 && !stopped)
    write_file_atomic((s.out / "summary.json").string(), sum.to_json().data(),
                      sum.to_json().size());
  s.cb->on_end(sum);
  return sum;
}

int64_t compare_smoothing_window(int64_t steps) { return std::max<int64_t>(1, steps / 20); }

std::vector<double> trailing_mean(const std::vector<double>& v, int64_t window) {
  if (window < 1) throw ConfigError(fmt::format("trailing_mean: window {} (must be >= 1)", window));
  std::vector<double> out(v.size(), NAN);
  double sum = 0;
  int64_t finite = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isfinite(v[i])) sum += v[i], ++finite;
    if (i >= static_cast<size_t>(window) && std::isfinite(v[i - window]))
      sum -= v[i - window], --finite;
    if (finite) out[i] = sum / static_cast<double>(finite);
  }
  return out;
}

namespace {

// Passes everything on to the caller's callbacks and keeps every step's training loss, so
// compare has whole curves while the console and metrics.jsonl keep the user's --log-every.
class LossRecorder : public Callbacks {
 public:
  explicit LossRecorder(Callbacks* inner) : inner_(inner ? inner : &none_) {}
  void on_start(const RunStart& r) override { inner_->on_start(r); }
  void on_log(const StepLog& l) override { inner_->on_log(l); }
  bool on_step(int64_t step) override { return inner_->on_step(step); }
  void on_train_loss(int64_t step, double loss) override {
    steps.push_back(step);
    losses.push_back(loss);
    inner_->on_train_loss(step, loss);
  }
  void on_warning(const std::string& m) override { inner_->on_warning(m); }
  void on_end(const TrainSummary& s) override { inner_->on_end(s); }
  std::vector<int64_t> steps;
  std::vector<double> losses;

 private:
  Callbacks none_;
  Callbacks* inner_;
};

json finite_or_null(const std::vector<double>& v) {
  json a = json::array();
  for (double x : v) a.push_back(std::isfinite(x) ? json(x) : json(nullptr));
  return a;
}

template <class MakeTrainer>
std::vector<CompareRun> compare_runs(const TrainConfig& cfg,
                                     const std::vector<std::string>& precisions,
                                     const std::string& model_name, Callbacks* callbacks,
                                     MakeTrainer make) {
  if (precisions.empty()) throw ConfigError("--precisions: none given");
  const std::string out =
      cfg.out.empty() ? fmt::format("runs/compare-{}-seed{}", model_name, cfg.seed) : cfg.out;
  std::vector<CompareRun> runs;
  int control = -1;  // the fp32 run the gaps are measured against
  // --bf16-modules is for the list's fp8 runs; the others run as their precision says.
  if (!default_bf16_modules(cfg.bf16_modules) &&
      std::none_of(precisions.begin(), precisions.end(),
                   [](const std::string& p) { return p.substr(0, p.find(':')) == "fp8"; }))
    throw ConfigError(
        "--bf16-modules: applies to --precision fp8 only, and --precisions has no "
        "fp8 run");
  for (const std::string& spec : precisions) {
    // "fp16:none" = fp16 with loss scaling off (to see what scaling buys).
    TrainConfig c = cfg;
    std::string label = spec;
    const auto colon = spec.find(':');
    // "fp8:mxfp8" = fp8 under that recipe.
    c.precision = spec.substr(0, colon);
    if (colon != std::string::npos && c.precision == "fp8") {
      c.fp8_recipe = spec.substr(colon + 1);
      amp::parse_fp8_recipe(c.fp8_recipe);
      label = "fp8 " + c.fp8_recipe;
    } else if (colon != std::string::npos) {
      c.loss_scale = spec.substr(colon + 1);
      label = c.precision + " (loss scale " + c.loss_scale + ")";
    } else if (c.precision == "fp8") {
      label = "fp8 " + c.fp8_recipe;
    }
    if (c.precision != "fp8") c.bf16_modules.clear();
    if (control < 0 && spec == "fp32") control = static_cast<int>(runs.size());
    std::string dir = spec;
    for (char& ch : dir)
      if (ch == ':') ch = '-';
    c.out = out + "/" + dir;
    LossRecorder rec(callbacks);
    std::unique_ptr<Trainer> t = make(c, &rec);
    t->set_tensorboard_dir(out + "/tensorboard/" + dir);
    CompareRun run;
    run.label = label;
    run.summary = t->run();
    run.steps = std::move(rec.steps);
    run.loss = std::move(rec.losses);
    runs.push_back(std::move(run));
  }
  // The gap to the control at the same step (the runs share steps unless one stopped early).
  int64_t longest = 0;
  for (const CompareRun& r : runs) longest = std::max<int64_t>(longest, r.steps.size());
  const int64_t window = compare_smoothing_window(longest);
  if (control >= 0) {
    std::map<int64_t, double> ref;
    for (size_t i = 0; i < runs[control].steps.size(); ++i)
      ref[runs[control].steps[i]] = runs[control].loss[i];
    for (CompareRun& r : runs) {
      r.gap_to_fp32.assign(r.steps.size(), NAN);
      for (size_t i = 0; i < r.steps.size(); ++i) {
        const auto it = ref.find(r.steps[i]);
        if (it != ref.end() && std::isfinite(it->second) && std::isfinite(r.loss[i]))
          r.gap_to_fp32[i] = r.loss[i] - it->second;
      }
      r.gap_to_fp32_smoothed = trailing_mean(r.gap_to_fp32, window);
    }
  }
  if (dist::rank() == 0) {
    json j = {
        {"runs", json::array()},
        {"seed", cfg.seed},
        {"model", runs[0].summary.model},
        {"data", runs[0].summary.data},
        {"smoothing_window", window},
        {"smoothing",
         "gap_to_fp32_smoothed[i]: the mean of the finite gap_to_fp32 values among steps "
         "i-smoothing_window+1..i (fewer at the start); smoothing_window = max(1, steps/20)"}};
    if (control >= 0) {
      j["gap_reference"] = runs[control].label;
    } else {
      j["gap_reference"] = nullptr;
      j["gap_note"] = "no fp32 run among the precisions: no gap to an fp32 control";
    }
    for (const CompareRun& r : runs) {
      json x = json::parse(r.summary.to_json());
      x["label"] = r.label;
      // Beside the summary (whose "steps" and "loss" are a count and the loss's name).
      json per_step = {{"steps", r.steps}, {"loss", finite_or_null(r.loss)}};
      if (control >= 0) {
        per_step["gap_to_fp32"] = finite_or_null(r.gap_to_fp32);
        per_step["gap_to_fp32_smoothed"] = finite_or_null(r.gap_to_fp32_smoothed);
      }
      x["per_step"] = per_step;
      j["runs"].push_back(x);
    }
    const std::string text = j.dump(2) + "\n";
    write_file_atomic(out + "/compare.json", text.data(), text.size());
  }
  return runs;
}

}  // namespace

std::vector<CompareRun> compare(const TrainConfig& cfg, const std::vector<std::string>& precisions,
                                ModelFactory model, std::shared_ptr<DataSource> data,
                                Callbacks* callbacks) {
  const std::string name =
      cfg.model.empty() || cfg.model == TrainConfig{}.model ? "custom" : cfg.model;
  return compare_runs(cfg, precisions, name, callbacks, [&](const TrainConfig& c, Callbacks* rec) {
    return std::make_unique<Trainer>(c, model, data, rec);
  });
}

std::vector<CompareRun> compare(const TrainConfig& cfg, const std::vector<std::string>& precisions,
                                Callbacks* callbacks) {
  return compare_runs(
      cfg, precisions, cfg.model, callbacks,
      [](const TrainConfig& c, Callbacks* rec) { return std::make_unique<Trainer>(c, rec); });
}

ExportResult export_weights(const std::string& run_dir, const std::string& dtype,
                            const std::string& out_path) {
  DType dt;
  try {
    dt = parse_dtype(dtype);
  } catch (const Error&) {
    dt = DType::i64;
  }
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16)
    throw ConfigError(fmt::format("export: --dtype {} (expected fp32, bf16 or fp16)", dtype));
  const auto files = list_checkpoints(run_dir);
  if (files.empty())
    throw IOError(fmt::format(
        "export: {} holds no checkpoint (checkpoints/step-*.safetensors or step-*/)", run_dir));
  // The newest checkpoint that reads whole, as resume picks it.
  ExportResult res;
  std::string why;
  for (const auto& file : files) {
    try {
      // A sharded checkpoint's pieces are put back together here (no MPI needed).
      const CheckpointContents c = read_checkpoint(file, "param.");
      std::vector<std::pair<std::string, Tensor>> out;
      for (const auto& [n, t] : c.tensors) out.emplace_back(n.substr(6), t.to(dt));
      if (out.empty()) throw IOError(fmt::format("{}: holds no parameters", file.string()));
      std::map<std::string, std::string> meta;
      auto it = c.metadata.find("mixtrain.config");
      if (it != c.metadata.end()) meta["mixtrain.config"] = it->second;
      meta["mixtrain.source"] = file.string();
      save_safetensors(out_path, out, meta);
      res.tensors = static_cast<int64_t>(out.size());
      res.source = file.string();
      return res;
    } catch (const IOError& e) {
      res.warnings.push_back(fmt::format("skipping unreadable checkpoint: {}", e.what()));
      why += fmt::format("\n  {}", e.what());
    }
  }
  throw IOError(fmt::format("export: none of the {} checkpoint(s) in {} could be read:{}",
                            files.size(), run_dir, why));
}

}  // namespace mixtrain::train
