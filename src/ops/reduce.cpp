// Reductions: sum and mean over axes (forward and backward), and the fp32 blocked/pairwise
// summation kernel the elementwise backwards use to undo broadcasting.
#include <immintrin.h>

#include <bit>
#include <cmath>
#include <numeric>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "ops/nn_common.h"
#include "ops/ops_common.h"

namespace mixtrain {

namespace ops_detail {

namespace {

// Elements of one row summed by one task; partial sums of these blocks are then added
// pairwise. Fixed (not per thread) so results do not depend on the thread count.
constexpr int64_t kRowBlock = 1 << 15;
// Rows summed directly before the column kernel splits pairwise.
constexpr int64_t kColBlock = 64;
// Rows per parallel task of a column sum (a power-of-two multiple of kColBlock).
constexpr int64_t kChunkRows = 512;

// Sum of n <= kTile fp32 values: the 16-lane sum shared with the NN ops.
using nn_detail::sum_lanes;

// Pairwise sum of a contiguous run: tiles of kTile summed by sum_lanes, tiles combined by
// halving recursion. Error grows like log2(n), not n.
float sum_contig(const void* p, DType dt, int64_t n) {
  if (n <= kTile) {
    alignas(64) float buf[kTile];
    return sum_lanes(load_f32(p, dt, n, buf), n);
  }
  const int64_t half = ((n / kTile + 1) / 2) * kTile;
  return sum_contig(p, dt, half) + sum_contig(at(p, dt, half), dt, n - half);
}

// Pairwise sum of a vector of partials (the per-block sums of one row).
double pairwise(const float* p, int64_t n) {
  if (n <= 8) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += p[i];
    return s;
  }
  return pairwise(p, n / 2) + pairwise(p + n / 2, n - n / 2);
}

// The fp16 rows' first n / 8 · 8 columns by F16C (the vector builds only); returns how many.
__attribute__((target("avx2,f16c"))) inline int64_t add_rows_f16c(const uint16_t* x, int64_t ld,
                                                                  int64_t n, int64_t r0, int64_t r1,
                                                                  float* acc) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* v = x + r * ld;
    for (int64_t j = 0; j < n8; j += 8) {
      const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + j)));
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), w));
    }
  }
  return n8;
}

// acc[0, n) = sum over rows [r0, r1) of row r's n values at x + r·ld, row by row, 16-bit
// codes widened in-lane (bf16: a shift; fp16: F16C in the vector builds, the bulk converter per
// row in the baseline). Built for AVX-512, AVX2 and the baseline (simd_variant).
template <bool kF16c>
[[gnu::always_inline]] inline void add_rows_body(const void* x, DType dt, int64_t ld, int64_t n,
                                                 int64_t r0, int64_t r1, float* __restrict acc) {
  if (dt == DType::f32) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict v = static_cast<const float*>(x) + r * ld;
      for (int64_t j = 0; j < n; ++j) acc[j] += v[j];
    }
    return;
  }
  if (dt == DType::bf16) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint16_t* __restrict v = static_cast<const uint16_t*>(x) + r * ld;
      for (int64_t j = 0; j < n; ++j)
        acc[j] += std::bit_cast<float>(static_cast<uint32_t>(v[j]) << 16);
    }
    return;
  }
  int64_t j0 = 0;
  if constexpr (kF16c) j0 = add_rows_f16c(static_cast<const uint16_t*>(x), ld, n, r0, r1, acc);
  if (j0 == n) return;
  alignas(64) float buf[kTile];
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict v = load_f32(at(x, dt, r * ld + j0), dt, n - j0, buf);
    for (int64_t j = j0; j < n; ++j) acc[j] += v[j - j0];
  }
}
#define MIXTRAIN_ADD_ROWS_VARIANT(suffix, attr, f16c)                                     \
  attr void add_rows_##suffix(const void* x, DType dt, int64_t ld, int64_t n, int64_t r0, \
                              int64_t r1, float* acc) {                                   \
    add_rows_body<f16c>(x, dt, ld, n, r0, r1, acc);                                       \
  }
MIXTRAIN_ADD_ROWS_VARIANT(avx512, MIXTRAIN_TARGET_AVX512, true)
MIXTRAIN_ADD_ROWS_VARIANT(avx2, MIXTRAIN_TARGET_AVX2, true)
MIXTRAIN_ADD_ROWS_VARIANT(base, MIXTRAIN_TARGET_BASE, false)
#undef MIXTRAIN_ADD_ROWS_VARIANT

// acc[0, n) = sum over rows r in [r0, r1) of x[r*ld + i0 + j], the rows split pairwise.
void sum_cols(const void* x, DType dt, int64_t ld, int64_t i0, int64_t n, int64_t r0, int64_t r1,
              float* acc) {
  std::fill(acc, acc + n, 0.0f);
  if (r1 - r0 <= kColBlock) {
    using AddRows = void (*)(const void*, DType, int64_t, int64_t, int64_t, int64_t, float*);
    static const AddRows add[] = {add_rows_base, add_rows_avx2, add_rows_avx512};
    add[nn_detail::simd_variant()](at(x, dt, i0), dt, ld, n, r0, r1, acc);
    return;
  }
  const int64_t mid = r0 + (r1 - r0) / 2;
  alignas(64) float right[kTile];
  sum_cols(x, dt, ld, i0, n, r0, mid, acc);
  sum_cols(x, dt, ld, i0, n, mid, r1, right);
  for (int64_t j = 0; j < n; ++j) acc[j] += right[j];
}

// out[0, n) = pairwise sum of the m arrays p, p + ld, ... (chunk partials of a column sum).
void add_pairwise(const float* p, int64_t ld, int64_t m, int64_t n, float* out) {
  if (m == 1) {
    std::copy(p, p + n, out);
    return;
  }
  std::vector<float> right(static_cast<size_t>(n));
  add_pairwise(p, ld, m / 2, n, out);
  add_pairwise(p + (m / 2) * ld, ld, m - m / 2, n, right.data());
  for (int64_t j = 0; j < n; ++j) out[j] += right[j];
}

// x contiguous, viewed as [O, R, I]; out fp32 [O, I].
void sum_ori(const Tensor& x, int64_t O, int64_t R, int64_t I, float* out) {
  const void* base = x.raw_data();
  const DType dt = x.dtype();
  const bool big = O * R * I > kParallelMin;
  if (I == 1) {
    const int64_t nb = std::max<int64_t>(1, (R + kRowBlock - 1) / kRowBlock);
    std::vector<float> part(static_cast<size_t>(O * nb));
#pragma omp parallel for schedule(static) if (big)
    for (int64_t t = 0; t < O * nb; ++t) {
      const int64_t o = t / nb, b = t % nb;
      const int64_t r0 = b * kRowBlock, n = std::min(kRowBlock, R - r0);
      part[t] = n > 0 ? sum_contig(at(base, dt, o * R + r0), dt, n) : 0.0f;
    }
    for (int64_t o = 0; o < O; ++o)
      out[o] = nb == 1 ? part[o] : static_cast<float>(pairwise(part.data() + o * nb, nb));
    return;
  }
  // Tasks are (column tile, chunk of kChunkRows rows): a bias gradient [2048, 384] is one tile,
  // which alone left a core idle. Chunk partials are then added pairwise; the chunking is
  // fixed, so the bits do not depend on the thread count.
  const int64_t tiles = (I + kTile - 1) / kTile;
  const int64_t chunks = std::max<int64_t>(1, (R + kChunkRows - 1) / kChunkRows);  // R may be 0
  std::vector<float> part(static_cast<size_t>(O * chunks * I));
#pragma omp parallel for schedule(static) if (big)
  for (int64_t t = 0; t < O * tiles * chunks; ++t) {
    const int64_t o = t / (tiles * chunks), tile = t / chunks % tiles, c = t % chunks;
    const int64_t i0 = tile * kTile, n = std::min(kTile, I - i0);
    const int64_t r0 = c * kChunkRows, r1 = std::min(R, r0 + kChunkRows);
    sum_cols(at(base, dt, o * R * I), dt, I, i0, n, r0, r1,
             part.data() + (o * chunks + c) * I + i0);
  }
  for (int64_t o = 0; o < O; ++o)
    add_pairwise(part.data() + o * chunks * I, I, chunks, I, out + o * I);
}

}  // namespace

Tensor sum_f32(const Tensor& x_in, const std::vector<int64_t>& axes, const char* op) {
  check_compute_dtype(x_in, op, "input");
  const int64_t nd = x_in.dim();
  Shape kshape = x_in.shape();
  for (int64_t a : axes) kshape[a] = 1;
  Tensor out = Tensor::empty(kshape, DType::f32);
  if (out.numel() == 0) return out;
  Tensor x = x_in.contiguous();
  std::vector<bool> red(nd, false);
  for (int64_t a : axes) red[a] = true;
  // Contiguous range of reduced axes: view as [O, R, I] with no copy.
  bool range = true;
  for (size_t i = 1; i < axes.size(); ++i) range = range && axes[i] == axes[i - 1] + 1;
  if (!range) {
    // Move the kept dims first and the reduced ones last, then one contiguous copy.
    std::vector<int64_t> perm;
    for (int64_t k = 0; k < nd; ++k)
      if (!red[k]) perm.push_back(k);
    for (int64_t k = 0; k < nd; ++k)
      if (red[k]) perm.push_back(k);
    // Apply the permutation as a sequence of transposes (selection sort of positions).
    std::vector<int64_t> cur(nd);
    std::iota(cur.begin(), cur.end(), 0);
    Tensor v = x;
    for (int64_t i = 0; i < nd; ++i) {
      const int64_t j = std::find(cur.begin(), cur.end(), perm[i]) - cur.begin();
      if (j != i) {
        v = v.transpose(i, j);
        std::swap(cur[i], cur[j]);
      }
    }
    x = v.contiguous();
    int64_t O = 1, R = 1;
    for (int64_t k = 0; k < nd; ++k) (red[perm[k]] ? R : O) *= x.shape()[k];
    sum_ori(x, O, R, 1, out.data<float>());
    return out;
  }
  int64_t O = 1, R = 1, I = 1;
  const int64_t first = axes.empty() ? nd : axes.front();
  const int64_t last = axes.empty() ? nd - 1 : axes.back();
  for (int64_t k = 0; k < nd; ++k) {
    const int64_t e = x.shape()[k];
    if (k < first)
      O *= e;
    else if (k <= last)
      R *= e;
    else
      I *= e;
  }
  sum_ori(x, O, R, I, out.data<float>());
  return out;
}

Tensor reduce_to_shape(const Tensor& g, const Shape& shape, DType dt, const char* op) {
  const int64_t nd = g.dim();
  const int64_t lead = nd - static_cast<int64_t>(shape.size());
  if (lead < 0)
    throw ShapeError(
        fmt::format("{} backward: gradient {} cannot reduce to {}", op, g.str(), shape_str(shape)));
  std::vector<int64_t> axes;
  for (int64_t k = 0; k < nd; ++k)
    if (k < lead || (shape[k - lead] == 1 && g.shape()[k] != 1)) axes.push_back(k);
  if (axes.empty()) return g.contiguous().to(dt).view(shape);
  return sum_f32(g, axes, op).view(shape).to(dt);
}

}  // namespace ops_detail

using namespace ops_detail;

namespace {

// Sorted, unique, non-negative axes (empty: all of them).
std::vector<int64_t> norm_axes(const Variable& x, const std::vector<int64_t>& axes,
                               const char* op) {
  const int64_t nd = x.dim();
  std::vector<int64_t> out;
  if (axes.empty()) {
    for (int64_t k = 0; k < nd; ++k) out.push_back(k);
    return out;
  }
  for (int64_t a : axes) {
    if (a < -nd || a >= nd)
      throw ShapeError(fmt::format("{}: axis {} out of range for {}", op, a, vstr(x)));
    out.push_back(a < 0 ? a + nd : a);
  }
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())
    throw ShapeError(
        fmt::format("{}: repeated axis in [{}] for {}", op, fmt::join(axes, ", "), vstr(x)));
  return out;
}

Variable reduce_op(const Variable& x, const std::vector<int64_t>& axes_in, bool keepdim,
                   bool is_mean, const char* op) {
  check_compute_dtype(x.data(), op, "input");
  const auto axes = norm_axes(x, axes_in, op);
  // Category fp32: accumulate in fp32 whatever the input; the output dtype is the policy's
  // (fp32 unless a per-op override says otherwise).
  const DType dt = amp::op_dtype(op, amp::OpCategory::fp32, {x.dtype()});
  Tensor s = sum_f32(x.data(), axes, op);
  const Shape kshape = s.shape();
  int64_t count = 1;
  for (int64_t a : axes) count *= x.shape()[a];
  const float scale = is_mean ? 1.0f / static_cast<float>(count) : 1.0f;
  if (is_mean) {
    float* p = s.data<float>();
    for (int64_t i = 0; i < s.numel(); ++i) p[i] *= scale;
  }
  Shape oshape;
  for (int64_t k = 0; k < x.dim(); ++k)
    if (keepdim || !std::binary_search(axes.begin(), axes.end(), k)) oshape.push_back(kshape[k]);
  Tensor out = s.view(oshape).to(dt);
  const Shape xshape = x.shape();
  const DType xdt = x.dtype();
  return make_op_result(out, {x}, op, [=](const Tensor& g) {
    // d/dx sum = 1 (mean: 1/count) broadcast back over the reduced axes.
    Tensor gk = g.reshape(kshape);
    return std::vector<Tensor>{
        map_kernel<1>(op, {gk}, xshape, xdt, [scale](float a, float, float) { return a * scale; })};
  });
}

}  // namespace

Variable sum(const Variable& x, const std::vector<int64_t>& axes, bool keepdim) {
  return reduce_op(x, axes, keepdim, false, "sum");
}
Variable mean(const Variable& x, const std::vector<int64_t>& axes, bool keepdim) {
  return reduce_op(x, axes, keepdim, true, "mean");
}
Variable sum(const Variable& x) { return reduce_op(x, {}, false, false, "sum"); }
Variable mean(const Variable& x) { return reduce_op(x, {}, false, true, "mean"); }

}  // namespace mixtrain
