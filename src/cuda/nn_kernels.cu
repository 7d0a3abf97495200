// The CUDA backend's row and reduction kernels (nn_kernels.h): dropout, sum over axes, softmax
// and log-softmax, the index scan, the fused cross-entropy, layer norm and the embedding gather
// (its backward is embedding_backward.cu). fp32 internals throughout, one RNE rounding into each
// output's dtype (the host's conversions, mixtrain/detail/scalar.h); every reduction runs in an
// order fixed by the shape (block sizes chosen from the shape, partials combined in index
// order), so results do not depend on timing, and no float output is accumulated by atomics.
// The math follows the CPU kernels (src/cpu/softmax.cpp, layer_norm.cpp, reduce.cpp,
// elementwise.cpp) operation for operation where it can; the summation orders differ.
//
// These kernels compile for every architecture the build names but have not yet run on a GPU:
// tests/test_backend_ops.cpp checks each against the scalar reference where one is present.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/device_common.cuh"
#include "cuda/nn_kernels.h"
#include "cuda/runtime.h"
#include "mixtrain/detail/random_bits.h"

namespace mixtrain::cuda {

using namespace dev;

namespace {

bool is_float(int dt) { return dt == kF32 || dt == kBf16 || dt == kF16 || dt == kF64; }
bool is_index(int dt) { return dt == kI32 || dt == kI64; }

int64_t numel(const View& v) {
  int64_t n = 1;
  for (int k = 0; k < v.rank; ++k) n *= v.shape[k];
  return n;
}

int last_error() { return static_cast<int>(cudaGetLastError()); }

// ---- dropout ---------------------------------------------------------------------------------

__global__ void dropout_kernel(View x, View y, int64_t n, uint64_t seed, uint64_t base, float p,
                               float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = load(x.data, x.dtype, offset_of(x, i));
    store(y.data, y.dtype, offset_of(y, i),
          v * detail::dropout_factor(seed, base + static_cast<uint64_t>(i), p, scale));
  }
}

// ---- sum -------------------------------------------------------------------------------------

// Elements of a row summed by one block (I == 1), and rows summed by one thread (I > 1), before
// the partials are combined: constants, so the order depends on the shape only.
constexpr int64_t kSumRowChunk = 8192;
constexpr int64_t kSumColChunk = 64;

int64_t sum_chunks(int64_t R, int64_t I) {
  const int64_t c = I == 1 ? kSumRowChunk : kSumColChunk;
  return R > c ? (R + c - 1) / c : 1;
}

// I == 1: block (o, chunk) sums elements [chunk·kSumRowChunk, ...) of row o: thread t the
// elements t, t + blockDim, ... in order, then block_sum. One chunk: out = sum · scale.
__global__ void sum_rows_kernel(const void* x, int dt, int64_t O, int64_t R, int64_t chunks,
                                float scale, float* out, float* part) {
  __shared__ float sh[32];
  for (int64_t blk = blockIdx.x; blk < O * chunks; blk += gridDim.x) {
    const int64_t o = blk / chunks, c = blk % chunks;
    const int64_t r0 = c * kSumRowChunk;
    const int64_t r1 = r0 + kSumRowChunk < R ? r0 + kSumRowChunk : R;
    float s = 0.0f;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) s += load(x, dt, o * R + r);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
      if (chunks == 1)
        out[o] = s * scale;
      else
        part[blk] = s;
    }
  }
}

// I > 1: thread (o, chunk, i) sums rows [chunk·kSumColChunk, ...) of column i in row order;
// neighbouring threads read neighbouring columns.
__global__ void sum_cols_kernel(const void* x, int dt, int64_t O, int64_t R, int64_t I,
                                int64_t chunks, float scale, float* out, float* part) {
  const int64_t total = O * chunks * I;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t % I, oc = t / I, c = oc % chunks, o = oc / chunks;
    const int64_t r0 = c * kSumColChunk;
    const int64_t r1 = r0 + kSumColChunk < R ? r0 + kSumColChunk : R;
    float s = 0.0f;
    for (int64_t r = r0; r < r1; ++r) s += load(x, dt, (o * R + r) * I + i);
    if (chunks == 1)
      out[o * I + i] = s * scale;
    else
      part[t] = s;
  }
}

// out[o, i] = scale · the chunk partials part[o, c, i] added in chunk order (in double).
__global__ void sum_partials_kernel(const float* part, int64_t O, int64_t chunks, int64_t I,
                                    float scale, float* out) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < O * I;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = t / I, i = t % I;
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += part[(o * chunks + c) * I + i];
    out[t] = static_cast<float>(s) * scale;
  }
}

// ---- softmax ---------------------------------------------------------------------------------

// One row of n contiguous elements per block, as the CPU's softmax_row: the max (0 when it is
// not finite, so a row of -inf gives 0, not NaN), the sum of exp(x - max), then either
// x - (max + log sum) or exp(x - max) · (1 / sum).
__global__ void softmax_rows_kernel(const void* x, void* y, int dt, int64_t rows, int64_t n,
                                    bool log) {
  __shared__ float sh[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * n;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, load(x, dt, base + j));
    m = block_max(m, sh);
    const float mm = isfinite(m) ? m : 0.0f;
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += expf(load(x, dt, base + j) - mm);
    s = block_sum(s, sh);
    if (log) {
      const float sub = mm + logf(s);
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        store(y, dt, base + j, load(x, dt, base + j) - sub);
    } else {
      const float inv = 1.0f / s;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        store(y, dt, base + j, expf(load(x, dt, base + j) - mm) * inv);
    }
  }
}

// Lines along a non-last axis ([outer, n, inner], inner > 1): one thread per (outer, inner)
// line, walking its n elements with stride inner (neighbouring threads read neighbouring
// elements).
__global__ void softmax_lines_kernel(const void* x, void* y, int dt, int64_t outer, int64_t n,
                                     int64_t inner, bool log) {
  for (int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; l < outer * inner;
       l += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (l / inner) * n * inner + l % inner;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) m = fmaxf(m, load(x, dt, base + j * inner));
    const float mm = isfinite(m) ? m : 0.0f;
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) s += expf(load(x, dt, base + j * inner) - mm);
    if (log) {
      const float sub = mm + logf(s);
      for (int64_t j = 0; j < n; ++j)
        store(y, dt, base + j * inner, load(x, dt, base + j * inner) - sub);
    } else {
      const float inv = 1.0f / s;
      for (int64_t j = 0; j < n; ++j)
        store(y, dt, base + j * inner, expf(load(x, dt, base + j * inner) - mm) * inv);
    }
  }
}

// Backward, as the CPU's: log-softmax dx = g - exp(y)·Σg; softmax dx = y·(g - Σ g·y).
__device__ inline float softmax_grad(float y, float g, float s, bool log) {
  return log ? g - __fmul_rn(expf(y), s) : y * (g - s);
}

__global__ void softmax_backward_rows_kernel(const void* y, const void* g, void* dx, int dt,
                                             int64_t rows, int64_t n, bool log) {
  __shared__ float sh[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * n;
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float gv = load(g, dt, base + j);
      s += log ? gv : gv * load(y, dt, base + j);
    }
    s = block_sum(s, sh);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      store(dx, dt, base + j, softmax_grad(load(y, dt, base + j), load(g, dt, base + j), s, log));
  }
}

__global__ void softmax_backward_lines_kernel(const void* y, const void* g, void* dx, int dt,
                                              int64_t outer, int64_t n, int64_t inner, bool log) {
  for (int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; l < outer * inner;
       l += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (l / inner) * n * inner + l % inner;
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float gv = load(g, dt, base + j * inner);
      s += log ? gv : gv * load(y, dt, base + j * inner);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t e = base + j * inner;
      store(dx, dt, e, softmax_grad(load(y, dt, e), load(g, dt, e), s, log));
    }
  }
}

// ---- index scan ------------------------------------------------------------------------------

// result[0]: the first bad position (UINT64_MAX: none), [1]: the count, [2]: the bad value.
__global__ void scan_init_kernel(unsigned long long* result) {
  result[0] = ~0ull;
  result[1] = 0;
  result[2] = 0;
}

__device__ inline bool is_ignored(int64_t t, bool has_ignore, int64_t ignore) {
  return has_ignore && t == ignore;
}

// The smallest position of an index outside [0, n) (integer atomicMin: order-independent).
__global__ void scan_bad_kernel(View ids, int64_t total, int64_t n, bool has_ignore, int64_t ignore,
                                unsigned long long* result) {
  unsigned long long first = ~0ull;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = load_index(ids.data, ids.dtype, offset_of(ids, i));
    if (!is_ignored(t, has_ignore, ignore) && (t < 0 || t >= n)) {
      first = static_cast<unsigned long long>(i);
      break;  // later positions of this thread are larger
    }
  }
  if (first != ~0ull) atomicMin(result, first);
}

// The count of indices before the first bad position that are not ignored (as the CPU's scan,
// which stops there), and the bad value.
__global__ void scan_count_kernel(View ids, int64_t total, bool has_ignore, int64_t ignore,
                                  unsigned long long* result) {
  const unsigned long long bad = result[0];
  const int64_t end = bad == ~0ull ? total : static_cast<int64_t>(bad);
  unsigned long long c = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < end;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    c += !is_ignored(load_index(ids.data, ids.dtype, offset_of(ids, i)), has_ignore, ignore);
  for (int o = 16; o >= 1; o /= 2) c += __shfl_xor_sync(0xffffffffu, c, o);
  if (threadIdx.x % 32 == 0 && c) atomicAdd(result + 1, c);
  if (blockIdx.x == 0 && threadIdx.x == 0 && bad != ~0ull)
    result[2] = static_cast<unsigned long long>(
        load_index(ids.data, ids.dtype, offset_of(ids, static_cast<int64_t>(bad))));
}

// ---- cross-entropy ---------------------------------------------------------------------------

// One row per block: lse = max + log Σ exp(x - max) (two passes over the row, nothing of V
// width stored), the row loss lse - x[t] in fp32 kept as a double for the total.
__global__ void cross_entropy_kernel(const void* x, int xdt, const void* tg, int tdt, int64_t N,
                                     int64_t V, int64_t ignore, float* lse, double* row_loss) {
  __shared__ float sh[32];
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const int64_t t = load_index(tg, tdt, row);
    if (t == ignore) {  // the same for the whole block
      if (threadIdx.x == 0) {
        lse[row] = 0.0f;
        row_loss[row] = 0.0;
      }
      continue;
    }
    const int64_t base = row * V;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, load(x, xdt, base + j));
    m = block_max(m, sh);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += expf(load(x, xdt, base + j) - m);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
      const float l = m + logf(s);
      lse[row] = l;
      row_loss[row] = static_cast<double>(l - load(x, xdt, base + t));
    }
  }
}

// The mean loss: one block of kTotalThreads; thread k adds rows [k·per, (k+1)·per) in row
// order in double, then thread 0 adds the threads' sums in thread order. The order depends on
// N only.
constexpr int kTotalThreads = 256;
__global__ void cross_entropy_total_kernel(const double* row_loss, int64_t N, int64_t count,
                                           void* loss, int loss_dt) {
  __shared__ double part[kTotalThreads];
  const int64_t per = (N + kTotalThreads - 1) / kTotalThreads;
  const int64_t r0 = threadIdx.x * per;
  double s = 0;
  for (int64_t r = r0; r < r0 + per && r < N; ++r) s += row_loss[r];
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int k = 0; k < kTotalThreads; ++k) total += part[k];
    const float mean = count ? static_cast<float>(total / static_cast<double>(count)) : 0.0f;
    store(loss, loss_dt, 0, mean);
  }
}

// dx = coef · exp(x - lse) - coef·[j == t], coef = g / count (0 when count is 0); ignored rows
// 0. The product is rounded before the subtraction, as on the CPU.
__global__ void cross_entropy_backward_kernel(const void* x, int xdt, const void* tg, int tdt,
                                              int64_t N, int64_t V, int64_t ignore, int64_t count,
                                              const float* lse, const void* g, int gdt, void* dx,
                                              int dxdt) {
  const float coef = count ? load(g, gdt, 0) / static_cast<float>(count) : 0.0f;
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const int64_t t = load_index(tg, tdt, row);
    const int64_t base = row * V;
    if (t == ignore) {
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) store(dx, dxdt, base + j, 0.0f);
      continue;
    }
    const float l = lse[row];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      float o = __fmul_rn(coef, expf(load(x, xdt, base + j) - l));
      if (j == t) o -= coef;
      store(dx, dxdt, base + j, o);
    }
  }
}

// ---- layer norm ------------------------------------------------------------------------------

// One row per block, the CPU's two-pass statistics: mean = Σx / C, var = Σ(x - mean)² / C,
// rstd = 1 / sqrt(var + eps); y = (x - mean)·rstd·w + b.
__global__ void layer_norm_kernel(const void* x, int xdt, const float* w, const float* b, int64_t N,
                                  int64_t C, float eps, void* y, int ydt, float* mean,
                                  float* rstd) {
  __shared__ float sh[32];
  const float fc = static_cast<float>(C);
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const int64_t base = row * C;
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += load(x, xdt, base + c);
    const float m = block_sum(s, sh) / fc;
    float q = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float d = load(x, xdt, base + c) - m;
      q += d * d;
    }
    const float var = block_sum(q, sh) / fc;
    const float rs = 1.0f / sqrtf(var + eps);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      store(y, ydt, base + c, (load(x, xdt, base + c) - m) * rs * w[c] + b[c]);
    if (threadIdx.x == 0) {
      mean[row] = m;
      rstd[row] = rs;
    }
  }
}

// dx per row (one block): x̂ = (x - mean)·rstd, ĝ = g·w; dx = rstd·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)).
__global__ void layer_norm_dx_kernel(const void* x, int xdt, const float* w, const void* g, int gdt,
                                     const float* mean, const float* rstd, int64_t N, int64_t C,
                                     void* dx, int dxdt) {
  __shared__ float sh[32];
  const float fc = static_cast<float>(C);
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const int64_t base = row * C;
    const float m = mean[row], rs = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float xh = (load(x, xdt, base + c) - m) * rs;
      const float gh = load(g, gdt, base + c) * w[c];
      sg += gh;
      sgx += gh * xh;
    }
    const float mg = block_sum(sg, sh) / fc;
    const float mgx = block_sum(sgx, sh) / fc;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float xh = (load(x, xdt, base + c) - m) * rs;
      const float gh = load(g, gdt, base + c) * w[c];
      store(dx, dxdt, base + c, rs * (gh - mg - xh * mgx));
    }
  }
}

// Rows per block of the dw/db reduction: the CPU's (cpu/layer_norm.cpp row_block), a function
// of the row count only.
int64_t ln_row_block(int64_t rows) {
  const int64_t b = (rows + 255) / 256;
  return b > 32 ? b : 32;
}

// Thread (block, c): Σ over the block's rows, in row order, of g·x̂ and g for column c (the
// CPU's per-block partials); one block writes dw and db directly.
__global__ void layer_norm_partials_kernel(const void* x, int xdt, const void* g, int gdt,
                                           const float* mean, const float* rstd, int64_t N,
                                           int64_t C, int64_t rb, int64_t nblk, float* pw,
                                           float* pb) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < nblk * C;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t blk = t / C, c = t % C;
    const int64_t r1 = (blk + 1) * rb < N ? (blk + 1) * rb : N;
    float bw = 0.0f, bb = 0.0f;
    for (int64_t n = blk * rb; n < r1; ++n) {
      const float xh = (load(x, xdt, n * C + c) - mean[n]) * rstd[n];
      const float gv = load(g, gdt, n * C + c);
      bw += gv * xh;
      bb += gv;
    }
    pw[t] = bw;
    pb[t] = bb;
  }
}

// dw[c], db[c] = the block partials added in block order from 0 (as the CPU).
__global__ void layer_norm_sum_partials_kernel(const float* pw, const float* pb, int64_t nblk,
                                               int64_t C, float* dw, float* db) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sw = 0.0f, sb = 0.0f;
    for (int64_t blk = 0; blk < nblk; ++blk) {
      sw += pw[blk * C + c];
      sb += pb[blk * C + c];
    }
    dw[c] = sw;
    db[c] = sb;
  }
}

// ---- embedding -------------------------------------------------------------------------------

// out[n, c] = table[ids[n], c]: same dtypes move bits, others convert with one rounding.
__global__ void embedding_kernel(const void* ids, int idt, int64_t N, const void* table, int tdt,
                                 int64_t C, void* out, int odt) {
  const int es = element_size(tdt);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t src = load_index(ids, idt, i / C) * C + i % C;
    if (tdt == odt) {
      if (es == 2)
        static_cast<uint16_t*>(out)[i] = static_cast<const uint16_t*>(table)[src];
      else if (es == 4)
        static_cast<uint32_t*>(out)[i] = static_cast<const uint32_t*>(table)[src];
      else
        static_cast<uint64_t*>(out)[i] = static_cast<const uint64_t*>(table)[src];
    } else {
      store(out, odt, i, load(table, tdt, src));
    }
  }
}

// Blocks for one-row-per-block kernels: every row, at most 65535 (the kernels loop).
unsigned row_grid(int64_t rows) {
  return static_cast<unsigned>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535);
}

}  // namespace

int launch_dropout(const View& x, const View& y, uint64_t seed, uint64_t base, float p,
                   float scale) {
  if (!is_float(x.dtype) || !is_float(y.dtype)) return -1;
  const int64_t n = numel(y);
  if (n == 0) return 0;
  dropout_kernel<<<grid_for(n), 256, 0, stream()>>>(x, y, n, seed, base, p, scale);
  return last_error();
}

int64_t sum_scratch_floats(int64_t O, int64_t R, int64_t I) {
  const int64_t chunks = sum_chunks(R, I);
  return chunks > 1 ? O * chunks * I : 0;
}

int launch_sum(const void* x, int dt, int64_t O, int64_t R, int64_t I, float scale, float* out,
               float* scratch) {
  if (!is_float(dt)) return -1;
  if (O * I == 0) return 0;
  const int64_t chunks = sum_chunks(R, I);
  if (I == 1) {
    const int64_t per = R < kSumRowChunk ? R : kSumRowChunk;
    sum_rows_kernel<<<row_grid(O * chunks), row_threads(per), 0, stream()>>>(x, dt, O, R, chunks,
                                                                             scale, out, scratch);
  } else {
    sum_cols_kernel<<<grid_for(O * chunks * I), 256, 0, stream()>>>(x, dt, O, R, I, chunks, scale,
                                                                    out, scratch);
  }
  if (chunks > 1) {
    const int e = last_error();
    if (e) return e;
    sum_partials_kernel<<<grid_for(O * I), 256, 0, stream()>>>(scratch, O, chunks, I, scale, out);
  }
  return last_error();
}

int launch_softmax(const void* x, int dt, int64_t outer, int64_t n, int64_t inner, bool log,
                   void* y) {
  if (!is_float(dt)) return -1;
  if (outer * n * inner == 0) return 0;
  if (inner == 1)
    softmax_rows_kernel<<<row_grid(outer), row_threads(n), 0, stream()>>>(x, y, dt, outer, n, log);
  else
    softmax_lines_kernel<<<grid_for(outer * inner), 256, 0, stream()>>>(x, y, dt, outer, n, inner,
                                                                        log);
  return last_error();
}

int launch_softmax_backward(const void* y, const void* g, int dt, int64_t outer, int64_t n,
                            int64_t inner, bool log, void* dx) {
  if (!is_float(dt)) return -1;
  if (outer * n * inner == 0) return 0;
  if (inner == 1)
    softmax_backward_rows_kernel<<<row_grid(outer), row_threads(n), 0, stream()>>>(y, g, dx, dt,
                                                                                   outer, n, log);
  else
    softmax_backward_lines_kernel<<<grid_for(outer * inner), 256, 0, stream()>>>(
        y, g, dx, dt, outer, n, inner, log);
  return last_error();
}

int launch_scan_indices(const View& ids, int64_t n, bool has_ignore, int64_t ignore,
                        int64_t* result) {
  if (!is_index(ids.dtype)) return -1;
  auto* r = reinterpret_cast<unsigned long long*>(result);
  scan_init_kernel<<<1, 1, 0, stream()>>>(r);
  const int64_t total = numel(ids);
  if (total > 0) {
    scan_bad_kernel<<<grid_for(total), 256, 0, stream()>>>(ids, total, n, has_ignore, ignore, r);
    scan_count_kernel<<<grid_for(total), 256, 0, stream()>>>(ids, total, has_ignore, ignore, r);
  }
  return last_error();
}

int launch_cross_entropy(const void* x, int xdt, const void* targets, int tdt, int64_t N, int64_t V,
                         int64_t ignore, int64_t count, float* lse, double* row_loss, void* loss,
                         int loss_dt) {
  if (!is_float(xdt) || !is_index(tdt) || !is_float(loss_dt)) return -1;
  if (N > 0) {
    cross_entropy_kernel<<<row_grid(N), row_threads(V), 0, stream()>>>(x, xdt, targets, tdt, N, V,
                                                                       ignore, lse, row_loss);
    const int e = last_error();
    if (e) return e;
  }
  cross_entropy_total_kernel<<<1, kTotalThreads, 0, stream()>>>(row_loss, N, count, loss, loss_dt);
  return last_error();
}

int launch_cross_entropy_backward(const void* x, int xdt, const void* targets, int tdt, int64_t N,
                                  int64_t V, int64_t ignore, int64_t count, const float* lse,
                                  const void* g, int gdt, void* dx, int dxdt) {
  if (!is_float(xdt) || !is_index(tdt) || !is_float(gdt) || !is_float(dxdt)) return -1;
  if (N * V == 0) return 0;
  cross_entropy_backward_kernel<<<row_grid(N), row_threads(V), 0, stream()>>>(
      x, xdt, targets, tdt, N, V, ignore, count, lse, g, gdt, dx, dxdt);
  return last_error();
}

int launch_layer_norm(const void* x, int xdt, const float* w, const float* b, int64_t N, int64_t C,
                      float eps, void* y, int ydt, float* mean, float* rstd) {
  if (!is_float(xdt) || !is_float(ydt)) return -1;
  if (N == 0) return 0;
  layer_norm_kernel<<<row_grid(N), row_threads(C), 0, stream()>>>(x, xdt, w, b, N, C, eps, y, ydt,
                                                                  mean, rstd);
  return last_error();
}

int64_t layer_norm_backward_scratch_floats(int64_t N, int64_t C) {
  const int64_t rb = ln_row_block(N);
  return 2 * ((N + rb - 1) / rb) * C;
}

int launch_layer_norm_backward(const void* x, int xdt, const float* w, const void* g, int gdt,
                               const float* mean, const float* rstd, int64_t N, int64_t C, void* dx,
                               int dxdt, float* dw, float* db, float* scratch) {
  if (!is_float(xdt) || !is_float(gdt) || !is_float(dxdt)) return -1;
  if (C == 0) return 0;
  if (N > 0) {
    layer_norm_dx_kernel<<<row_grid(N), row_threads(C), 0, stream()>>>(x, xdt, w, g, gdt, mean,
                                                                       rstd, N, C, dx, dxdt);
    int e = last_error();
    if (e) return e;
  }
  const int64_t rb = ln_row_block(N), nblk = (N + rb - 1) / rb;
  float* pw = scratch;
  float* pb = scratch + nblk * C;
  if (nblk > 0) {
    layer_norm_partials_kernel<<<grid_for(nblk * C), 256, 0, stream()>>>(x, xdt, g, gdt, mean, rstd,
                                                                         N, C, rb, nblk, pw, pb);
    const int e = last_error();
    if (e) return e;
  }
  layer_norm_sum_partials_kernel<<<grid_for(C), 256, 0, stream()>>>(pw, pb, nblk, C, dw, db);
  return last_error();
}

int launch_embedding(const void* ids, int idt, int64_t N, const void* table, int tdt, int64_t C,
                     void* out, int odt) {
  if (!is_index(idt) || !is_float(tdt) || !is_float(odt)) return -1;
  if (N * C == 0) return 0;
  embedding_kernel<<<grid_for(N * C), 256, 0, stream()>>>(ids, idt, N, table, tdt, C, out, odt);
  return last_error();
}

}  // namespace mixtrain::cuda
