// `mixtrain bench step`: times the full training step (forward, backward, AdamW with fp32
// master) of the MLP or GPT workload and reports throughput, MFU against this process's GEMM
// peak, peak RSS and the optimizer's bandwidth (train/bench_step.h).
#include <cmath>
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "commands.h"
#include "mixtrain/train/bench_step.h"

namespace mixtrain::cli {

namespace {

struct StepBenchOptions {
  train::BenchStepOptions o;
  bool json = false;
};

int run_bench_step(const StepBenchOptions& s) {
  const train::BenchStepResult r = train::bench_step(s.o);
  if (!r.profile.empty()) std::fputs(r.profile.c_str(), stderr);
  if (s.json) {
    std::printf("%s\n", r.to_json().c_str());
    return 0;
  }
  fmt::print("{} {} batch {} on {} ({} parameters, {} threads)\n", r.model, r.precision, r.batch,
             r.device, r.parameters, r.threads);
  fmt::print(
      "  step       {:9.1f} ms median (min {:.1f}, max {:.1f}; fwd {:.1f}, bwd {:.1f}, "
      "opt {:.1f})\n",
      r.ms_per_step, r.ms_min, r.ms_max, r.forward_ms, r.backward_ms, r.optimizer_ms);
  fmt::print("  throughput {:9.0f} {}\n", r.throughput, r.throughput_unit);
  fmt::print("  model      {:9.1f} GFLOP/s, mfu {:.3f} of the {} GEMM peak {:.1f} GFLOP/s\n",
             r.model_gflops_per_s, r.mfu, r.gemm_peak_dtype, r.gemm_peak_gflops);
  fmt::print("  memory     {:9.1f} MiB peak RSS, {:.1f} MiB peak tensors\n",
             static_cast<double>(r.peak_rss_bytes) / (1 << 20),
             static_cast<double>(r.peak_tensor_bytes) / (1 << 20));
  std::string kept;
  for (const auto& [dt, b] : r.activation_bytes)
    kept += fmt::format("{}{} {:.1f} MiB", kept.empty() ? "" : ", ", dt,
                        static_cast<double>(b) / (1 << 20));
  fmt::print("  activations kept at the end of forward: {} (checkpointing: {})\n",
             kept.empty() ? "none" : kept, r.checkpoint_activations);
  if (std::isfinite(r.optimizer_gbps))
    fmt::print("  optimizer  {:9.2f} ms alone, {:.1f} GB/s = {:.2f} of memcpy ({:.1f} GB/s)\n",
               r.optimizer_alone_ms, r.optimizer_gbps, r.optimizer_bandwidth_ratio, r.memcpy_gbps);
  return 0;
}

void setup_bench_step(CLI::App& root) {
  // `bench` is registered by cmd_bench.cpp (order 20, set up before this one).
  CLI::App* bench = root.get_subcommand("bench");
  auto s = std::make_shared<StepBenchOptions>();
  CLI::App* step = bench->add_subcommand(
      "step", "Time the full training step (forward, backward, AdamW with fp32 master)");
  step->add_option("--model", s->o.model, "Workload: mlp (784-2048-2048-10) or gpt (6x384, T 256)")
      ->check(CLI::IsMember({"mlp", "gpt"}))
      ->capture_default_str();
  step->add_option("--precision", s->o.precision,
                   "fp32, bf16, fp16 or fp8 (fp8: the delayed recipe; on the CPU emulated at bf16 "
                   "GEMM speed)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "fp8"}))
      ->capture_default_str();
  step->add_option("--batch", s->o.batch, "Batch size (default: mlp 256, gpt 8)")->check(kPositive);
  step->add_option("--warmup", s->o.warmup, "Untimed steps first")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  step->add_option("--repeats", s->o.repeats, "Timed steps (the median is reported)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  step->add_option("--peak-time", s->o.peak_seconds,
                   "Seconds measuring the GEMM peak (n = 2048); 0 skips it (mfu null)")
      ->check(CLI::Range(0.0, 60.0))
      ->capture_default_str();
  step->add_flag(
      "--no-optimizer-bandwidth", [s](int64_t) { s->o.optimizer_bandwidth = false; },
      "Skip timing the optimizer step alone");
  step->add_flag(
      "--no-step-plan", [s](int64_t) { s->o.step_plan = false; },
      "Buffers from the cache alone, not the step plan's arena (to compare)");
  step->add_option("--checkpoint-activations", s->o.checkpoint_activations,
                   "gpt: none | gelu | blocks | every:N: recompute each MLP's GELU, or blocks, "
                   "in backward (less memory)")
      ->capture_default_str();
  step->add_option(
          "--master", s->o.master,
          "auto | fp32 | split16 | bf16-sr | bf16-kahan (master-weight mode, as train's; auto: "
          "split16 in bf16, else fp32)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16-sr", "bf16-kahan", "split16"}))
      ->capture_default_str();
  step->add_option("--seed", s->o.seed, "Seed of the weights and the synthetic batch")
      ->capture_default_str();
  step->add_option("--mlp-hidden", s->o.mlp_hidden, "mlp hidden sizes")
      ->check(kPositive)
      ->capture_default_str();
  step->add_option("--gpt-layers", s->o.gpt_layers)->check(kPositive)->capture_default_str();
  step->add_option("--gpt-width", s->o.gpt_width)->check(kPositive)->capture_default_str();
  step->add_option("--gpt-heads", s->o.gpt_heads)->check(kPositive)->capture_default_str();
  step->add_option("--gpt-context", s->o.gpt_context)->check(kPositive)->capture_default_str();
  step->add_option("--gpt-vocab", s->o.gpt_vocab, "gpt vocabulary (256: bytes; GPT-2: 50257)")
      ->check(kPositive)
      ->capture_default_str();
  step->add_option("--device", s->o.device,
                   "cpu | cuda | cuda:N: where the step runs (cuda: the GPU's own GEMM peak, a "
                   "device copy as the bandwidth reference)")
      ->capture_default_str();
  step->add_option("--peak-dtype", s->o.peak_dtype,
                   "dtype of the GEMM peak the mfu is taken against (default: the compute "
                   "dtype; bf16 for an fp32 step's model-FLOPs utilisation)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  step->add_option("--gpu-peak-n", s->o.gpu_peak_n, "cuda: n of the n×n×n GEMM peak")
      ->check(kPositive)
      ->capture_default_str();
  step->add_flag("--json", s->json, "Print one JSON object");
  step->add_flag(
      "--profile", s->o.profile,
      "Print a per-op time table of the timed steps (forward, backward, GEMM shapes) to stderr");
  on_run(step, [s] { return run_bench_step(*s); });
}

const bool registered = add_command("bench-step", 21, &setup_bench_step);

}  // namespace

}  // namespace mixtrain::cli
