// bench_step: the training-step benchmark of bench_step.h. The step is the trainer's (policy
// scope, forward, cross-entropy, backward seeded with the loss scale, unscale, fused AdamW
// step with fp32 master, scaler update, zero_grad), on a fixed synthetic batch so the timing
// does not depend on data loading.
#include "mixtrain/train/bench_step.h"

#include "core/memory.h"

#include "mixtrain/profile.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mixtrain/amp/fp8.h"
#include "mixtrain/amp/loss_scaler.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/bench.h"
#include "mixtrain/error.h"
#include "mixtrain/gemm.h"
#include "mixtrain/nn/checkpoint.h"
#include "mixtrain/nn/models.h"
#include "mixtrain/ops.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/random.h"
#include "mixtrain/train/trainer.h"
#include "train/task.h"

namespace mixtrain::train {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

const char* report_name(DType dt) {
  return dt == DType::f32    ? "fp32"
         : dt == DType::bf16 ? "bf16"
         : dt == DType::f16  ? "fp16"
                             : dtype_name(dt);
}

nlohmann::json num(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}

// The model and its fixed batch behind one interface: loss() runs the forward and the loss.
struct Workload {
  virtual ~Workload() = default;
  virtual nn::Module& module() = 0;
  virtual Variable loss() = 0;
  /// The model and its batch onto `device` (built on the host: the same weights everywhere).
  virtual void to(Device device) = 0;
};

// GFLOP/s of C = A·B (n×n, `dtype`) through mixtrain::gemm on `device`: the best of three
// medians of per-call times, each call timed from a synchronize() to the next (the GPU's
// kernels are asynchronous). On cuda that is the backend's GEMM (cuBLASLt), the peak the
// step's products can reach in the same process.
double device_gemm_gflops(DType dtype, int64_t n, Device device, double seconds) {
  std::vector<float> v(static_cast<size_t>(n * n));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>(static_cast<int64_t>(i % 17) - 8) / 8;
  const Tensor a = Tensor::from_vector(v, {n, n}, dtype, device);
  const Tensor b = a.clone();
  Tensor c = Tensor::zeros({n, n}, dtype, device);
  gemm(a, false, b, false, c);  // warm: the library picks its algorithm
  synchronize(device);
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    std::vector<double> t;
    const auto t_round = Clock::now();
    while (t.size() < 3 || ms_since(t_round) < seconds * 1e3 / 3) {
      const auto t0 = Clock::now();
      gemm(a, false, b, false, c);
      synchronize(device);
      t.push_back(ms_since(t0));
      if (t.size() >= 1000) break;
    }
    best = std::max(best, 2.0 * static_cast<double>(n) * n * n / (median(t) * 1e-3) / 1e9);
  }
  return best;
}

// Device-to-device copy bandwidth (read + write) of `bytes`, the GPU's memcpy_gbps.
double device_copy_gbps(size_t bytes, Device device, double seconds) {
  const auto n = static_cast<int64_t>(bytes);
  const Tensor src = Tensor::zeros({n}, DType::u8, device);
  Tensor dst = Tensor::empty({n}, DType::u8, device);
  dst.copy_from(src);
  synchronize(device);
  std::vector<double> t;
  const auto t_all = Clock::now();
  while (t.size() < 5 || ms_since(t_all) < seconds * 1e3) {
    const auto t0 = Clock::now();
    dst.copy_from(src);
    synchronize(device);
    t.push_back(ms_since(t0));
    if (t.size() >= 1000) break;
  }
  return 2.0 * static_cast<double>(bytes) / (median(t) * 1e-3) / 1e9;
}

struct MlpWorkload : Workload {
  Rng rng;
  nn::MLP model;
  Tensor x, y;
  MlpWorkload(const std::vector<int64_t>& sizes, int64_t batch, uint64_t seed)
      : rng(seed), model(sizes, /*gelu=*/false, rng) {
    // Features like normalised Fashion-MNIST pixels (zero mean, unit scale), fixed labels.
    x = nn::normal_tensor({batch, sizes.front()}, 1.0f, rng);
    y = Tensor::empty({batch}, DType::i64);
    for (int64_t i = 0; i < batch; ++i)
      y.data<int64_t>()[i] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(sizes.back())));
  }
  nn::Module& module() override { return model; }
  Variable loss() override { return cross_entropy(model.forward(Variable(x)), Variable(y)); }
  void to(Device device) override {
    model.to(device);
    x = x.to(device);
    y = y.to(device);
  }
};

struct GptWorkload : Workload {
  Rng rng, drng;
  nn::GPT model;
  Tensor ids, targets;
  GptWorkload(const nn::GPTConfig& cfg, int64_t batch, uint64_t seed)
      : rng(seed), drng(seed ^ 0x3000), model(cfg, rng) {
    // Random bytes: the step's cost does not depend on the token values.
    ids = Tensor::empty({batch, cfg.context}, DType::i64);
    targets = Tensor::empty({batch, cfg.context}, DType::i64);
    for (int64_t i = 0; i < ids.numel(); ++i) {
      ids.data<int64_t>()[i] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(cfg.vocab)));
      targets.data<int64_t>()[i] =
          static_cast<int64_t>(rng.below(static_cast<uint64_t>(cfg.vocab)));
    }
  }
  nn::Module& module() override { return model; }
  Variable loss() override {
    return cross_entropy(model.forward(Variable(ids), drng), Variable(targets));
  }
  void to(Device device) override {
    model.to(device);
    ids = ids.to(device);
    targets = targets.to(device);
  }
};

}  // namespace

std::string BenchStepResult::to_json() const {
  nlohmann::json j = {{"impl", "mixtrain"},
                      {"device", device},
                      {"model", model},
                      {"precision", precision},
                      {"master", master},
                      {"policy", policy},
                      {"batch", batch},
                      {"parameters", parameters},
                      {"items_per_step", items_per_step},
                      {"throughput_unit", throughput_unit},
                      {"flops_per_step", flops_per_step},
                      {"ms_per_step", ms_per_step},
                      {"ms_min", ms_min},
                      {"ms_max", ms_max},
                      {"forward_ms", forward_ms},
                      {"backward_ms", backward_ms},
                      {"optimizer_ms", optimizer_ms},
                      {"throughput", throughput},
                      {"model_gflops_per_s", model_gflops_per_s},
                      {"gemm_peak_dtype", gemm_peak_dtype},
                      {"gemm_peak_gflops", num(gemm_peak_gflops)},
                      {"mfu", num(mfu)},
                      {"loss", num(loss)},
                      {"peak_rss_bytes", peak_rss_bytes},
                      {"peak_tensor_bytes", peak_tensor_bytes},
                      {"arena_bytes", arena_bytes},
                      {"step_missed_bytes", step_missed_bytes},
                      {"checkpoint_activations", checkpoint_activations},
                      {"activation_bytes", activation_bytes},
                      {"optimizer_alone_ms", num(optimizer_alone_ms)},
                      {"optimizer_bytes", optimizer_bytes},
                      {"optimizer_gbps", num(optimizer_gbps)},
                      {"memcpy_gbps", num(memcpy_gbps)},
                      {"optimizer_bandwidth_ratio", num(optimizer_bandwidth_ratio)},
                      {"threads", threads},
                      {"warmup", warmup},
                      {"repeats", repeats}};
  return j.dump(2);
}

BenchStepResult bench_step(const BenchStepOptions& o) {
  if (o.model != "mlp" && o.model != "gpt")
    throw ConfigError(fmt::format("bench step: --model must be mlp or gpt, got '{}'", o.model));
  if (o.precision != "fp32" && o.precision != "bf16" && o.precision != "fp16" &&
      o.precision != "fp8")
    throw ConfigError(fmt::format(
        "bench step: --precision must be fp32, bf16, fp16 or fp8, got '{}'", o.precision));
  if (o.batch < 0) throw ConfigError(fmt::format("bench step: --batch {} must be >= 1", o.batch));
  if (!o.peak_dtype.empty() && o.peak_dtype != "fp32" && o.peak_dtype != "bf16" &&
      o.peak_dtype != "fp16")
    throw ConfigError(
        fmt::format("bench step: --peak-dtype must be fp32, bf16 or fp16, got '{}'", o.peak_dtype));
  if (o.gpt_vocab < 1 || o.gpu_peak_n < 1)
    throw ConfigError("bench step: --gpt-vocab and --gpu-peak-n must be >= 1");
  if (o.repeats < 1 || o.warmup < 0)
    throw ConfigError(
        fmt::format("bench step: repeats {} must be >= 1 and warmup {} >= 0", o.repeats, o.warmup));
  const nn::ActivationCheckpointing ac =
      nn::parse_activation_checkpointing(o.checkpoint_activations);
  if (ac.any() && o.model != "gpt")
    throw ConfigError(
        "bench step: --checkpoint-activations needs --model gpt (the mlp has no blocks)");
  const Device device = use_device(o.device);
  const amp::Policy policy = amp::Policy::parse(o.precision);  // fp8: the default recipe
  BenchStepResult r;
  r.device = o.device;
  r.checkpoint_activations = o.checkpoint_activations;
  r.model = o.model;
  r.precision = o.precision;
  r.policy = policy.str();
  r.batch = o.batch > 0 ? o.batch : (o.model == "mlp" ? 256 : 8);
  r.warmup = o.warmup;
  r.repeats = o.repeats;
  r.threads = gemm_backend_info().threads;
  memory::set_step_plans_enabled(o.step_plan);  // also starts from an empty cache and no plan

  std::unique_ptr<Workload> w;
  if (o.model == "mlp") {
    std::vector<int64_t> sizes{784};
    sizes.insert(sizes.end(), o.mlp_hidden.begin(), o.mlp_hidden.end());
    sizes.push_back(10);
    w = std::make_unique<MlpWorkload>(sizes, r.batch, o.seed);
  } else {
    nn::GPTConfig cfg;
    cfg.layers = o.gpt_layers;
    cfg.width = o.gpt_width;
    cfg.heads = o.gpt_heads;
    cfg.context = o.gpt_context;
    cfg.vocab = o.gpt_vocab;
    auto gpt = std::make_unique<GptWorkload>(cfg, r.batch, o.seed);
    gpt->model.set_checkpoint_every(ac.every);
    gpt->model.set_recompute_gelu(ac.gelu);
    w = std::move(gpt);
  }
  w->to(device);
  nn::Module& model = w->module();
  model.set_compute_dtype(policy.compute);
  model.train();
  r.parameters = model.num_parameters();
  const double N = static_cast<double>(r.parameters);
  if (o.model == "mlp") {
    r.items_per_step = r.batch;
    r.throughput_unit = "samples/s";
    r.flops_per_step = 6.0 * N * static_cast<double>(r.batch);
  } else {
    // llm.c's count: 6·N for the weights (forward 2, backward 4) plus 6·L·C·T for the causal
    // attention products (QKᵀ and PV, half the T×T square, forward and backward).
    r.items_per_step = r.batch * o.gpt_context;
    r.throughput_unit = "tokens/s";
    const double per_token = 6.0 * N + 6.0 * static_cast<double>(o.gpt_layers) *
                                           static_cast<double>(o.gpt_width) *
                                           static_cast<double>(o.gpt_context);
    r.flops_per_step = per_token * static_cast<double>(r.items_per_step);
  }

  optim::CommonOptions common;
  common.master = o.master == "auto" ? optim::auto_master_mode(policy.param, policy.compute, true)
                                     : optim::parse_master_mode(o.master.c_str());
  r.master = optim::master_mode_name(common.master);
  common.seed = o.seed;
  // AdamW as torch's defaults for lr and decay: the update's cost does not depend on them.
  std::unique_ptr<optim::Optimizer> opt =
      optim::make_optimizer("adamw", model.parameters(), 1e-3, 1e-2, 0.0, common);
  amp::LossScalerOptions so = amp::LossScaler::options_for(policy);
  if (so.mode == amp::LossScaling::none) so.init_scale = 1.0f;
  amp::LossScaler scaler(so);
  // fp8: every linear's scaling state (the trainer's, with the default recipe).
  const amp::Fp8States fp8 =
      policy.fp8_gemms ? nn::fp8_states(model, policy.fp8_gemms->amax_history) : amp::Fp8States{};

  std::vector<double> total, fwd, bwd, upd;
  auto step = [&](bool timed) {
    const auto t0 = Clock::now();
    profile::mark();
    StepMemoryScope step_memory;
    Variable loss;
    const MemoryStats before_forward = memory_stats(device);
    {
      amp::PolicyScope scope(policy);
      loss = w->loss();
    }
    r.activation_bytes = memory_growth_by_dtype(before_forward, device);
    r.loss = loss.data().item();
    const auto t1 = Clock::now();
    loss.backward(scaler.scale());
    loss = Variable();    // drop the tape before the update, as the trainer's scope does
    synchronize(device);  // (on a GPU the phases end when their kernels have)
    const auto t2 = Clock::now();
    scaler.unscale(*opt);
    scaler.step(*opt);
    scaler.update();
    if (policy.fp8_gemms) amp::fp8_end_step(fp8, *policy.fp8_gemms);  // delayed: the next scales
    opt->zero_grad();
    synchronize(device);
    const auto t3 = Clock::now();
    profile::add("loss scaler + optimizer + zero_grad",
                 std::chrono::duration<double>(t3 - t2).count());
    if (timed) {
      using ms = std::chrono::duration<double, std::milli>;
      fwd.push_back(ms(t1 - t0).count());
      bwd.push_back(ms(t2 - t1).count());
      upd.push_back(ms(t3 - t2).count());
      total.push_back(ms(t3 - t0).count());
    }
  };
  for (int i = 0; i < o.warmup; ++i) step(false);
  reset_peak_memory();
  if (o.profile) {
    profile::enable(true);
    profile::reset();
  }
  for (int i = 0; i < o.repeats; ++i) step(true);
  if (o.profile) {
    r.profile = profile::report(o.repeats);
    profile::enable(false);
  }
  const MemoryStats ms = memory_stats(device);
  r.peak_tensor_bytes = ms.peak_bytes;
  r.arena_bytes = ms.arena_bytes;
  r.step_missed_bytes = ms.step_missed_bytes;
  r.peak_rss_bytes = peak_rss_bytes();
  r.ms_per_step = median(total);
  r.ms_min = *std::min_element(total.begin(), total.end());
  r.ms_max = *std::max_element(total.begin(), total.end());
  r.forward_ms = median(fwd);
  r.backward_ms = median(bwd);
  r.optimizer_ms = median(upd);
  r.throughput = static_cast<double>(r.items_per_step) / (r.ms_per_step * 1e-3);
  r.model_gflops_per_s = r.flops_per_step / (r.ms_per_step * 1e-3) / 1e9;

  r.optimizer_alone_ms = NAN;
  r.optimizer_gbps = NAN;
  r.memcpy_gbps = NAN;
  r.optimizer_bandwidth_ratio = NAN;
  if (o.optimizer_bandwidth) {
    // One backward leaves gradients in place; step() then re-reads them each call (values
    // drift, cost does not). Bytes: gradient read; master, m, v read and written; the compute
    // copy written unless it is the master itself (master-free modes: the bf16 weight and its
    // low bits or compensation are the master, read and written).
    {
      Variable loss;
      {
        amp::PolicyScope scope(policy);
        loss = w->loss();
      }
      loss.backward(1.0f);
    }
    double bytes = 0;
    for (nn::Parameter* p : model.parameters()) {
      const double n = static_cast<double>(p->numel());
      bytes += n * static_cast<double>(dtype_size(p->grad().dtype()));
      const optim::BytesPerParam b = optim::bytes_per_parameter(common.master, p->compute_dtype());
      const double weight_passes = common.master == optim::MasterMode::fp32 ? 1.0 : 2.0;
      bytes += n * (2.0 * (b.state + b.master) + weight_passes * b.weight);
    }
    std::vector<double> t;
    opt->step();  // warm
    synchronize(device);
    for (int i = 0; i < std::max(5, o.repeats); ++i) {
      const auto t0 = Clock::now();
      opt->step();
      synchronize(device);
      t.push_back(ms_since(t0));
    }
    opt->zero_grad();
    r.optimizer_alone_ms = median(t);
    r.optimizer_bytes = bytes;
    r.optimizer_gbps = bytes / (r.optimizer_alone_ms * 1e-3) / 1e9;
    r.memcpy_gbps = device == Device::cpu ? memcpy_gbps(size_t{64} << 20, 0.3)
                                          : device_copy_gbps(size_t{256} << 20, device, 0.3);
    r.optimizer_bandwidth_ratio = r.optimizer_gbps / r.memcpy_gbps;
  }
  // The GEMM peak last, after the step's peak RSS is read: oneDNN keeps packing buffers of an
  // n = 2048 product in its heap (measured: 65 MiB resident after one measurement, 100 MiB
  // after three), more than the MLP's whole step holds. The best of three medians (each over
  // peak_seconds / 3): a peak is what the machine can do, and on a shared machine a slow
  // stretch only lowers a measurement (one median over 0.5 s, ~5 calls on an AVX2 CPU, once
  // came out at 128 GFLOP/s beside 160-176 in the other runs, and an mfu above 1).
  DType peak_dt = o.peak_dtype.empty() ? policy.compute : amp::Policy::parse(o.peak_dtype).compute;
  r.gemm_peak_gflops = NAN;
  auto peak = [&](DType dt) {
    double best = onednn_gemm_gflops(dt, 2048, o.peak_seconds / 3);
    for (int i = 1; i < 3 && std::isfinite(best); ++i)
      best = std::max(best, onednn_gemm_gflops(dt, 2048, o.peak_seconds / 3));
    return best;
  };
  if (o.peak_seconds > 0 && device != Device::cpu) {
    r.gemm_peak_gflops = device_gemm_gflops(peak_dt, o.gpu_peak_n, device, o.peak_seconds);
  } else if (o.peak_seconds > 0) {
    r.gemm_peak_gflops = peak(peak_dt);
    if (!std::isfinite(r.gemm_peak_gflops) && peak_dt != DType::f32) {
      // No 16-bit matmul on this CPU (fp16 without AVX512-FP16, bf16 on AVX2): mixtrain's
      // 16-bit GEMMs widen into fp32 ones, so the fp32 peak is the one they can reach.
      peak_dt = DType::f32;
      r.gemm_peak_gflops = peak(peak_dt);
    }
  }
  r.gemm_peak_dtype = report_name(peak_dt);
  r.mfu = r.model_gflops_per_s / r.gemm_peak_gflops;
  return r;
}

}  // namespace mixtrain::train
