// scaled_dot_product_attention: fused, flash-attention-style forward and backward on the CPU.
// One (batch, head) per task; one query row of fp32 scores at a time; only the per-row
// logsumexp is saved, and backward recomputes the probabilities from it.
#include <cmath>
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops_nn.h"
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

template <class T>
void attn_forward(const T* q, const T* k, const T* v, T* out, float* lse, const Dims& dm) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D;
#pragma omp parallel if (dm.BH * Tq * Tk * D > kParallelMin)
  {
    std::vector<float> kr(Tk * D), kt(Tk * D), vr(Tk * D), vt(Tk * D);
    std::vector<float> qb(D), o(D), s(Tk);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < dm.BH; ++bh) {
      load_head(k + bh * Tk * D, Tk, D, kr.data(), kt.data());
      load_head(v + bh * Tk * D, Tk, D, vr.data(), vt.data());
      for (int64_t i = 0; i < Tq; ++i) {
        const float* qr = load_row(q + (bh * Tq + i) * D, D, qb.data());
        const int64_t jn = dm.causal ? i + 1 : Tk;
        scores(qr, kt.data(), Tk, D, jn, dm.scale, s.data());
        const float m = max_row(s.data(), jn);
        for (int64_t j = 0; j < jn; ++j) s[j] = std::exp(s[j] - m);
        const float l = sum_lanes(s.data(), jn);
        lse[bh * Tq + i] = m + std::log(l);
        const float inv = 1.0f / l;
        std::fill(o.begin(), o.end(), 0.0f);
        for (int64_t j = 0; j < jn; ++j) {
          const float pj = s[j] * inv;
          const float* __restrict vj = vr.data() + j * D;
          for (int64_t d = 0; d < D; ++d) o[d] += pj * vj[d];
        }
        store_row(o.data(), D, out + (bh * Tq + i) * D, dtype_of<T>());
      }
    }
  }
}

// Per query row i: pⱼ = exp(sⱼ - lseᵢ), dpⱼ = dOᵢ·vⱼ, dsⱼ = pⱼ(dpⱼ - Σₖ pₖdpₖ);
// dqᵢ = scale·Σⱼ dsⱼkⱼ, dkⱼ += scale·dsⱼqᵢ, dvⱼ += pⱼdOᵢ. Σₖ pₖdpₖ equals dOᵢ·Oᵢ, but summing
// it here from fp32 p and dp avoids reading the rounded 16-bit output.
template <class T>
void attn_backward(const T* q, const T* k, const T* v, const Tensor& g, const float* lse,
                   const Dims& dm, void* dq, DType dq_dt, void* dk, DType dk_dt, void* dv,
                   DType dv_dt) {
  const int64_t Tq = dm.Tq, Tk = dm.Tk, D = dm.D;
  const DType gdt = g.dtype();
  const size_t ges = dtype_size(gdt);
  const char* gp = static_cast<const char*>(g.raw_data());
  const size_t qes = dtype_size(dq_dt), kes = dtype_size(dk_dt), ves = dtype_size(dv_dt);
#pragma omp parallel if (dm.BH * Tq * Tk * D > kParallelMin)
  {
    std::vector<float> kr(Tk * D), kt(Tk * D), vr(Tk * D), vt(Tk * D), dkb(Tk * D), dvb(Tk * D);
    std::vector<float> qb(D), gb(D), dqb(D), p(Tk), dp(Tk);
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < dm.BH; ++bh) {
      load_head(k + bh * Tk * D, Tk, D, kr.data(), kt.data());
      load_head(v + bh * Tk * D, Tk, D, vr.data(), vt.data());
      std::fill(dkb.begin(), dkb.end(), 0.0f);
      std::fill(dvb.begin(), dvb.end(), 0.0f);
      for (int64_t i = 0; i < Tq; ++i) {
        const float* qr = load_row(q + (bh * Tq + i) * D, D, qb.data());
        convert(gp + (bh * Tq + i) * D * ges, gdt, gb.data(), DType::f32, static_cast<size_t>(D));
        const int64_t jn = dm.causal ? i + 1 : Tk;
        scores(qr, kt.data(), Tk, D, jn, dm.scale, p.data());
        const float l = lse[bh * Tq + i];
        for (int64_t j = 0; j < jn; ++j) p[j] = std::exp(p[j] - l);
        scores(gb.data(), vt.data(), Tk, D, jn, 1.0f, dp.data());
        const float di = dot_lanes(p.data(), dp.data(), jn);
        std::fill(dqb.begin(), dqb.end(), 0.0f);
        for (int64_t j = 0; j < jn; ++j) {
          const float ds = p[j] * (dp[j] - di) * dm.scale;
          const float pj = p[j];
          const float* __restrict kj = kr.data() + j * D;
          float* __restrict dkj = dkb.data() + j * D;
          float* __restrict dvj = dvb.data() + j * D;
          for (int64_t d = 0; d < D; ++d) {
            dqb[d] += ds * kj[d];
            dkj[d] += ds * qr[d];
            dvj[d] += pj * gb[d];
          }
        }
        store_row(dqb.data(), D, static_cast<char*>(dq) + (bh * Tq + i) * D * qes, dq_dt);
      }
      store_row(dkb.data(), Tk * D, static_cast<char*>(dk) + bh * Tk * D * kes, dk_dt);
      store_row(dvb.data(), Tk * D, static_cast<char*>(dv) + bh * Tk * D * ves, dv_dt);
    }
  }
}

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
  const Tensor qs = q.data().to(dt).contiguous();
  const Tensor ks = k.data().to(dt).contiguous();
  const Tensor vs = v.data().to(dt).contiguous();
  Tensor out = Tensor::empty(qs.shape(), dt);
  Tensor lse = Tensor::empty({dm.BH, dm.Tq}, DType::f32);
  dispatch_compute(dt, kOp, [&](auto t0) {
    using T = decltype(t0);
    attn_forward<T>(qs.data<T>(), ks.data<T>(), vs.data<T>(), out.data<T>(), lse.data<float>(), dm);
  });
  const DType q_dt = q.dtype(), k_dt = k.dtype(), v_dt = v.dtype();
  return make_op_result(
      out, {q, k, v}, kOp, [qs, ks, vs, lse, dm, dt, q_dt, k_dt, v_dt](const Tensor& g_in) {
        const Tensor g = g_in.contiguous();
        Tensor dq = Tensor::empty(qs.shape(), q_dt);
        Tensor dk = Tensor::empty(ks.shape(), k_dt);
        Tensor dv = Tensor::empty(vs.shape(), v_dt);
        dispatch_compute(dt, kOp, [&](auto t0) {
          using T = decltype(t0);
          attn_backward<T>(qs.data<T>(), ks.data<T>(), vs.data<T>(), g, lse.data<float>(), dm,
                           dq.raw_data(), q_dt, dk.raw_data(), k_dt, dv.raw_data(), v_dt);
        });
        return std::vector<Tensor>{dq, dk, dv};
      });
}

}  // namespace mixtrain
