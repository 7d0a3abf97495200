// scaled_dot_product_attention on the CPU: chunks of heads through oneDNN batched fp32 GEMMs
// (scores never exceed one chunk), and flash-attention-style per-head loops for tiny heads.
// One (batch, head) per task; one query row of fp32 scores at a time; only the per-row
// logsumexp is saved, and backward recomputes the probabilities from it. The per-head loops
// are built for AVX-512, AVX2 and baseline x86-64 and chosen at run time. Where D is a multiple
// of 32, AVX-512 and AVX2 CPUs run fused kernels instead (nn_attention_fused_impl.h: bf16 pairs
// on AVX512-BF16, fp32 FMA tiles for every dtype elsewhere).
#include <cmath>
#include <string>
#include <vector>

#include "cpu/simd/vmath.h"
#include "mixtrain/cpu.h"
#include "mixtrain/gemm.h"

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "mixtrain/ops_nn.h"
#include "ops/nn_attention_fused.h"
#include "ops/nn_common.h"

namespace mixtrain {

using namespace nn_detail;

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

struct Dims {
  int64_t BH, Tq, Tk, D;
  bool causal;
  float scale;
};

// Loads one head's [T, D] rows as fp32 into rows and their transpose [D, T] into cols. The
// score loops run over keys j innermost against the transposed copy (s[j] += q[d]·kᵀ[d][j]):
// plain multiply-adds the compiler vectorises, no horizontal reductions.
template <class T>
void load_head(const T* p, int64_t T_, int64_t D, float* rows, float* cols) {
  if constexpr (std::is_same_v<T, float>) {
    std::copy(p, p + T_ * D, rows);
  } else {
    convert(p, dtype_of<T>(), rows, DType::f32, static_cast<size_t>(T_ * D));
  }
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t d = 0; d < D; ++d) cols[d * T_ + t] = rows[t * D + d];
}

// s[0, jn) = scale · q·kⱼ, with kt the transposed keys [D, Tk].
inline void scores(const float* q, const float* kt, int64_t Tk, int64_t D, int64_t jn, float scale,
                   float* s) {
  std::fill(s, s + jn, 0.0f);
  for (int64_t d = 0; d < D; ++d) {
    const float a = q[d] * scale;
    const float* __restrict kr = kt + d * Tk;
    for (int64_t j = 0; j < jn; ++j) s[j] += a * kr[j];
  }
}

// One head's forward on fp32 buffers: q [Tq, D], kt = kᵀ [D, Tk], v [Tk, D] -> o [Tq, D] and
// lse [Tq]. `s` holds one row of Tk scores. Compiled once per ISA below (always_inline body).
[[gnu::always_inline]] inline void head_forward_body(const float* q, const float* kt,
                                                     const float* v, const Dims& dm, float* s,
                                                     float* o, float* lse) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D;
  for (int64_t i = 0; i < Tq; ++i) {
    const int64_t jn = dm.causal ? i + 1 : Tk;
    scores(q + i * D, kt, Tk, D, jn, dm.scale, s);
    const float m = max_row(s, jn);
    for (int64_t j = 0; j < jn; ++j) s[j] = std::exp(s[j] - m);
    const float l = sum_lanes(s, jn);
    lse[i] = m + std::log(l);
    const float inv = 1.0f / l;
    float* __restrict oi = o + i * D;
    std::fill(oi, oi + D, 0.0f);
    for (int64_t j = 0; j < jn; ++j) {
      const float pj = s[j] * inv;
      const float* __restrict vj = v + j * D;
      for (int64_t d = 0; d < D; ++d) oi[d] += pj * vj[d];
    }
  }
}

// One head's backward on fp32 buffers. Per query row i: pⱼ = exp(sⱼ - lseᵢ), dpⱼ = dOᵢ·vⱼ,
// dsⱼ = pⱼ(dpⱼ - Σₖ pₖdpₖ); dqᵢ = scale·Σⱼ dsⱼkⱼ, dkⱼ += scale·dsⱼqᵢ, dvⱼ += pⱼdOᵢ. Σₖ pₖdpₖ
// equals dOᵢ·Oᵢ, but summing it here from fp32 p and dp avoids reading the rounded output.
[[gnu::always_inline]] inline void head_backward_body(const float* q, const float* g,
                                                      const float* k, const float* kt,
                                                      const float* vt, const float* lse,
                                                      const Dims& dm, float* p, float* dp,
                                                      float* dq, float* dk, float* dv) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D;
  std::fill(dk, dk + Tk * D, 0.0f);
  std::fill(dv, dv + Tk * D, 0.0f);
  for (int64_t i = 0; i < Tq; ++i) {
    const float* __restrict qi = q + i * D;
    const float* __restrict gi = g + i * D;
    const int64_t jn = dm.causal ? i + 1 : Tk;
    scores(qi, kt, Tk, D, jn, dm.scale, p);
    const float l = lse[i];
    for (int64_t j = 0; j < jn; ++j) p[j] = std::exp(p[j] - l);
    scores(gi, vt, Tk, D, jn, 1.0f, dp);
    const float di = dot_lanes(p, dp, jn);
    float* __restrict dqi = dq + i * D;
    std::fill(dqi, dqi + D, 0.0f);
    for (int64_t j = 0; j < jn; ++j) {
      const float ds = p[j] * (dp[j] - di) * dm.scale;
      const float pj = p[j];
      const float* __restrict kj = k + j * D;
      float* __restrict dkj = dk + j * D;
      float* __restrict dvj = dv + j * D;
      for (int64_t d = 0; d < D; ++d) {
        dqi[d] += ds * kj[d];
        dkj[d] += ds * qi[d];
        dvj[d] += pj * gi[d];
      }
    }
  }
}

// The per-head bodies built for AVX-512, AVX2+FMA and the baseline, picked at run time (the
// library itself is compiled for baseline x86-64). g++ contracts a*b+c into FMA where the
// target has it, so the AVX2 and AVX-512 variants agree bit for bit (same contractions, fixed
// 16-lane reductions) while the baseline one differs in the last fp32 bits (one rounding more
// per multiply-add); all are tested against the reference (MIXTRAIN_ISA caps the choice).
#define MIXTRAIN_ATTN_VARIANT(suffix, attr)                                                        \
  attr void head_forward_##suffix(const float* q, const float* kt, const float* v, const Dims& dm, \
                                  float* s, float* o, float* lse) {                                \
    head_forward_body(q, kt, v, dm, s, o, lse);                                                    \
  }                                                                                                \
  attr void head_backward_##suffix(                                                                \
      const float* q, const float* g, const float* k, const float* kt, const float* vt,            \
      const float* lse, const Dims& dm, float* p, float* dp, float* dq, float* dk, float* dv) {    \
    head_backward_body(q, g, k, kt, vt, lse, dm, p, dp, dq, dk, dv);                               \
  }
MIXTRAIN_ATTN_VARIANT(avx512, MIXTRAIN_TARGET_AVX512)
MIXTRAIN_ATTN_VARIANT(avx2, MIXTRAIN_TARGET_AVX2)
MIXTRAIN_ATTN_VARIANT(base, MIXTRAIN_TARGET_BASE)
#undef MIXTRAIN_ATTN_VARIANT

using HeadForward = void (*)(const float*, const float*, const float*, const Dims&, float*, float*,
                             float*);
using HeadBackward = void (*)(const float*, const float*, const float*, const float*, const float*,
                              const float*, const Dims&, float*, float*, float*, float*, float*);

// Loads n contiguous elements of p as fp32 into dst.
template <class T>
void load_block(const T* p, int64_t n, float* dst) {
  if constexpr (std::is_same_v<T, float>) {
    std::copy(p, p + n, dst);
  } else {
    convert(p, dtype_of<T>(), dst, DType::f32, static_cast<size_t>(n));
  }
}

template <class T>
void attn_forward(const T* q, const T* k, const T* v, T* out, float* lse, const Dims& dm) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D;
  const HeadForward fwd[3] = {head_forward_base, head_forward_avx2, head_forward_avx512};
  const HeadForward f = fwd[simd_variant()];
#pragma omp parallel if (dm.BH * Tq * Tk * D > kParallelMin)
  {
    std::vector<float> qb(Tq * D), kr(Tk * D), kt(Tk * D), vr(Tk * D), vt(Tk * D), o(Tq * D), s(Tk);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < dm.BH; ++bh) {
      load_block(q + bh * Tq * D, Tq * D, qb.data());
      load_head(k + bh * Tk * D, Tk, D, kr.data(), kt.data());
      load_block(v + bh * Tk * D, Tk * D, vr.data());
      f(qb.data(), kt.data(), vr.data(), dm, s.data(), o.data(), lse + bh * Tq);
      store_row(o.data(), Tq * D, out + bh * Tq * D, dtype_of<T>());
    }
  }
}

template <class T>
void attn_backward(const T* q, const T* k, const T* v, const Tensor& g, const float* lse,
                   const Dims& dm, void* dq, DType dq_dt, void* dk, DType dk_dt, void* dv,
                   DType dv_dt) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D;
  const DType gdt = g.dtype();
  const size_t ges = dtype_size(gdt);
  const char* gp = static_cast<const char*>(g.raw_data());
  const size_t qes = dtype_size(dq_dt), kes = dtype_size(dk_dt), ves = dtype_size(dv_dt);
  const HeadBackward bwd[3] = {head_backward_base, head_backward_avx2, head_backward_avx512};
  const HeadBackward f = bwd[simd_variant()];
#pragma omp parallel if (dm.BH * Tq * Tk * D > kParallelMin)
  {
    std::vector<float> qb(Tq * D), gb(Tq * D), dqb(Tq * D), kr(Tk * D), kt(Tk * D), vr(Tk * D),
        vt(Tk * D), dkb(Tk * D), dvb(Tk * D), p(Tk), dp(Tk);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < dm.BH; ++bh) {
      load_block(q + bh * Tq * D, Tq * D, qb.data());
      convert(gp + bh * Tq * D * ges, gdt, gb.data(), DType::f32, static_cast<size_t>(Tq * D));
      load_head(k + bh * Tk * D, Tk, D, kr.data(), kt.data());
      load_head(v + bh * Tk * D, Tk, D, vr.data(), vt.data());
      f(qb.data(), gb.data(), kr.data(), kt.data(), vt.data(), lse + bh * Tq, dm, p.data(),
        dp.data(), dqb.data(), dkb.data(), dvb.data());
      store_row(dqb.data(), Tq * D, static_cast<char*>(dq) + bh * Tq * D * qes, dq_dt);
      store_row(dkb.data(), Tk * D, static_cast<char*>(dk) + bh * Tk * D * kes, dk_dt);
      store_row(dvb.data(), Tk * D, static_cast<char*>(dv) + bh * Tk * D * ves, dv_dt);
    }
  }
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

void attn_forward_gemm(const Tensor& q4, const Tensor& k4, const Tensor& v4, Tensor& o4, float* lse,
                       const Dims& dm) {
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
        simd::exp_shift(pr, jn, lp[r]);
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

// Tiny heads (a few hundred multiply-adds) stay on the loops: a GEMM call costs more there.
bool use_gemm(const Dims& dm) { return dm.Tq * dm.Tk * dm.D >= 4096; }

// Forward on 4-d [B, H, T, D] views of one dtype (D unit-stride): the GEMM path reads and
// writes them in place; the per-head loops take contiguous copies.
void attention_forward(const Tensor& q4, const Tensor& k4, const Tensor& v4, Tensor& o4,
                       Tensor& lse, const Dims& dm) {
  if (const auto kind = attention_fused_kind(q4.dtype(), q4.dtype(), dm.Tq, dm.Tk, dm.D);
      use_gemm(dm) && kind != FusedAttention::none)
    return attention_forward_fused(kind, q4, k4, v4, o4, lse.data<float>(), dm.causal, dm.scale);
  if (use_gemm(dm)) return attn_forward_gemm(q4, k4, v4, o4, lse.data<float>(), dm);
  const Tensor qc = q4.contiguous(), kc = k4.contiguous(), vc = v4.contiguous();
  Tensor oc = o4.is_contiguous() ? o4 : Tensor::empty(o4.shape(), o4.dtype());
  dispatch_compute(q4.dtype(), kOp, [&](auto t0) {
    using T = decltype(t0);
    attn_forward<T>(qc.data<T>(), kc.data<T>(), vc.data<T>(), oc.data<T>(), lse.data<float>(), dm);
  });
  if (!o4.is_contiguous()) o4.copy_from(oc);
}

void attention_backward(const Tensor& q4, const Tensor& k4, const Tensor& v4, const Tensor& g4,
                        const Tensor& lse, const Dims& dm, Tensor dq4, Tensor dk4, Tensor dv4) {
  if (const auto kind = attention_fused_kind(q4.dtype(), g4.dtype(), dm.Tq, dm.Tk, dm.D);
      use_gemm(dm) && kind != FusedAttention::none)
    return attention_backward_fused(kind, q4, k4, v4, g4, lse.data<float>(), dm.causal, dm.scale,
                                    dq4, dk4, dv4);
  if (use_gemm(dm)) return attn_backward_gemm(q4, k4, v4, g4, lse.data<float>(), dm, dq4, dk4, dv4);
  const Tensor qc = q4.contiguous(), kc = k4.contiguous(), vc = v4.contiguous();
  const Tensor gc = g4.contiguous();
  auto out = [](const Tensor& t) {
    return t.is_contiguous() ? t : Tensor::empty(t.shape(), t.dtype());
  };
  Tensor dq = out(dq4), dk = out(dk4), dv = out(dv4);
  dispatch_compute(q4.dtype(), kOp, [&](auto t0) {
    using T = decltype(t0);
    attn_backward<T>(qc.data<T>(), kc.data<T>(), vc.data<T>(), gc, lse.data<float>(), dm,
                     dq.raw_data(), dq.dtype(), dk.raw_data(), dk.dtype(), dv.raw_data(),
                     dv.dtype());
  });
  for (auto [view, buf] : {std::pair{&dq4, &dq}, {&dk4, &dk}, {&dv4, &dv}})
    if (!view->is_contiguous()) view->copy_from(*buf);
}

// A 4-d operand the kernels can read in place: D must be unit-stride.
Tensor unit_d(const Tensor& t) { return t.strides().back() == 1 ? t : t.contiguous(); }

}  // namespace

Variable scaled_dot_product_attention(const Variable& q, const Variable& k, const Variable& v,
                                      bool causal, std::optional<float> scale) {
  check_defined(q, kOp, "q");
  check_defined(k, kOp, "k");
  check_defined(v, kOp, "v");
  check_float(q.data(), kOp, "q");
  check_float(k.data(), kOp, "k");
  check_float(v.data(), kOp, "v");
  const auto shapes = [&] {
    return fmt::format("q {}, k {}, v {}", q.data().str(), k.data().str(), v.data().str());
  };
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    throw ShapeError(fmt::format("{}: q, k, v must be 4-d [B, H, T, D]; got {}", kOp, shapes()));
  if (k.shape() != v.shape() || q.size(0) != k.size(0) || q.size(1) != k.size(1) ||
      q.size(3) != k.size(3))
    throw ShapeError(fmt::format("{}: k and v must be [B, H, Tk, D] with q's B, H and D; got {}",
                                 kOp, shapes()));
  if (causal && q.size(2) != k.size(2))
    throw ShapeError(fmt::format("{}: causal attention needs Tq == Tk; got {}", kOp, shapes()));
  const int64_t D = q.size(3);
  Dims dm{q.size(0) * q.size(1),
          q.size(2),
          k.size(2),
          D,
          causal,
          scale ? *scale : 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(D, 1)))};
  if (!causal && dm.Tk == 0 && dm.Tq > 0)
    throw ShapeError(fmt::format("{}: no keys to attend to; got {}", kOp, shapes()));
  const DType dt = amp::op_dtype(kOp, amp::OpCategory::lower, {q.dtype(), k.dtype(), v.dtype()});
  // Strided views (e.g. heads transposed out of [B, T, H, D]) are read where they lie.
  const Tensor qs = unit_d(q.data().to(dt)), ks = unit_d(k.data().to(dt)),
               vs = unit_d(v.data().to(dt));
  Tensor out = Tensor::empty(qs.shape(), dt);
  Tensor lse = Tensor::empty({dm.BH, dm.Tq}, DType::f32);
  attention_forward(qs, ks, vs, out, lse, dm);
  const DType q_dt = q.dtype(), k_dt = k.dtype(), v_dt = v.dtype();
  return make_op_result(out, {q, k, v}, kOp,
                        [qs, ks, vs, lse, dm, q_dt, k_dt, v_dt](const Tensor& g_in) {
                          Tensor dq = Tensor::empty(qs.shape(), q_dt);
                          Tensor dk = Tensor::empty(ks.shape(), k_dt);
                          Tensor dv = Tensor::empty(vs.shape(), v_dt);
                          attention_backward(qs, ks, vs, unit_d(g_in), lse, dm, dq, dk, dv);
                          return std::vector<Tensor>{dq, dk, dv};
                        });
}

Variable attention_qkv(const Variable& qkv, int64_t heads, bool causal) {
  constexpr const char* op = "attention_qkv";
  check_defined(qkv, op, "qkv");
  check_float(qkv.data(), op, "qkv");
  if (qkv.dim() != 3 || heads <= 0 || qkv.size(2) % (3 * heads) != 0)
    throw ShapeError(
        fmt::format("{}: qkv must be [B, T, 3·C] with C a multiple of heads ({}); got {}", op,
                    heads, qkv.data().str()));
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = heads, D = C / H;
  const Dims dm{B * H, T,      T,
                D,     causal, 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(D, 1)))};
  const DType dt = amp::op_dtype(kOp, amp::OpCategory::lower, {qkv.dtype()});
  const Variable x = cast(qkv, dt);
  const Tensor t = x.data().contiguous();
  // q, k, v: [B, H, T, D] views of the packed rows (token stride 3·C, head stride D).
  const Shape qkv_strides{T * 3 * C, D, 3 * C, 1}, out_strides{T * C, D, C, 1};
  auto part = [=](const Tensor& base, int64_t i) {
    return base.as_strided({B, H, T, D}, qkv_strides, i * C);
  };
  Tensor out = Tensor::empty({B, T, C}, dt);
  Tensor o4 = out.as_strided({B, H, T, D}, out_strides);
  Tensor lse = Tensor::empty({dm.BH, T}, DType::f32);
  attention_forward(part(t, 0), part(t, 1), part(t, 2), o4, lse, dm);
  return make_op_result(out, {x}, op, [=](const Tensor& g_in) {
    const Tensor g = g_in.contiguous();
    Tensor dqkv = Tensor::empty(t.shape(), dt);
    attention_backward(part(t, 0), part(t, 1), part(t, 2), g.as_strided({B, H, T, D}, out_strides),
                       lse, dm, part(dqkv, 0), part(dqkv, 1), part(dqkv, 2));
    return std::vector<Tensor>{dqkv};
  });
}

}  // namespace mixtrain
