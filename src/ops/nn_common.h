// Private helpers of the neural-network ops (src/ops/nn_*.cpp): fp32 row load/store through
// the SIMD bulk conversion, vectorisable fp32 row reductions, argument checks, gradient dtypes.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "core/dispatch.h"
#include "cpu/simd/vmath.h"
#include "mixtrain/autograd.h"
#include "mixtrain/cpu.h"
#include "mixtrain/tensor.h"

namespace mixtrain::nn_detail {

/// Below this many elements a kernel runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 14;

/// Reads n contiguous elements as fp32: fp32 data in place, 16-bit data converted into buf
/// (exact: every bf16/fp16 value is an fp32 value).
template <class T>
inline const float* load_row(const T* p, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return p;
  } else {
    convert(p, dtype_of<T>(), buf, DType::f32, static_cast<size_t>(n));
    return buf;
  }
}

/// Writes n fp32 values into dst of dtype dt, rounding once (RNE).
inline void store_row(const float* src, int64_t n, void* dst, DType dt) {
  convert(src, DType::f32, dst, dt, static_cast<size_t>(n));
}

/// Sum of n fp32 values in 16 interleaved lanes (vectorisable without -ffast-math; the lanes
/// also cut each rounding chain 16-fold), lanes combined pairwise.
inline float sum_lanes(const float* p, int64_t n) {
  float acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) acc[l] += p[j + l];
  for (int l = 0; j < n; ++j, ++l) acc[l] += p[j];
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

/// Dot product of two fp32 rows, same lane scheme as sum_lanes.
inline float dot_lanes(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[j + l] * b[j + l];
  for (int l = 0; j < n; ++j, ++l) acc[l] += a[j] * b[j];
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

/// Largest of n fp32 values (-inf for none). A simd max reduction, so it vectorises (exact:
/// the order of a max changes nothing; with a NaN among them the result may be NaN or not,
/// and a NaN score turns its softmax row into NaN either way).
inline float max_row(const float* p, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = p[j] > m ? p[j] : m;  // (std::max's form does not vectorise)
  return m;
}

/// row[0, n) = softmax(row[0, n)) in place (fp32, shifted by the row's max); returns the
/// row's logsumexp, which attention saves so its backward can recompute the row.
inline float softmax_row_lse(float* row, int64_t n) {
  const float m = max_row(row, n);
  simd::exp_shift(row, n, m);
  const float l = sum_lanes(row, n);
  const float inv = 1.0f / l;
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  return m + std::log(l);
}

/// Which build of a row kernel compiled three ways (AVX-512, AVX2+FMA, baseline x86-64; the
/// library itself targets the baseline) runs: 2, 1 or 0, the widest the CPU has and
/// MIXTRAIN_ISA allows (simd_level). Kernels pick their variant from an array with it.
inline int simd_variant() {
  static const int idx = [] {
    const std::string lvl = simd_level();
    return lvl.rfind("avx512", 0) == 0 ? 2 : lvl == "avx2" ? 1 : 0;
  }();
  return idx;
}

/// The attributes of the three builds: flatten inlines the row helpers above into each, so
/// they are compiled for that ISA too. (F16C: simd_level requires it for "avx2" and up.)
#define MIXTRAIN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"), flatten))
#define MIXTRAIN_TARGET_AVX2 __attribute__((target("avx2,fma,f16c"), flatten))
#define MIXTRAIN_TARGET_BASE __attribute__((flatten))

/// Normalises a possibly negative axis; throws ShapeError naming the op.
inline int64_t wrap_axis(int64_t axis, int64_t ndim, const char* op, const Tensor& x) {
  if (axis < -ndim || axis >= ndim)
    throw ShapeError(fmt::format("{}: axis {} out of range for {}", op, axis, x.str()));
  return axis < 0 ? axis + ndim : axis;
}

/// Throws DTypeError unless t is f32, bf16 or f16.
inline void check_float(const Tensor& t, const char* op, const char* what) {
  if (t.dtype() != DType::f32 && t.dtype() != DType::bf16 && t.dtype() != DType::f16)
    throw DTypeError(
        fmt::format("{}: {} {} is not a compute dtype (f32, bf16, f16)", op, what, t.str()));
}

/// Throws DTypeError unless t holds integer indices (i32 or i64).
inline void check_index(const Tensor& t, const char* op, const char* what) {
  if (t.dtype() != DType::i32 && t.dtype() != DType::i64)
    throw DTypeError(fmt::format("{}: {} {} must be i32 or i64", op, what, t.str()));
}

/// Throws ShapeError unless v is defined.
inline void check_defined(const Variable& v, const char* op, const char* what) {
  if (!v.defined()) throw ShapeError(fmt::format("{}: {} is undefined", op, what));
}

/// Index i of an i32/i64 tensor's contiguous data.
inline int64_t index_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::i64 ? ids.data<int64_t>()[i]
                                   : static_cast<int64_t>(ids.data<int32_t>()[i]);
}

/// Whether a gradient for v may stay fp32 although v is narrower: a leaf (the engine
/// converts into its grad dtype, fp32 for parameters) or a cast's output (whose backward
/// converts). Parameter gradients (embedding table, norm weight) then skip a 16-bit rounding.
inline bool f32_grad_ok(const Variable& v) {
  return v.is_leaf() || (v.grad_fn() && v.grad_fn()->op == "cast");
}

/// An fp32 gradient handed back in the dtype the engine wants for its input.
inline Tensor grad_for(Tensor g32, DType input_dtype, bool f32_ok) {
  return f32_ok ? g32 : g32.to(input_dtype);
}

}  // namespace mixtrain::nn_detail
