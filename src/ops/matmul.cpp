// GEMM ops, forward and backward side by side: matmul (2-d and batched 3-d) and linear
// (y = x·wᵀ + b, torch layout). Category lower; the products run through gemm() (oneDNN,
// fp32 accumulation). Weight gradients of leaves stay fp32 (see ops.h).
#include "mixtrain/gemm.h"

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

namespace {

// A gemm operand: contiguous tensors as they are; the transpose of a contiguous tensor (its
// last two dims swapped, as transpose() makes) is passed untransposed with the flag flipped,
// which costs nothing; any other layout is copied.
Tensor gemm_operand(const Tensor& t, bool& trans) {
  if (t.is_contiguous()) return t;
  Tensor tt = t.transpose(-1, -2);
  if (tt.is_contiguous()) {
    trans = !trans;
    return tt;
  }
  return t.contiguous();
}

// C = op(a) · op(b) in out_dt, with the operands' layouts folded into the flags.
Tensor mm(const Tensor& a_in, bool ta, const Tensor& b_in, bool tb, DType out_dt) {
  const Tensor a = gemm_operand(a_in, ta);
  const Tensor b = gemm_operand(b_in, tb);
  return matmul_tensor(a, ta, b, tb, out_dt);
}

// The dtype a GEMM writes input v's gradient in: fp32 where v takes it (leaf or cast
// output), so the product is rounded at most once on its way to an fp32 master.
DType grad_out_dtype(const Variable& v, DType dt) { return f32_grad_ok(v) ? DType::f32 : dt; }

}  // namespace

Variable matmul(const Variable& a_in, const Variable& b_in) {
  const int64_t da = a_in.dim(), db = b_in.dim();
  auto fail = [&](const std::string& why) {
    return ShapeError(fmt::format("matmul: A {} and B {}: {}", vstr(a_in), vstr(b_in), why));
  };
  check_compute_dtype(a_in.data(), "matmul", "A");
  check_compute_dtype(b_in.data(), "matmul", "B");
  if (da < 2 || da > 3 || db < 2 || db > 3)
    throw fail("A must be 2-d or 3-d [Bt, M, K], B 2-d or 3-d [Bt, K, N]");
  if (db == 3 && da == 2) throw fail("a 3-d B needs a 3-d A (batched)");
  if (a_in.size(-1) != b_in.size(-2))
    throw fail(fmt::format("inner dims {} != {}", a_in.size(-1), b_in.size(-2)));
  if (da == 3 && db == 3 && a_in.size(0) != b_in.size(0))
    throw fail(fmt::format("batch dims {} != {}", a_in.size(0), b_in.size(0)));
  const DType dt = amp::op_dtype("matmul", amp::OpCategory::lower, {a_in.dtype(), b_in.dtype()});
  const Variable a = cast(a_in, dt), b = cast(b_in, dt);
  // A shared 2-d B under a 3-d A is one tall GEMM: [Bt·M, K] · [K, N].
  const bool shared = da == 3 && db == 2;
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  const int64_t Bt = da == 3 ? a.size(0) : 1;
  const Tensor ta = shared ? a.data().reshape({Bt * M, K}) : a.data();
  const Tensor tb = b.data();
  Tensor out = mm(ta, false, tb, false, dt);
  if (shared) out = out.view({Bt, M, N});
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const DType ga_dt = grad_out_dtype(a, dt), gb_dt = grad_out_dtype(b, dt);
  const Shape a_shape = a.shape();
  return make_op_result(out, {a, b}, "matmul", [=](const Tensor& g_in) {
    Tensor g = g_in.to(dt);
    if (shared) g = g.reshape({Bt * M, N});
    std::vector<Tensor> gr(2);
    if (need_a) {  // dA = dC · Bᵀ
      gr[0] = mm(g, false, tb, true, ga_dt);
      if (shared) gr[0] = gr[0].view(a_shape);
    }
    if (need_b) gr[1] = mm(ta, true, g, false, gb_dt);  // dB = Aᵀ · dC (summed over Bt if shared)
    return gr;
  });
}

namespace {

// y = op(x)·wᵀ + b with op the identity (linear) or GELU (gelu_linear). GELU's output is the
// product's input, the largest activation of a GPT block's MLP; gelu_linear keeps x instead
// and computes GELU again in backward (the same kernel: the same bits as gelu then linear).
Variable linear_impl(const char* op, const Variable& x_in, const Variable& w_in,
                     const Variable& bias_in, bool gelu_in) {
  const bool has_bias = bias_in.defined();
  if (x_in.dim() < 1 || w_in.dim() != 2 || x_in.size(-1) != w_in.size(1) ||
      (has_bias && (bias_in.dim() != 1 || bias_in.size(0) != w_in.size(0))))
    throw ShapeError(fmt::format(
        "{}: x {} and w {}{}: need x [..., in], w [out, in], bias [out]", op, vstr(x_in),
        vstr(w_in), has_bias ? fmt::format(" and bias {}", vstr(bias_in)) : std::string()));
  check_compute_dtype(x_in.data(), op, "x");
  check_compute_dtype(w_in.data(), op, "w");
  if (has_bias) check_compute_dtype(bias_in.data(), op, "bias");
  const DType dt = amp::op_dtype("linear", amp::OpCategory::lower, {x_in.dtype(), w_in.dtype()});
  // GELU computes in x's dtype (category same); where the product's dtype differs, the two
  // ops as they are (a cast between them) are the reference, so run them.
  if (gelu_in && amp::op_dtype("gelu", amp::OpCategory::same, {x_in.dtype()}) != dt)
    return linear(gelu(x_in), w_in, bias_in);
  const Variable x = cast(x_in, dt), w = cast(w_in, dt);
  const Variable bias = has_bias ? cast(bias_in, dt) : Variable();
  const int64_t in = w.size(1), outf = w.size(0);
  const Tensor xs = gelu_in ? x.data().contiguous() : Tensor();  // kept: GELU's input
  const Tensor x2 =
      (gelu_in ? apply_map(MapOp::gelu, {xs}, xs.shape(), dt) : x.data()).reshape({-1, in});
  const int64_t N = x2.size(0);
  const Tensor tw = w.data();
  Tensor y;
  if (has_bias) {
    // The bias is a fused GEMM epilogue: added to the fp32 sums, rounded once into dt (no
    // double rounding, no fp32 intermediate tensor, no second pass over y).
    bool tx = false, twt = true;
    const Tensor xa = gemm_operand(x2, tx);
    const Tensor wa = gemm_operand(tw, twt);
    y = Tensor::empty({N, outf}, dt, xa.device());
    const Tensor b = bias.data();
    gemm_ex(xa, tx, wa, twt, y, 1.0f, 0.0f, &b, Epilogue::none);
  } else {
    y = mm(x2, false, tw, true, dt);
  }
  Shape oshape = x.shape();
  oshape.back() = outf;
  y = y.view(oshape);
  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  const bool need_b = has_bias && bias.requires_grad();
  const DType gx_dt = gelu_in ? dt : grad_out_dtype(x, dt), gw_dt = grad_out_dtype(w, dt);
  const DType gb_dt = has_bias ? grad_out_dtype(bias, dt) : dt;
  const Shape x_shape = x.shape();
  std::vector<Variable> ins{x, w};
  if (has_bias) ins.push_back(bias);
  // With GELU the closure holds x, not the product's input (x2 is dropped with this frame).
  const Tensor keep = gelu_in ? xs : x2;
  return make_op_result(y, ins, op, [=](const Tensor& g_in) {
    const Tensor g = g_in.to(dt).reshape({N, outf});
    std::vector<Tensor> gr(has_bias ? 3 : 2);
    // dX before dW: dX's temporaries (on AVX2 a padded fp32 copy of W, gemm_onednn.cpp) are
    // gone before dW exists (the other order raised the AVX2 MLP step's peak by 14 MiB).
    if (need_x) {  // dX = dY · W, then through GELU's derivative
      gr[0] = mm(g, false, tw, false, gx_dt).view(x_shape);
      if (gelu_in)
        gr[0] = apply_map(MapOp::gelu_grad, {gr[0], keep}, keep.shape(), dt).view(x_shape);
    }
    if (need_w) {  // dW = dYᵀ · op(x), op(x) recomputed for GELU and gone after this product
      const Tensor a =
          gelu_in ? apply_map(MapOp::gelu, {keep}, keep.shape(), dt).reshape({N, in}) : keep;
      gr[1] = mm(g, true, a, false, gw_dt);
    }
    if (need_b) gr[2] = sum_f32(g, {0}).view({outf}).to(gb_dt);
    return gr;
  });
}

}  // namespace

Variable linear(const Variable& x, const Variable& w, const Variable& bias) {
  return linear_impl("linear", x, w, bias, false);
}

Variable gelu_linear(const Variable& x, const Variable& w, const Variable& bias) {
  return linear_impl("gelu_linear", x, w, bias, true);
}

}  // namespace mixtrain
