// Bulk fp32 <-> bf16/fp16 conversion bandwidth against memcpy, on arrays far larger than L2
// (64 MiB of fp32). Bytes counted = bytes read + bytes written, for memcpy too, so the
// GB/s columns compare directly. Per-level rows run one level's kernel on one thread
// (cpu::convert_kernels<level>); "convert" rows use the public mixtrain::convert (the level in
// use, OpenMP over all threads).
//   build-dtype/bench/convert_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/convert.h"
#include "mixtrain/cpu.h"
#include "mixtrain/dtype.h"

using namespace mixtrain;

namespace {

constexpr size_t kN = size_t{16} << 20;  // 16 Mi fp32 = 64 MiB

std::vector<float>& src_f32() {
  static std::vector<float> v = [] {
    std::vector<float> x(kN);
    for (size_t i = 0; i < kN; ++i) x[i] = static_cast<float>(i % 1000) * 0.37f - 100.0f;
    return x;
  }();
  return v;
}

// memcpy of 64 MiB; Arg = threads (each copies a contiguous part).
void BM_Memcpy(benchmark::State& st) {
  const int threads = static_cast<int>(st.range(0));
  const auto& s = src_f32();
  std::vector<float> d(kN, 0.0f);
  for (auto _ : st) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
      const size_t b = kN * t / threads, e = kN * (t + 1) / threads;
      std::memcpy(d.data() + b, s.data() + b, (e - b) * 4);
    }
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * kN * 8);
}
BENCHMARK(BM_Memcpy)->Arg(1)->Arg(2)->UseRealTime();

// One level's kernel for the pair, on the calling thread.
void convert_at(cpu::Isa level, const void* src, DType sd, void* dst, DType dd, size_t n) {
  const cpu::ConvertKernels& k = cpu::convert_kernels_at(level);
  if (sd == DType::f32)
    (dd == DType::bf16 ? k.f32_to_bf16 : k.f32_to_f16)(static_cast<const float*>(src),
                                                       static_cast<uint16_t*>(dst), n);
  else
    (sd == DType::bf16 ? k.bf16_to_f32 : k.f16_to_f32)(static_cast<const uint16_t*>(src),
                                                       static_cast<float*>(dst), n);
}

// Arg 0: ISA level (0 scalar .. 3 avx512bf16), one thread; Arg -1: mixtrain::convert.
void down(benchmark::State& st, DType h) {
  const int level = static_cast<int>(st.range(0));
  if (level >= 0 && !cpu::isa_supported(static_cast<cpu::Isa>(level))) {
    st.SkipWithError("this CPU lacks the level");
    return;
  }
  const auto& s = src_f32();
  std::vector<uint16_t> d(kN, 0);
  for (auto _ : st) {
    if (level < 0)
      convert(s.data(), DType::f32, d.data(), h, kN);
    else
      convert_at(static_cast<cpu::Isa>(level), s.data(), DType::f32, d.data(), h, kN);
    benchmark::ClobberMemory();
  }
  st.SetLabel(level < 0 ? std::string("convert ") + simd_level()
                        : cpu::isa_name(static_cast<cpu::Isa>(level)));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * kN * 6);
}
void up(benchmark::State& st, DType h) {
  const int level = static_cast<int>(st.range(0));
  if (level >= 0 && !cpu::isa_supported(static_cast<cpu::Isa>(level))) {
    st.SkipWithError("this CPU lacks the level");
    return;
  }
  std::vector<uint16_t> s(kN);
  convert(src_f32().data(), DType::f32, s.data(), h, kN);
  std::vector<float> d(kN, 0.0f);
  for (auto _ : st) {
    if (level < 0)
      convert(s.data(), h, d.data(), DType::f32, kN);
    else
      convert_at(static_cast<cpu::Isa>(level), s.data(), h, d.data(), DType::f32, kN);
    benchmark::ClobberMemory();
  }
  st.SetLabel(level < 0 ? std::string("convert ") + simd_level()
                        : cpu::isa_name(static_cast<cpu::Isa>(level)));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * kN * 6);
}
void BM_F32ToBf16(benchmark::State& st) { down(st, DType::bf16); }
void BM_Bf16ToF32(benchmark::State& st) { up(st, DType::bf16); }
void BM_F32ToF16(benchmark::State& st) { down(st, DType::f16); }
void BM_F16ToF32(benchmark::State& st) { up(st, DType::f16); }
BENCHMARK(BM_F32ToBf16)->DenseRange(-1, 3)->UseRealTime();
BENCHMARK(BM_Bf16ToF32)->DenseRange(-1, 3)->UseRealTime();
BENCHMARK(BM_F32ToF16)->DenseRange(-1, 3)->UseRealTime();
BENCHMARK(BM_F16ToF32)->DenseRange(-1, 3)->UseRealTime();

}  // namespace
