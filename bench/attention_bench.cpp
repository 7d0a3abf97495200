// Fused causal attention straight from a GPT layer's packed projection (attention_qkv: qkv
// [8, 256, 1152], 6 heads of 64), forward and backward, in each compute dtype. On CPUs
// without 16-bit arithmetic bf16 and fp16 are widened as the kernels pack their rows, so
// their times against fp32's are the cost of that widening and of rounding the outputs.
// BM_AttentionPath runs the same problem on the CPU backend's two paths side by side (the fused
// kernels of the level in use, and the GEMM path), BM_AttentionTiny a tiny head (the GEMM path).
//   build/bench/attention_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <cmath>
#include <vector>

#include "cpu/attention.h"
#include "cpu/backend.h"
#include "mixtrain/mixtrain.h"

using namespace mixtrain;

namespace {

constexpr int64_t kB = 8, kT = 256, kC = 384, kHeads = 6;

Tensor normal(const Shape& shape, DType dt, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = rng.normal();
  return Tensor::from_vector(v, shape, dt);
}

// Arg 0: dtype (0 fp32, 1 bf16, 2 fp16); Arg 1: 0 forward, 1 forward + backward.
void BM_AttentionQkv(benchmark::State& st) {
  const DType dt = st.range(0) == 0 ? DType::f32 : (st.range(0) == 1 ? DType::bf16 : DType::f16);
  const bool backward = st.range(1) != 0;
  Variable qkv(normal({kB, kT, 3 * kC}, dt, 1), true);
  const Tensor seed = normal({kB, kT, kC}, dt, 2);
  for (auto _ : st) {
    Variable out = attention_qkv(qkv, kHeads, true);
    if (backward) {
      out.backward(seed);
      qkv.zero_grad();
    }
    benchmark::DoNotOptimize(out.data().raw_data());
  }
  st.SetLabel(std::string(dtype_name(dt)) + (backward ? " fwd+bwd" : " fwd"));
}
BENCHMARK(BM_AttentionQkv)
    ->ArgsProduct({{0, 1, 2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// q, k, v, o and dO as attention_qkv views them: [B, H, T, D] inside [B, T, 3·C] and [B, T, C].
struct Views {
  Tensor qkv, out, dqkv, dout, lse;
  Tensor part(const Tensor& t, int64_t i) const {
    const int64_t D = kC / kHeads;
    return t.as_strided({kB, kHeads, kT, D}, {kT * 3 * kC, D, 3 * kC, 1}, i * kC);
  }
  Tensor heads(const Tensor& t) const {
    const int64_t D = kC / kHeads;
    return t.as_strided({kB, kHeads, kT, D}, {kT * kC, D, kC, 1});
  }
};

// Arg 0: dtype (0 fp32, 1 bf16, 2 fp16); Arg 1: 0 the fused kernels, 1 the GEMM path (forward
// and backward each iteration).
void BM_AttentionPath(benchmark::State& st) {
  const DType dt = st.range(0) == 0 ? DType::f32 : (st.range(0) == 1 ? DType::bf16 : DType::f16);
  const bool gemm = st.range(1) != 0;
  const int64_t D = kC / kHeads;
  if (!gemm && !cpu::fused_attention(dt, dt, kT, kT, D)) {
    st.SkipWithError("no fused kernels at this level");
    return;
  }
  Views v{normal({kB, kT, 3 * kC}, dt, 1), Tensor::empty({kB, kT, kC}, dt),
          Tensor::empty({kB, kT, 3 * kC}, dt), normal({kB, kT, kC}, dt, 2),
          Tensor::empty({kB * kHeads, kT}, DType::f32)};
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  cpu::CpuBackend& be = cpu::cpu_backend();
  for (auto _ : st) {
    const Tensor q = v.part(v.qkv, 0), k = v.part(v.qkv, 1), val = v.part(v.qkv, 2);
    if (gemm) {
      cpu::attention_gemm(q, k, val, true, scale, v.heads(v.out), v.lse.data<float>());
      cpu::attention_gemm_backward(q, k, val, v.heads(v.dout), v.lse.data<float>(), true, scale,
                                   v.part(v.dqkv, 0), v.part(v.dqkv, 1), v.part(v.dqkv, 2));
    } else {
      be.attention(q, k, val, true, scale, v.heads(v.out), v.lse);
      be.attention_backward(q, k, val, v.heads(v.dout), v.lse, true, scale, v.part(v.dqkv, 0),
                            v.part(v.dqkv, 1), v.part(v.dqkv, 2));
    }
    benchmark::DoNotOptimize(v.dqkv.raw_data());
  }
  st.SetLabel(std::string(dtype_name(dt)) + (gemm ? " gemm path" : " fused") + " fwd+bwd " +
              simd_level());
}
BENCHMARK(BM_AttentionPath)
    ->ArgsProduct({{0, 1, 2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// A tiny problem (2 heads of [8, 8], causal), forward and backward through the op: what the
// GEMM path costs where a per-head loop once ran (heads of under 4096 multiply-adds).
void BM_AttentionTiny(benchmark::State& st) {
  Variable q(normal({1, 2, 8, 8}, DType::f32, 3), true),
      k(normal({1, 2, 8, 8}, DType::f32, 4), true), val(normal({1, 2, 8, 8}, DType::f32, 5), true);
  const Tensor seed = normal({1, 2, 8, 8}, DType::f32, 6);
  for (auto _ : st) {
    Variable o = scaled_dot_product_attention(q, k, val, true);
    o.backward(seed);
    q.zero_grad(), k.zero_grad(), val.zero_grad();
  }
  st.SetLabel("f32 [1, 2, 8, 8] fwd+bwd");
}
BENCHMARK(BM_AttentionTiny)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
