// DType names and sizes, scalar bulk conversion (every dtype pair, rounded once), stochastic
// rounding, and the entry points that route fp32<->16-bit conversions to src/cpu/simd.
#include <fmt/format.h>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/dispatch.h"
#include "cpu/simd/convert.h"
#include "mixtrain/dtype.h"
#include "mixtrain/error.h"
#include "mixtrain/random.h"

namespace mixtrain {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32:
      return 4;
    case DType::f64:
      return 8;
    case DType::bf16:
      return 2;
    case DType::f16:
      return 2;
    case DType::e4m3:
      return 1;
    case DType::e5m2:
      return 1;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
    case DType::u8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::e4m3:
      return "e4m3";
    case DType::e5m2:
      return "e5m2";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::u8:
      return "u8";
  }
  return "?";
}

DType parse_dtype(std::string_view s) {
  if (s == "f32" || s == "fp32" || s == "float32") return DType::f32;
  if (s == "f64" || s == "fp64" || s == "float64") return DType::f64;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::f16;
  if (s == "e4m3" || s == "fp8_e4m3" || s == "float8_e4m3fn") return DType::e4m3;
  if (s == "e5m2" || s == "fp8_e5m2" || s == "float8_e5m2") return DType::e5m2;
  if (s == "i32" || s == "int32") return DType::i32;
  if (s == "i64" || s == "int64") return DType::i64;
  if (s == "u8" || s == "uint8") return DType::u8;
  throw ConfigError(fmt::format(
      "unknown dtype '{}' (expected one of f32, f64, bf16, f16, e4m3, e5m2, i32, i64, u8)", s));
}

bool is_floating(DType dt) { return dt != DType::i32 && dt != DType::i64 && dt != DType::u8; }

fp16 fp16::round_stochastic(float f, uint32_t random) {
  // Integer arithmetic throughout: exact probabilities, no dependence on MXCSR.
  const uint32_t u = detail::f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return fp16(f);  // Inf, NaN
  if (a >= 0x38800000u) {
    // |f| >= 2^-14: the fp16 normals are the fp32 values with the low 13 mantissa bits clear,
    // so add 13 random bits and truncate. The sum is on the fp16 grid (or >= 65536, which
    // fp16() turns into Inf), so the fp16() below rounds nothing.
    const uint32_t t = detail::stochastic_truncate(a, random, 13);
    return from_bits(static_cast<uint16_t>(sign | fp16(detail::f32_from_bits(t)).bits()));
  }
  // Subnormal range: |f| = m * 2^-s in units of the fp16 step 2^-24; the code is m / 2^s
  // rounded up with probability (m mod 2^s) / 2^s. Only 32 random bits exist, so for s > 32
  // the low bits of m are dropped first (an under-estimate of at most 2^-32 step).
  const uint32_t exp = a >> 23;
  uint64_t m = exp ? (a & 0x7fffffu) | 0x800000u : a;
  int s = exp ? 126 - static_cast<int>(exp) : 125;  // >= 14 here
  if (s > 32) {
    m = s - 32 < 64 ? m >> (s - 32) : 0;
    s = 32;
  }
  const uint64_t q = (m + (random & ((uint64_t{1} << s) - 1))) >> s;  // <= 0x400 (min normal)
  return from_bits(static_cast<uint16_t>(sign | q));
}

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

template <class F>
void parallel_for(size_t n, F&& f) {
  simd::parallel_ranges(
      n, [](size_t b, size_t e, void* c) { (*static_cast<std::remove_reference_t<F>*>(c))(b, e); },
      &f);
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
  if (simd::convert_fast(src, sd, dst, dd, n)) return;
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
