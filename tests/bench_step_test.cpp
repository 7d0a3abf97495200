// `bench step` as a library call (train::bench_step): the fields it reports, the optimizer
// bytes it counts per master mode, and clear errors. No speed is asserted (benchmarks only).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "mixtrain/error.h"
#include "mixtrain/train/bench_step.h"

using namespace mixtrain;

namespace {

train::BenchStepOptions small_gpt(const char* precision) {
  train::BenchStepOptions o;
  o.model = "gpt";
  o.precision = precision;
  o.gpt_layers = 2;
  o.gpt_width = 64;
  o.gpt_heads = 2;
  o.gpt_context = 32;
  o.batch = 4;
  o.warmup = 1;
  o.repeats = 2;
  o.peak_seconds = 0;
  return o;
}

}  // namespace

TEST(BenchStep, ReportsTheStepAndItsOptimizerBytes) {
  const train::BenchStepResult r = train::bench_step(small_gpt("bf16"));
  const auto j = nlohmann::json::parse(r.to_json());
  for (const char* k : {"model", "precision", "master", "batch", "ms_per_step", "throughput",
                        "model_gflops_per_s", "mfu", "gemm_peak_gflops", "peak_rss_bytes"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_GT(r.ms_per_step, 0);
  EXPECT_TRUE(std::isfinite(r.loss));
  // The trainer's default master in bf16, split16: fp32 gradient read; the bf16 weight and the
  // master's low bits, m and v read and written: 4 + 4 + 8 + 8 + 4 bytes per parameter.
  EXPECT_EQ(j["master"], "split16");
  EXPECT_DOUBLE_EQ(r.optimizer_bytes, 28.0 * static_cast<double>(r.parameters));
  // fp32: the weight is the master (no copy): 4 + 8 + 8 + 8.
  const train::BenchStepResult f = train::bench_step(small_gpt("fp32"));
  EXPECT_EQ(f.master, "fp32");
  EXPECT_DOUBLE_EQ(f.optimizer_bytes, 28.0 * static_cast<double>(f.parameters));
}

TEST(BenchStep, Split16KeepsTheFp32MastersBitsInLessSpace) {
  train::BenchStepOptions o = small_gpt("bf16");
  o.master = "fp32";
  const train::BenchStepResult fp32_master = train::bench_step(o);
  o.master = "split16";
  const train::BenchStepResult split = train::bench_step(o);
  EXPECT_EQ(fp32_master.master, "fp32");
  EXPECT_EQ(split.master, "split16");
  // fp32 master: the master, m and v read and written, the bf16 copy written: 4 + 24 + 2.
  EXPECT_DOUBLE_EQ(fp32_master.optimizer_bytes, 30.0 * static_cast<double>(split.parameters));
  // The same fp32 master bits; the bf16 weights differ from the fp32 mode's copy only where
  // the master lies exactly halfway between two bf16 values (split16 rounds those away from
  // zero, the copy to even): a few weights by one bf16 ulp, far below this bound.
  EXPECT_NEAR(split.loss, fp32_master.loss, 1e-4 * std::fabs(fp32_master.loss));
}

TEST(BenchStep, Split16NeedsBf16Weights) {
  train::BenchStepOptions o = small_gpt("fp32");
  o.master = "split16";
  try {
    train::bench_step(o);
    FAIL() << "split16 with fp32 weights was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("split16"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
}
