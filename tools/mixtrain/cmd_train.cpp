// `mixtrain train`, `compare`, `doctor`, `export` and `generate`: the user's main jobs. The
// train flags are declared once and shared by the three commands that run training; what a run
// says on the terminal is the Printer's (the library prints nothing).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <fmt/format.h>

#include "commands.h"
#include "mixtrain/dist/comm.h"
#include "mixtrain/train/doctor.h"
#include "mixtrain/train/generate.h"
#include "mixtrain/train/trainer.h"

namespace mixtrain::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using train::TrainConfig;

// The train flags, bound to a TrainConfig. Each records how to copy its field into another
// config, so that `--resume DIR` can lay the flags given on the command line over the run's own
// config.json (and name each one that would make it another run).
struct TrainFlags {
  TrainConfig cfg;
  int64_t seed = 0;  // parsed signed: a negative seed is refused, not wrapped around
  bool quiet = false;
  int64_t stop_after = 0;
  std::vector<std::pair<CLI::Option*, std::function<void(TrainConfig&)>>> fields;

  template <class T>
  CLI::Option* add(CLI::App* c, const std::string& name, T TrainConfig::*member,
                   const std::string& help) {
    CLI::Option* o = c->add_option(name, cfg.*member, help);
    fields.push_back({o, [this, member](TrainConfig& dst) { dst.*member = cfg.*member; }});
    return o;
  }
  CLI::Option* flag(CLI::App* c, const std::string& name, bool TrainConfig::*member,
                    const std::string& help) {
    CLI::Option* o = c->add_flag(name, cfg.*member, help);
    fields.push_back({o, [this, member](TrainConfig& dst) { dst.*member = cfg.*member; }});
    return o;
  }
  bool given(const std::string& name) const {
    for (const auto& [o, copy] : fields)
      if (o->check_name(name)) return o->count() > 0;
    return false;
  }
};

std::string model_names() {
  std::string s;
  for (const auto& m : train::registered_models()) s += (s.empty() ? "" : " | ") + m.name;
  return s;
}

// The flags of `train` (also taken by `compare` and `doctor`).
void add_train_flags(CLI::App* c, TrainFlags& f, bool with_precision = true) {
  std::vector<std::string> models;
  for (const auto& m : train::registered_models()) models.push_back(m.name);
  f.add(c, "--model", &TrainConfig::model,
        model_names() +
            " (mlp: a classifier or regression sized from the data; gpt: a "
            "language model)")
      ->check(CLI::IsMember(models))
      ->capture_default_str();
  f.add(c, "--data", &TrainConfig::data,
        "fashion-mnist[:DIR] | text:PATH | tokens:TRAIN[,VAL] (llm.c or nanoGPT uint16) | "
        "npy:FEATURES,TARGETS | csv:PATH[,target=COLUMN] (default: the model's: fashion-mnist "
        "for mlp, the jargon file as text for gpt)");
  f.add(c, "--vocab", &TrainConfig::vocab, "tokens: vocabulary size (0: the largest token + 1)")
      ->check(kNonNegative)
      ->capture_default_str();
  f.add(c, "--loss", &TrainConfig::loss,
        "auto | cross-entropy | mse | l1 (auto: cross-entropy for classes and tokens, mse for "
        "float targets)")
      ->check(CLI::IsMember({"auto", "cross-entropy", "mse", "l1"}))
      ->capture_default_str();
  if (with_precision)
    f.add(c, "--precision", &TrainConfig::precision,
          "fp32 | bf16 | fp16 | fp8 | auto | p=f32,c=bf16,o=f32 (fp8: bf16 mixed precision with "
          "every linear's GEMM inputs in fp8, see --fp8-recipe)")
        ->capture_default_str();
  f.add(c, "--loss-scale", &TrainConfig::loss_scale,
        "default (dynamic for fp16, none otherwise) | dynamic | static:S | none")
      ->capture_default_str();
  f.add(c, "--optimizer", &TrainConfig::optimizer, "adamw | adam | sgd | rmsprop")
      ->check(CLI::IsMember({"adamw", "adam", "sgd", "rmsprop"}))
      ->capture_default_str();
  f.add(c, "--master", &TrainConfig::master,
        "auto | fp32 | bf16-sr | bf16-kahan | split16 (master-weight mode; auto: split16 when "
        "every weight is bf16, else fp32)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16-sr", "bf16-kahan", "split16"}))
      ->capture_default_str();
  f.add(c, "--fp32-modules", &TrainConfig::fp32_modules,
        "sub-modules kept in fp32 whatever the precision (dotted names, e.g. fc2 or head)")
      ->delimiter(',');
  f.add(c, "--fp8-recipe", &TrainConfig::fp8_recipe,
        "--precision fp8: delayed (per-tensor scales from an amax history) | current (from each "
        "tensor's own amax) | mxfp8 (E8M0 scales per 32 values)")
      ->check(CLI::IsMember({"delayed", "current", "mxfp8"}))
      ->capture_default_str();
  f.add(c, "--fp8-amax-history", &TrainConfig::fp8_amax_history,
        "--fp8-recipe delayed: steps of amax history")
      ->check(kPositive)
      ->capture_default_str();
  f.add(c, "--fp8-amax-reduce", &TrainConfig::fp8_amax_reduce,
        "--fp8-recipe delayed: max | most_recent (how the history gives the scale's amax)")
      ->check(CLI::IsMember({"max", "most_recent"}))
      ->capture_default_str();
  f.add(c, "--fp8-margin", &TrainConfig::fp8_margin,
        "--fp8-recipe delayed or current: scale = (fp8 max / amax) / 2^margin")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  f.add(c, "--bf16-modules", &TrainConfig::bf16_modules,
        "--precision fp8: sub-modules kept in bf16 (dotted names, e.g. blocks.0.attn) | auto "
        "(default: the model's edges, the linear reading the raw inputs and the head: mlp fc0 "
        "and the last fc, gpt head; in a list, adds them) | none (every linear in fp8)")
      ->delimiter(',');
  f.add(c, "--grad-dtype", &TrainConfig::grad_dtype,
        "fp32 | compute: dtype parameter gradients accumulate in (compute saves 2 B/param)")
      ->check(CLI::IsMember({"fp32", "compute"}))
      ->capture_default_str();
  auto* ep = f.add(c, "--epochs", &TrainConfig::epochs, "passes over the training data")
                 ->check(kPositive)
                 ->capture_default_str();
  auto* st = f.add(c, "--steps", &TrainConfig::steps, "optimizer steps (instead of --epochs)")
                 ->check(kPositive);
  ep->excludes(st);
  f.add(c, "--batch", &TrainConfig::batch, "global batch size (default 128; gpt 8)")
      ->check(kPositive);
  f.add(c, "--grad-accum", &TrainConfig::grad_accum, "micro-batches per optimizer step")
      ->check(kPositive)
      ->capture_default_str();
  f.add(c, "--lr", &TrainConfig::lr, "learning rate")->capture_default_str();
  f.add(c, "--weight-decay", &TrainConfig::weight_decay, "weight decay")->capture_default_str();
  f.add(c, "--momentum", &TrainConfig::momentum, "momentum (sgd, rmsprop)")->capture_default_str();
  f.add(c, "--schedule", &TrainConfig::schedule, "constant | cosine (after --warmup linear steps)")
      ->check(CLI::IsMember({"constant", "cosine"}))
      ->capture_default_str();
  f.add(c, "--warmup", &TrainConfig::warmup, "linear warm-up steps")
      ->check(kNonNegative)
      ->capture_default_str();
  f.add(c, "--clip-grad", &TrainConfig::clip_grad, "global gradient-norm clipping (0: off)")
      ->capture_default_str();
  f.add(c, "--scale-init", &TrainConfig::scale_init, "initial loss scale")->capture_default_str();
  f.add(c, "--scale-growth-interval", &TrainConfig::scale_growth_interval,
        "clean steps before the loss scale doubles")
      ->capture_default_str();
  f.add(c, "--hidden", &TrainConfig::hidden, "mlp hidden sizes")
      ->delimiter(',')
      ->capture_default_str();
  f.add(c, "--layers", &TrainConfig::layers, "gpt layers")->capture_default_str();
  f.add(c, "--width", &TrainConfig::width, "gpt width C")->capture_default_str();
  f.add(c, "--heads", &TrainConfig::heads, "gpt heads H")->capture_default_str();
  f.add(c, "--context", &TrainConfig::context, "gpt context T")->capture_default_str();
  f.add(c, "--dropout", &TrainConfig::dropout, "dropout probability")->capture_default_str();
  f.add(c, "--checkpoint-activations", &TrainConfig::checkpoint_activations,
        "gpt: none | gelu | blocks | every:N: recompute in backward each MLP's GELU (its 4C "
        "output not kept; ~2% time), or whole blocks (all, or 0, N, 2N..) keeping only their "
        "inputs (~1 more forward); same gradients, less memory")
      ->capture_default_str();
  f.add(c, "--device", &TrainConfig::device,
        "cpu | cuda | cuda:N: where this process computes (cuda: GPU N, or the local rank under "
        "mpirun); a checkpoint resumes on either")
      ->capture_default_str();
  auto* seed = c->add_option("--seed", f.seed, "random seed (init, data order, dropout)")
                   ->check(kNonNegative)
                   ->capture_default_str();
  f.fields.push_back({seed, [&f](TrainConfig& dst) { dst.seed = static_cast<uint64_t>(f.seed); }});
  f.add(c, "--out", &TrainConfig::out,
        "run folder (default: runs/<model>-<precision>-<date>-<time>, a new one per run)");
  f.flag(c, "--force", &TrainConfig::force,
         "start a fresh run in an --out that holds another run (its checkpoints are deleted; "
         "never with --resume)");
  f.add(c, "--log-every", &TrainConfig::log_every, "log a metrics line every N steps")
      ->check(kPositive)
      ->capture_default_str();
  f.add(c, "--eval-every", &TrainConfig::eval_every, "evaluate every N steps (0: at the end)")
      ->check(kNonNegative)
      ->capture_default_str();
  f.add(c, "--eval-batches", &TrainConfig::eval_batches,
        "token data: validation batches per evaluation")
      ->check(kPositive)
      ->capture_default_str();
  f.add(c, "--checkpoint-every", &TrainConfig::checkpoint_every,
        "also checkpoint every N steps (0: off)")
      ->check(kNonNegative)
      ->capture_default_str();
  f.add(c, "--checkpoint-minutes", &TrainConfig::checkpoint_minutes,
        "checkpoint every M minutes of the run (0: off); a run always checkpoints at its end")
      ->check(kNonNegative)
      ->capture_default_str();
  f.add(c, "--keep-checkpoints", &TrainConfig::keep_checkpoints, "checkpoints kept")
      ->check(kPositive)
      ->capture_default_str();
  f.add(c, "--diagnose-every", &TrainConfig::diagnose_every,
        "gradient precision diagnostics every N steps into OUT/diagnostics.jsonl (0: off)")
      ->check(kNonNegative)
      ->capture_default_str();
  f.add(c, "--tensorboard", &TrainConfig::tensorboard,
        "TensorBoard event files in OUT/tensorboard: the logged scalars, and with "
        "--diagnose-every per-parameter histograms of log2|gradient| and log2|update| against "
        "fp16's, bf16's and fp8's ranges")
      ->capture_default_str();
  f.add(c, "--nonfinite-patience", &TrainConfig::nonfinite_patience,
        "abort after N consecutive non-finite losses")
      ->check(kPositive)
      ->capture_default_str();
  c->add_flag("--quiet", f.quiet, "no progress output");
  // data parallel (under mpirun -np N; see include/mixtrain/dist/comm.h)
  f.add(c, "--zero", &TrainConfig::zero,
        "ZeRO stage: 0, 1 (shard the fp32 master and moments), 2 (and the fp32 gradients, "
        "reduce-scattered after every micro-batch) or 3 (FSDP: and the compute weights, "
        "all-gathered per unit for its forward and its backward)")
      ->check(CLI::IsMember({0, 1, 2, 3}))
      ->capture_default_str();
  f.add(c, "--reshard-after-forward", &TrainConfig::reshard_after_forward,
        "--zero 3: release a unit's gathered weights after its forward (gathered again for its "
        "backward); false keeps them until its backward is done")
      ->capture_default_str();
  f.add(c, "--prefetch", &TrainConfig::prefetch,
        "--zero 3: start the next unit's all-gather while the current one computes")
      ->capture_default_str();
  f.add(c, "--allreduce", &TrainConfig::allreduce, "gradient dtype on the wire: fp32 | compute")
      ->check(CLI::IsMember({"fp32", "compute"}))
      ->capture_default_str();
  f.add(c, "--comm-timeout", &TrainConfig::comm_timeout,
        "seconds a collective may wait for the other ranks before aborting the job")
      ->capture_default_str();
  f.flag(c, "--overlap-allreduce", &TrainConfig::overlap_allreduce,
         "start each gradient bucket's reduction during backward (off: after it)");
  f.add(c, "--bucket-kib", &TrainConfig::bucket_kib,
        "gradient reduction bucket size in KiB (wire bytes)")
      ->check(kPositive)
      ->capture_default_str();
  c->add_option("--stop-after", f.stop_after,
                "testing aid: exit with status 3 after N steps, as if killed")
      ->group("");
  f.add(c, "--init-scale", &TrainConfig::init_scale,
        "testing aid: multiply every initial weight (fp16 forward overflow)")
      ->group("");
  f.add(c, "--inject-nonfinite-grad", &TrainConfig::inject_nonfinite_grad,
        "testing aid: steps whose gradients get an Inf (NaN at odd list positions)")
      ->delimiter(',')
      ->group("");
}

// The config the flags describe: the model's defaults where a flag is not given (gpt: batch
// 8), or, with --resume DIR, the run's own config.json with the given flags laid over it. A
// given flag that would make it another run is refused, naming each.
TrainConfig resolve(const TrainFlags& f, const std::string& resume) {
  if (resume.empty()) {
    TrainConfig x = f.cfg;
    x.seed = static_cast<uint64_t>(f.seed);
    if (!f.given("--batch") && x.model == "gpt") x.batch = 8;  // the mlp default is too big
    return x;
  }
  if (f.given("--out") && f.cfg.out != resume)
    throw ConfigError(
        fmt::format("--resume {} and --out {} name different folders", resume, f.cfg.out));
  if (f.cfg.force)
    throw ConfigError("--force cannot be combined with --resume (it would start the run over)");
  if (!fs::exists(fs::path(resume) / "config.json"))
    throw ConfigError(fmt::format(
        "--resume {}: no run to resume there (no config.json); use --out to start a new run",
        resume));
  const TrainConfig run = train::load_run_config(resume);
  TrainConfig x = run;
  for (const auto& [o, copy] : f.fields)
    if (o->count() > 0) copy(x);
  const auto diffs = train::run_differences(run, x);
  if (!diffs.empty()) {
    std::string list;
    for (const auto& d : diffs) {
      std::string flag = d.key;
      std::replace(flag.begin(), flag.end(), '_', '-');
      list += fmt::format("\n  --{}: the run has {}, given {}", flag, d.run_value, d.given_value);
    }
    throw ConfigError(fmt::format(
        "--resume {}: the flags given would make it another run:{}\ndrop them to continue the "
        "run as it was configured, or start a new run with another --out",
        resume, list));
  }
  x.out = resume;
  x.resume = true;
  return x;
}

// Ctrl-C (or SIGTERM) during a run: the run stops after the step in progress, checkpointed, and
// can be resumed; a second one ends the process at once (the last checkpoint stays).
volatile std::sig_atomic_t g_interrupted = 0;

struct InterruptGuard {
  InterruptGuard() {
    g_interrupted = 0;
    old_int_ = std::signal(SIGINT, &on_signal);
    old_term_ = std::signal(SIGTERM, &on_signal);
  }
  ~InterruptGuard() {
    std::signal(SIGINT, old_int_);
    std::signal(SIGTERM, old_term_);
  }
  static void on_signal(int sig) {
    if (g_interrupted) {
      std::signal(sig, SIG_DFL);
      std::raise(sig);
    }
    g_interrupted = 1;
  }
  void (*old_int_)(int);
  void (*old_term_)(int);
};

// What a run says on the terminal: progress (a bar on a terminal, lines otherwise), warnings,
// --stop-after and Ctrl-C. Rank 0 alone prints under mpirun.
class Printer : public train::Callbacks {
 public:
  Printer(bool quiet, int64_t stop_after)
      : quiet_(quiet || dist::rank() != 0),
        tty_(!quiet_ && isatty(STDERR_FILENO)),
        stop_after_(stop_after) {}
  void on_start(const train::RunStart& s) override {
    if (quiet_) return;
    fmt::print(stderr, "precision: {}{}\n", s.policy,
               s.policy_why.empty() ? "" : "; " + s.policy_why);
    if (s.device != "cpu") fmt::print(stderr, "device: {}\n", s.device);
    if (s.resumed_at >= 0) fmt::print(stderr, "resumed {} at step {}\n", s.out_dir, s.resumed_at);
    fmt::print(stderr, "mixtrain: {} on {}, {} parameters, {} steps, loss {}, precision {}\n",
               s.model, s.data, s.parameters, s.total_steps, s.loss, s.policy);
  }
  void on_log(const train::StepLog& l) override {
    if (quiet_) return;
    const std::string status =
        fmt::format("step {}/{} loss {:.4f} scale {:g} skipped {} {} {}/s ETA {}", l.step,
                    l.total_steps, l.mean_loss, l.loss_scale, l.skipped_total,
                    human_rate(l.throughput), l.items_name, human_time(l.eta_s));
    const std::string eval =
        l.evaluated
            ? fmt::format("val_loss {:.4f}{}", l.val_loss,
                          l.accuracy >= 0 ? fmt::format(" accuracy {:.4f}", l.accuracy) : "")
            : "";
    if (tty_) {
      const int width = 24;
      const int filled = static_cast<int>(width * l.step / std::max<int64_t>(1, l.total_steps));
      fmt::print(stderr, "\r[{}{}] {}   ", std::string(filled, '#'),
                 std::string(width - filled, '.'), status);
      if (l.evaluated) fmt::print(stderr, "\n  eval: {}\n", eval);
    } else {
      fmt::print(stderr, "{}{}\n", status, l.evaluated ? " | " + eval : "");
    }
  }
  bool on_step(int64_t step) override {
    if (stop_after_ > 0 && step >= stop_after_) {
      fmt::print(stderr, "\nmixtrain: stopping after step {} (--stop-after)\n", step);
      std::fflush(stderr);
      std::_Exit(3);
    }
    return g_interrupted == 0;
  }
  void on_warning(const std::string& m) override {
    if (dist::rank() == 0) fmt::print(stderr, "{}mixtrain: warning: {}\n", tty_ ? "\n" : "", m);
  }
  void on_end(const train::TrainSummary&) override {
    if (tty_) fmt::print(stderr, "\n");
  }

 private:
  static std::string human_rate(double v) {
    if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
    if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
    return fmt::format("{:.0f}", v);
  }
  static std::string human_time(double s) {
    if (!(s >= 0) || s > 1e7) return "?";
    const int64_t t = static_cast<int64_t>(s + 0.5);
    if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
    if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
    return fmt::format("{}s", t);
  }
  bool quiet_, tty_;
  int64_t stop_after_;
};

std::string human_bytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  return fmt::format("{:.0f} KiB", b / 1024.0);
}

// Runs /usr/bin/python3 on an embedded plotting script; matplotlib is optional.
bool run_python(const std::string& script, const std::vector<std::string>& args, std::string& why) {
  if (access("/usr/bin/python3", X_OK) != 0) {
    why = "/usr/bin/python3 not found";
    return false;
  }
  char tmpl[] = "/tmp/mixtrain_plot_XXXXXX.py";
  const int fd = mkstemps(tmpl, 3);
  if (fd < 0) {
    why = "cannot create a temporary script";
    return false;
  }
  FILE* f = fdopen(fd, "w");
  std::fputs(script.c_str(), f);
  std::fclose(f);
  std::string cmd = std::string("/usr/bin/python3 ") + tmpl;
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = p ? pclose(p) : -1;
  std::remove(tmpl);
  if (rc != 0) {
    why = out.empty() ? "python3 failed" : out;
    while (!why.empty() && why.back() == '\n') why.pop_back();
    return false;
  }
  return true;
}

// Top: every step's training loss per precision. Below: each one's loss minus the fp32
// control's, smoothed (the raw per-step gap faint behind it), around a zero line.
const char* kPlotCompare = R"PY(
import json, sys
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except Exception as e:
    print("matplotlib is not installed:", e); sys.exit(3)
compare, png = sys.argv[1], sys.argv[2]
j = json.load(open(compare))
runs, ref, w = j["runs"], j.get("gap_reference"), j.get("smoothing_window", 1)
nan = float("nan")
num = lambda xs: [nan if x is None else x for x in xs]
if ref is not None:
    fig, (ax, gx) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 2]})
else:
    fig, ax = plt.subplots(figsize=(9, 5))
for r in runs:
    p = r["per_step"]
    line, = ax.plot(p["steps"], num(p["loss"]), lw=1, label=r["label"])
    if ref is not None and r["label"] != ref:
        c = line.get_color()
        gx.plot(p["steps"], num(p["gap_to_fp32"]), color=c, lw=0.8, alpha=0.25)
        gx.plot(p["steps"], num(p["gap_to_fp32_smoothed"]), color=c, lw=1.6, label=r["label"])
ax.set_ylabel("training loss (every step)")
title = "mixtrain: %s, same seed and data order" % j["model"]
if ref is None:
    title += "\n(no fp32 run among the precisions: no gap panel)"
ax.set_title(title); ax.grid(alpha=0.3); ax.legend()
if ref is not None:
    gx.axhline(0, color="black", lw=0.8)
    gx.set_ylabel("loss - %s loss" % ref)
    gx.set_title("gap to the %s control: trailing mean over %d step%s (faint: every step)"
                 % (ref, w, "" if w == 1 else "s"), fontsize=10)
    gx.grid(alpha=0.3)
    if len(runs) > 1: gx.legend(fontsize=8)
    gx.set_xlabel("step")
else:
    ax.set_xlabel("step")
fig.tight_layout(); fig.savefig(png, dpi=110)
)PY";

// The merged gradient histogram against the formats' ranges: fp16's at the loss scale S as
// lines over it; below, one bar per format (light: subnormals), fp8's unscaled.
const char* kPlotDoctor = R"PY(
import json, math, sys
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except Exception as e:
    print("matplotlib is not installed:", e); sys.exit(3)
rep, png = json.load(open(sys.argv[1])), sys.argv[2]
h = rep["histogram"]; lo = h["min_exp"]; bins = h["bins"]; s = rep["fp16_scale"]
xs = [lo + k + 0.5 for k in range(len(bins))]
fig, (ax, rx) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True,
                             gridspec_kw={"height_ratios": [4, 1.5]})
ax.bar(xs, bins, width=0.9, color="#4a7ab5", label="|gradient| (fp32, all steps)")
ls2 = math.log2(s)
lines = [(-24 - ls2, "fp16 flush to zero (2^-24 / S)", "#c0392b"),
         (-14 - ls2, "fp16 smallest normal (2^-14 / S)", "#e67e22"),
         (math.log2(65504) - ls2, "fp16 max (65504 / S)", "#8e44ad")]
for x, name, c in lines:
    ax.axvline(x, color=c, ls="--", label=name)
    rx.axvline(x, color=c, ls="--", lw=0.8)
if s != 1:
    ax.axvline(-24, color="gray", ls=":", label="fp16 flush to zero without scaling (2^-24)")
left = min([lo - 1] + [x - 1 for x, _, _ in lines]); right = max(h["max_exp"] + 1, lines[-1][0] + 1)
ax.set_xlim(left, right)
ax.set_yscale("log"); ax.set_ylabel("count")
ax.set_title("gradient magnitudes vs fp16's range at loss scale S = %g; fp8's and bf16's below" % s)
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
# (name, smallest subnormal, smallest normal, max) as log2 of |g|; bf16 has fp32's exponents.
fmts = [("fp16 at S: 2^-24 | 2^-14 .. 65504, / S", -24 - ls2, -14 - ls2, math.log2(65504) - ls2, "#8e44ad"),
        ("e4m3 (unscaled): 2^-9 | 2^-6 .. 448", -9, -6, math.log2(448), "#16a085"),
        ("e5m2 (unscaled): 2^-16 | 2^-14 .. 57344", -16, -14, math.log2(57344), "#d35400"),
        ("bf16: 2^-133 | 2^-126 .. 3.4e38 (whole axis)", -133, -126, 128, "#27ae60")]
for y, (name, sub, nrm, top, c) in enumerate(fmts):
    rx.barh(y, nrm - sub, left=sub, height=0.6, color=c, alpha=0.3)
    rx.barh(y, top - nrm, left=nrm, height=0.6, color=c, alpha=0.8)
rx.set_yticks(range(len(fmts))); rx.set_yticklabels([f[0] for f in fmts], fontsize=7)
rx.set_ylim(-0.6, len(fmts) - 0.4); rx.invert_yaxis()
rx.set_xlabel("log2 |gradient|  (light: subnormal)"); rx.set_xlim(left, right)
fig.tight_layout(); fig.savefig(png, dpi=110)
)PY";

void plot(const std::string& script, const std::vector<std::string>& args, const std::string& png) {
  std::string why;
  if (run_python(script, args, why))
    fmt::print("plot: {}\n", png);
  else
    fmt::print("plot skipped ({})\n", why);
}

int run_train(const TrainConfig& cfg, bool quiet, int64_t stop_after) {
  InterruptGuard interrupts;
  Printer printer(quiet, stop_after);
  train::Trainer t(cfg, &printer);
  train::TrainSummary s = t.run();
  if (dist::rank() != 0) return s.stopped ? 130 : 0;  // under mpirun: rank 0 reports
  if (s.stopped) {
    fmt::print(stderr,
               "mixtrain: interrupted; checkpointed at step {}: continue with\n"
               "  mixtrain train --resume {}\n",
               s.steps, s.out_dir);
    return 130;
  }
  fmt::print("{}\n", s.to_json());
  fmt::print(stderr, "run folder: {} (config.json, metrics.jsonl, summary.json, checkpoints/)\n",
             s.out_dir);
  return 0;
}

// ---- compare ----

int run_compare(const TrainConfig& base, const std::vector<std::string>& precisions, bool quiet) {
  InterruptGuard interrupts;
  Printer printer(quiet, 0);
  const std::vector<train::CompareRun> runs = train::compare(base, precisions, &printer);
  if (dist::rank() != 0) return 0;
  const bool cls = runs[0].summary.test_accuracy >= 0;
  fmt::print("\n{:<28} {:>10} {:>9} {:>10} {:>10} {:>8} {:>8} {:>11} {:>8}\n", "precision",
             "train loss", "val loss", cls ? "test acc" : "val Δ%", cls ? "Δ vs fp32" : "",
             "wall s", "speed-up", "peak tensor", "skipped");
  const train::TrainSummary& ref = runs[0].summary;
  for (const train::CompareRun& run : runs) {
    const std::string& label = run.label;
    const train::TrainSummary& s = run.summary;
    const double speedup = s.throughput / std::max(ref.throughput, 1e-12);
    if (cls)
      fmt::print("{:<28} {:>10.4f} {:>9.4f} {:>10.4f} {:>+10.4f} {:>8.1f} {:>7.2f}x {:>11} {:>8}\n",
                 label, s.final_train_loss, s.val_loss, s.test_accuracy,
                 s.test_accuracy - ref.test_accuracy, s.wall_s, speedup,
                 human_bytes(s.peak_tensor_bytes), s.skipped_steps);
    else
      fmt::print("{:<28} {:>10.4f} {:>9.4f} {:>+9.2f}% {:>10} {:>8.1f} {:>7.2f}x {:>11} {:>8}\n",
                 label, s.final_train_loss, s.val_loss,
                 100.0 * (s.val_loss - ref.val_loss) / ref.val_loss, "", s.wall_s, speedup,
                 human_bytes(s.peak_tensor_bytes), s.skipped_steps);
  }
  const std::string out = fs::path(runs[0].summary.out_dir).parent_path().string();
  fmt::print("\n(reference: the first precision, {}; same seed, same data order)\n", runs[0].label);
  fmt::print("compare.json: {}/compare.json\n", out);
  plot(kPlotCompare, {out + "/compare.json", out + "/loss_curves.png"}, out + "/loss_curves.png");
  return 0;
}

// ---- doctor ----

int run_doctor_cmd(const TrainConfig& cfg, int64_t steps, const std::string& out) {
  train::DoctorResult r = train::run_doctor(cfg, steps);
  fmt::print("{}", r.str());
  const std::string dir =
      out.empty() ? fmt::format("runs/doctor-{}-seed{}", cfg.model, cfg.seed) : out;
  fs::create_directories(dir);
  std::ofstream(dir + "/doctor.json") << r.to_json() << "\n";
  fmt::print("report: {}/doctor.json\n", dir);
  plot(kPlotDoctor, {dir + "/doctor.json", dir + "/gradient_histogram.png"},
       dir + "/gradient_histogram.png");
  return 0;
}

void setup_train(CLI::App& root) {
  auto* c = root.add_subcommand(
      "train", "train a model (the MLP on Fashion-MNIST by default); --resume DIR continues a run");
  auto f = std::make_shared<TrainFlags>();
  auto resume = std::make_shared<std::string>();
  add_train_flags(c, *f);
  c->add_option("--resume", *resume,
                "continue the run in this folder with its own flags (config.json); flags given "
                "beside it must agree, except --steps/--epochs and run control");
  on_run(c, [f, resume]() { return run_train(resolve(*f, *resume), f->quiet, f->stop_after); });
  on_check(c, [f, resume]() {
    if (resume->empty()) train::validate_config(resolve(*f, *resume));
    return 0;
  });
}

void setup_compare(CLI::App& root) {
  auto* c = root.add_subcommand("compare",
                                "train the same model in several precisions (same seed, same data "
                                "order) and compare against the fp32 control");
  auto f = std::make_shared<TrainFlags>();
  auto precisions =
      std::make_shared<std::vector<std::string>>(std::vector<std::string>{"fp32", "bf16", "fp16"});
  add_train_flags(c, *f, /*with_precision=*/false);
  c->add_option("--precisions", *precisions,
                "comma-separated; PREC:MODE sets the loss scaling (e.g. fp16:none)")
      ->delimiter(',')
      ->capture_default_str();
  on_run(c, [f, precisions]() { return run_compare(resolve(*f, ""), *precisions, f->quiet); });
  on_check(c, [f]() {
    train::validate_config(resolve(*f, ""));
    return 0;
  });
}

void setup_doctor(CLI::App& root) {
  auto* c =
      root.add_subcommand("doctor",
                          "a few fp32 steps, then per-layer fp16 underflow/overflow of the "
                          "gradients, a recommended precision and loss scale, and a histogram");
  auto f = std::make_shared<TrainFlags>();
  auto steps = std::make_shared<int64_t>(20);
  add_train_flags(c, *f, /*with_precision=*/false);
  c->add_option("--doctor-steps", *steps, "fp32 steps to gather gradients over")
      ->check(kPositive)
      ->capture_default_str();
  on_run(c, [f, steps]() {
    const TrainConfig cfg = resolve(*f, "");
    return run_doctor_cmd(cfg, *steps, cfg.out);
  });
  on_check(c, [f]() {
    train::validate_config(resolve(*f, ""));
    return 0;
  });
}

void setup_export(CLI::App& root) {
  auto* c = root.add_subcommand("export", "write a run's weights as a safetensors file");
  auto run_dir = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>("fp32");
  auto out = std::make_shared<std::string>();
  c->add_option("RUN_DIR", *run_dir, "run folder")->required();
  c->add_option("--dtype", *dtype, "fp32 | bf16 | fp16")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  c->add_option("--out", *out, "output .safetensors file")->required();
  on_run(c, [run_dir, dtype, out]() {
    const train::ExportResult r = train::export_weights(*run_dir, *dtype, *out);
    for (const auto& w : r.warnings) fmt::print(stderr, "mixtrain: warning: {}\n", w);
    fmt::print("wrote {} tensors ({}) from {} to {}\n", r.tensors, *dtype, r.source, *out);
    return 0;
  });
}

void setup_generate(CLI::App& root) {
  auto* c = root.add_subcommand(
      "generate", "sample text from a trained GPT run (its newest checkpoint, its precision)");
  auto run_dir = std::make_shared<std::string>();
  auto o = std::make_shared<train::GenerateOptions>();
  auto seed = std::make_shared<int64_t>(0);
  c->add_option("RUN_DIR", *run_dir, "a gpt run folder")->required();
  c->add_option("--prompt", o->prompt, "text to continue (byte-level runs)");
  c->add_option("--prompt-tokens", o->prompt_tokens, "token ids to continue (tokens: runs)")
      ->delimiter(',');
  c->add_option("--tokens", o->tokens, "tokens to generate")
      ->check(kPositive)
      ->capture_default_str();
  c->add_option("--temperature", o->temperature, "softmax temperature (0: greedy)")
      ->check(kNonNegative)
      ->capture_default_str();
  c->add_option("--top-k", o->top_k, "sample among the k most likely tokens (0: all)")
      ->check(kNonNegative)
      ->capture_default_str();
  c->add_option("--seed", *seed, "sampling seed")->check(kNonNegative)->capture_default_str();
  c->add_option("--device", o->device, "cpu | cuda | cuda:N: where the forward passes run")
      ->capture_default_str();
  on_run(c, [run_dir, o, seed]() {
    o->seed = static_cast<uint64_t>(*seed);
    const train::Generated g = train::generate(*run_dir, *o);
    for (const auto& w : g.warnings) fmt::print(stderr, "mixtrain: warning: {}\n", w);
    fmt::print(stderr, "generate: {} tokens from {} ({})\n", g.tokens.size(), g.checkpoint,
               g.precision);
    if (g.bytes) {
      fmt::print("{}{}\n", o->prompt, g.text);
    } else {
      std::string ids;
      for (int64_t t : g.tokens) ids += (ids.empty() ? "" : ",") + std::to_string(t);
      fmt::print("{}\n", ids);
    }
    return 0;
  });
}

const bool registered =
    add_command("train", 1, &setup_train) && add_command("compare", 2, &setup_compare) &&
    add_command("doctor", 3, &setup_doctor) && add_command("export", 4, &setup_export) &&
    add_command("generate", 5, &setup_generate);

}  // namespace

int run_default_training() {
  TrainConfig cfg;  // MLP on Fashion-MNIST, precision auto, 3 epochs
  return run_train(cfg, false, 0);
}

int check_default_training() {
  train::validate_config(TrainConfig{});
  return 0;
}

}  // namespace mixtrain::cli
