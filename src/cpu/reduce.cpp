// Sums over axes on the CPU (CpuBackend::sum): fp32 accumulation, pairwise over fixed blocks
// (the bits depend on the shape only, not the thread count), 16-bit rows widened in-lane by the
// level's add_rows (reduce.isa.cpp).
#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/backend.h"
#include "cpu/reduce.h"
#include "cpu/rows.h"

namespace mixtrain::cpu {

const AddRows& add_rows() {
  static const IsaTable<AddRows> table({&add_rows_kernel<Isa::scalar>(),
                                        &add_rows_kernel<Isa::avx2>(),
                                        &add_rows_kernel<Isa::avx512>(), nullptr});
  return *table.get();
}

namespace {

/// Below this many elements a sum runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 15;

// Elements of one row summed by one task; partial sums of these blocks are then added
// pairwise. Fixed (not per thread) so results do not depend on the thread count.
constexpr int64_t kRowBlock = 1 << 15;
// Rows summed directly before the column kernel splits pairwise.
constexpr int64_t kColBlock = 64;
// Rows per parallel task of a column sum (a power-of-two multiple of kColBlock).
constexpr int64_t kChunkRows = 512;

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

// acc[0, n) = sum over rows r in [r0, r1) of x[r*ld + i0 + j], the rows split pairwise.
void sum_cols(const void* x, DType dt, int64_t ld, int64_t i0, int64_t n, int64_t r0, int64_t r1,
              float* acc) {
  std::fill(acc, acc + n, 0.0f);
  if (r1 - r0 <= kColBlock) {
    add_rows()(at(x, dt, i0), dt, ld, n, r0, r1, acc);
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

void sum_f32(const Tensor& x_in, const std::vector<int64_t>& axes, float* out) {
  const int64_t nd = x_in.dim();
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
    sum_ori(x, O, R, 1, out);
    return;
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
  sum_ori(x, O, R, I, out);
}

}  // namespace

void CpuBackend::sum(const Tensor& x_in, const std::vector<int64_t>& axes, float scale,
                     const Tensor& out) {
  if (out.numel() == 0) return;
  sum_f32(x_in, axes, out.data<float>());
  // A mean: the sums times 1/count, one fp32 multiply each.
  if (scale != 1.0f) {
    float* p = out.data<float>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] *= scale;
  }
}

}  // namespace mixtrain::cpu
