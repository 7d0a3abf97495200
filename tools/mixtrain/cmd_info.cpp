// `mixtrain info`: the CPU, its detected features, the SIMD level mixtrain's kernels use, the
// oneDNN version and ISA, the thread count, and the devices tensors can live on.
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "mixtrain/cpu.h"
#include "mixtrain/gemm.h"

namespace mixtrain::cli {

int run_info(bool json) {
  const CpuFeatures& f = cpu_features();
  const GemmBackendInfo g = gemm_backend_info();
  const std::pair<const char*, bool> features[] = {{"avx2", f.avx2},
                                                   {"fma", f.fma},
                                                   {"f16c", f.f16c},
                                                   {"avx512f", f.avx512f},
                                                   {"avx512bw", f.avx512bw},
                                                   {"avx512dq", f.avx512dq},
                                                   {"avx512vl", f.avx512vl},
                                                   {"avx512_bf16", f.avx512_bf16},
                                                   {"avx512_fp16", f.avx512_fp16},
                                                   {"amx_bf16", f.amx_bf16}};
  if (json) {
    nlohmann::json j;
    j["cpu"] = f.brand;
    for (const auto& [name, on] : features) j["features"][name] = on;
    j["native_bf16"] = f.native_bf16();
    j["native_fp16"] = f.native_fp16();
    j["simd_level"] = simd_level();
    j["gemm"] = {{"library", g.library}, {"version", g.version}, {"isa", g.isa}};
    j["threads"] = g.threads;
    for (Device d : {Device::cpu, Device::cuda}) {
      std::string why;
      const bool on = device_available(d, &why);
      j["devices"][device_name(d)] = {{"available", on},
                                      {on ? "backend" : "why", on ? device_description(d) : why}};
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::string have, lack;
  for (const auto& [name, on] : features) (on ? have : lack) += fmt::format(" {}", name);
  fmt::print("cpu:        {}\n", f.brand);
  fmt::print("features:  {}\n", have.empty() ? " (none)" : have);
  fmt::print("missing:   {}\n", lack.empty() ? " (none)" : lack);
  fmt::print("16-bit:     bf16 {}, fp16 {}\n", f.native_bf16() ? "native" : "converted to fp32",
             f.native_fp16() ? "native" : "converted to fp32 (storage only)");
  fmt::print("simd level: {}\n", simd_level());
  fmt::print("gemm:       {} {} (isa {})\n", g.library, g.version, g.isa);
  fmt::print("threads:    {} (OpenMP)\n", g.threads);
  for (Device d : {Device::cpu, Device::cuda}) {
    std::string why;
    const bool on = device_available(d, &why);
    // (The reason names the device first, as every error does.)
    const std::string label = fmt::format("{}: ", device_name(d));
    if (why.rfind(label, 0) == 0) why.erase(0, label.size());
    fmt::print("{:<11} {}\n", label, on ? device_description(d) : why);
  }
  return 0;
}

namespace {

void setup_info(CLI::App& root) {
  CLI::App* sub = root.add_subcommand("info", "Show the CPU, its features, and the GEMM backend");
  auto json = std::make_shared<bool>(false);
  sub->add_flag("--json", *json, "Print JSON");
  on_run(sub, [json] { return run_info(*json); });
}

const bool registered = add_command("info", 10, &setup_info);

}  // namespace

}  // namespace mixtrain::cli
