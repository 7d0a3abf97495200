// Elementwise ops, forward and backward side by side: cast, broadcasting add/sub/mul/div,
// scalar forms, bias_add, relu/gelu/tanh/exp/log, dropout. Every kernel (Backend::map) reads
// its inputs as fp32, computes in fp32 and rounds once into the output dtype.
#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

namespace ops_detail {

Shape broadcast_shapes(const Tensor& a, const Tensor& b, const char* op) {
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();
  const size_t nd = std::max(sa.size(), sb.size());
  Shape out(nd);
  for (size_t k = 0; k < nd; ++k) {
    const int64_t ea = k + sa.size() >= nd ? sa[k + sa.size() - nd] : 1;
    const int64_t eb = k + sb.size() >= nd ? sb[k + sb.size() - nd] : 1;
    if (ea != eb && ea != 1 && eb != 1)
      throw ShapeError(fmt::format("{}: shapes do not broadcast: a {} and b {} (dim {}: {} vs {})",
                                   op, a.str(), b.str(), k, ea, eb));
    out[k] = ea == 1 ? eb : ea;
  }
  return out;
}

Tensor apply_map(MapOp op, std::initializer_list<Tensor> ins, const Shape& shape, DType dt,
                 float s) {
  const Tensor* first = ins.begin();
  Tensor out = Tensor::empty(shape, dt, first->device());
  backend_for(first->device()).map(op, std::span<const Tensor>(ins.begin(), ins.size()), s, out);
  return out;
}

}  // namespace ops_detail

// ---- cast ----

Variable cast(const Variable& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  if (!is_floating(x.dtype()) || !is_floating(dtype))
    throw DTypeError(fmt::format("cast: {} to {}: only floating dtypes cast differentiably",
                                 vstr(x), dtype_name(dtype)));
  const DType xdt = x.dtype();
  const bool leaf = x.is_leaf();
  return make_op_result(x.data().to(dtype), {x}, "cast", [xdt, leaf](const Tensor& g) {
    // A leaf takes an fp32 gradient as is (the engine converts into its grad dtype, fp32 for
    // parameters), so a bf16 leaf read through an fp32 cast keeps the fp32 gradient.
    if (leaf && g.dtype() == DType::f32) return std::vector<Tensor>{g};
    return std::vector<Tensor>{g.to(xdt)};
  });
}

// ---- binary, broadcasting (category promote) ----

namespace {

Variable binary(const Variable& a_in, const Variable& b_in, MapOp kind, const char* op) {
  check_compute_dtype(a_in.data(), op, "a");
  check_compute_dtype(b_in.data(), op, "b");
  common_device(op, {&a_in.data(), &b_in.data()});
  const Shape shape = broadcast_shapes(a_in.data(), b_in.data(), op);
  const DType dt = amp::op_dtype(op, amp::OpCategory::promote, {a_in.dtype(), b_in.dtype()});
  const Variable a = cast(a_in, dt), b = cast(b_in, dt);
  const Tensor ta = a.data(), tb = b.data();
  Tensor out = apply_map(kind, {ta, tb}, shape, dt);
  const bool ga_needed = a.requires_grad(), gb_needed = b.requires_grad();
  // Save only what the backward reads: add/sub need no inputs; mul and div need both.
  const bool save = kind == MapOp::mul || kind == MapOp::div;
  const Tensor sa = save ? ta : Tensor(), sb = save ? tb : Tensor();
  const Shape shape_a = ta.shape(), shape_b = tb.shape();
  // Gradient dtypes: dt, except that an input taking fp32 (a leaf such as a bias, or a cast
  // output) gets the fp32 result whenever rounding to dt would lose something: a broadcast
  // sum (a bias summed over the batch) or a product. A plain pass-through of g stays dt.
  const bool pass_a = kind == MapOp::add || kind == MapOp::sub, pass_b = kind == MapOp::add;
  auto grad_dt = [&](const Variable& v, const Shape& s, bool pass) {
    return f32_grad_ok(v) && !(pass && s == shape) ? DType::f32 : dt;
  };
  const DType ga_dt = grad_dt(a, shape_a, pass_a), gb_dt = grad_dt(b, shape_b, pass_b);
  return make_op_result(out, {a, b}, op, [=](const Tensor& g) {
    std::vector<Tensor> gr(2);
    // Where no reduction follows, write the gradient straight in its dtype (one rounding);
    // otherwise keep the product in fp32 until reduce_to_shape has summed it.
    auto tmp_dt = [&](const Shape& s, DType out_dt) { return s == shape ? out_dt : DType::f32; };
    switch (kind) {
      case MapOp::add:
        if (ga_needed) gr[0] = reduce_to_shape(g, shape_a, ga_dt, op);
        if (gb_needed) gr[1] = reduce_to_shape(g, shape_b, gb_dt, op);
        break;
      case MapOp::sub:
        if (ga_needed) gr[0] = reduce_to_shape(g, shape_a, ga_dt, op);
        if (gb_needed)
          gr[1] = reduce_to_shape(apply_map(MapOp::neg, {g}, shape, tmp_dt(shape_b, gb_dt)),
                                  shape_b, gb_dt, op);
        break;
      case MapOp::mul:
        if (ga_needed)
          gr[0] = reduce_to_shape(apply_map(MapOp::mul, {g, sb}, shape, tmp_dt(shape_a, ga_dt)),
                                  shape_a, ga_dt, op);
        if (gb_needed)
          gr[1] = reduce_to_shape(apply_map(MapOp::mul, {g, sa}, shape, tmp_dt(shape_b, gb_dt)),
                                  shape_b, gb_dt, op);
        break;
      default:  // div: d(a/b)/da = 1/b; d(a/b)/db = -a/b²
        if (ga_needed)
          gr[0] = reduce_to_shape(apply_map(MapOp::div, {g, sb}, shape, tmp_dt(shape_a, ga_dt)),
                                  shape_a, ga_dt, op);
        if (gb_needed)
          gr[1] = reduce_to_shape(
              apply_map(MapOp::div_grad_b, {g, sa, sb}, shape, tmp_dt(shape_b, gb_dt)), shape_b,
              gb_dt, op);
        break;
    }
    return gr;
  });
}

}  // namespace

Variable add(const Variable& a, const Variable& b) { return binary(a, b, MapOp::add, "add"); }
Variable sub(const Variable& a, const Variable& b) { return binary(a, b, MapOp::sub, "sub"); }
Variable mul(const Variable& a, const Variable& b) { return binary(a, b, MapOp::mul, "mul"); }
Variable div(const Variable& a, const Variable& b) { return binary(a, b, MapOp::div, "div"); }

Variable bias_add(const Variable& x, const Variable& b) {
  if (b.dim() != 1 || x.dim() < 1 || x.shape().back() != b.shape()[0])
    throw ShapeError(
        fmt::format("bias_add: x {} and bias {}: the bias must be 1-d with the "
                    "extent of x's last dim",
                    vstr(x), vstr(b)));
  return binary(x, b, MapOp::add, "bias_add");
}

// ---- scalar forms (category same: x's dtype) ----

Variable add(const Variable& x, float s) {
  check_compute_dtype(x.data(), "add", "x");
  const DType dt = amp::op_dtype("add", amp::OpCategory::same, {x.dtype()});
  const Variable xc = cast(x, dt);
  Tensor out = apply_map(MapOp::add_scalar, {xc.data()}, xc.shape(), dt, s);
  return make_op_result(out, {xc}, "add", [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Variable mul(const Variable& x, float s) {
  check_compute_dtype(x.data(), "mul", "x");
  const DType dt = amp::op_dtype("mul", amp::OpCategory::same, {x.dtype()});
  const Variable xc = cast(x, dt);
  Tensor out = apply_map(MapOp::mul_scalar, {xc.data()}, xc.shape(), dt, s);
  return make_op_result(out, {xc}, "mul", [s, dt](const Tensor& g) {
    return std::vector<Tensor>{apply_map(MapOp::mul_scalar, {g}, g.shape(), dt, s)};
  });
}

// ---- unary activations ----

namespace {

// A unary op: category `cat` picks dt, the input is cast to dt, out = f(x). The backward is
// `grad`(g, saved), saved the input (use_out=false) or the output (true).
Variable unary(const Variable& x, const char* op, amp::OpCategory cat, MapOp f, MapOp grad,
               bool use_out) {
  check_compute_dtype(x.data(), op, "x");
  const DType dt = amp::op_dtype(op, cat, {x.dtype()});
  const Variable xc = cast(x, dt);
  // GELU's vectorised kernel goes over contiguous blocks: its saved input is made contiguous.
  const Tensor in = f == MapOp::gelu ? xc.data().contiguous() : xc.data();
  Tensor out = apply_map(f, {in}, in.shape(), dt);
  const Tensor saved = use_out ? out : in;
  return make_op_result(out, {xc}, op, [saved, dt, grad](const Tensor& g) {
    return std::vector<Tensor>{apply_map(grad, {g, saved}, saved.shape(), dt)};
  });
}

}  // namespace

// The derivative from the output: y > 0 exactly where x > 0 (0 at x = 0, as torch); a select.
Variable relu(const Variable& x) {
  return unary(x, "relu", amp::OpCategory::same, MapOp::relu, MapOp::relu_grad, true);
}
// The backward recomputes σ from the saved input (Backend::map's gelu_grad).
Variable gelu(const Variable& x) {
  return unary(x, "gelu", amp::OpCategory::same, MapOp::gelu, MapOp::gelu_grad, false);
}
Variable tanh(const Variable& x) {
  return unary(x, "tanh", amp::OpCategory::same, MapOp::tanh, MapOp::tanh_grad, true);
}
Variable abs(const Variable& x) {
  return unary(x, "abs", amp::OpCategory::same, MapOp::abs, MapOp::abs_grad, false);
}
Variable exp(const Variable& x) {
  return unary(x, "exp", amp::OpCategory::fp32, MapOp::exp, MapOp::exp_grad, true);
}
Variable log(const Variable& x) {
  return unary(x, "log", amp::OpCategory::fp32, MapOp::log, MapOp::log_grad, false);
}

// ---- dropout ----

Variable dropout(const Variable& x, float p, bool training, Rng& rng) {
  if (!(p >= 0.0f && p < 1.0f))
    throw ConfigError(fmt::format("dropout: p = {} must be in [0, 1) (input {})", p, vstr(x)));
  if (p == 0.0f || !training) return x;
  check_compute_dtype(x.data(), "dropout", "x");
  const uint64_t seed = rng.seed;
  const uint64_t base = rng.reserve(static_cast<uint64_t>(x.numel()));
  const float scale = 1.0f / (1.0f - p);
  // The mask is a pure function of (seed, base + element index): the backward redraws it
  // instead of keeping it in memory.
  auto apply = [=](const Tensor& in) {
    Tensor out = Tensor::empty(in.shape(), in.dtype(), in.device());
    backend_for(in.device()).dropout(in, seed, base, p, scale, out);
    return out;
  };
  return make_op_result(apply(x.data()), {x}, "dropout",
                        [=](const Tensor& g) { return std::vector<Tensor>{apply(g)}; });
}

}  // namespace mixtrain
