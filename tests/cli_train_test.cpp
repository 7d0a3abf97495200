// `mixtrain train / compare / doctor / export / generate` run as a user would: outputs on disk,
// a run killed mid-way (--stop-after) resumed with --resume alone to the same weights, exported
// weights loaded by Python, the MLP on .npy classes and values, text generated from a GPT run.
// Bad input: bad_input_test.cpp; SIGKILLs at random moments: kill_resume_test.cpp.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>
#include "cli_run.h"
#include "data_files.h"
#include "mixtrain/random.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace fs = std::filesystem;

namespace {

using Result = mixtrain::testing::CliResult;
const auto run = mixtrain::testing::run_cli;

std::string tmp(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("mixtrain_cli_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  return p.string();
}

const std::string kTiny =
    std::string("--model gpt --data text:") + MIXTRAIN_SOURCE_DIR +
    "/tests/data/jargon_sample.txt --layers 1 --width 32 --heads 2 --context 16 "
    "--batch 4 --eval-batches 2 --quiet ";

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

// Killed after its first checkpoint, a run continues with --resume DIR and no other flag (the
// rest come from its config.json) and ends bit-identical to a run that never stopped.
TEST(CliTrain, KilledRunResumesToTheSameWeights) {
  const std::string a = tmp("a"), b = tmp("b");
  ASSERT_EQ(run("train " + kTiny + "--precision bf16 --steps 10 --out " + a).status, 0);
  // Killed after step 6 (exit status 3), checkpoints every 3 steps: resume redoes from step 6.
  Result k = run("train " + kTiny +
                 "--precision bf16 --steps 10 --checkpoint-every 3 --stop-after 7 --out " + b);
  ASSERT_EQ(k.status, 3) << k.out;
  Result again = run("train " + kTiny + "--precision bf16 --steps 10 --out " + b);
  EXPECT_EQ(again.status, 2) << "a folder holding this run must be resumed, not overwritten";
  EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.out;
  Result r = run("train --quiet --resume " + b);
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string wa = a + "/w.safetensors", wb = b + "/w.safetensors";
  ASSERT_EQ(run("export " + a + " --dtype fp32 --out " + wa).status, 0);
  ASSERT_EQ(run("export " + b + " --dtype fp32 --out " + wb).status, 0);
  EXPECT_EQ(read(wa).size(), read(wb).size());
  // The files differ only in the metadata naming their source checkpoint; compare tensors.
  auto ja = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(ja["steps"], 10);
  const std::string check =
      "/usr/bin/python3 -c \"import sys\nfrom safetensors.numpy import load_file\n"
      "x=load_file('" +
      wa + "'); y=load_file('" + wb +
      "')\n"
      "assert x.keys()==y.keys() and all((x[k]==y[k]).all() for k in x)\"";
  if (access("/usr/bin/python3", X_OK) == 0 &&
      std::system("/usr/bin/python3 -c 'import safetensors' 2>/dev/null") == 0)
    EXPECT_EQ(std::system(check.c_str()), 0);
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST(CliTrain, ExportedWeightsLoadInTorch) {
  if (std::system("/usr/bin/python3 -c 'import safetensors.torch' 2>/dev/null") != 0)
    GTEST_SKIP() << "python3 safetensors/torch not installed";
  const std::string a = tmp("export");
  ASSERT_EQ(run("train " + kTiny + "--precision fp16 --steps 3 --out " + a).status, 0);
  for (const char* dt : {"fp32", "bf16", "fp16"}) {
    const std::string f = a + "/w_" + dt + ".safetensors";
    ASSERT_EQ(run(std::string("export ") + a + " --dtype " + dt + " --out " + f).status, 0);
    const std::string want = std::string(dt) == "fp32"   ? "float32"
                             : std::string(dt) == "bf16" ? "bfloat16"
                                                         : "float16";
    const std::string py =
        "/usr/bin/python3 -c \"from safetensors.torch import load_file\n"
        "d=load_file('" +
        f + "')\nassert len(d)>5 and all(str(v.dtype)=='torch." + want +
        "' for v in d.values()), d\nassert d['head.weight'].shape==(256,32)\"";
    EXPECT_EQ(std::system(py.c_str()), 0) << dt;
  }
  fs::remove_all(a);
}

TEST(CliTrain, CompareWritesATableJsonAndOneRunPerPrecision) {
  const std::string out = tmp("compare");
  Result r = run("compare " + kTiny + "--steps 4 --precisions fp32,bf16,fp16:none --out " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(std::ifstream(out + "/compare.json"));
  ASSERT_EQ(j["runs"].size(), 3u);
  EXPECT_EQ(j["runs"][0]["precision"], "fp32");
  EXPECT_EQ(j["runs"][2]["final_loss_scale"], 1.0);  // fp16 with scaling off
  EXPECT_NE(r.out.find("speed-up"), std::string::npos);
  fs::remove_all(out);
}

bool matplotlib_importable() {
  return access("/usr/bin/python3", X_OK) == 0 &&
         std::system("/usr/bin/python3 -c 'import matplotlib' 2>/dev/null") == 0;
}

bool is_png(const std::string& path) { return read(path).rfind("\x89PNG\r\n\x1a\n", 0) == 0; }

// compare keeps every step's loss whatever --log-every says, and the gap to the fp32 control
// at each step, raw and as the documented trailing mean, in compare.json; its plot is a PNG.
TEST(CliTrain, CompareJsonHoldsEveryStepAndTheGapToFp32) {
  const std::string out = tmp("compare_gap");
  const int n = 40;  // smoothing window max(1, 40 / 20) = 2
  Result r = run("compare " + kTiny + "--steps " + std::to_string(n) +
                 " --log-every 10 --precisions fp32,bf16 --out " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(std::ifstream(out + "/compare.json"));
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["gap_reference"], "fp32");
  ASSERT_EQ(j["smoothing_window"], 2);
  for (const auto& rj : j["runs"]) {
    const auto& p = rj["per_step"];
    ASSERT_EQ(p["steps"].size(), static_cast<size_t>(n)) << rj["label"];
    for (const char* key : {"loss", "gap_to_fp32", "gap_to_fp32_smoothed"})
      ASSERT_EQ(p[key].size(), static_cast<size_t>(n)) << key;
    for (int i = 0; i < n; ++i) EXPECT_EQ(p["steps"][i], i + 1);
  }
  // metrics.jsonl keeps the --log-every cadence (steps 10..40, the evaluations among them).
  std::ifstream metrics(out + "/fp32/metrics.jsonl");
  int lines = 0;
  for (std::string l; std::getline(metrics, l);) ++lines;
  EXPECT_GE(lines, 4);
  EXPECT_LT(lines, n);
  const auto& f = j["runs"][0]["per_step"];
  const auto& b = j["runs"][1]["per_step"];
  bool differs = false;
  for (int i = 0; i < n; ++i) {
    const double lf = f["loss"][i], lb = b["loss"][i];
    EXPECT_EQ(f["gap_to_fp32"][i].get<double>(), 0.0) << i;
    EXPECT_EQ(f["gap_to_fp32_smoothed"][i].get<double>(), 0.0) << i;
    EXPECT_DOUBLE_EQ(b["gap_to_fp32"][i].get<double>(), lb - lf) << i;
    const double want =
        i == 0
            ? lb - lf
            : ((lb - lf) + (b["loss"][i - 1].get<double>() - f["loss"][i - 1].get<double>())) / 2;
    EXPECT_NEAR(b["gap_to_fp32_smoothed"][i].get<double>(), want, 1e-12) << i;
    differs |= lb != lf;
  }
  EXPECT_TRUE(differs) << "bf16's 8 significant bits should move the loss off fp32's";
  const std::string png = out + "/loss_curves.png";
  if (!matplotlib_importable()) {
    fs::remove_all(out);
    GTEST_SKIP() << "matplotlib not importable by /usr/bin/python3: the plot is not checked";
  }
  EXPECT_TRUE(is_png(png)) << r.out;
  fs::remove_all(out);
}

// Without an fp32 run there is no control: compare.json says so and holds no gap arrays.
TEST(CliTrain, CompareWithoutFp32SaysThereIsNoGap) {
  const std::string out = tmp("compare_nofp32");
  Result r = run("compare " + kTiny + "--steps 3 --precisions bf16 --out " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(std::ifstream(out + "/compare.json"));
  EXPECT_TRUE(j["gap_reference"].is_null());
  EXPECT_NE(j["gap_note"].get<std::string>().find("no fp32 run"), std::string::npos);
  const auto& p = j["runs"][0]["per_step"];
  EXPECT_EQ(p["loss"].size(), 3u);
  EXPECT_FALSE(p.contains("gap_to_fp32"));
  if (matplotlib_importable()) EXPECT_TRUE(is_png(out + "/loss_curves.png")) << r.out;
  fs::remove_all(out);
}

TEST(CliTrain, DoctorReportsPerLayerFractions) {
  const std::string out = tmp("doctor");
  Result r = run("doctor " + kTiny + "--doctor-steps 2 --out " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("blocks.0.attn.qkv.weight"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(std::ifstream(out + "/doctor.json"));
  EXPECT_GT(j["tensors"].size(), 5u);
  EXPECT_TRUE(j.contains("recommended_scale"));
  // fp8: every linear's inputs; the head, which --precision fp8 keeps in bf16, is marked so.
  int head_rows = 0;
  for (const auto& t : j["fp8"]["tensors"]) {
    const bool head = t["tensor"].get<std::string>().rfind("head.", 0) == 0;
    head_rows += head;
    EXPECT_EQ(t["bf16"].get<bool>(), head) << t.dump();
  }
  EXPECT_EQ(head_rows, 3);  // input, weight, grad
  EXPECT_FALSE(j["fp8"]["recommended"].get<std::string>().empty());
  fs::remove_all(out);
}

// The doctor's figures agree: numel is each tensor's parameter count (not times the steps),
// and the span line covers the table's max|g| and the histogram's lowest nonzero bin.
TEST(CliTrain, DoctorNumelIsTheParameterCountAndTheSpanMatchesTheTable) {
  const std::string out = tmp("doctor_span");
  const int steps = 3;
  Result r = run("doctor " + kTiny + "--doctor-steps " + std::to_string(steps) + " --out " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(std::ifstream(out + "/doctor.json"));
  int64_t sum = 0;
  bool head = false;
  for (const auto& t : j["tensors"]) {
    EXPECT_EQ(t["values"].get<int64_t>(), steps * t["numel"].get<int64_t>()) << t["name"];
    sum += t["numel"].get<int64_t>();
    if (t["name"] == "head.weight") {
      head = true;
      EXPECT_EQ(t["numel"], 256 * 32);  // vocabulary x width
    }
    EXPECT_LE(t["max_abs"].get<double>(), j["total"]["max_abs"].get<double>());
  }
  EXPECT_TRUE(head);
  EXPECT_EQ(j["total"]["numel"].get<int64_t>(), sum);
  // The text's numel column shows the same counts.
  EXPECT_NE(r.out.find(" 8192 "), std::string::npos) << r.out;
  const std::string times_steps = std::to_string(steps * 8192);
  EXPECT_EQ(r.out.find(" " + times_steps + " "), std::string::npos) << r.out;
  // The span [2^lo, 2^hi) holds the table's max|g| in its top binade and starts at the
  // histogram's lowest nonzero bin.
  ASSERT_TRUE(j["span_log2"].is_array());
  const int lo = j["span_log2"][0], hi = j["span_log2"][1];
  const double mx = j["total"]["max_abs"];
  EXPECT_LT(mx, std::ldexp(1.0, hi));
  EXPECT_GE(mx, std::ldexp(1.0, hi - 1));
  const auto& h = j["histogram"];
  int first = -1;
  for (size_t k = 0; k < h["bins"].size(); ++k)
    if (h["bins"][k].get<int64_t>() > 0) {
      first = static_cast<int>(k);
      break;
    }
  ASSERT_GE(first, 0);
  EXPECT_EQ(lo,
            h["below"].get<int64_t>() ? h["min_exp"].get<int>() : h["min_exp"].get<int>() + first);
  const std::string span = "|g| in [2^" + std::to_string(lo) + ", 2^" + std::to_string(hi) + ")";
  EXPECT_NE(r.out.find(span), std::string::npos) << span << "\n" << r.out;
  if (j["recommended"] == "f16")  // the advice names the same span
    EXPECT_NE(r.out.find("span 2^" + std::to_string(lo) + "..2^" + std::to_string(hi)),
              std::string::npos)
        << r.out;
  if (matplotlib_importable()) EXPECT_TRUE(is_png(out + "/gradient_histogram.png")) << r.out;
  // At the recommended scale, the advice's flushed share of all values is the table's f16->0%
  // for the total (the same fp32 steps: the scale only changes where fp16 is evaluated).
  const double rs = j["recommended_scale"];
  Result again = run("doctor " + kTiny + "--doctor-steps " + std::to_string(steps) +
                     " --scale-init " + std::to_string(rs) + " --out " + out);
  ASSERT_EQ(again.status, 0) << again.out;
  auto k = nlohmann::json::parse(std::ifstream(out + "/doctor.json"));
  EXPECT_EQ(k["fp16_scale"].get<double>(), rs);
  EXPECT_EQ(k["total"]["max_abs"], j["total"]["max_abs"]);
  char share[64];
  std::snprintf(share, sizeof share, "(%.3g%% of all values)",
                100 * k["total"]["fp16_flush_to_zero"].get<double>());
  EXPECT_NE(k["why"].get<std::string>().find(share), std::string::npos) << share << "\n"
                                                                        << k["why"];
  fs::remove_all(out);
}

// The MLP sized from .npy data: integer labels train a classifier (accuracy reported), float
// targets a regression (MSE, no accuracy).
TEST(CliTrain, MlpTrainsFromNpyClassesAndValues) {
  const std::string dir = tmp("npy");
  fs::create_directories(dir);
  const int64_t n = 1000, f = 4;
  mixtrain::Rng rng(3);
  std::vector<float> x(n * f), values(n);
  std::vector<int64_t> labels(n);
  for (float& v : x) v = 2 * rng.uniform() - 1;
  double mean = 0, sq = 0;
  for (int64_t r = 0; r < n; ++r) {
    const float* p = &x[r * f];
    labels[r] = (p[0] + 0.5f * p[1] - p[2] > 0) + (p[3] > 0.3f);  // three classes
    values[r] = p[0] * p[1] + 0.5f * p[2];
    mean += values[r];
    sq += values[r] * values[r];
  }
  const double variance = sq / n - (mean / n) * (mean / n);
  using mixtrain::test::bytes_of;
  using mixtrain::test::npy;
  mixtrain::test::write_file(dir + "/x.npy", npy("<f4", {n, f}, bytes_of(x)));
  mixtrain::test::write_file(dir + "/labels.npy", npy("<i8", {n}, bytes_of(labels)));
  mixtrain::test::write_file(dir + "/values.npy", npy("<f4", {n, 1}, bytes_of(values)));
  const std::string common = "--model mlp --hidden 32 --steps 300 --batch 32 --lr 1e-2 --quiet ";
  Result c = run("train " + common + "--data npy:" + dir + "/x.npy," + dir + "/labels.npy --out " +
                 dir + "/cls");
  ASSERT_EQ(c.status, 0) << c.out;
  auto jc = nlohmann::json::parse(c.out.substr(c.out.find('{')));
  EXPECT_EQ(jc["loss"], "cross-entropy");
  EXPECT_EQ(jc["parameters"], 4 * 32 + 32 + 32 * 3 + 3);  // sized from the data: 4 in, 3 out
  EXPECT_GT(jc["test_accuracy"].get<double>(), 0.85);     // measured 0.94; chance 0.33 to 0.5
  Result v = run("train " + common + "--data npy:" + dir + "/x.npy," + dir + "/values.npy --out " +
                 dir + "/reg");
  ASSERT_EQ(v.status, 0) << v.out;
  auto jv = nlohmann::json::parse(v.out.substr(v.out.find('{')));
  EXPECT_EQ(jv["loss"], "mse");
  EXPECT_FALSE(jv.contains("test_accuracy"));
  EXPECT_LT(jv["val_loss"].get<double>(), 0.1 * variance);  // predicting the mean scores 1.0x
  fs::remove_all(dir);
}

TEST(CliTrain, GenerateContinuesAPromptFromAGptRun) {
  const std::string a = tmp("gen");
  ASSERT_EQ(run("train " + kTiny + "--precision bf16 --steps 20 --out " + a).status, 0);
  Result g = run("generate " + a + " --prompt 'The ' --tokens 24 --temperature 0");
  ASSERT_EQ(g.status, 0) << g.out;
  EXPECT_NE(g.out.find("generate: 24 tokens from"), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("\nThe "), std::string::npos) << g.out;  // the prompt, then its sequel
  EXPECT_EQ(run("generate " + a + " --prompt 'The ' --tokens 24 --temperature 0").out, g.out);
  Result bad = run("generate " + a + " --tokens 0 --prompt x");
  EXPECT_EQ(bad.status, 2) << bad.out;
  EXPECT_NE(bad.out.find("--tokens"), std::string::npos) << bad.out;
  fs::remove_all(a);
}

TEST(CliTrain, VersionNamesTheRelease) {
  Result r = run("--version");
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out.rfind("mixtrain 0.", 0), 0u) << r.out;
}
