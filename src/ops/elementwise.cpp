// Elementwise ops, forward and backward side by side: cast, broadcasting add/sub/mul/div,
// scalar forms, bias_add, relu/gelu/tanh/exp/log, dropout. Every kernel reads its inputs as
// fp32, computes in fp32 and rounds once into the output dtype (map_kernel).
#include <cmath>

#include "cpu/simd/vmath.h"
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

enum class BinOp { add, sub, mul, div };

Variable binary(const Variable& a_in, const Variable& b_in, BinOp kind, const char* op) {
  check_compute_dtype(a_in.data(), op, "a");
  check_compute_dtype(b_in.data(), op, "b");
  const Shape shape = broadcast_shapes(a_in.data(), b_in.data(), op);
  const DType dt = amp::op_dtype(op, amp::OpCategory::promote, {a_in.dtype(), b_in.dtype()});
  const Variable a = cast(a_in, dt), b = cast(b_in, dt);
  const Tensor ta = a.data(), tb = b.data();
  Tensor out;
  switch (kind) {
    case BinOp::add:
      out = map_kernel<2>(op, {ta, tb}, shape, dt, [](float x, float y, float) { return x + y; });
      break;
    case BinOp::sub:
      out = map_kernel<2>(op, {ta, tb}, shape, dt, [](float x, float y, float) { return x - y; });
      break;
    case BinOp::mul:
      out = map_kernel<2>(op, {ta, tb}, shape, dt, [](float x, float y, float) { return x * y; });
      break;
    case BinOp::div:
      out = map_kernel<2>(op, {ta, tb}, shape, dt, [](float x, float y, float) { return x / y; });
      break;
  }
  const bool ga_needed = a.requires_grad(), gb_needed = b.requires_grad();
  // Save only what the backward reads: add/sub need no inputs; mul and div need both.
  const bool save = kind == BinOp::mul || kind == BinOp::div;
  const Tensor sa = save ? ta : Tensor(), sb = save ? tb : Tensor();
  const Shape shape_a = ta.shape(), shape_b = tb.shape();
  // Gradient dtypes: dt, except that an input taking fp32 (a leaf such as a bias, or a cast
  // output) gets the fp32 result whenever rounding to dt would lose something: a broadcast
  // sum (a bias summed over the batch) or a product. A plain pass-through of g stays dt.
  const bool pass_a = kind == BinOp::add || kind == BinOp::sub, pass_b = kind == BinOp::add;
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
      case BinOp::add:
        if (ga_needed) gr[0] = reduce_to_shape(g, shape_a, ga_dt, op);
        if (gb_needed) gr[1] = reduce_to_shape(g, shape_b, gb_dt, op);
        break;
      case BinOp::sub:
        if (ga_needed) gr[0] = reduce_to_shape(g, shape_a, ga_dt, op);
        if (gb_needed)
          gr[1] = reduce_to_shape(map_kernel<1>(op, {g}, shape, tmp_dt(shape_b, gb_dt),
                                                [](float x, float, float) { return -x; }),
                                  shape_b, gb_dt, op);
        break;
      case BinOp::mul:
        if (ga_needed)
          gr[0] = reduce_to_shape(map_kernel<2>(op, {g, sb}, shape, tmp_dt(shape_a, ga_dt),
                                                [](float x, float y, float) { return x * y; }),
                                  shape_a, ga_dt, op);
        if (gb_needed)
          gr[1] = reduce_to_shape(map_kernel<2>(op, {g, sa}, shape, tmp_dt(shape_b, gb_dt),
                                                [](float x, float y, float) { return x * y; }),
                                  shape_b, gb_dt, op);
        break;
      case BinOp::div:
        // d(a/b)/da = 1/b; d(a/b)/db = -a/b².
        if (ga_needed)
          gr[0] = reduce_to_shape(map_kernel<2>(op, {g, sb}, shape, tmp_dt(shape_a, ga_dt),
                                                [](float x, float y, float) { return x / y; }),
                                  shape_a, ga_dt, op);
        if (gb_needed)
          gr[1] = reduce_to_shape(
              map_kernel<3>(op, {g, sa, sb}, shape, tmp_dt(shape_b, gb_dt),
                            [](float x, float y, float z) { return -x * y / (z * z); }),
              shape_b, gb_dt, op);
        break;
    }
    return gr;
  });
}

}  // namespace

Variable add(const Variable& a, const Variable& b) { return binary(a, b, BinOp::add, "add"); }
Variable sub(const Variable& a, const Variable& b) { return binary(a, b, BinOp::sub, "sub"); }
Variable mul(const Variable& a, const Variable& b) { return binary(a, b, BinOp::mul, "mul"); }
Variable div(const Variable& a, const Variable& b) { return binary(a, b, BinOp::div, "div"); }

Variable bias_add(const Variable& x, const Variable& b) {
  if (b.dim() != 1 || x.dim() < 1 || x.shape().back() != b.shape()[0])
    throw ShapeError(
        fmt::format("bias_add: x {} and bias {}: the bias must be 1-d with the "
                    "extent of x's last dim",
                    vstr(x), vstr(b)));
  return binary(x, b, BinOp::add, "bias_add");
}

// ---- scalar forms (category same: x's dtype) ----

Variable add(const Variable& x, float s) {
  check_compute_dtype(x.data(), "add", "x");
  const DType dt = amp::op_dtype("add", amp::OpCategory::same, {x.dtype()});
  const Variable xc = cast(x, dt);
  Tensor out = map_kernel<1>("add", {xc.data()}, xc.shape(), dt,
                             [s](float v, float, float) { return v + s; });
  return make_op_result(out, {xc}, "add", [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Variable mul(const Variable& x, float s) {
  check_compute_dtype(x.data(), "mul", "x");
  const DType dt = amp::op_dtype("mul", amp::OpCategory::same, {x.dtype()});
  const Variable xc = cast(x, dt);
  Tensor out = map_kernel<1>("mul", {xc.data()}, xc.shape(), dt,
                             [s](float v, float, float) { return v * s; });
  return make_op_result(out, {xc}, "mul", [s, dt](const Tensor& g) {
    return std::vector<Tensor>{
        map_kernel<1>("mul", {g}, g.shape(), dt, [s](float v, float, float) { return v * s; })};
  });
}

// ---- unary activations ----

namespace {

// GELU lives in src/cpu/simd/vmath.cpp (vectorised exp, x·σ(2u) form; see gelu() below).

// A unary op: category `cat` picks dt, the input is cast to dt, out = f(x). The backward is
// g * df, where df is computed from the saved input (use_out=false) or output (true).
template <class F, class DF>
Variable unary(const Variable& x, const char* op, amp::OpCategory cat, bool use_out, F f, DF df) {
  check_compute_dtype(x.data(), op, "x");
  const DType dt = amp::op_dtype(op, cat, {x.dtype()});
  const Variable xc = cast(x, dt);
  Tensor out =
      map_kernel<1>(op, {xc.data()}, xc.shape(), dt, [f](float v, float, float) { return f(v); });
  const Tensor saved = use_out ? out : xc.data();
  return make_op_result(out, {xc}, op, [saved, dt, op, df](const Tensor& g) {
    return std::vector<Tensor>{map_kernel<2>(
        op, {g, saved}, saved.shape(), dt, [df](float gv, float s, float) { return gv * df(s); })};
  });
}

}  // namespace

namespace {

// dx = y > 0 ? g : 0 for contiguous g and y of one dtype: a select, exact in every dtype (as
// torch's threshold_backward: an Inf or NaN gradient where y <= 0 gives 0, not NaN). 16-bit
// codes are compared as integers, so nothing is widened.
Tensor relu_grad_select(const Tensor& g, const Tensor& y) {
  Tensor out = Tensor::empty(g.shape(), g.dtype());
  const int64_t n = g.numel();
  if (g.dtype() == DType::f32) {
    const float* __restrict gp = g.data<float>();
    const float* __restrict yp = y.data<float>();
    float* __restrict o = out.data<float>();
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const float gv = gp[i];  // loaded unconditionally, so the select vectorises
      o[i] = yp[i] > 0.0f ? gv : 0.0f;
    }
    return out;
  }
  // Read as int16: positive codes are 1 .. +Inf's code, NaNs lie above it, negatives below 0
  // (signed 16-bit compares, which every x86-64 vectorises).
  const int16_t inf = g.dtype() == DType::bf16 ? 0x7f80 : 0x7c00;
  const int16_t* __restrict gp = static_cast<const int16_t*>(g.raw_data());
  const int16_t* __restrict yp = static_cast<const int16_t*>(y.raw_data());
  int16_t* __restrict o = static_cast<int16_t*>(out.raw_data());
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const int16_t keep = -static_cast<int16_t>((yp[i] > 0) & (yp[i] <= inf));  // all ones or 0
    o[i] = static_cast<int16_t>(gp[i] & keep);
  }
  return out;
}

}  // namespace

Variable relu(const Variable& x) {
  check_compute_dtype(x.data(), "relu", "x");
  const DType dt = amp::op_dtype("relu", amp::OpCategory::same, {x.dtype()});
  const Variable xc = cast(x, dt);
  Tensor y = map_kernel<1>("relu", {xc.data()}, xc.shape(), dt,
                           [](float v, float, float) { return v > 0.0f ? v : 0.0f; });
  // The derivative from the output: y > 0 exactly where x > 0 (0 at x = 0, as torch).
  return make_op_result(y, {xc}, "relu", [y](const Tensor& g) {
    if (g.dtype() == y.dtype() && g.is_contiguous() && y.is_contiguous())
      return std::vector<Tensor>{relu_grad_select(g, y)};
    return std::vector<Tensor>{
        map_kernel<2>("relu", {g, y}, y.shape(), y.dtype(),
                      [](float gv, float yv, float) { return yv > 0.0f ? gv : 0.0f; })};
  });
}

namespace {

// out = f over n contiguous elements in blocks: each block is read as fp32 (SIMD conversion),
// computed by a vectorised kernel and rounded once into out_dt. f(in0, in1, out, len).
template <class F>
Tensor block_map(const Tensor& a, const Tensor* b, DType out_dt, F f) {
  constexpr int64_t kBlock = 2048;
  const int64_t n = a.numel();
  Tensor out = Tensor::empty(a.shape(), out_dt);
  const char* ap = static_cast<const char*>(a.raw_data());
  const char* bp = b ? static_cast<const char*>(b->raw_data()) : nullptr;
  char* op = static_cast<char*>(out.raw_data());
  const int64_t as = static_cast<int64_t>(a.element_size());
  const int64_t bs = b ? static_cast<int64_t>(b->element_size()) : 0;
  const int64_t os = static_cast<int64_t>(out.element_size());
#pragma omp parallel for schedule(static) if (n > (1 << 15))
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    alignas(64) float ba[kBlock], bb[kBlock], bo[kBlock];
    const int64_t len = std::min(kBlock, n - i0);
    const float* pa = load_f32(ap + i0 * as, a.dtype(), len, ba);
    const float* pb = b ? load_f32(bp + i0 * bs, b->dtype(), len, bb) : nullptr;
    float* po = out_dt == DType::f32 ? reinterpret_cast<float*>(op + i0 * os) : bo;
    f(pa, pb, po, len);
    if (out_dt != DType::f32)
      convert(bo, DType::f32, op + i0 * os, out_dt, static_cast<size_t>(len));
  }
  return out;
}

}  // namespace

// The vectorised kernels (simd::gelu, same x·σ(2u) form as gelu_f) over contiguous blocks;
// the backward recomputes σ from the saved input.
Tensor ops_detail::gelu_forward(const Tensor& x, DType dt) {
  return block_map(x, nullptr, dt,
                   [](const float* a, const float*, float* o, int64_t n) { simd::gelu(a, o, n); });
}

Tensor ops_detail::gelu_backward(const Tensor& x, const Tensor& g, DType dt) {
  const Tensor gc = g.contiguous();
  return block_map(x, &gc, dt, [](const float* a, const float* gb, float* o, int64_t n) {
    simd::gelu_grad(a, gb, o, n);
  });
}

Variable gelu(const Variable& x) {
  check_compute_dtype(x.data(), "gelu", "x");
  const DType dt = amp::op_dtype("gelu", amp::OpCategory::same, {x.dtype()});
  const Variable xc = cast(x, dt);
  const Tensor saved = xc.data().contiguous();
  return make_op_result(gelu_forward(saved, dt), {xc}, "gelu", [saved, dt](const Tensor& g) {
    return std::vector<Tensor>{gelu_backward(saved, g, dt)};
  });
}

Variable tanh(const Variable& x) {
  return unary(
      x, "tanh", amp::OpCategory::same, true, [](float v) { return std::tanh(v); },
      [](float y) { return 1.0f - y * y; });
}

Variable exp(const Variable& x) {
  return unary(
      x, "exp", amp::OpCategory::fp32, true, [](float v) { return std::exp(v); },
      [](float y) { return y; });
}

Variable log(const Variable& x) {
  return unary(
      x, "log", amp::OpCategory::fp32, false, [](float v) { return std::log(v); },
      [](float v) { return 1.0f / v; });
}

// ---- dropout ----

namespace {

// Keep element i (of the counters reserved at `base`) when its uniform draw is >= p. The
// draw uses the top 24 bits, as Rng::uniform does.
inline float keep_scale(uint64_t seed, uint64_t base, int64_t i, float p, float scale) {
  const float u = static_cast<float>(random_bits(seed, base + static_cast<uint64_t>(i)) >> 40) *
                  (1.0f / 16777216.0f);
  return u >= p ? scale : 0.0f;
}

// out[i] = in[i] * keep_scale(i): in contiguous, out of the same dtype.
Tensor apply_mask(const Tensor& in_any, uint64_t seed, uint64_t base, float p, float scale) {
  const Tensor in = in_any.contiguous();
  Tensor out = Tensor::empty(in.shape(), in.dtype());
  const int64_t n = in.numel();
  const int64_t tiles = (n + kTile - 1) / kTile;
  const DType dt = in.dtype();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t t = 0; t < tiles; ++t) {
    alignas(64) float buf[kTile];
    alignas(64) float o[kTile];
    const int64_t j0 = t * kTile, m = std::min(kTile, n - j0);
    const float* v = load_f32(at(in.raw_data(), dt, j0), dt, m, buf);
    for (int64_t j = 0; j < m; ++j) o[j] = v[j] * keep_scale(seed, base, j0 + j, p, scale);
    convert(o, DType::f32, at(out.raw_data(), dt, j0), dt, static_cast<size_t>(m));
  }
  return out;
}

}  // namespace

Variable dropout(const Variable& x, float p, bool training, Rng& rng) {
  if (!(p >= 0.0f && p < 1.0f))
    throw ConfigError(fmt::format("dropout: p = {} must be in [0, 1) (input {})", p, vstr(x)));
  if (p == 0.0f || !training) return x;
  check_compute_dtype(x.data(), "dropout", "x");
  const uint64_t seed = rng.seed;
  const uint64_t base = rng.reserve(static_cast<uint64_t>(x.numel()));
  const float scale = 1.0f / (1.0f - p);
  Tensor out = apply_mask(x.data(), seed, base, p, scale);
  // The backward redraws the mask from (seed, base) instead of keeping it in memory.
  return make_op_result(out, {x}, "dropout", [=](const Tensor& g) {
    return std::vector<Tensor>{apply_mask(g, seed, base, p, scale)};
  });
}

}  // namespace mixtrain
