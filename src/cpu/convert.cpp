// Bulk conversion of host memory (mixtrain::convert, convert_stochastic): the fp32 <-> bf16/fp16
// pairs through the level's kernels (convert.isa.cpp), every other pair element by element with
// one rounding, large counts split over OpenMP threads. Also the kernel table, RowConverter and
// the OpenMP split every bulk pass uses.
#include "cpu/convert.h"

#include <omp.h>

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/dispatch.h"
#include "mixtrain/error.h"
#include "mixtrain/random.h"

namespace mixtrain {

namespace cpu {

namespace {
const IsaTable<ConvertKernels>& table() {
  static const IsaTable<ConvertKernels> t(
      {&convert_kernels<Isa::scalar>(), &convert_kernels<Isa::avx2>(),
       &convert_kernels<Isa::avx512>(), &convert_kernels<Isa::avx512bf16>()});
  return t;
}
}  // namespace

const ConvertKernels& convert_kernels() { return *table().get(); }
const ConvertKernels& convert_kernels_at(Isa level) { return *table().at(level); }

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
  const ConvertKernels& k = convert_kernels();
  if (src == DType::f32)
    narrow_ = dst == DType::bf16 ? k.f32_to_bf16 : k.f32_to_f16;
  else
    widen_ = src == DType::bf16 ? k.bf16_to_f32 : k.f16_to_f32;
}

}  // namespace cpu

using cpu::is_fast_pair;
using cpu::parallel_for;

namespace {

/// Round to odd, double -> fp32, in integer arithmetic (independent of MXCSR's rounding mode
/// and FTZ/DAZ). Rounding to odd first and then RNE to a format with at least two fewer
/// significant bits gives the correctly rounded RNE result; fp32 has 24 bits and the 16- and
/// 8-bit formats at most 11, so f64 -> bf16/fp16/fp8 rounds exactly once.
uint32_t f32_bits_round_odd(double d) {
  const uint64_t u = std::bit_cast<uint64_t>(d);
  const uint32_t sign = static_cast<uint32_t>(u >> 32) & 0x80000000u;
  const uint64_t a = u & 0x7fffffffffffffffull;
  if (a >= 0x7ff0000000000000ull) {  // Inf, or NaN: quiet, top payload bits
    if (a == 0x7ff0000000000000ull) return sign | 0x7f800000u;
    return sign | 0x7fc00000u | static_cast<uint32_t>((a & 0xfffffffffffffull) >> 29);
  }
  if (a == 0) return sign;
  const int e = static_cast<int>(a >> 52) - 1023;
  if (e > 127) return sign | 0x7f7fffffu;  // beyond fp32: the largest (odd) finite value
  if (e < -1022) return sign | 1u;         // f64 subnormal: far below, inexact -> odd 1 ulp
  const uint64_t m = (a & 0xfffffffffffffull) | (1ull << 52);
  const int drop = e >= -126 ? 29 : 29 + (-126 - e);
  const uint64_t q = drop < 64 ? m >> drop : 0;
  const uint32_t sticky = drop < 64 ? (m & ((1ull << drop) - 1)) != 0 : 1;
  const uint32_t q32 = static_cast<uint32_t>(q) | sticky;
  // Normal: q32 carries the implicit bit, which adds one to the exponent field (no carry out
  // since truncation never rounds up). Subnormal: q32 is the code.
  return sign | (e >= -126 ? (static_cast<uint32_t>(e + 126) << 23) + q32 : q32);
}

/// int64 -> double, rounded to odd (exact below 2^53), so that f32_bits_round_odd after it
/// still yields a single correct rounding.
double f64_round_odd(int64_t v) {
  const uint64_t mag = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  if (mag < (1ull << 53)) return static_cast<double>(v);
  const int drop = (64 - std::countl_zero(mag)) - 53;
  const uint64_t q = (mag >> drop) | ((mag & ((1ull << drop) - 1)) != 0);
  const double r = std::ldexp(static_cast<double>(q), drop);  // q < 2^53: exact
  return v < 0 ? -r : r;
}

template <class T>
constexpr bool kSmallFloat = std::is_same_v<T, bf16> || std::is_same_v<T, fp16> ||
                             std::is_same_v<T, fp8_e4m3> || std::is_same_v<T, fp8_e5m2>;

/// Float -> integer: truncate toward zero, saturate at the type's range, NaN -> 0 (a plain
/// static_cast is undefined behaviour for NaN and out-of-range values).
template <class D>
D float_to_int(double v) {
  if (std::isnan(v)) return 0;
  constexpr double lo = static_cast<double>(std::numeric_limits<D>::min());
  // 2^63 and 2^31 are exact doubles; max() + 1 is the first value that does not fit.
  constexpr double hi_excl = static_cast<double>(std::numeric_limits<D>::max()) + 1.0;
  if (v <= lo) return std::numeric_limits<D>::min();
  if (v >= hi_excl) return std::numeric_limits<D>::max();
  return static_cast<D>(v);  // truncates; in range
}

/// One element, rounded once.
template <class S, class D>
D convert_one(S s) {
  if constexpr (std::is_integral_v<D>) {
    if constexpr (std::is_integral_v<S>)
      return static_cast<D>(s);  // narrowing wraps, as static_cast
    else if constexpr (std::is_same_v<S, double>)
      return float_to_int<D>(s);
    else
      return float_to_int<D>(static_cast<double>(to_f32(s)));
  } else if constexpr (!kSmallFloat<D>) {  // float or double: native, correctly rounded casts
    if constexpr (kSmallFloat<S>)
      return static_cast<D>(to_f32(s));  // exact decode, then exact widening
    else
      return static_cast<D>(s);
  } else if constexpr (std::is_same_v<S, float> || kSmallFloat<S>) {
    return D(to_f32(s));  // exact decode (if any), then one RNE
  } else if constexpr (std::is_same_v<S, double>) {
    return D(detail::f32_from_bits(f32_bits_round_odd(s)));
  } else if constexpr (std::is_same_v<S, int64_t>) {
    return D(detail::f32_from_bits(f32_bits_round_odd(f64_round_odd(s))));
  } else {  // i32, u8: exact in double
    return D(detail::f32_from_bits(f32_bits_round_odd(static_cast<double>(s))));
  }
}

// The four SIMD pairs: the level's kernel, large counts split over threads (element-wise, so
// the bits do not depend on the split).
void convert_fast(const void* src, DType sd, void* dst, DType dd, size_t n) {
  struct Job {
    const char* src;
    char* dst;
    size_t src_size, dst_size;
    cpu::RowConverter row;
  } job{static_cast<const char*>(src), static_cast<char*>(dst), dtype_size(sd), dtype_size(dd),
        cpu::RowConverter(sd, dd)};
  if (n < cpu::kMinParallel) {  // one thread: skip the OpenMP queries (rows of 64 go 22 -> ~9 ns)
    job.row(src, dst, n);
    return;
  }
  cpu::parallel_ranges(
      n,
      [](size_t b, size_t e, void* c) {
        const Job& j = *static_cast<const Job*>(c);
        j.row(j.src + b * j.src_size, j.dst + b * j.dst_size, e - b);
      },
      &job);
}

void convert_scalar(const void* src, DType sd, void* dst, DType dd, size_t n) {
  dispatch_all(sd, "convert", [&](auto s0) {
    using S = decltype(s0);
    const S* s = static_cast<const S*>(src);
    dispatch_all(dd, "convert", [&](auto d0) {
      using D = decltype(d0);
      D* d = static_cast<D*>(dst);
      parallel_for(n, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) d[i] = convert_one<S, D>(s[i]);
      });
    });
  });
}

}  // namespace

void convert(const void* src, DType sd, void* dst, DType dd, size_t n) {
  if (n == 0) return;
  if (sd == dd) {
    std::memcpy(dst, src, n * dtype_size(sd));
    return;
  }
  if (is_fast_pair(sd, dd)) return convert_fast(src, sd, dst, dd, n);
  convert_scalar(src, sd, dst, dd, n);
}

void convert_stochastic(const float* src, void* dst, DType dd, size_t n, uint64_t seed,
                        uint64_t offset) {
  if (dd != DType::bf16 && dd != DType::f16)
    throw DTypeError(fmt::format(
        "convert_stochastic: f32 -> {} is not supported (stochastic rounding targets bf16, f16)",
        dtype_name(dd)));
  if (n == 0) return;
  // Element i always draws counter offset + i, so any split over threads (or over calls)
  // produces the same bits as one serial pass.
  auto run = [&](auto t0) {
    using T = decltype(t0);
    uint16_t* d = static_cast<uint16_t*>(dst);
    parallel_for(n, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) {
        const uint32_t r = static_cast<uint32_t>(random_bits(seed, offset + i) >> 32);
        d[i] = T::round_stochastic(src[i], r).bits();
      }
    });
  };
  if (dd == DType::bf16)
    run(bf16{});
  else
    run(fp16{});
}

}  // namespace mixtrain
