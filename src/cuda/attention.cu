// Flash-style attention on the GPU (nn_kernels.h launch_attention, launch_attention_backward)
// over [B, H, T, D] views read and written where they lie (any B, H, T strides; D unit-stride),
// head sizes up to kAttnMaxHeadDim (the kernels are built for D ≤ 32, 64 and 128, a smaller D
// padded with zeros). fp32 throughout: q, k, v and the output gradient are widened on load, the
// scores, the softmax statistics and every product accumulate in fp32, and each output is
// rounded once into its dtype. Scores never reach global memory: the forward keeps an online
// softmax (running max and sum, rescaled per key tile) and saves each row's logsumexp; the
// backward recomputes the probabilities from it.
//
// Layout: a block of kThreads = 128 threads owns 32 rows (query rows, or keys in the dK/dV
// kernel); each row is 4 consecutive lanes of a warp, lane `sub` holding the head elements
// d ≡ sub (mod 4) of the row's vectors in registers. A dot product over D is 4 partial sums
// added across the 4 lanes by two xor shuffles, which leaves the same bits on all four, so the
// lanes of a row agree on every score and probability without shared memory. The other side
// (32 keys, or 32 query rows) is a tile in shared memory, read with one address per 4 lanes (a
// broadcast, no bank conflicts). No tensor cores: these kernels are the correct baseline.
//
// Backward, deterministic and without atomics:
//   dQ kernel, one block per 32 query rows: first Di = Σ_j P_ij·dP_ij over every key (dP =
//     dO·Vᵀ; this equals rowsum(dO ∘ O), the form FlashAttention precomputes from the saved
//     output, which Backend::attention_backward does not receive), saved for the dK/dV kernel;
//     then dQ = Σ_j dS_ij·K_j with dS = P ∘ (dP - Di) · scale, by key tiles.
//   dK/dV kernel, one block per 32 keys: dV = Σ_i P_ij·dO_i, dK = Σ_i dS_ij·Q_i over the query
//     tiles in order (causal: only the rows at or after the block's first key).
// Each gradient element is summed by one thread in a fixed order. Both kernels compute a score
// from the same products in the same order, so they see the same probabilities.
//
// Compiled for every architecture the build names but not yet run on a GPU:
// tests/test_backend_ops.cpp checks it against the scalar reference where one is present.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device_common.cuh"
#include "cuda/nn_kernels.h"
#include "cuda/runtime.h"

namespace mixtrain::cuda {

using namespace dev;

namespace {

constexpr int kRows = 32;  // query rows per block; also keys per tile and per dK/dV block
constexpr int kSub = 4;    // lanes per row
constexpr int kThreads = kRows * kSub;

// The element offset of (b, h) = (bh / H, bh % H) in an operand.
__device__ inline int64_t head_base(const AttnOperand& a, int64_t bh, int64_t H) {
  return (bh / H) * a.sb + (bh % H) * a.sh;
}

// The sum over a row's 4 lanes; all four get the same bits.
__device__ inline float row_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// Rows [t0, t0 + kRows) of one head's [T, D] into tile[kRows][DMAX] as fp32, zeros past T and
// D; neighbouring threads read neighbouring elements of a row.
template <int DMAX>
__device__ inline void load_tile(float (*tile)[DMAX], const AttnOperand& a, int64_t base,
                                 int64_t t0, int64_t T, int64_t D) {
  for (int e = threadIdx.x; e < kRows * DMAX; e += kThreads) {
    const int j = e / DMAX, d = e % DMAX;
    const int64_t t = t0 + j;
    tile[j][d] = t < T && d < D ? load(a.data, a.dtype, base + t * a.st + d) : 0.0f;
  }
}

// A row's vector (this lane's elements) into registers, zeros past D or for an absent row.
template <int DMAX>
__device__ inline void load_row(float (&r)[DMAX / kSub], const AttnOperand& a, int64_t base,
                                int64_t t, bool present, int64_t D, int sub) {
#pragma unroll
  for (int i = 0; i < DMAX / kSub; ++i) {
    const int d = sub + kSub * i;
    r[i] = present && d < D ? load(a.data, a.dtype, base + t * a.st + d) : 0.0f;
  }
}

template <int DMAX>
__device__ inline void store_row(const float (&r)[DMAX / kSub], float mul, const AttnOperand& a,
                                 int64_t base, int64_t t, int64_t D, int sub) {
#pragma unroll
  for (int i = 0; i < DMAX / kSub; ++i) {
    const int d = sub + kSub * i;
    if (d < D) store(a.data, a.dtype, base + t * a.st + d, r[i] * mul);
  }
}

// This lane's share of the dot product of a register row with row j of a tile, summed over the
// row's lanes.
template <int DMAX>
__device__ inline float dot_row(const float (&r)[DMAX / kSub], const float (*tile)[DMAX], int j,
                                int sub) {
  float part = 0.0f;
#pragma unroll
  for (int i = 0; i < DMAX / kSub; ++i) part += r[i] * tile[j][sub + kSub * i];
  return row_sum(part);
}

// The keys a block of query rows [q0, q0 + kRows) attends to: [0, key_end).
__device__ inline int64_t key_end(const AttnDims& dm, int64_t q0) {
  return dm.causal ? (q0 + kRows < dm.Tk ? q0 + kRows : dm.Tk) : dm.Tk;
}

__device__ inline bool visible(const AttnDims& dm, int64_t row, int64_t key) {
  return row < dm.Tq && key < dm.Tk && (!dm.causal || key <= row);
}

// Forward: block (bh, query tile). Online softmax over key tiles: m the running max, l the
// running Σ exp(s - m), acc the running Σ exp(s - m)·v, rescaled by exp(m_old - m_new) when the
// max grows; o = acc / l and lse = m + log l at the end.
template <int DMAX>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(AttnDims dm, AttnOperand q, AttnOperand k, AttnOperand v,
                             AttnOperand o, float* lse) {
  constexpr int kPer = DMAX / kSub;
  __shared__ float ks[kRows][DMAX];
  __shared__ float vs[kRows][DMAX];
  const int64_t bh = blockIdx.x, q0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int sub = threadIdx.x % kSub;
  const int64_t row = q0 + threadIdx.x / kSub;
  const bool present = row < dm.Tq;
  const int64_t kb = head_base(k, bh, dm.H), vb = head_base(v, bh, dm.H);
  float qr[kPer], acc[kPer];
  load_row<DMAX>(qr, q, head_base(q, bh, dm.H), row, present, dm.D, sub);
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int64_t kend = key_end(dm, q0);
  for (int64_t k0 = 0; k0 < kend; k0 += kRows) {
    load_tile<DMAX>(ks, k, kb, k0, dm.Tk, dm.D);
    load_tile<DMAX>(vs, v, vb, k0, dm.Tk, dm.D);
    __syncthreads();
    float s[kRows];
    float mt = -INFINITY;
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const float dot = dot_row<DMAX>(qr, ks, j, sub);
      s[j] = visible(dm, row, k0 + j) ? dot * dm.scale : -INFINITY;
      mt = fmaxf(mt, s[j]);
    }
    const float mn = fmaxf(m, mt);
    const float mu = mn == -INFINITY ? 0.0f : mn;  // no key seen yet: exp(-inf - 0) = 0
    const float alpha = expf(m - mu);
    l *= alpha;
#pragma unroll
    for (int i = 0; i < kPer; ++i) acc[i] *= alpha;
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const float p = expf(s[j] - mu);
      l += p;
#pragma unroll
      for (int i = 0; i < kPer; ++i) acc[i] += p * vs[j][sub + kSub * i];
    }
    m = mn;
    __syncthreads();
  }
  if (present) {
    store_row<DMAX>(acc, 1.0f / l, o, head_base(o, bh, dm.H), row, dm.D, sub);
    if (sub == 0) lse[bh * dm.Tq + row] = m + logf(l);
  }
}

// dQ (and Di): block (bh, query tile).
template <int DMAX>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(AttnDims dm, AttnOperand q, AttnOperand k, AttnOperand v, AttnOperand g,
                        const float* lse, AttnOperand dq, float* di_out) {
  constexpr int kPer = DMAX / kSub;
  __shared__ float ks[kRows][DMAX];
  __shared__ float vs[kRows][DMAX];
  const int64_t bh = blockIdx.x, q0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int sub = threadIdx.x % kSub;
  const int64_t row = q0 + threadIdx.x / kSub;
  const bool present = row < dm.Tq;
  const int64_t kb = head_base(k, bh, dm.H), vb = head_base(v, bh, dm.H);
  float qr[kPer], gr[kPer];
  load_row<DMAX>(qr, q, head_base(q, bh, dm.H), row, present, dm.D, sub);
  load_row<DMAX>(gr, g, head_base(g, bh, dm.H), row, present, dm.D, sub);
  const float lr = present ? lse[bh * dm.Tq + row] : 0.0f;
  const int64_t kend = key_end(dm, q0);
  // Di = Σ_j P_ij·dP_ij.
  float di = 0.0f;
  for (int64_t k0 = 0; k0 < kend; k0 += kRows) {
    load_tile<DMAX>(ks, k, kb, k0, dm.Tk, dm.D);
    load_tile<DMAX>(vs, v, vb, k0, dm.Tk, dm.D);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kRows; ++j) {
      const float sp = dot_row<DMAX>(qr, ks, j, sub);
      const float dp = dot_row<DMAX>(gr, vs, j, sub);
      const float p = visible(dm, row, k0 + j) ? expf(sp * dm.scale - lr) : 0.0f;
      di += p * dp;
    }
    __syncthreads();
  }
  if (present && sub == 0) di_out[bh * dm.Tq + row] = di;
  // dQ = Σ_j dS_ij·K_j.
  float acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  for (int64_t k0 = 0; k0 < kend; k0 += kRows) {
    load_tile<DMAX>(ks, k, kb, k0, dm.Tk, dm.D);
    load_tile<DMAX>(vs, v, vb, k0, dm.Tk, dm.D);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kRows; ++j) {
      const float sp = dot_row<DMAX>(qr, ks, j, sub);
      const float dp = dot_row<DMAX>(gr, vs, j, sub);
      const float p = visible(dm, row, k0 + j) ? expf(sp * dm.scale - lr) : 0.0f;
      const float ds = p * (dp - di) * dm.scale;
#pragma unroll
      for (int i = 0; i < kPer; ++i) acc[i] += ds * ks[j][sub + kSub * i];
    }
    __syncthreads();
  }
  if (present) store_row<DMAX>(acc, 1.0f, dq, head_base(dq, bh, dm.H), row, dm.D, sub);
}

// dK and dV: block (bh, key tile); the query rows in tiles of kRows, in order.
template <int DMAX>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(AttnDims dm, AttnOperand q, AttnOperand k, AttnOperand v, AttnOperand g,
                          const float* lse, const float* di, AttnOperand dk, AttnOperand dv) {
  constexpr int kPer = DMAX / kSub;
  __shared__ float qs[kRows][DMAX];
  __shared__ float gs[kRows][DMAX];
  __shared__ float ls[kRows], dis[kRows];
  const int64_t bh = blockIdx.x, k0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int sub = threadIdx.x % kSub;
  const int64_t key = k0 + threadIdx.x / kSub;
  const bool present = key < dm.Tk;
  const int64_t qb = head_base(q, bh, dm.H), gb = head_base(g, bh, dm.H);
  float kr[kPer], vr[kPer], dka[kPer], dva[kPer];
  load_row<DMAX>(kr, k, head_base(k, bh, dm.H), key, present, dm.D, sub);
  load_row<DMAX>(vr, v, head_base(v, bh, dm.H), key, present, dm.D, sub);
#pragma unroll
  for (int i = 0; i < kPer; ++i) dka[i] = dva[i] = 0.0f;
  // Causal: rows before the block's first key see none of its keys.
  for (int64_t t0 = dm.causal ? k0 : 0; t0 < dm.Tq; t0 += kRows) {
    load_tile<DMAX>(qs, q, qb, t0, dm.Tq, dm.D);
    load_tile<DMAX>(gs, g, gb, t0, dm.Tq, dm.D);
    if (threadIdx.x < kRows) {
      const int64_t r = t0 + threadIdx.x;
      ls[threadIdx.x] = r < dm.Tq ? lse[bh * dm.Tq + r] : 0.0f;
      dis[threadIdx.x] = r < dm.Tq ? di[bh * dm.Tq + r] : 0.0f;
    }
    __syncthreads();
#pragma unroll 2
    for (int i = 0; i < kRows; ++i) {
      const float sp = dot_row<DMAX>(kr, qs, i, sub);
      const float dp = dot_row<DMAX>(vr, gs, i, sub);
      const float p = visible(dm, t0 + i, key) ? expf(sp * dm.scale - ls[i]) : 0.0f;
      const float ds = p * (dp - dis[i]) * dm.scale;
#pragma unroll
      for (int x = 0; x < kPer; ++x) {
        dva[x] += p * gs[i][sub + kSub * x];
        dka[x] += ds * qs[i][sub + kSub * x];
      }
    }
    __syncthreads();
  }
  if (present) {
    store_row<DMAX>(dka, 1.0f, dk, head_base(dk, bh, dm.H), key, dm.D, sub);
    store_row<DMAX>(dva, 1.0f, dv, head_base(dv, bh, dm.H), key, dm.D, sub);
  }
}

bool is_float(int dt) { return dt == kF32 || dt == kBf16 || dt == kF16 || dt == kF64; }

unsigned tiles(int64_t T) { return static_cast<unsigned>((T + kRows - 1) / kRows); }

// Grid (B·H, tiles of 32 rows): gridDim.y is at most 65535.
bool launchable(const AttnDims& dm) {
  return dm.D <= kAttnMaxHeadDim && (dm.Tq + kRows - 1) / kRows <= 65535 &&
         (dm.Tk + kRows - 1) / kRows <= 65535 && dm.B * dm.H < (int64_t{1} << 31);
}

template <int DMAX>
int forward(const AttnDims& dm, const AttnOperand& q, const AttnOperand& k, const AttnOperand& v,
            const AttnOperand& o, float* lse) {
  const dim3 grid(static_cast<unsigned>(dm.B * dm.H), tiles(dm.Tq));
  attention_forward_kernel<DMAX><<<grid, kThreads, 0, stream()>>>(dm, q, k, v, o, lse);
  return static_cast<int>(cudaGetLastError());
}

template <int DMAX>
int backward(const AttnDims& dm, const AttnOperand& q, const AttnOperand& k, const AttnOperand& v,
             const AttnOperand& g, const float* lse, const AttnOperand& dq, const AttnOperand& dk,
             const AttnOperand& dv, float* di) {
  const unsigned bh = static_cast<unsigned>(dm.B * dm.H);
  if (dm.Tq > 0) {
    attention_dq_kernel<DMAX>
        <<<dim3(bh, tiles(dm.Tq)), kThreads, 0, stream()>>>(dm, q, k, v, g, lse, dq, di);
    const int e = static_cast<int>(cudaGetLastError());
    if (e) return e;
  }
  // With no query rows the dK/dV kernel's query loop runs zero times: dK = dV = 0.
  if (dm.Tk > 0)
    attention_dkdv_kernel<DMAX>
        <<<dim3(bh, tiles(dm.Tk)), kThreads, 0, stream()>>>(dm, q, k, v, g, lse, di, dk, dv);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int launch_attention(const AttnDims& dm, const AttnOperand& q, const AttnOperand& k,
                     const AttnOperand& v, const AttnOperand& o, float* lse) {
  if (!launchable(dm) || !is_float(q.dtype) || k.dtype != q.dtype || v.dtype != q.dtype ||
      !is_float(o.dtype))
    return -1;
  if (dm.B * dm.H == 0 || dm.Tq == 0) return 0;
  if (dm.D <= 32) return forward<32>(dm, q, k, v, o, lse);
  if (dm.D <= 64) return forward<64>(dm, q, k, v, o, lse);
  return forward<128>(dm, q, k, v, o, lse);
}

int launch_attention_backward(const AttnDims& dm, const AttnOperand& q, const AttnOperand& k,
                              const AttnOperand& v, const AttnOperand& g, const float* lse,
                              const AttnOperand& dq, const AttnOperand& dk, const AttnOperand& dv,
                              float* di) {
  if (!launchable(dm) || !is_float(q.dtype) || k.dtype != q.dtype || v.dtype != q.dtype ||
      !is_float(g.dtype) || !is_float(dq.dtype) || !is_float(dk.dtype) || !is_float(dv.dtype))
    return -1;
  if (dm.B * dm.H == 0) return 0;
  if (dm.D <= 32) return backward<32>(dm, q, k, v, g, lse, dq, dk, dv, di);
  if (dm.D <= 64) return backward<64>(dm, q, k, v, g, lse, dq, dk, dv, di);
  return backward<128>(dm, q, k, v, g, lse, dq, dk, dv, di);
}

}  // namespace mixtrain::cuda
