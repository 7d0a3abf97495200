// The built `mixtrain` binary run as a user would: --help, exit statuses for bad command
// lines (2), and `bench gemm --json` output parsed as JSON (no speed assertions).
#include <gtest/gtest.h>

#include "cli_run.h"

#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace {

using Result = mixtrain::testing::CliResult;
const auto run = mixtrain::testing::run_cli;

TEST(Cli, HelpOnRootAndSubcommands) {
  const Result root = run("--help");
  EXPECT_EQ(root.status, 0) << root.out;
  EXPECT_NE(root.out.find("bench"), std::string::npos) << root.out;
  EXPECT_NE(root.out.find("info"), std::string::npos) << root.out;
  for (const char* sub :
       {"info --help", "bench --help", "bench gemm --help", "bench convert --help"}) {
    const Result r = run(sub);
    EXPECT_EQ(r.status, 0) << sub << ": " << r.out;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub << ": " << r.out;
  }
  EXPECT_NE(run("bench gemm --help").out.find("--sizes"), std::string::npos);
}

TEST(Cli, BadCommandLinesExitWithStatus2) {
  const Result flag = run("bench gemm --no-such-flag");
  EXPECT_EQ(flag.status, 2) << flag.out;
  EXPECT_NE(flag.out.find("--no-such-flag"), std::string::npos) << flag.out;
  EXPECT_EQ(run("no-such-command").status, 2);
  EXPECT_EQ(run("bench").status, 2);  // needs gemm or convert
  const Result dtype = run("bench gemm --dtypes e4m3");
  EXPECT_EQ(dtype.status, 2) << dtype.out;
  EXPECT_NE(dtype.out.find("e4m3"), std::string::npos) << dtype.out;
  EXPECT_EQ(run("bench gemm --sizes 0").status, 2);
}

TEST(Cli, InfoNamesTheGemmBackend) {
  const Result r = run("info --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("gemm").at("library"), "oneDNN");
  EXPECT_TRUE(j.at("features").contains("avx2"));
  EXPECT_GE(j.at("threads").get<int>(), 1);
}

TEST(Cli, BenchGemmJson) {
  const Result r = run("bench gemm --json --sizes 64 --dtypes fp32");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.at("gemm").size(), 1u) << r.out;
  const auto& row = j.at("gemm").at(0);
  EXPECT_EQ(row.at("dtype"), "fp32");
  EXPECT_EQ(row.at("n"), 64);
  EXPECT_GT(row.at("gflops").get<double>(), 0.0);
  EXPECT_GT(row.at("onednn_gflops").get<double>(), 0.0);
}

}  // namespace
