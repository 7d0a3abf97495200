// Attention ops, forward and backward side by side: scaled_dot_product_attention over [B, H, T, D]
// and attention_qkv straight from a packed [B, T, 3·C] projection. Category lower; the kernels
// (Backend::attention) keep fp32 scores and softmax, one query row at a time, and save only the
// per-row logsumexp, from which the backward recomputes the probabilities (flash-attention
// style).
#include <cmath>
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "mixtrain/ops_nn.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

namespace {
constexpr const char* kOp = "scaled_dot_product_attention";
}  // namespace

namespace {

// A 4-d operand the kernels can read in place: D must be unit-stride.
Tensor unit_d(const Tensor& t) { return t.strides().back() == 1 ? t : t.contiguous(); }

}  // namespace

Variable scaled_dot_product_attention(const Variable& q, const Variable& k, const Variable& v,
                                      bool causal, std::optional<float> scale) {
  check_defined(q, kOp, "q");
  check_defined(k, kOp, "k");
  check_defined(v, kOp, "v");
  check_compute_dtype(q.data(), kOp, "q");
  check_compute_dtype(k.data(), kOp, "k");
  check_compute_dtype(v.data(), kOp, "v");
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
  const int64_t D = q.size(3), Tq = q.size(2), Tk = k.size(2);
  const float sc = scale ? *scale : 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(D, 1)));
  if (!causal && Tk == 0 && Tq > 0)
    throw ShapeError(fmt::format("{}: no keys to attend to; got {}", kOp, shapes()));
  Backend& be = backend_of(kOp, {&q.data(), &k.data(), &v.data()});
  const DType dt = amp::op_dtype(kOp, amp::OpCategory::lower, {q.dtype(), k.dtype(), v.dtype()});
  // Strided views (e.g. heads transposed out of [B, T, H, D]) are read where they lie.
  const Tensor qs = unit_d(q.data().to(dt)), ks = unit_d(k.data().to(dt)),
               vs = unit_d(v.data().to(dt));
  const Device dev = qs.device();
  Tensor out = Tensor::empty(qs.shape(), dt, dev);
  Tensor lse = Tensor::empty({q.size(0) * q.size(1), Tq}, DType::f32, dev);
  be.attention(qs, ks, vs, causal, sc, out, lse);
  const DType q_dt = q.dtype(), k_dt = k.dtype(), v_dt = v.dtype();
  return make_op_result(out, {q, k, v}, kOp,
                        [qs, ks, vs, lse, causal, sc, dev, q_dt, k_dt, v_dt](const Tensor& g_in) {
                          Tensor dq = Tensor::empty(qs.shape(), q_dt, dev);
                          Tensor dk = Tensor::empty(ks.shape(), k_dt, dev);
                          Tensor dv = Tensor::empty(vs.shape(), v_dt, dev);
                          backend_for(dev).attention_backward(qs, ks, vs, unit_d(g_in), lse, causal,
                                                              sc, dq, dk, dv);
                          return std::vector<Tensor>{dq, dk, dv};
                        });
}

Variable attention_qkv(const Variable& qkv, int64_t heads, bool causal) {
  constexpr const char* op = "attention_qkv";
  check_defined(qkv, op, "qkv");
  check_compute_dtype(qkv.data(), op, "qkv");
  if (qkv.dim() != 3 || heads <= 0 || qkv.size(2) % (3 * heads) != 0)
    throw ShapeError(
        fmt::format("{}: qkv must be [B, T, 3·C] with C a multiple of heads ({}); got {}", op,
                    heads, qkv.data().str()));
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = heads, D = C / H;
  const float sc = 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(D, 1)));
  const Device dev = qkv.data().device();
  const DType dt = amp::op_dtype(kOp, amp::OpCategory::lower, {qkv.dtype()});
  const Variable x = cast(qkv, dt);
  const Tensor t = x.data().contiguous();
  // q, k, v: [B, H, T, D] views of the packed rows (token stride 3·C, head stride D).
  const Shape qkv_strides{T * 3 * C, D, 3 * C, 1}, out_strides{T * C, D, C, 1};
  auto part = [=](const Tensor& base, int64_t i) {
    return base.as_strided({B, H, T, D}, qkv_strides, i * C);
  };
  Tensor out = Tensor::empty({B, T, C}, dt, dev);
  Tensor o4 = out.as_strided({B, H, T, D}, out_strides);
  Tensor lse = Tensor::empty({B * H, T}, DType::f32, dev);
  backend_for(dev).attention(part(t, 0), part(t, 1), part(t, 2), causal, sc, o4, lse);
  return make_op_result(out, {x}, op, [=](const Tensor& g_in) {
    const Tensor g = g_in.contiguous();
    Tensor dqkv = Tensor::empty(t.shape(), dt, dev);
    backend_for(dev).attention_backward(part(t, 0), part(t, 1), part(t, 2),
                                        g.as_strided({B, H, T, D}, out_strides), lse, causal, sc,
                                        part(dqkv, 0), part(dqkv, 1), part(dqkv, 2));
    return std::vector<Tensor>{dqkv};
  });
}

}  // namespace mixtrain
