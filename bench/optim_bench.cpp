// The AdamW step alone on 16 Mi parameters (fp32 master + moments, fp32 or bf16 gradient,
// bf16 compute copy written in the same pass) against memcpy of a similar size. Bytes counted
// = bytes read + bytes written, for memcpy too, so the GB/s columns compare directly:
// AdamW moves 4+4+4+G read (master, m, v, grad) + 4+4+4+2 written = 30 (G=4) or 28 (G=2).
//   build-optim/bench/optim_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstring>
#include <vector>

#include "mixtrain/optim/optimizer.h"

using namespace mixtrain;

namespace {

constexpr int64_t kN = int64_t{16} << 20;

// Arg 0: threads; Arg 1: gradient dtype (0 f32, 1 bf16); Arg 2: master mode.
void BM_AdamWStep(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  const DType gdt = st.range(1) ? DType::bf16 : DType::f32;
  const auto mode = static_cast<optim::MasterMode>(st.range(2));
  omp_set_num_threads(threads);
  nn::Parameter p("w", Tensor::full({kN}, 0.5f, DType::f32), DType::bf16);
  p.weight.grad() = Tensor::full({kN}, 1e-3f, gdt);
  optim::AdamW opt({&p}, {.lr = 1e-4, .weight_decay = 0.01, .common = {.master = mode}});
  opt.step();  // first touch of the state
  for (auto _ : st) {
    opt.step();
    benchmark::ClobberMemory();
  }
  // master/weight bytes by mode: fp32 4 read + 4 written + 2 copy written; split16 and kahan
  // 2+2 read and written; stochastic 2 read + 2 written.
  int64_t param_bytes = 10;
  if (mode == optim::MasterMode::split16 || mode == optim::MasterMode::bf16_kahan) param_bytes = 8;
  if (mode == optim::MasterMode::bf16_stochastic) param_bytes = 4;
  const int64_t per = param_bytes + 16 + static_cast<int64_t>(dtype_size(gdt));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * kN * per);
  st.SetLabel(std::string(optim::master_mode_name(mode)) + " grad " + dtype_name(gdt));
  omp_set_num_threads(omp_get_num_procs());
}
BENCHMARK(BM_AdamWStep)
    ->Args({1, 0, 0})
    ->Args({1, 1, 0})
    ->Args({2, 0, 0})
    ->Args({2, 1, 0})
    ->Args({2, 0, 1})
    ->Args({2, 0, 2})
    ->Args({2, 0, 3})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// memcpy of 16 Mi x 15 bytes (240 MiB read + 240 MiB written = the ~30 bytes per parameter of
// the AdamW pass). Arg = threads (each copies a contiguous part).
void BM_Memcpy(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  const size_t bytes = static_cast<size_t>(kN) * 15;
  std::vector<char> s(bytes, 1), d(bytes, 0);
  for (auto _ : st) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
      const size_t b = bytes * t / threads, e = bytes * (t + 1) / threads;
      std::memcpy(d.data() + b, s.data() + b, e - b);
    }
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * bytes * 2));
}
BENCHMARK(BM_Memcpy)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
