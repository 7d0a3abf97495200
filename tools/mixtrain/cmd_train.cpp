// `mixtrain train`, `compare`, `doctor` and `export`: the user's main jobs. The train flags are
// declared once and shared by the three commands that run training.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
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
#include "mixtrain/train/trainer.h"

namespace mixtrain::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using train::TrainConfig;

// The flags of `train` (also taken by `compare`, `doctor` and `bench step`).
void add_train_flags(CLI::App* c, TrainConfig& cfg, bool with_precision = true) {
  c->add_option("--model", cfg.model, "mlp (Fashion-MNIST classifier) or gpt (byte-level LM)")
      ->check(CLI::IsMember({"mlp", "gpt"}))
      ->capture_default_str();
  c->add_option("--data", cfg.data, "fashion-mnist or text:PATH (plain or .gz)")
      ->capture_default_str();
  if (with_precision)
    c->add_option("--precision", cfg.precision, "fp32 | bf16 | fp16 | auto | p=f32,c=bf16,o=f32")
        ->capture_default_str();
  c->add_option("--loss-scale", cfg.loss_scale,
                "default (dynamic for fp16, none otherwise) | dynamic | static:S | none")
      ->capture_default_str();
  c->add_option("--optimizer", cfg.optimizer, "adamw | adam | sgd | rmsprop")
      ->check(CLI::IsMember({"adamw", "adam", "sgd", "rmsprop"}))
      ->capture_default_str();
  c->add_option("--master", cfg.master,
                "auto | fp32 | bf16-sr | bf16-kahan | split16 (master-weight mode; auto: split16 "
                "when every weight is bf16, else fp32)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16-sr", "bf16-kahan", "split16"}))
      ->capture_default_str();
  c->add_option("--fp32-modules", cfg.fp32_modules,
                "sub-modules kept in fp32 whatever the precision (dotted names, e.g. fc2 or head)")
      ->delimiter(',');
  c->add_option("--grad-dtype", cfg.grad_dtype,
                "fp32 | compute: dtype parameter gradients accumulate in (compute saves 2 B/param)")
      ->capture_default_str();
  auto* ep =
      c->add_option("--epochs", cfg.epochs, "passes over the training data")->capture_default_str();
  auto* st = c->add_option("--steps", cfg.steps, "optimizer steps (instead of --epochs)");
  ep->excludes(st);
  c->add_option("--batch", cfg.batch, "global batch size")->capture_default_str();
  c->add_option("--grad-accum", cfg.grad_accum, "micro-batches per optimizer step")
      ->capture_default_str();
  c->add_option("--lr", cfg.lr, "learning rate")->capture_default_str();
  c->add_option("--weight-decay", cfg.weight_decay, "weight decay")->capture_default_str();
  c->add_option("--momentum", cfg.momentum, "momentum (sgd, rmsprop)")->capture_default_str();
  c->add_option("--schedule", cfg.schedule, "constant | cosine (after --warmup linear steps)")
      ->check(CLI::IsMember({"constant", "cosine"}))
      ->capture_default_str();
  c->add_option("--warmup", cfg.warmup, "linear warm-up steps")->capture_default_str();
  c->add_option("--clip-grad", cfg.clip_grad, "global gradient-norm clipping (0: off)")
      ->capture_default_str();
  c->add_option("--scale-init", cfg.scale_init, "initial loss scale")->capture_default_str();
  c->add_option("--scale-growth-interval", cfg.scale_growth_interval,
                "clean steps before the loss scale doubles")
      ->capture_default_str();
  c->add_option("--hidden", cfg.hidden, "mlp hidden sizes")->delimiter(',')->capture_default_str();
  c->add_option("--layers", cfg.layers, "gpt layers")->capture_default_str();
  c->add_option("--width", cfg.width, "gpt width C")->capture_default_str();
  c->add_option("--heads", cfg.heads, "gpt heads H")->capture_default_str();
  c->add_option("--context", cfg.context, "gpt context T")->capture_default_str();
  c->add_option("--dropout", cfg.dropout, "dropout probability")->capture_default_str();
  c->add_option("--checkpoint-activations", cfg.checkpoint_activations,
                "gpt: none | gelu | blocks | every:N: recompute in backward each MLP's GELU "
                "(its 4C output not kept; ~2% time), or whole blocks (all, or 0, N, 2N..) "
                "keeping only their inputs (~1 more forward); same gradients, less memory")
      ->capture_default_str();
  c->add_option("--seed", cfg.seed, "random seed (init, data order, dropout)")
      ->capture_default_str();
  c->add_option("--out", cfg.out, "run folder (default runs/<model>-<precision>-seed<seed>)");
  c->add_flag("--force", cfg.force, "overwrite a run folder that holds a different run");
  c->add_option("--log-every", cfg.log_every, "log a metrics line every N steps")
      ->capture_default_str();
  c->add_option("--eval-every", cfg.eval_every, "evaluate every N steps (0: at the end)")
      ->capture_default_str();
  c->add_option("--eval-batches", cfg.eval_batches, "gpt: validation batches per evaluation")
      ->capture_default_str();
  c->add_option("--checkpoint-every", cfg.checkpoint_every,
                "checkpoint every N steps (0: at the end)")
      ->capture_default_str();
  c->add_option("--keep-checkpoints", cfg.keep_checkpoints, "checkpoints kept")
      ->capture_default_str();
  c->add_option("--diagnose-every", cfg.diagnose_every,
                "gradient precision diagnostics every N steps into OUT/diagnostics.jsonl (0: off)")
      ->capture_default_str();
  c->add_option("--nonfinite-patience", cfg.nonfinite_patience,
                "abort after N consecutive non-finite losses")
      ->capture_default_str();
  c->add_flag("--quiet", cfg.quiet, "no progress output");
  // data parallel (under mpirun -np N; see include/mixtrain/dist/comm.h)
  c->add_option("--zero", cfg.zero, "ZeRO stage: 0, or 1 (shard the fp32 master and moments)")
      ->check(CLI::IsMember({0, 1}))
      ->capture_default_str();
  c->add_option("--allreduce", cfg.allreduce, "gradient dtype on the wire: fp32 | compute")
      ->check(CLI::IsMember({"fp32", "compute"}))
      ->capture_default_str();
  c->add_option("--comm-timeout", cfg.comm_timeout,
                "seconds a collective may wait for the other ranks before aborting the job")
      ->capture_default_str();
  c->add_flag("--overlap-allreduce", cfg.overlap_allreduce,
              "start each gradient bucket's reduction during backward (off: after it)");
  c->add_option("--bucket-kib", cfg.bucket_kib,
                "gradient reduction bucket size in KiB (wire bytes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  c->add_option("--stop-after", cfg.stop_after, "testing aid: exit with status 3 after N steps")
      ->group("");
  c->add_option("--init-scale", cfg.init_scale,
                "testing aid: multiply every initial weight (fp16 forward overflow)")
      ->group("");
  c->add_option("--inject-nonfinite-grad", cfg.inject_nonfinite_grad,
                "testing aid: steps whose gradients get an Inf (NaN at odd list positions)")
      ->delimiter(',')
      ->group("");
}

// For --model gpt without --data, the installed corpus.
void default_data(TrainConfig& cfg) {
  if (cfg.model == "gpt" && cfg.data == "fashion-mnist")
    cfg.data = "text:/usr/share/doc/jargon-text/jargon.txt.gz";
  if (cfg.model == "gpt" && cfg.batch == 128) cfg.batch = 8;  // the mlp default is too big
}

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

const char* kPlotCompare = R"PY(
import json, sys
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except Exception as e:
    print("matplotlib is not installed:", e); sys.exit(3)
compare, png = sys.argv[1], sys.argv[2]
runs = json.load(open(compare))["runs"]
fig, ax = plt.subplots(figsize=(8, 5))
for r in runs:
    steps, losses = [], []
    for line in open(r["out_dir"] + "/metrics.jsonl"):
        m = json.loads(line)
        if m.get("mean_loss") is not None:
            steps.append(m["step"]); losses.append(m["mean_loss"])
    ax.plot(steps, losses, label=r["label"])
ax.set_xlabel("step"); ax.set_ylabel("training loss (mean over the logging window)")
ax.set_title("mixtrain: %s, same seed and data order" % runs[0]["model"])
ax.grid(alpha=0.3); ax.legend()
fig.tight_layout(); fig.savefig(png, dpi=110)
)PY";

const char* kPlotDoctor = R"PY(
import json, sys
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except Exception as e:
    print("matplotlib is not installed:", e); sys.exit(3)
rep, png = json.load(open(sys.argv[1])), sys.argv[2]
h = rep["histogram"]; lo = h["min_exp"]; bins = h["bins"]; s = rep["fp16_scale"]
import math
xs = [lo + k + 0.5 for k in range(len(bins))]
fig, ax = plt.subplots(figsize=(9, 4.5))
ax.bar(xs, bins, width=0.9, color="#4a7ab5", label="|gradient| (fp32)")
ls2 = math.log2(s)
for x, name, c in [(-24 - ls2, "fp16 flush to zero (2^-24 / S)", "#c0392b"),
                   (-14 - ls2, "fp16 normal floor (6.1e-5 / S)", "#e67e22"),
                   (math.log2(65504) - ls2, "fp16 max (65504 / S)", "#8e44ad")]:
    ax.axvline(x, color=c, ls="--", label=name)
if s != 1:
    ax.axvline(-24, color="gray", ls=":", label="fp16 flush to zero without scaling (2^-24)")
ax.set_yscale("log"); ax.set_xlabel("log2 |gradient|"); ax.set_ylabel("count")
ax.set_title("gradient magnitudes vs fp16's range at loss scale S = %g" % s)
ax.legend(fontsize=8); fig.tight_layout(); fig.savefig(png, dpi=110)
)PY";

void plot(const std::string& script, const std::vector<std::string>& args, const std::string& png) {
  std::string why;
  if (run_python(script, args, why))
    fmt::print("plot: {}\n", png);
  else
    fmt::print("plot skipped ({})\n", why);
}

int run_train(TrainConfig cfg, bool print_summary = true) {
  default_data(cfg);
  train::Trainer t(cfg);
  if (!cfg.quiet) fmt::print(stderr, "precision: {}\n", t.policy_description());
  train::TrainSummary s = t.run();
  if (print_summary && dist::rank() == 0) {  // under mpirun: once, not once per rank
    fmt::print("{}\n", s.to_json());
    fmt::print(stderr, "run folder: {} (metrics.jsonl, summary.json, checkpoints/)\n", s.out_dir);
  }
  return 0;
}

// ---- compare ----

struct CompareOptions {
  std::vector<std::string> precisions{"fp32", "bf16", "fp16"};
};

int run_compare(TrainConfig base, const CompareOptions& co) {
  default_data(base);
  const std::string out =
      base.out.empty() ? fmt::format("runs/compare-{}-seed{}", base.model, base.seed) : base.out;
  fs::create_directories(out);
  json runs = json::array();
  std::vector<train::TrainSummary> sums;
  std::vector<std::string> labels;
  for (const std::string& spec : co.precisions) {
    // "fp16:none" = fp16 with loss scaling off (to see what scaling buys).
    TrainConfig c = base;
    std::string label = spec;
    const auto colon = spec.find(':');
    c.precision = spec.substr(0, colon);
    if (colon != std::string::npos) {
      c.loss_scale = spec.substr(colon + 1);
      label = c.precision + " (loss scale " + c.loss_scale + ")";
    }
    std::string dir = spec;
    for (char& ch : dir)
      if (ch == ':') ch = '-';
    c.out = out + "/" + dir;
    if (!c.quiet) fmt::print(stderr, "== {} ==\n", label);
    train::Trainer t(c);
    train::TrainSummary s = t.run();
    json j = json::parse(s.to_json());
    j["label"] = label;
    runs.push_back(j);
    sums.push_back(s);
    labels.push_back(label);
  }
  const json result = {
      {"runs", runs}, {"seed", base.seed}, {"model", base.model}, {"data", base.data}};
  std::ofstream(out + "/compare.json") << result.dump(2) << "\n";
  const bool cls = sums[0].test_accuracy >= 0;
  fmt::print("\n{:<28} {:>10} {:>9} {:>10} {:>10} {:>8} {:>8} {:>11} {:>8}\n", "precision",
             "train loss", "val loss", cls ? "test acc" : "val Δ%", cls ? "Δ vs fp32" : "",
             "wall s", "speed-up", "peak tensor", "skipped");
  const train::TrainSummary& ref = sums[0];
  for (size_t i = 0; i < sums.size(); ++i) {
    const auto& s = sums[i];
    const double speedup = s.throughput / std::max(ref.throughput, 1e-12);
    if (cls)
      fmt::print("{:<28} {:>10.4f} {:>9.4f} {:>10.4f} {:>+10.4f} {:>8.1f} {:>7.2f}x {:>11} {:>8}\n",
                 labels[i], s.final_train_loss, s.val_loss, s.test_accuracy,
                 s.test_accuracy - ref.test_accuracy, s.wall_s, speedup,
                 human_bytes(s.peak_tensor_bytes), s.skipped_steps);
    else
      fmt::print("{:<28} {:>10.4f} {:>9.4f} {:>+9.2f}% {:>10} {:>8.1f} {:>7.2f}x {:>11} {:>8}\n",
                 labels[i], s.final_train_loss, s.val_loss,
                 100.0 * (s.val_loss - ref.val_loss) / ref.val_loss, "", s.wall_s, speedup,
                 human_bytes(s.peak_tensor_bytes), s.skipped_steps);
  }
  fmt::print("\n(reference: the first precision, {}; same seed, same data order)\n", labels[0]);
  fmt::print("compare.json: {}/compare.json\n", out);
  plot(kPlotCompare, {out + "/compare.json", out + "/loss_curves.png"}, out + "/loss_curves.png");
  return 0;
}

// ---- doctor ----

int run_doctor_cmd(TrainConfig cfg, int64_t steps, const std::string& out) {
  default_data(cfg);
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
  auto* c = root.add_subcommand("train", "train a model (MLP on Fashion-MNIST by default)");
  auto cfg = std::make_shared<TrainConfig>();
  auto resume = std::make_shared<std::string>();
  add_train_flags(c, *cfg);
  c->add_option("--resume", *resume, "continue the run in this folder (same flags)");
  auto config = [cfg, resume]() {
    TrainConfig x = *cfg;
    if (!resume->empty()) {
      if (!x.out.empty() && x.out != *resume)
        throw ConfigError(
            fmt::format("--resume {} and --out {} name different folders", *resume, x.out));
      x.out = *resume;
      x.resume = true;
    }
    return x;
  };
  on_run(c, [config]() { return run_train(config()); });
  on_check(c, [config]() {
    TrainConfig x = config();
    default_data(x);
    train::validate_config(x);
    return 0;
  });
}

void setup_compare(CLI::App& root) {
  auto* c = root.add_subcommand("compare",
                                "train the same model in several precisions (same seed, same data "
                                "order) and compare against the fp32 control");
  auto cfg = std::make_shared<TrainConfig>();
  auto co = std::make_shared<CompareOptions>();
  add_train_flags(c, *cfg, /*with_precision=*/false);
  c->add_option("--precisions", co->precisions,
                "comma-separated; PREC:MODE sets the loss scaling (e.g. fp16:none)")
      ->delimiter(',')
      ->capture_default_str();
  on_run(c, [cfg, co]() { return run_compare(*cfg, *co); });
  on_check(c, [cfg]() {
    TrainConfig x = *cfg;
    default_data(x);
    train::validate_config(x);
    return 0;
  });
}

void setup_doctor(CLI::App& root) {
  auto* c =
      root.add_subcommand("doctor",
                          "a few fp32 steps, then per-layer fp16 underflow/overflow of the "
                          "gradients, a recommended precision and loss scale, and a histogram");
  auto cfg = std::make_shared<TrainConfig>();
  auto steps = std::make_shared<int64_t>(20);
  add_train_flags(c, *cfg, /*with_precision=*/false);
  c->add_option("--doctor-steps", *steps, "fp32 steps to gather gradients over")
      ->capture_default_str();
  on_run(c, [cfg, steps]() { return run_doctor_cmd(*cfg, *steps, cfg->out); });
  on_check(c, [cfg]() {
    TrainConfig x = *cfg;
    default_data(x);
    train::validate_config(x);
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
    const int64_t n = train::export_weights(*run_dir, *dtype, *out);
    fmt::print("wrote {} tensors ({}) to {}\n", n, *dtype, *out);
    return 0;
  });
}

const bool registered =
    add_command("train", 1, &setup_train) && add_command("compare", 2, &setup_compare) &&
    add_command("doctor", 3, &setup_doctor) && add_command("export", 4, &setup_export);

}  // namespace

int run_default_training() {
  TrainConfig cfg;  // MLP on Fashion-MNIST, precision auto, 3 epochs
  return run_train(cfg);
}

int check_default_training() {
  train::validate_config(TrainConfig{});
  return 0;
}

}  // namespace mixtrain::cli
