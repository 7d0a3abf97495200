// Helpers the CPU kernels share: fp32 row load/store through the bulk conversion, vectorisable
// fp32 row reductions with a fixed lane order (so every level and thread count gives the same
// bits), and element addressing by dtype. Plain inline functions: a *.isa.cpp kernel that
// calls them from an MT_FLATTEN function gets them compiled for its level.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/vmath.h"
#include "mixtrain/dtype.h"
#include "mixtrain/tensor.h"

namespace mixtrain::cpu {

/// Elements per tile of the blocked kernels: three fp32 staging buffers of this size stay in L1.
constexpr int64_t kTile = 512;

/// Element `off` of a buffer of dtype dt.
inline const void* at(const void* base, DType dt, int64_t off) {
  return static_cast<const char*>(base) + off * static_cast<int64_t>(dtype_size(dt));
}
inline void* at(void* base, DType dt, int64_t off) {
  return static_cast<char*>(base) + off * static_cast<int64_t>(dtype_size(dt));
}

/// Reads `n` contiguous elements as fp32: f32 data is used in place, 16-bit data is converted
/// into `buf` (exact: every bf16/fp16 value is an fp32 value).
inline const float* load_f32(const void* p, DType dt, int64_t n, float* buf) {
  if (dt == DType::f32) return static_cast<const float*>(p);
  convert(p, dt, buf, DType::f32, static_cast<size_t>(n));
  return buf;
}

/// load_f32 for a typed row.
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
  exp_shift(row, n, m);
  const float l = sum_lanes(row, n);
  const float inv = 1.0f / l;
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  return m + std::log(l);
}

/// Index i of an i32/i64 tensor's contiguous data.
inline int64_t index_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::i64 ? ids.data<int64_t>()[i]
                                   : static_cast<int64_t>(ids.data<int32_t>()[i]);
}

}  // namespace mixtrain::cpu
