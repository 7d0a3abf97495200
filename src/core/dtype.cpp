// DType names and sizes, scalar bulk conversion, and the entry points that route fp32<->16-bit
// conversions to the SIMD kernels in src/cpu/simd.
#include <cmath>
#include <cstring>
#include <fmt/format.h>

#include "core/dispatch.h"
#include "cpu/simd/convert.h"
#include "mixtrain/dtype.h"
#include "mixtrain/error.h"

namespace mixtrain {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::e4m3: return 1;
    case DType::e5m2: return 1;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::e4m3: return "e4m3";
    case DType::e5m2: return "e5m2";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u8: return "u8";
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

bool is_floating(DType dt) {
  return dt != DType::i32 && dt != DType::i64 && dt != DType::u8;
}

fp16 fp16::round_stochastic(float f, uint32_t random) {
  const fp16 lo_guess(f);
  const float rf = static_cast<float>(lo_guess);
  if (!(std::fabs(f) < 65504.0f) || rf == f) return lo_guess;  // exact, Inf, NaN, or at/over max
  // Neighbours a < f < b (in magnitude); step away from zero from the truncated value.
  const uint16_t rb = lo_guess.bits();
  const bool rounded_up = std::fabs(rf) > std::fabs(f);
  const fp16 a = rounded_up ? from_bits(static_cast<uint16_t>(rb - 1)) : lo_guess;
  const fp16 b = rounded_up ? lo_guess : from_bits(static_cast<uint16_t>(rb + 1));
  const float fa = static_cast<float>(a), fb = static_cast<float>(b);
  // P(round to b) = (|f| - |a|) / (|b| - |a|), compared against a uniform draw in [0, 1).
  const float p = (std::fabs(f) - std::fabs(fa)) / (std::fabs(fb) - std::fabs(fa));
  const float draw = static_cast<float>(random >> 8) * (1.0f / 16777216.0f);
  return draw < p ? b : a;
}

namespace {

void convert_scalar(const void* src, DType sd, void* dst, DType dd, size_t n) {
  dispatch_all(sd, "convert", [&](auto s0) {
    using S = decltype(s0);
    const S* s = static_cast<const S*>(src);
    dispatch_all(dd, "convert", [&](auto d0) {
      using D = decltype(d0);
      D* d = static_cast<D*>(dst);
      if constexpr (std::is_same_v<S, double> && std::is_same_v<D, double>) {
        std::memcpy(d, s, n * sizeof(double));
      } else if constexpr (std::is_same_v<S, double> && std::is_floating_point_v<D>) {
        for (size_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
      } else if constexpr (std::is_floating_point_v<D> && std::is_integral_v<S>) {
        for (size_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
      } else if constexpr (std::is_integral_v<S> && std::is_integral_v<D>) {
        for (size_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
      } else {
        for (size_t i = 0; i < n; ++i) d[i] = from_f32<D>(to_f32(s[i]));
      }
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

}  // namespace mixtrain
