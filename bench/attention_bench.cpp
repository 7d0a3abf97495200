// Fused causal attention straight from a GPT layer's packed projection (attention_qkv: qkv
// [8, 256, 1152], 6 heads of 64), forward and backward, in each compute dtype. On CPUs
// without 16-bit arithmetic bf16 and fp16 are widened as the kernels pack their rows, so
// their times against fp32's are the cost of that widening and of rounding the outputs.
//   build/bench/attention_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <vector>

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

}  // namespace
