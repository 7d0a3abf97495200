// The one dispatch helper: runtime DType -> a templated kernel. Kernels are written once as
// templates over the element type and read/write through float (fp32 internals).
#pragma once

#include <fmt/format.h>
#include <cstdint>

#include "mixtrain/dtype.h"
#include "mixtrain/error.h"

namespace mixtrain {

/// Calls f(T{}) with T the C++ type of a floating dtype (f32, f64, bf16, f16, e4m3, e5m2).
template <class F>
decltype(auto) dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::bf16:
      return f(bf16{});
    case DType::f16:
      return f(fp16{});
    case DType::e4m3:
      return f(fp8_e4m3{});
    case DType::e5m2:
      return f(fp8_e5m2{});
    default:
      break;
  }
  throw DTypeError(fmt::format("{}: dtype {} is not a floating-point type", op, dtype_name(dt)));
}

/// Like dispatch_float but for the training compute dtypes only (f32, bf16, f16): the ones
/// with kernels instantiated everywhere.
template <class F>
decltype(auto) dispatch_compute(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32:
      return f(float{});
    case DType::bf16:
      return f(bf16{});
    case DType::f16:
      return f(fp16{});
    default:
      break;
  }
  throw DTypeError(
      fmt::format("{}: dtype {} is not a compute dtype (f32, bf16, f16)", op, dtype_name(dt)));
}

/// Calls f(T{}) for every dtype, integers included.
template <class F>
decltype(auto) dispatch_all(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
    case DType::u8:
      return f(uint8_t{});
    default:
      return dispatch_float(dt, op, std::forward<F>(f));
  }
}

/// Element to float and back, for every element type.
template <class T>
inline float to_f32(T v) {
  return static_cast<float>(v);
}
template <class T>
inline T from_f32(float v) {
  if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(v);
  } else {
    return T(v);
  }
}

}  // namespace mixtrain
