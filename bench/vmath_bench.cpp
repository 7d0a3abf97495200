// The vectorised fp32 math kernels (src/cpu/vmath.h) on one thread, over a block that stays
// in L1 (2048 values, GELU's block in the element-wise ops): the time per value is the
// kernel's compute, with no memory or threading in it.
//   build/bench/vmath_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <vector>

#include "cpu/vmath.h"
#include "mixtrain/random.h"

namespace {

constexpr int64_t kN = 2048;

std::vector<float> inputs(uint64_t seed) {
  mixtrain::Rng rng(seed);
  std::vector<float> v(kN);
  for (float& x : v) x = 3.0f * rng.normal();  // GELU's interesting range and both tails
  return v;
}

void BM_Gelu(benchmark::State& st) {
  const std::vector<float> x = inputs(1);
  std::vector<float> y(kN);
  for (auto _ : st) {
    mixtrain::cpu::gelu(x.data(), y.data(), kN);
    benchmark::DoNotOptimize(y.data());
  }
  st.SetItemsProcessed(st.iterations() * kN);
}
BENCHMARK(BM_Gelu);

void BM_GeluGrad(benchmark::State& st) {
  const std::vector<float> x = inputs(1), g = inputs(2);
  std::vector<float> dx(kN);
  for (auto _ : st) {
    mixtrain::cpu::gelu_grad(x.data(), g.data(), dx.data(), kN);
    benchmark::DoNotOptimize(dx.data());
  }
  st.SetItemsProcessed(st.iterations() * kN);
}
BENCHMARK(BM_GeluGrad);

void BM_ExpShift(benchmark::State& st) {
  // In place: the values go to exp's fixed point (about 0.018) after a few calls; the cost of
  // exp does not depend on them.
  std::vector<float> x = inputs(3);
  for (auto _ : st) {
    mixtrain::cpu::exp_shift(x.data(), kN, 4.0f);
    benchmark::DoNotOptimize(x.data());
  }
  st.SetItemsProcessed(st.iterations() * kN);
}
BENCHMARK(BM_ExpShift);

}  // namespace
