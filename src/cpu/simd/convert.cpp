// Run-time ISA dispatch for the bulk fp32 <-> bf16/fp16 conversions, the scalar kernels every
// SIMD path is tested against, the OpenMP split, and mixtrain::simd_level().
#include "cpu/simd/convert.h"

#include <omp.h>

#include <fmt/format.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "cpu/simd/kernels.h"
#include "mixtrain/cpu.h"
#include "mixtrain/error.h"

namespace mixtrain {
namespace simd {
namespace {

void scalar_f32_to_bf16(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = bf16(s[i]).bits();
}
void scalar_bf16_to_f32(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<float>(bf16::from_bits(s[i]));
}
void scalar_f32_to_f16(const float* s, uint16_t* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = fp16(s[i]).bits();
}
void scalar_f16_to_f32(const uint16_t* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<float>(fp16::from_bits(s[i]));
}
const Kernels kScalarKernels = {scalar_f32_to_bf16, scalar_bf16_to_f32, scalar_f32_to_f16,
                                scalar_f16_to_f32};

const Kernels& kernels_of(Level level) {
  switch (level) {
    case Level::avx2:
      return kAvx2Kernels;
    case Level::avx512:
      return kAvx512Kernels;
    case Level::avx512bf16:
      return kAvx512Bf16Kernels;
    case Level::scalar:
      break;
  }
  return kScalarKernels;
}

Level parse_cap(const char* env) {
  const std::string_view s(env);
  for (Level l : {Level::scalar, Level::avx2, Level::avx512, Level::avx512bf16})
    if (s == level_name(l)) return l;
  throw ConfigError(fmt::format(
      "MIXTRAIN_ISA='{}': unknown ISA level (expected scalar, avx2, avx512 or avx512bf16)", s));
}

// One conversion: the kernel to call and the element sizes, so the OpenMP split can offset
// both pointers.
struct Job {
  const char* src;
  char* dst;
  size_t src_size, dst_size;
  const Kernels* k;
  DType sd, dd;
};

void run_range(const Job& j, size_t b, size_t e) {
  const char* s = j.src + b * j.src_size;
  char* d = j.dst + b * j.dst_size;
  const size_t n = e - b;
  if (j.sd == DType::f32 && j.dd == DType::bf16)
    j.k->f32_to_bf16(reinterpret_cast<const float*>(s), reinterpret_cast<uint16_t*>(d), n);
  else if (j.sd == DType::bf16 && j.dd == DType::f32)
    j.k->bf16_to_f32(reinterpret_cast<const uint16_t*>(s), reinterpret_cast<float*>(d), n);
  else if (j.sd == DType::f32 && j.dd == DType::f16)
    j.k->f32_to_f16(reinterpret_cast<const float*>(s), reinterpret_cast<uint16_t*>(d), n);
  else
    j.k->f16_to_f32(reinterpret_cast<const uint16_t*>(s), reinterpret_cast<float*>(d), n);
}

bool is_fast_pair(DType sd, DType dd) {
  return (sd == DType::f32 && (dd == DType::bf16 || dd == DType::f16)) ||
         (dd == DType::f32 && (sd == DType::bf16 || sd == DType::f16));
}

}  // namespace

const char* level_name(Level level) {
  switch (level) {
    case Level::scalar:
      return "scalar";
    case Level::avx2:
      return "avx2";
    case Level::avx512:
      return "avx512";
    case Level::avx512bf16:
      return "avx512bf16";
  }
  return "?";
}

bool level_supported(Level level) {
  const CpuFeatures& f = cpu_features();
  const bool avx2 = f.avx2 && f.f16c;
  const bool avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl;
  switch (level) {
    case Level::scalar:
      return true;
    case Level::avx2:
      return avx2;
    case Level::avx512:
      return avx512;
    case Level::avx512bf16:
      return avx512 && f.avx512_bf16;
  }
  return false;
}

Level detected_level() {
  static const Level best = [] {
    for (Level l : {Level::avx512bf16, Level::avx512, Level::avx2})
      if (level_supported(l)) return l;
    return Level::scalar;
  }();
  return best;
}

Level active_level() {
  // Read once: every later conversion in the process uses the same kernels. A bad value
  // throws (and is re-read on the next call) rather than silently running another path.
  static const Level active = [] {
    const char* env = std::getenv("MIXTRAIN_ISA");
    const Level best = detected_level();
    if (env == nullptr || *env == '\0') return best;
    return std::min(best, parse_cap(env),
                    [](Level a, Level b) { return static_cast<int>(a) < static_cast<int>(b); });
  }();
  return active;
}

constexpr size_t kMinParallel = size_t{1} << 18;

void parallel_ranges(size_t n, void (*fn)(size_t, size_t, void*), void* ctx) {
  // Below 256 Ki elements the fork/join (a few microseconds) costs more than one core's
  // conversion time; above it the work goes out in chunks of 64 Ki elements (256 KiB of fp32,
  // L2-sized) handed out dynamically, so a thread the OS has descheduled (the cores are
  // shared) does not hold the others up: whoever runs takes the next chunk. Chunks are
  // multiples of 64 elements, so each starts on a cache-line boundary when the array does.
  constexpr size_t kChunk = size_t{1} << 16;
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (n < kMinParallel || threads <= 1) {
    fn(0, n, ctx);
    return;
  }
  const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const size_t b = static_cast<size_t>(c) * kChunk;
    fn(b, std::min(n, b + kChunk), ctx);
  }
}

RowConverter::RowConverter(DType src, DType dst) {
  if (src == dst) {
    copy_size_ = dtype_size(src);
    return;
  }
  if (!is_fast_pair(src, dst))
    throw DTypeError(fmt::format("RowConverter: {} -> {} (fp32 <-> bf16/fp16 or equal dtypes)",
                                 dtype_name(src), dtype_name(dst)));
  const Kernels& k = kernels_of(active_level());
  if (src == DType::f32)
    narrow_ = dst == DType::bf16 ? k.f32_to_bf16 : k.f32_to_f16;
  else
    widen_ = src == DType::bf16 ? k.bf16_to_f32 : k.f16_to_f32;
}

bool convert_with(Level level, const void* src, DType sd, void* dst, DType dd, size_t n) {
  if (!is_fast_pair(sd, dd)) return false;
  if (!level_supported(level))
    throw BackendError(fmt::format("convert {} -> {}: this CPU lacks the '{}' kernels",
                                   dtype_name(sd), dtype_name(dd), level_name(level)));
  const Job j{static_cast<const char*>(src),
              static_cast<char*>(dst),
              dtype_size(sd),
              dtype_size(dd),
              &kernels_of(level),
              sd,
              dd};
  run_range(j, 0, n);
  return true;
}

bool convert_fast(const void* src, DType sd, void* dst, DType dd, size_t n) {
  if (!is_fast_pair(sd, dd)) return false;
  Job j{static_cast<const char*>(src),
        static_cast<char*>(dst),
        dtype_size(sd),
        dtype_size(dd),
        &kernels_of(active_level()),
        sd,
        dd};
  if (n < kMinParallel) {  // one thread: skip the OpenMP queries (rows of 64 go 22 -> ~9 ns)
    run_range(j, 0, n);
    return true;
  }
  parallel_ranges(
      n, [](size_t b, size_t e, void* c) { run_range(*static_cast<const Job*>(c), b, e); }, &j);
  return true;
}

}  // namespace simd

const char* simd_level() { return simd::level_name(simd::active_level()); }

}  // namespace mixtrain
