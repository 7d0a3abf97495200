// Attention on the CPU (CpuBackend::attention): the fused kernels (attention_fused.isa.cpp)
// where the level and the head size allow, else chunks of heads through oneDNN batched GEMMs
// (scores never exceed one chunk). One (batch, head) per fused task; only the per-row logsumexp
// is saved, and backward recomputes the probabilities from it.
//
// Two paths, each for a measured reason: the fused kernels beat the GEMM path on AVX-512 and
// AVX2 (GPT layer [8, 256, 1152], 6 heads, fwd+bwd; build/bench/attention_bench BM_AttentionPath,
// fused against GEMM: on a Sapphire Rapids fp32 7.4 vs 8.6 ms, bf16 9.9 vs 16.1, fp16 6.8 vs
// 13.5; on a Zen 4 bf16 7.7 vs 11.7, fp16 17.2 vs 23.9; on an AVX2 Zen 3 bf16 19.0 vs 27.8); the
// GEMM path runs what they do not take (D not a multiple of 32, long sequences, baseline CPUs) at
// oneDNN's speed. A tiny head (two [8, 8] heads, fwd+bwd) costs 28 µs there, where a per-head
// loop path once ran: not worth a third path.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention.h"
#include "cpu/backend.h"
#include "cpu/rows.h"

namespace mixtrain::cpu {

const FusedAttentionKernels* fused_attention(DType qkv_dt, DType g_dt, int64_t Tq, int64_t Tk,
                                             int64_t D) {
  static const IsaTable<FusedAttentionKernels> table(
      {nullptr, &attention_fused_kernels<Isa::avx2>(), &attention_fused_kernels<Isa::avx512>(),
       &attention_fused_kernels<Isa::avx512bf16>()});
  // A head's P and dS live whole in each thread's buffers (dV and dK read them by key block):
  // up to 2^20 scores each (4 MiB in fp32, a little more with the tiles' padding); longer
  // sequences take the GEMM path, whose scores go by chunks.
  if (D % kAttnCols != 0 || D > 1024 || Tq <= 0 || Tk <= 0 || Tq > (1 << 20) || Tk > (1 << 20) ||
      Tq * Tk > (int64_t{1} << 20))
    return nullptr;
  auto is_float = [](DType d) { return d == DType::f32 || d == DType::bf16 || d == DType::f16; };
  if (!is_float(qkv_dt) || !is_float(g_dt)) return nullptr;
  return table.get();
}

namespace {

/// Below this many elements a kernel runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 14;

struct Dims {
  int64_t BH, Tq, Tk, D;
  bool causal;
  float scale;
};

Dims dims(const Tensor& q4, const Tensor& k4, bool causal, float scale) {
  return {q4.size(0) * q4.size(1), q4.size(2), k4.size(2), q4.size(3), causal, scale};
}

// ---- GEMM path: heads in chunks, scores through oneDNN batched GEMMs ----
// (bf16 reads its operands directly and rounds P and dS to bf16 for the products that use
// them; see attn_forward_gemm.)
// The per-head loops above run at ~33 GFLOP/s; the same products as batched GEMMs run near
// the GEMM peak; causal attention multiplies only the blocks on and below the diagonal
// (query_blocks).
// Q, K, V (and dO) are widened to fp32 and every product is fp32 with fp32 accumulation, so
// the probabilities are never rounded to 16 bits before P·V (as the loops). Scores live one
// chunk of heads at a time (at most kScoreFloats fp32 per buffer), never the whole batch.
constexpr int64_t kScoreFloats = int64_t{1} << 20;

int64_t chunk_heads(const Dims& dm) {
  return std::max<int64_t>(
      1, std::min<int64_t>(dm.BH, kScoreFloats / std::max<int64_t>(1, dm.Tq * dm.Tk)));
}

// Heads [h0, h0 + n) of batch b of a 4-d [B, H, T, D] view (any strides, D unit-stride) as a
// 3-d [n, T, D] view: the GEMMs read and write attention's operands where they lie, e.g. inside
// a packed [B, T, 3·C] qkv (attention_qkv) without a head-major copy.
Tensor heads(const Tensor& t4, int64_t b, int64_t h0, int64_t n) {
  const Shape& st = t4.strides();
  return t4.as_strided({n, t4.size(2), t4.size(3)}, {st[1], st[2], st[3]}, b * st[0] + h0 * st[1]);
}

// A GEMM operand: bf16 and f32 views as they are; fp16 widened into buf as contiguous fp32
// (this CPU has no fp16 arithmetic).
Tensor operand(const Tensor& view, bool widen, Tensor& buf) {
  if (!widen) return view;
  Tensor w = Tensor::wrap(buf.raw_data(), view.shape(), DType::f32);
  w.copy_from(view);
  return w;
}

// Row r of the [n·Tq, Tk] scores: masked keys are j >= jn.
inline int64_t row_keys(const Dims& dm, int64_t r) { return dm.causal ? r % dm.Tq + 1 : dm.Tk; }

// Causal attention runs its products by blocks of query rows: rows [r0, r0 + rn) see keys
// [0, keys) only, so the masked upper triangle is never multiplied (with 64-row blocks and
// T = 256, 62.5% of the square's FLOPs). The same blocks, read as key blocks, split dV and dK.
// Non-causal attention is one block over all rows and keys.
struct QBlock {
  int64_t r0, rn, keys;
};
constexpr int64_t kCausalBlock = 64;

std::vector<QBlock> query_blocks(const Dims& dm) {
  if (!dm.causal) return {{0, dm.Tq, dm.Tk}};
  std::vector<QBlock> out;
  for (int64_t r0 = 0; r0 < dm.Tq; r0 += kCausalBlock) {
    const int64_t rn = std::min(kCausalBlock, dm.Tq - r0);
    out.push_back({r0, rn, r0 + rn});
  }
  return out;
}

// Rows [r0, r0 + rn) of a [n, rows, cols] tensor (a strided view; gemm takes it as is).
inline Tensor rows(const Tensor& t, int64_t r0, int64_t rn) { return t.slice(1, r0, r0 + rn); }

void attn_forward_gemm(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& o4,
                       float* lse, const Dims& dm) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D, B = q4.size(0), H = q4.size(1);
  const int64_t hc = std::min(H, chunk_heads(dm));
  const DType dt = q4.dtype();
  // bf16: Q·Kᵀ straight from the bf16 operands (products of bf16 values are exact in fp32, so
  // the scores equal the widened fp32 GEMM's up to summation order) and P rounded to bf16 for
  // P·V (as FlashAttention does; O is rounded to bf16 anyway). fp16 widens to fp32.
  const bool lowp = dt == DType::bf16;
  const bool wide = dt != DType::f32 && !lowp;
  Tensor qb = Tensor::empty({wide ? hc * Tq * D : 0}, DType::f32);
  Tensor kb = Tensor::empty({wide ? hc * Tk * D : 0}, DType::f32);
  Tensor vb = Tensor::empty({wide ? hc * Tk * D : 0}, DType::f32);
  Tensor sb = Tensor::empty({hc * Tq * Tk}, DType::f32);
  Tensor pb = Tensor::empty({lowp ? hc * Tq * Tk : 0}, DType::bf16);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h0 = 0; h0 < H; h0 += hc) {
      const int64_t n = std::min(hc, H - h0);
      const Tensor qf = operand(heads(q4, b, h0, n), wide, qb);
      const Tensor kf = operand(heads(k4, b, h0, n), wide, kb);
      const Tensor vf = operand(heads(v4, b, h0, n), wide, vb);
      Tensor s = Tensor::wrap(sb.raw_data(), {n, Tq, Tk}, DType::f32);
      for (const QBlock& blk : query_blocks(dm)) {  // s = scale · Q·Kᵀ, the causal triangle
        Tensor sv = rows(s, blk.r0, blk.rn).slice(2, 0, blk.keys);
        gemm(rows(qf, blk.r0, blk.rn), false, rows(kf, 0, blk.keys), true, sv, dm.scale);
      }
      float* sp = s.data<float>();
      float* lp = lse + (b * H + h0) * Tq;
      uint16_t* p16 = lowp ? static_cast<uint16_t*>(pb.raw_data()) : nullptr;
#pragma omp parallel for schedule(static) if (n * Tq * Tk > kParallelMin)
      for (int64_t r = 0; r < n * Tq; ++r) {
        float* row = sp + r * Tk;
        const int64_t jn = row_keys(dm, r);
        lp[r] = softmax_row_lse(row, jn);
        std::fill(row + jn, row + Tk, 0.0f);
        if (lowp) store_row(row, Tk, p16 + r * Tk, DType::bf16);
      }
      // O = P·V (bf16: the rounded P; otherwise fp32 sums rounded once into the output).
      const Tensor pv = lowp ? Tensor::wrap(p16, {n, Tq, Tk}, DType::bf16) : s;
      const Tensor o = heads(o4, b, h0, n);
      for (const QBlock& blk : query_blocks(dm)) {
        Tensor ov = rows(o, blk.r0, blk.rn);
        gemm(rows(pv, blk.r0, blk.rn).slice(2, 0, blk.keys), false, rows(vf, 0, blk.keys), false,
             ov);
      }
    }
  }
}

// dq4, dk4, dv4: 4-d views (any strides, D unit-stride, any float dtype) the gradients are
// written into; g4 the output gradient, a view of the same kind.
void attn_backward_gemm(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& g4,
                        const float* lse, const Dims& dm, const Tensor& dq4, const Tensor& dk4,
                        const Tensor& dv4) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D, B = q4.size(0), H = q4.size(1);
  const int64_t hc = std::min(H, chunk_heads(dm));
  const DType dt = q4.dtype(), gdt = g4.dtype();
  // bf16 (with a bf16 dO): the score and dP products read the bf16 operands directly (exact
  // products, fp32 sums); P and dS are rounded to bf16 for the three gradient products, as
  // FlashAttention's backward does. fp16 operands are widened to fp32.
  const bool lowp = dt == DType::bf16 && gdt == DType::bf16;
  const bool wide = dt != DType::f32 && !lowp;
  const bool gwide = gdt != DType::f32 && !lowp;
  Tensor qb = Tensor::empty({wide ? hc * Tq * D : 0}, DType::f32);
  Tensor kb = Tensor::empty({wide ? hc * Tk * D : 0}, DType::f32);
  Tensor vb = Tensor::empty({wide ? hc * Tk * D : 0}, DType::f32);
  Tensor gb = Tensor::empty({gwide ? hc * Tq * D : 0}, DType::f32);
  Tensor pb = Tensor::empty({hc * Tq * Tk}, DType::f32);
  Tensor dpb = Tensor::empty({hc * Tq * Tk}, DType::f32);
  Tensor p16b = Tensor::empty({lowp ? hc * Tq * Tk : 0}, DType::bf16);
  Tensor ds16b = Tensor::empty({lowp ? hc * Tq * Tk : 0}, DType::bf16);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h0 = 0; h0 < H; h0 += hc) {
      const int64_t n = std::min(hc, H - h0);
      const Tensor qf = operand(heads(q4, b, h0, n), wide, qb);
      const Tensor kf = operand(heads(k4, b, h0, n), wide, kb);
      const Tensor vf = operand(heads(v4, b, h0, n), wide, vb);
      const Tensor gf = operand(heads(g4, b, h0, n), gwide, gb);
      Tensor p = Tensor::wrap(pb.raw_data(), {n, Tq, Tk}, DType::f32);
      Tensor dp = Tensor::wrap(dpb.raw_data(), {n, Tq, Tk}, DType::f32);
      for (const QBlock& blk : query_blocks(dm)) {
        Tensor pv = rows(p, blk.r0, blk.rn).slice(2, 0, blk.keys);
        Tensor dpv = rows(dp, blk.r0, blk.rn).slice(2, 0, blk.keys);
        // The scores again (only lse was saved), and dP = dO·Vᵀ.
        gemm(rows(qf, blk.r0, blk.rn), false, rows(kf, 0, blk.keys), true, pv, dm.scale);
        gemm(rows(gf, blk.r0, blk.rn), false, rows(vf, 0, blk.keys), true, dpv);
      }
      float* pp = p.data<float>();
      float* dpp = dp.data<float>();
      const float* lp = lse + (b * H + h0) * Tq;
      uint16_t* p16 = lowp ? static_cast<uint16_t*>(p16b.raw_data()) : nullptr;
      uint16_t* ds16 = lowp ? static_cast<uint16_t*>(ds16b.raw_data()) : nullptr;
#pragma omp parallel for schedule(static) if (n * Tq * Tk > kParallelMin)
      for (int64_t r = 0; r < n * Tq; ++r) {
        float* pr = pp + r * Tk;
        float* dr = dpp + r * Tk;
        const int64_t jn = row_keys(dm, r);
        exp_shift(pr, jn, lp[r]);
        std::fill(pr + jn, pr + Tk, 0.0f);
        // dS = P ∘ (dP − Σₖ Pₖ dPₖ) · scale; masked keys have P = 0, so dS = 0 there.
        const float di = dot_lanes(pr, dr, jn);
        for (int64_t j = 0; j < jn; ++j) dr[j] = pr[j] * (dr[j] - di) * dm.scale;
        std::fill(dr + jn, dr + Tk, 0.0f);
        if (lowp) {
          store_row(pr, Tk, p16 + r * Tk, DType::bf16);
          store_row(dr, Tk, ds16 + r * Tk, DType::bf16);
        }
      }
      const Tensor pg = lowp ? Tensor::wrap(p16, {n, Tq, Tk}, DType::bf16) : p;
      const Tensor dsg = lowp ? Tensor::wrap(ds16, {n, Tq, Tk}, DType::bf16) : dp;
      const Tensor dq = heads(dq4, b, h0, n), dk = heads(dk4, b, h0, n), dv = heads(dv4, b, h0, n);
      for (const QBlock& blk : query_blocks(dm)) {  // dQ = dS·K, by query block
        Tensor dqv = rows(dq, blk.r0, blk.rn);
        gemm(rows(dsg, blk.r0, blk.rn).slice(2, 0, blk.keys), false, rows(kf, 0, blk.keys), false,
             dqv);
      }
      // dV = Pᵀ·dO and dK = dSᵀ·Q by key block: keys [c0, c0 + cn) are seen by queries
      // c0..Tq-1 only (causal), so each block is one product over those rows, written once.
      // Without the mask it is one block of all Tk keys over all Tq queries.
      const std::vector<QBlock> key_blocks =
          dm.causal ? query_blocks(dm) : std::vector<QBlock>{{0, Tk, Tq}};
      for (const QBlock& c : key_blocks) {
        const int64_t q0 = dm.causal ? c.r0 : 0, qn = Tq - q0;
        Tensor dvv = rows(dv, c.r0, c.rn);
        Tensor dkv = rows(dk, c.r0, c.rn);
        gemm(rows(pg, q0, qn).slice(2, c.r0, c.r0 + c.rn), true, rows(gf, q0, qn), false, dvv);
        gemm(rows(dsg, q0, qn).slice(2, c.r0, c.r0 + c.rn), true, rows(qf, q0, qn), false, dkv);
      }
    }
  }
}

// Tiny problems (a few hundred multiply-adds a head) are not worth a fused kernel's packing.
bool tiny(const Dims& dm) { return dm.Tq * dm.Tk * dm.D < 4096; }

}  // namespace

void attention_gemm(const Tensor& q4, const Tensor& k4, const Tensor& v4, bool causal, float scale,
                    const Tensor& o4, float* lse) {
  attn_forward_gemm(q4, k4, v4, o4, lse, dims(q4, k4, causal, scale));
}

void attention_gemm_backward(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& g4,
                             const float* lse, bool causal, float scale, const Tensor& dq4,
                             const Tensor& dk4, const Tensor& dv4) {
  attn_backward_gemm(q4, k4, v4, g4, lse, dims(q4, k4, causal, scale), dq4, dk4, dv4);
}

void CpuBackend::attention(const Tensor& q4, const Tensor& k4, const Tensor& v4, bool causal,
                           float scale, const Tensor& o4, const Tensor& lse) {
  const Dims dm = dims(q4, k4, causal, scale);
  const FusedAttentionKernels* fused = fused_attention(q4.dtype(), q4.dtype(), dm.Tq, dm.Tk, dm.D);
  if (fused && !tiny(dm)) return fused->forward(q4, k4, v4, o4, lse.data<float>(), causal, scale);
  attn_forward_gemm(q4, k4, v4, o4, lse.data<float>(), dm);
}

void CpuBackend::attention_backward(const Tensor& q4, const Tensor& k4, const Tensor& v4,
                                    const Tensor& g4, const Tensor& lse, bool causal, float scale,
                                    const Tensor& dq4, const Tensor& dk4, const Tensor& dv4) {
  const Dims dm = dims(q4, k4, causal, scale);
  const FusedAttentionKernels* fused = fused_attention(q4.dtype(), g4.dtype(), dm.Tq, dm.Tk, dm.D);
  if (fused && !tiny(dm))
    return fused->backward(q4, k4, v4, g4, lse.data<float>(), causal, scale, dq4, dk4, dv4);
  attn_backward_gemm(q4, k4, v4, g4, lse.data<float>(), dm, dq4, dk4, dv4);
}

}  // namespace mixtrain::cpu
