// Training-step benchmark: times the full step (forward, loss, backward, loss-scaler unscale,
// AdamW with fp32 master, zero_grad) of the MLP or GPT workload on a fixed synthetic batch,
// through the same classes the trainer uses, and relates it to the GEMM peak of this process.
//
//   train::BenchStepOptions o;  o.model = "gpt";  o.precision = "bf16";
//   train::BenchStepResult r = train::bench_step(o);
//   std::puts(r.to_json().c_str());   // ms_per_step, throughput, mfu, peak_rss_bytes, ...
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mixtrain::train {

/// The benchmark workloads: MLP 784-2048-2048-10 at batch 256; GPT with 6 layers, width 384,
/// 6 heads, context 256, batch 8.
struct BenchStepOptions {
  std::string model = "mlp";       ///< mlp | gpt
  std::string precision = "bf16";  ///< fp32 | bf16 | fp16 (Policy::parse names)
  int64_t batch = 0;               ///< 0: the workload's default (mlp 256, gpt 8)
  int warmup = 2;                  ///< untimed steps first (primitive creation, page faults)
  int repeats = 7;                 ///< timed steps; the median is reported
  /// Seconds spent measuring the GEMM peak (n = 2048, oneDNN called directly; the best of three
  /// medians); 0 skips it (mfu is then null). Measured after the peak RSS is read: oneDNN
  /// keeps the product's packing buffers resident.
  double peak_seconds = 0.5;
  /// Time the optimizer step alone (bandwidth against memcpy); adds a few untimed-in-step
  /// optimizer steps after the step timing.
  bool optimizer_bandwidth = true;
  /// Each step in a StepMemoryScope, as the trainer runs it; false: the cache alone (A/B).
  bool step_plan = true;
  /// Master-weight mode: auto (the trainer's default: split16 in bf16, the fp32 master's bits
  /// stored as the bf16 weight plus 16 low bits; fp32 otherwise), fp32, split16, bf16-sr,
  /// bf16-kahan.
  std::string master = "auto";
  uint64_t seed = 0;
  /// gpt: none | gelu | blocks | every:N (nn::parse_activation_checkpointing): what is
  /// recomputed in backward.
  std::string checkpoint_activations = "none";
  /// Per-op profile of the timed steps (profile.h) into BenchStepResult::profile.
  bool profile = false;
  /// cpu | cuda | cuda:N. On cuda the model and batch live on the GPU, every phase ends with
  /// a synchronize(), the peak is mixtrain::gemm's on the GPU (n = gpu_peak_n, the compute
  /// dtype: cuBLASLt's through the backend) and the bandwidth reference a device copy.
  std::string device = "cpu";
  int64_t gpu_peak_n = 8192;
  /// The dtype of the GEMM peak the mfu is taken against: "" for the compute dtype, or fp32,
  /// bf16, fp16 (an fp32 step against the bf16 peak: the usual model-FLOPs utilisation).
  std::string peak_dtype;
  int64_t gpt_vocab = 256;  ///< gpt: vocabulary (256: bytes; GPT-2's is 50257)
  // GPT shape (the defaults are the benchmark workload).
  int64_t gpt_layers = 6, gpt_width = 384, gpt_heads = 6, gpt_context = 256;
  /// MLP hidden sizes (784 in, 10 out around them).
  std::vector<int64_t> mlp_hidden{2048, 2048};
};

struct BenchStepResult {
  std::string model, precision;  ///< as asked ("mlp", "bf16")
  std::string device = "cpu";    ///< as asked
  std::string master;            ///< master-weight mode used ("fp32", "split16")
  std::string policy;            ///< the policy in words
  int64_t batch = 0;
  int64_t parameters = 0;
  int64_t items_per_step = 0;     ///< samples (mlp) or tokens (gpt)
  std::string throughput_unit;    ///< "samples/s" | "tokens/s"
  double flops_per_step = 0;      ///< model FLOPs: 6·N per sample; 6·N + 6·L·C·T per token
  double ms_per_step = 0;         ///< median over repeats
  double ms_min = 0, ms_max = 0;  ///< spread of the repeats
  double forward_ms = 0, backward_ms = 0, optimizer_ms = 0;  ///< medians of the step's phases
  double throughput = 0;                                     ///< items / s at the median
  double model_gflops_per_s = 0;
  std::string gemm_peak_dtype;  ///< dtype the peak was measured in (compute dtype; fp32 for
                                ///< fp16 on CPUs without fp16 arithmetic)
  double gemm_peak_gflops = 0;  ///< NaN when not measured
  double mfu = 0;               ///< model_gflops_per_s / gemm_peak_gflops; NaN when unmeasured
  double loss = 0;              ///< loss of the last timed step (sanity: finite)
  std::string profile;          ///< per-op table, per step (empty unless asked for)
  int64_t peak_rss_bytes = 0;
  int64_t peak_tensor_bytes = 0;  ///< tensor storage high-water mark during the timed steps
  int64_t arena_bytes = 0;        ///< the step plan's arena (StepMemoryScope); 0 without one
  int64_t step_missed_bytes = 0;  ///< what the last step's plan did not serve
  std::string checkpoint_activations = "none";  ///< as asked
  /// Tensor bytes the tape keeps at the end of the forward, per dtype ({"bf16": n, ...}).
  std::map<std::string, int64_t> activation_bytes;
  // The optimizer step alone (AdamW, fp32 master and moments, compute copy written).
  double optimizer_alone_ms = 0;
  double optimizer_bytes = 0;  ///< bytes read + written by one optimizer step
  double optimizer_gbps = 0;
  double memcpy_gbps = 0;  ///< memcpy of 64 MiB, read + write, same process (cuda: a device copy)
  double optimizer_bandwidth_ratio = 0;  ///< optimizer_gbps / memcpy_gbps
  int threads = 1;
  int warmup = 0, repeats = 0;
  /// One JSON object (NaN becomes null).
  std::string to_json() const;
};

/// Builds the model, a fixed synthetic batch, the AdamW optimizer (fp32 master) and the loss
/// scaler for the policy; runs warm-up then timed steps. Throws ConfigError for a bad
/// model/precision/batch.
BenchStepResult bench_step(const BenchStepOptions& options);

}  // namespace mixtrain::train
