// GEMM ops, forward and backward side by side: matmul (2-d and batched 3-d) and linear
// (y = x·wᵀ + b, torch layout). Category lower; the products run through gemm() (oneDNN,
// fp32 accumulation). Weight gradients of leaves stay fp32 (see ops.h).
#include "mixtrain/gemm.h"

#include <cstring>

#include "mixtrain/amp/fp8.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/dist/comm.h"
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

// ---- fp8 (amp/fp8.h) -----------------------------------------------------------------------

// The largest amax over the data-parallel ranks: non-negative floats (NaN, positive, above Inf)
// order as their bits do, so one integer max carries them.
float amax_over_ranks(float amax) {
  uint32_t u;
  std::memcpy(&u, &amax, 4);
  int64_t bits = static_cast<int64_t>(u & 0x7fffffffu);
  dist::allreduce_max(&bits, 1);
  u = static_cast<uint32_t>(bits);
  std::memcpy(&amax, &u, 4);
  return amax;
}

// The per-tensor scale of one GEMM input. Delayed scaling uses the scale its history set at the
// end of the last step and only measures the amax when the use is recorded; current scaling
// (also delayed's first step, and a bare linear() outside a module) measures it now, taken over
// every rank while training data-parallel (weights are the same on every rank already).
float fp8_tensor_scale(const Tensor& t, amp::Fp8Role role, const amp::Fp8Options& o,
                       amp::Fp8TensorMeta* meta, bool record) {
  const bool delayed = o.recipe == amp::Fp8Recipe::delayed && meta && meta->history.filled() > 0;
  if (delayed && !record) return meta->scale;
  float amax = backend_for(t.device()).amax(t);
  if (record && role != amp::Fp8Role::weight && dist::size() > 1) amax = amax_over_ranks(amax);
  if (meta && record) meta->observe(amax);
  if (delayed) return meta->scale;
  const float scale = amp::fp8_scale(amax, amp::fp8_max(amp::fp8_format(role)), o.margin, 1.0f);
  // Delayed scaling's first step: the scale it used is the one its logs show, and the one a
  // non-finite first amax keeps.
  if (meta && record && o.recipe == amp::Fp8Recipe::delayed) meta->scale = scale;
  return scale;
}

// t (contiguous) · scale on role's fp8 grid, held in bf16 (exact).
Tensor fp8_quantized(const Tensor& t, float scale, amp::Fp8Role role) {
  Tensor q = Tensor::empty(t.shape(), DType::bf16, t.device());
  backend_for(t.device()).fp8_quantize(t, scale, amp::fp8_format(role), q);
  return q;
}

// t (contiguous) · scale on role's fp8 grid as the codes of role's format itself: the operand of
// a native fp8 GEMM.
Tensor fp8_codes(const Tensor& t, float scale, amp::Fp8Role role) {
  const DType fmt = amp::fp8_format(role);
  Tensor q = Tensor::empty(t.shape(), fmt, t.device());
  backend_for(t.device()).fp8_quantize(t, scale, fmt, q);
  return q;
}

// MXFP8: t [R, K] (contiguous) in blocks of 32 along K, each value on role's grid times its
// block's power-of-two scale, in bf16 (exact). A recorded use's amax goes to `meta` (for logs:
// the blocks' scales need no history).
Tensor mx_quantized(const Tensor& t, amp::Fp8Role role, amp::Fp8TensorMeta* meta) {
  Tensor q = Tensor::empty(t.shape(), DType::bf16, t.device());
  Tensor scales = Tensor::empty({t.size(0), (t.size(1) + 31) / 32}, DType::u8, t.device());
  const float amax = backend_for(t.device()).mx_quantize(t, amp::fp8_format(role), q, scales);
  if (meta) meta->observe(amax);
  return q;
}

// C (fresh, out_dt) = alpha · op(a) · op(b) (+ bias), fp32 accumulation.
Tensor scaled_mm(const Tensor& a, bool ta, const Tensor& b, bool tb, float alpha, DType out_dt,
                 const Tensor* bias = nullptr) {
  Tensor c = Tensor::empty({a.size(ta ? 1 : 0), b.size(tb ? 0 : 1)}, out_dt, a.device());
  gemm_ex(a, ta, b, tb, c, alpha, 0.0f, bias, Epilogue::none);
  return c;
}

// C (fresh, out_dt) = inv_a · inv_b · op(a) · op(b) (+ bias) from fp8 codes, by the backend's
// native fp8 GEMM: the same sums as scaled_mm over the codes held in bf16 with alpha = inv_a ·
// inv_b (up to the fp32 summation order). The caller has checked that the backend has one and
// that M, N and K are multiples of 16, which backend.h promises it runs.
Tensor native_mm(const Tensor& a, bool ta, const Tensor& b, bool tb, float inv_a, float inv_b,
                 DType out_dt, const Tensor* bias = nullptr) {
  Tensor c = Tensor::empty({a.size(ta ? 1 : 0), b.size(tb ? 0 : 1)}, out_dt, a.device());
  if (!backend_for(a.device()).fp8_gemm(a, ta, b, tb, c, inv_a, inv_b, bias))
    throw BackendError(fmt::format(
        "linear (fp8): the {} backend has a native fp8 GEMM but declined A {}{} · B {}{} -> {}",
        device_name(a.device()), a.str(), ta ? "ᵀ" : "", b.str(), tb ? "ᵀ" : "",
        dtype_name(out_dt)));
  return c;
}

// linear in fp8: y = x·wᵀ + b with x and w quantized to E4M3 and, in backward, the output
// gradient to E5M2; per-tensor recipes multiply the fp32 products by the two inverse scales (a
// Hopper FP8 GEMM's scale pointers), MXFP8 folds its block scales into the operands. The bias
// is added to the fp32 result and its gradient is the unquantized gradient's column sum, as in
// Transformer Engine. Per-tensor recipes keep the quantized x and w for backward (the same
// values transposed); MXFP8 keeps x and w and quantizes each along the backward GEMMs' own
// reduction dim from them.
//
// Where the backend multiplies fp8 natively (Backend::has_fp8_gemm: CUDA from sm_89) and N, in
// and out are multiples of 16 (each is the reduction dim of one of the three products), the
// per-tensor recipes quantize into the fp8 formats themselves and run the three products as
// native fp8 GEMMs (Backend::fp8_gemm: the inverse scales as its alpha, the bias in its
// epilogue), keeping the 1-byte codes of x and w for backward; the backend copies an operand
// transposed where its FP8 kernels need the other layout. Elsewhere (the CPU, older GPUs, other
// shapes, MXFP8) the products are emulated over the codes held in bf16, the same values and
// sums up to the fp32 summation order.
Variable linear_fp8(const char* op, const Variable& x, const Variable& w, const Variable& bias,
                    const amp::Fp8Options& o) {
  const DType dt = DType::bf16;
  const int64_t in = w.size(1), outf = w.size(0);
  const Tensor x2 = x.data().reshape({-1, in}).contiguous();
  const Tensor w2 = w.data().contiguous();
  const int64_t N = x2.size(0);
  amp::Fp8LinearState* st = amp::current_fp8_state();
  const bool rec = st && amp::fp8_recording();
  const bool mx = o.recipe == amp::Fp8Recipe::mxfp8;
  const bool has_bias = bias.defined();
  const Tensor b = has_bias ? bias.data() : Tensor();
  const bool native = !mx && N > 0 && N % 16 == 0 && in % 16 == 0 && outf % 16 == 0 &&
                      backend_for(x2.device()).has_fp8_gemm();
  Tensor qx, qw, y;
  float inv_x = 1.0f, inv_w = 1.0f;
  if (mx) {
    y = scaled_mm(mx_quantized(x2, amp::Fp8Role::input, rec ? &st->input : nullptr), false,
                  mx_quantized(w2, amp::Fp8Role::weight, rec ? &st->weight : nullptr), true, 1.0f,
                  dt, has_bias ? &b : nullptr);
  } else {
    const float sx = fp8_tensor_scale(x2, amp::Fp8Role::input, o, st ? &st->input : nullptr, rec);
    const float sw = fp8_tensor_scale(w2, amp::Fp8Role::weight, o, st ? &st->weight : nullptr, rec);
    inv_x = 1.0f / sx;
    inv_w = 1.0f / sw;
    if (native) {
      qx = fp8_codes(x2, sx, amp::Fp8Role::input);
      qw = fp8_codes(w2, sw, amp::Fp8Role::weight);
      y = native_mm(qx, false, qw, true, inv_x, inv_w, dt, has_bias ? &b : nullptr);
    } else {
      qx = fp8_quantized(x2, sx, amp::Fp8Role::input);
      qw = fp8_quantized(w2, sw, amp::Fp8Role::weight);
      y = scaled_mm(qx, false, qw, true, inv_x * inv_w, dt, has_bias ? &b : nullptr);
    }
  }
  Shape oshape = x.shape();
  oshape.back() = outf;
  y = y.view(oshape);
  const bool need_x = x.requires_grad(), need_w = w.requires_grad();
  const bool need_b = has_bias && bias.requires_grad();
  const DType gx_dt = grad_out_dtype(x, dt), gw_dt = grad_out_dtype(w, dt);
  const DType gb_dt = has_bias ? grad_out_dtype(bias, dt) : dt;
  const Shape x_shape = x.shape();
  std::vector<Variable> ins{x, w};
  if (has_bias) ins.push_back(bias);
  const Tensor keep_x = mx ? x2 : qx, keep_w = mx ? w2 : qw;
  return make_op_result(y, ins, op, [=](const Tensor& g_in) {
    const Tensor g = g_in.to(dt).reshape({N, outf}).contiguous();
    std::vector<Tensor> gr(has_bias ? 3 : 2);
    if (mx) {
      if (need_x)  // dX = dY · W: reduction over out, so dY by rows and W by columns
        gr[0] = scaled_mm(mx_quantized(g, amp::Fp8Role::grad, rec ? &st->grad : nullptr), false,
                          mx_quantized(keep_w.transpose(0, 1).contiguous(), amp::Fp8Role::weight,
                                       nullptr),
                          true, 1.0f, gx_dt)
                    .view(x_shape);
      if (need_w)  // dW = dYᵀ · X: reduction over the tokens
        gr[1] = scaled_mm(
            mx_quantized(g.transpose(0, 1).contiguous(), amp::Fp8Role::grad,
                         rec && !need_x ? &st->grad : nullptr),
            false, mx_quantized(keep_x.transpose(0, 1).contiguous(), amp::Fp8Role::input, nullptr),
            true, 1.0f, gw_dt);
    } else {
      const float sg = fp8_tensor_scale(g, amp::Fp8Role::grad, o, st ? &st->grad : nullptr, rec);
      const float inv_g = 1.0f / sg;
      if (native) {  // dX = dY · W and dW = dYᵀ · X from the codes (E5M2 x E4M3)
        const Tensor qg = fp8_codes(g, sg, amp::Fp8Role::grad);
        if (need_x) gr[0] = native_mm(qg, false, keep_w, false, inv_g, inv_w, gx_dt).view(x_shape);
        if (need_w) gr[1] = native_mm(qg, true, keep_x, false, inv_g, inv_x, gw_dt);
      } else {
        const Tensor qg = fp8_quantized(g, sg, amp::Fp8Role::grad);
        if (need_x) gr[0] = scaled_mm(qg, false, keep_w, false, inv_g * inv_w, gx_dt).view(x_shape);
        if (need_w) gr[1] = scaled_mm(qg, true, keep_x, false, inv_g * inv_x, gw_dt);
      }
    }
    if (need_b) gr[2] = sum_f32(g, {0}).view({outf}).to(gb_dt);
    return gr;
  });
}

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
  // fp8: under a policy that asks for it, where the product would compute in bf16 (a module
  // kept in fp32, or "linear" overridden, computes as it says instead).
  const amp::Policy* pol = amp::current_policy();
  if (pol && pol->fp8_gemms && dt == DType::bf16) {
    const Variable x = cast(gelu_in ? gelu(x_in) : x_in, dt), w = cast(w_in, dt);
    return linear_fp8(op, x, w, has_bias ? cast(bias_in, dt) : Variable(), *pol->fp8_gemms);
  }
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
  amp::Fp8LinearState* probed = amp::fp8_probe() ? amp::current_fp8_state() : nullptr;
  if (probed) {  // what fp8 would quantize: the doctor measures it
    (*amp::fp8_probe())(probed, amp::Fp8Role::input, x2);
    (*amp::fp8_probe())(probed, amp::Fp8Role::weight, tw);
  }
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
    if (probed && amp::fp8_probe()) (*amp::fp8_probe())(probed, amp::Fp8Role::grad, g);
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
