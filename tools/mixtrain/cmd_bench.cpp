// `mixtrain bench gemm` (GFLOP/s through mixtrain and through oneDNN directly) and
// `mixtrain bench convert` (fp32 <-> bf16/fp16 conversion bandwidth against memcpy).
#include <cmath>
#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "mixtrain/bench.h"
#include "mixtrain/cpu.h"
#include "mixtrain/dtype.h"
#include "mixtrain/error.h"

namespace mixtrain::cli {

namespace {

// The names the reports use ("fp32", not dtype_name's "f32").
const char* report_name(DType dt) {
  switch (dt) {
    case DType::f32:
      return "fp32";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "fp16";
    default:
      return dtype_name(dt);
  }
}

// NaN (unsupported) becomes JSON null.
nlohmann::json number_or_null(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}

struct ConvertBenchOptions {
  bool json = false;
  int64_t mib = 64;  // source array size: well beyond L2, so this measures memory bandwidth
  double min_time = 0.3;
};

int run_bench_convert(const ConvertBenchOptions& o) {
  const size_t bytes = static_cast<size_t>(o.mib) << 20;
  const double mem = memcpy_gbps(bytes, o.min_time);
  const std::pair<DType, DType> pairs[] = {{DType::f32, DType::bf16},
                                           {DType::bf16, DType::f32},
                                           {DType::f32, DType::f16},
                                           {DType::f16, DType::f32}};
  nlohmann::json rows = nlohmann::json::array();
  if (!o.json)
    fmt::print("memcpy {} MiB: {:.1f} GB/s (read + write)\n{:>6} {:>6} {:>10} {:>10}\n", o.mib, mem,
               "from", "to", "GB/s", "/memcpy");
  for (const auto& [from, to] : pairs) {
    // The source array holds `mib` MiB.
    const size_t n = bytes / dtype_size(from);
    const double g = convert_gbps(from, to, n, o.min_time);
    rows.push_back({{"from", report_name(from)},
                    {"to", report_name(to)},
                    {"elements", n},
                    {"gbps", g},
                    {"ratio_to_memcpy", g / mem}});
    if (!o.json)
      fmt::print("{:>6} {:>6} {:>10.1f} {:>10.2f}\n", report_name(from), report_name(to), g,
                 g / mem);
  }
  if (o.json) {
    nlohmann::json j;
    j["memcpy"] = {{"bytes", bytes}, {"gbps", mem}};
    j["convert"] = rows;
    j["simd_level"] = simd_level();
    std::printf("%s\n", j.dump(2).c_str());
  }
  return 0;
}

// A size must be an integer (kPositive takes any positive number).
const CLI::Validator kPositiveSize(
    [](std::string& s) -> std::string {
      try {
        size_t used = 0;
        if (std::stoll(s, &used) > 0 && used == s.size()) return {};
      } catch (const std::exception&) {
      }
      return "matrix size must be a positive integer, got '" + s + "'";
    },
    "POSITIVE", "PositiveSize");

void setup_bench(CLI::App& root) {
  CLI::App* bench =
      root.add_subcommand("bench", "Micro-benchmarks: GEMM throughput, conversion bandwidth");
  bench->require_subcommand(1);

  auto go = std::make_shared<GemmBenchOptions>();
  CLI::App* gemm = bench->add_subcommand(
      "gemm", "GFLOP/s of C = A·B (n×n) through mixtrain and through oneDNN directly");
  gemm->add_flag("--json", go->json, "Print JSON: {\"gemm\": [{dtype, n, gflops, onednn_gflops}]}");
  gemm->add_option("--sizes", go->sizes, "Matrix sizes n, comma separated")
      ->delimiter(',')
      ->check(kPositiveSize)
      ->capture_default_str();
  gemm->add_option("--dtypes", go->dtypes, "dtypes, comma separated: fp32, bf16, fp16")
      ->delimiter(',')
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "f32", "f16"}))
      ->capture_default_str();
  gemm->add_option("--min-time", go->min_time, "Seconds per measurement (median of repeats)")
      ->check(CLI::Range(0.0, 60.0))
      ->capture_default_str();
  on_run(gemm, [go] { return run_bench_gemm(*go); });

  auto co = std::make_shared<ConvertBenchOptions>();
  CLI::App* conv = bench->add_subcommand(
      "convert", "fp32 <-> bf16/fp16 conversion bandwidth on arrays beyond L2, against memcpy");
  conv->add_flag("--json", co->json, "Print JSON");
  conv->add_option("--mib", co->mib, "Source array size in MiB")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->capture_default_str();
  conv->add_option("--min-time", co->min_time, "Seconds per measurement (median of repeats)")
      ->check(CLI::Range(0.0, 60.0))
      ->capture_default_str();
  on_run(conv, [co] { return run_bench_convert(*co); });
}

const bool registered = add_command("bench", 20, &setup_bench);

}  // namespace

int run_bench_gemm(const GemmBenchOptions& o) {
  nlohmann::json rows = nlohmann::json::array();
  bool unsupported = false;
  if (!o.json)
    fmt::print("{:>6} {:>6} {:>14} {:>14} {:>7}\n", "dtype", "n", "mixtrain GF/s", "oneDNN GF/s",
               "ratio");
  for (const std::string& name : o.dtypes) {
    const DType dt = parse_dtype(name);
    for (int64_t n : o.sizes) {
      const double mine = gemm_gflops(dt, n, o.min_time);
      const double ref = onednn_gemm_gflops(dt, n, o.min_time);
      unsupported |= std::isnan(ref);
      rows.push_back({{"dtype", report_name(dt)},
                      {"n", n},
                      {"gflops", mine},
                      {"onednn_gflops", number_or_null(ref)}});
      if (!o.json) {
        if (std::isnan(ref))
          fmt::print("{:>6} {:>6} {:>14.1f} {:>14} {:>7}\n", report_name(dt), n, mine,
                     "unsupported*", "-");
        else
          fmt::print("{:>6} {:>6} {:>14.1f} {:>14.1f} {:>7.3f}\n", report_name(dt), n, mine, ref,
                     mine / ref);
        std::fflush(stdout);
      }
    }
  }
  if (o.json) {
    std::printf("%s\n", nlohmann::json{{"gemm", rows}}.dump(2).c_str());
  } else if (unsupported) {
    fmt::print(
        "* oneDNN has no matmul for this dtype on this CPU (fp16 needs AVX512-FP16); mixtrain "
        "converts to fp32 and computes there. onednn_gflops is null in --json.\n");
  }
  return 0;
}

}  // namespace mixtrain::cli
