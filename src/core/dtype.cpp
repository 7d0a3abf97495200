// DType names and sizes, and fp16's stochastic rounding. The bulk conversions (convert,
// convert_stochastic) run on the CPU: src/cpu/convert.cpp.
#include <fmt/format.h>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/dispatch.h"
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

}  // namespace mixtrain
