// The trainer end to end on real data: convergence, metrics and summary files, bit-exact
// resume, and clear errors for bad configs and reused run folders.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "core/sanitizers.h"
#include "mixtrain/io/safetensors.h"
#include "mixtrain/train/trainer.h"
#include "train/checkpoint.h"
#include "train_fixtures.h"

using namespace mixtrain;
using namespace mixtrain::train;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) { return test::fresh_run_dir("trainer", name); }

TrainConfig tiny_gpt(const fs::path& out) {
  TrainConfig c;
  c.model = "gpt";
  c.data = std::string("text:") + MIXTRAIN_SOURCE_DIR + "/tests/data/jargon_sample.txt";
  c.layers = 2;
  c.width = 32;
  c.heads = 2;
  c.context = 32;
  c.batch = 4;
  c.lr = 3e-3;
  c.steps = 12;
  c.log_every = 1;
  c.eval_batches = 2;
  c.out = out.string();
  return c;
}

// Every tensor of the newest checkpoint (master weights, moments, scaler), by name.
std::map<std::string, std::vector<uint8_t>> final_weights(const fs::path& out) {
  return test::newest_checkpoint_tensors(out);
}

}  // namespace

TEST(Trainer, MlpLearnsFashionMnistAndWritesMetrics) {
  const fs::path out = fresh_dir("mlp");
  TrainConfig c;
  c.precision = "bf16";
  c.steps = 60;
  c.batch = 64;
  c.hidden = {64};
  c.log_every = 10;
  c.out = out.string();
  TrainSummary s = Trainer(c).run();
  EXPECT_EQ(s.steps, 60);
  EXPECT_EQ(s.skipped_steps, 0);
  EXPECT_GT(s.test_accuracy, 0.6);  // 10 classes: chance is 0.1
  EXPECT_LT(s.val_loss, 1.2);       // starts at ln(10) = 2.30
  EXPECT_GT(s.peak_tensor_bytes, 0);
  std::ifstream m(out / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(m, line)) {
    auto j = nlohmann::json::parse(line);
    for (const char* k : {"step", "loss", "lr", "loss_scale", "skipped", "grad_norm", "throughput"})
      EXPECT_TRUE(j.contains(k)) << k;
    ++lines;
  }
  EXPECT_EQ(lines, 6);
  auto sum = nlohmann::json::parse(std::ifstream(out / "summary.json"));
  for (const char* k :
       {"precision", "model", "steps", "skipped_steps", "final_loss_scale", "final_train_loss",
        "val_loss", "test_accuracy", "wall_s", "throughput", "peak_tensor_bytes", "peak_rss_bytes"})
    EXPECT_TRUE(sum.contains(k)) << k;
  EXPECT_EQ(sum["precision"], "bf16");
  fs::remove_all(out);
}

TEST(Trainer, GptLossFallsUnderEveryFp8Recipe) {
  for (const char* recipe : {"delayed", "current", "mxfp8"}) {
    const fs::path out = fresh_dir(std::string("gpt_fp8_") + recipe);
    TrainConfig c = tiny_gpt(out);
    c.precision = "fp8";
    c.fp8_recipe = recipe;
    c.fp8_amax_history = 16;
    c.steps = 30;
    c.diagnose_every = 10;
    TrainSummary s = Trainer(c).run();
    EXPECT_LT(s.final_train_loss, 4.0) << recipe;
    EXPECT_TRUE(std::isfinite(s.val_loss)) << recipe;
    // The diagnostics log each fp8 GEMM input's amax (and, delayed, its scale); the head is
    // kept in bf16 by default, so it has none.
    std::ifstream d(out / "diagnostics.jsonl");
    std::string line;
    ASSERT_TRUE(std::getline(d, line)) << recipe;
    const auto j = nlohmann::json::parse(line);
    ASSERT_TRUE(j.contains("fp8")) << recipe;
    EXPECT_EQ(j["fp8"]["recipe"], recipe);
    EXPECT_FALSE(j["fp8"]["tensors"].empty()) << line;
    for (const auto& t : j["fp8"]["tensors"]) {
      EXPECT_EQ(t["tensor"].get<std::string>().rfind("head.", 0), std::string::npos);
      EXPECT_EQ(t.contains("scale"), std::string(recipe) == "delayed");
    }
    fs::remove_all(out);
  }
}

// The fp8 GEMM inputs' names in the first diagnostics line of a 2-step fp8 MLP run.
std::set<std::string> mlp_fp8_modules(const std::vector<std::string>& bf16_modules) {
  const fs::path out = fresh_dir("mlp_fp8_edges");
  TrainConfig c;
  c.precision = "fp8";
  c.steps = 2;
  c.batch = 32;
  c.hidden = {32, 32};  // fc0 (reads the pixels), fc1, fc2 (the classifier)
  c.diagnose_every = 1;
  c.bf16_modules = bf16_modules;
  c.out = out.string();
  Trainer(c).run();
  std::ifstream d(out / "diagnostics.jsonl");
  std::string line;
  std::getline(d, line);
  const auto j = nlohmann::json::parse(line);
  std::set<std::string> mods;
  if (j.contains("fp8"))
    for (const auto& t : j["fp8"]["tensors"]) {
      const std::string name = t["tensor"];
      mods.insert(name.substr(0, name.find('.')));
    }
  fs::remove_all(out);
  return mods;
}

TEST(Trainer, Fp8KeepsTheModelsEdgesInBf16) {
  using S = std::set<std::string>;
  EXPECT_EQ(mlp_fp8_modules({}), S{"fc1"});  // auto: the input layer and the head stay bf16
  EXPECT_EQ(mlp_fp8_modules({"auto"}), S{"fc1"});
  EXPECT_EQ(mlp_fp8_modules({"none"}), (S{"fc0", "fc1", "fc2"}));
  EXPECT_EQ(mlp_fp8_modules({"fc0"}), (S{"fc1", "fc2"}));  // a list replaces the edges
  EXPECT_EQ(mlp_fp8_modules({"fc2"}), (S{"fc0", "fc1"}));
  EXPECT_EQ(mlp_fp8_modules({"auto", "fc1"}), S{});
}

TEST(Trainer, Fp8FlagsAreChecked) {
  const fs::path out = fresh_dir("fp8_flags");
  TrainConfig c = tiny_gpt(out);
  c.steps = 1;
  c.bf16_modules = {"blocks.0"};
  EXPECT_THROW(Trainer{c}, ConfigError);  // bf16 modules without fp8
  c.precision = "fp8";
  c.bf16_modules = {"nope"};
  EXPECT_THROW(Trainer{c}, ConfigError);
  c.bf16_modules = {"none", "head"};
  EXPECT_THROW(Trainer{c}, ConfigError);
  c.bf16_modules = {};
  c.fp8_recipe = "tensorwise";
  EXPECT_THROW(Trainer{c}, ConfigError);
  c.fp8_recipe = "delayed";
  c.fp8_amax_history = 0;
  EXPECT_THROW(Trainer{c}, ConfigError);
  fs::remove_all(out);
}

TEST(Trainer, GptLossFallsInEveryPrecision) {
  for (const char* prec : {"fp32", "bf16", "fp16"}) {
    const fs::path out = fresh_dir(std::string("gpt_") + prec);
    TrainConfig c = tiny_gpt(out);
    c.precision = prec;
    c.steps = 30;
    TrainSummary s = Trainer(c).run();
    // ln(256) = 5.55 at init; 30 steps of AdamW on English bytes gets well below it.
    EXPECT_LT(s.final_train_loss, 4.0) << prec;
    EXPECT_TRUE(std::isfinite(s.val_loss)) << prec;
    if (std::string(prec) == "fp16") EXPECT_GT(s.final_loss_scale, 1.0);
    fs::remove_all(out);
  }
}

TEST(Trainer, ResumeIsBitIdenticalToAnUninterruptedRun) {
  // fp8: delayed scaling's amax histories and scales travel in the checkpoint.
  for (const char* prec : {"bf16", "fp16", "fp8"}) {
    const fs::path a = fresh_dir(std::string("straight_") + prec),
                   b = fresh_dir(std::string("resumed_") + prec);
    TrainConfig ca = tiny_gpt(a);
    ca.precision = prec;
    ca.dropout = 0.1;  // the dropout RNG state must survive the checkpoint too
    Trainer(ca).run();

    TrainConfig cb = tiny_gpt(b);
    cb.precision = prec;
    cb.dropout = 0.1;
    cb.steps = 5;  // stop early, as if interrupted after the step-5 checkpoint
    Trainer(cb).run();
    cb.steps = 12;
    cb.resume = true;
    Trainer(cb).run();
    EXPECT_EQ(final_weights(a), final_weights(b)) << prec;
    fs::remove_all(a);
    fs::remove_all(b);
  }
}

TEST(Trainer, AutoMasterIsSplit16WhereEveryWeightIsBf16AndAResumeKeepsItsOwn) {
  auto master_of = [](const fs::path& out) {
    return nlohmann::json::parse(std::ifstream(out / "config.json"))
        .at("master")
        .get<std::string>();
  };
  struct Case {
    const char* precision;
    std::vector<std::string> fp32_modules;
    const char* want;
  };
  for (const Case& k : {Case{"bf16", {}, "split16"}, Case{"fp32", {}, "fp32"},
                        Case{"fp16", {}, "fp32"}, Case{"bf16", {"head"}, "fp32"}}) {
    const fs::path out = fresh_dir(std::string("auto_") + k.precision);
    TrainConfig c = tiny_gpt(out);
    c.precision = k.precision;
    c.fp32_modules = k.fp32_modules;
    c.steps = 2;
    Trainer(c).run();
    EXPECT_EQ(master_of(out), k.want) << k.precision << " " << k.fp32_modules.size();
    fs::remove_all(out);
  }
  // A run begun with the fp32 master resumes under the default as it began (auto resolving to
  // split16 again would be refused as a different run).
  const fs::path out = fresh_dir("auto_resume");
  TrainConfig c = tiny_gpt(out);
  c.precision = "bf16";
  c.master = "fp32";
  c.steps = 4;
  Trainer(c).run();
  c.master = "auto";
  c.resume = true;
  c.steps = 6;
  EXPECT_EQ(Trainer(c).run().steps, 6);
  EXPECT_EQ(master_of(out), "fp32");
  fs::remove_all(out);
}

TEST(Trainer, RefusesBadConfigsWithTheFlagNamed) {
  const fs::path out = fresh_dir("bad");
  auto expect_error = [&](auto mutate, const std::string& needle) {
    TrainConfig c = tiny_gpt(out);
    mutate(c);
    try {
      Trainer t(c);
      FAIL() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([](TrainConfig& c) { c.lr = 0; }, "--lr");
  expect_error([](TrainConfig& c) { c.batch = -1; }, "--batch");
  expect_error([](TrainConfig& c) { c.precision = "fp13"; }, "fp13");
  expect_error([](TrainConfig& c) { c.model = "rnn"; }, "--model");
  expect_error([](TrainConfig& c) { c.heads = 5; }, "heads");
  expect_error([](TrainConfig& c) { c.loss_scale = "static:-3"; }, "--loss-scale");
  expect_error([](TrainConfig& c) { c.data = "text:/nonexistent/file.txt"; },
               "/nonexistent/file.txt");
  fs::remove_all(out);
}

TEST(Trainer, RefusesAFolderHoldingADifferentRunUnlessForced) {
  const fs::path out = fresh_dir("reuse");
  TrainConfig c = tiny_gpt(out);
  c.steps = 2;
  Trainer(c).run();
  c.lr = 1e-3;
  try {
    Trainer t(c);
    FAIL() << "a different run in the same folder must be refused";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("different run"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("lr"), std::string::npos) << e.what();
  }
  c.force = true;
  EXPECT_NO_THROW(Trainer(c).run());
  fs::remove_all(out);
}

// Gradients accumulated in the compute dtype: the parameter gradients are bf16 (2 bytes, not
// 4), the run still learns, and it differs from the fp32-gradient run (the rounding is real).
TEST(Trainer, GradientsMayAccumulateInTheComputeDtype) {
  const fs::path a = fresh_dir("gradf32"), b = fresh_dir("gradbf16");
  TrainConfig ca = tiny_gpt(a);
  ca.precision = "bf16";
  ca.grad_accum = 2;
  TrainConfig cb = ca;
  cb.out = b.string();
  cb.grad_dtype = "compute";
  const TrainSummary sa = Trainer(ca).run();
  const TrainSummary sb = Trainer(cb).run();
  EXPECT_LT(sb.final_train_loss, 5.3);  // from ln(256) = 5.55
  // bf16 gradients: different rounding, so different (but close) weights and losses.
  EXPECT_NE(final_weights(a), final_weights(b));
  EXPECT_NEAR(sb.final_train_loss, sa.final_train_loss, 0.05 * sa.final_train_loss);
  TrainConfig bad = ca;
  bad.grad_dtype = "fp8";
  EXPECT_THROW(Trainer{bad}, ConfigError);
  fs::remove_all(a);
  fs::remove_all(b);
}

// --diagnose-every N writes one diagnostics line every N steps with the model-wide fractions
// and the advice, and its time is accounted for in the summary.
TEST(Trainer, DiagnosticsEveryNStepsGoToDiagnosticsJsonl) {
  const fs::path out = fresh_dir("diag");
  TrainConfig c = tiny_gpt(out);
  c.precision = "fp16";
  c.diagnose_every = 5;
  const TrainSummary s = Trainer(c).run();
  std::ifstream in(out / "diagnostics.jsonl");
  std::string line;
  std::vector<nlohmann::json> lines;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 2u);  // steps 5 and 10 of 12
  EXPECT_EQ(lines[0]["step"], 5);
  EXPECT_EQ(lines[1]["step"], 10);
  EXPECT_GT(lines[0]["tensors"].size(), 4u);
  EXPECT_TRUE(lines[0]["first_nonfinite"].is_null());
  const double sub = lines[0]["total"]["fp16_subnormal"];
  EXPECT_GE(sub, 0.0);
  EXPECT_LE(sub, 1.0);
  EXPECT_GT(s.diagnose_s, 0.0);
  EXPECT_LT(s.diagnose_s, s.train_s);
  fs::remove_all(out);
}

// --fp32-modules keeps named sub-modules in fp32 under a 16-bit policy: the GPT's head in fp32
// changes the bf16 run (its logits are no longer rounded), nested names resolve, and an
// unknown name is refused with the model's module names listed.
TEST(Trainer, Fp32ModulesKeepNamedSubModulesInFp32) {
  const fs::path a = fresh_dir("fp32mod_a"), b = fresh_dir("fp32mod_b");
  TrainConfig ca = tiny_gpt(a);
  ca.precision = "bf16";
  ca.steps = 4;
  TrainConfig cb = ca;
  cb.out = b.string();
  cb.fp32_modules = {"head", "blocks.1.attn"};
  const TrainSummary sa = Trainer(ca).run();
  const TrainSummary sb = Trainer(cb).run();
  EXPECT_NE(final_weights(a), final_weights(b));
  EXPECT_NEAR(sb.final_train_loss, sa.final_train_loss, 0.02 * sa.final_train_loss);
  TrainConfig bad = ca;
  bad.out = fresh_dir("fp32mod_bad").string();
  bad.fp32_modules = {"lm_head"};
  try {
    Trainer t(bad);
    FAIL() << "an unknown module name was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("head"), std::string::npos) << e.what();
  }
  fs::remove_all(a);
  fs::remove_all(b);
  fs::remove_all(bad.out);
}

TEST(PeakRss, ResetStartsANewWindow) {
  // `compare` runs several trainings in one process; each reports the peak since its own start.
  if (!std::ofstream("/proc/self/clear_refs")) GTEST_SKIP() << "no /proc/self/clear_refs";
  if (kAddressSanitizer) GTEST_SKIP() << "ASan's quarantine keeps freed memory resident";
  {
    std::vector<char> big(size_t{96} << 20);  // mapped by malloc, returned when freed
    for (size_t i = 0; i < big.size(); i += 4096) big[i] = 1;
    EXPECT_GE(train::peak_rss_bytes(), int64_t{96} << 20);
  }
  const int64_t high = train::peak_rss_bytes();
  train::reset_peak_rss();
  EXPECT_LT(train::peak_rss_bytes(), high - (int64_t{64} << 20));
}
