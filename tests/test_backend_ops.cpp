// test_backend_ops: every op, forward and backward, in fp32, bf16 and fp16, on every backend this
// build and machine have, against the scalar fp32 reference (src/cpu/reference), as ggml's
// test-backend-ops does it. The CPU counts as one backend per instruction-set level it runs
// (cpu/avx512bf16, cpu/avx512, cpu/avx2, cpu/scalar: every build of every kernel); a backend
// (or level) this build or machine lacks is listed as skipped with the reason, never passed.
// Prints one table (op, dtype, backend, pass, max error, tolerance, verdict) and exits 1 if any
// row fails.
//
//   test_backend_ops [-o OP] [-b BACKEND]     (OP, BACKEND: substrings of the names)
//
// The error of a result is max |got - ref| over its elements divided by max |ref| (the
// tensor's scale): a result rounded once to p significant bits is off by at most u = 2^-p of
// it. The tolerances, all in tolerance() below, derive from u of the dtype and from the fp32
// arithmetic the kernels keep inside.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cpu/isa.h"
#include "cpu/optimizer.h"
#include "cpu/reference/nn_ref.h"
#include "cpu/reference/ops_ref.h"
#include "mixtrain/amp/fp8.h"
#include "mixtrain/detail/fp8_math.h"
#include "mixtrain/gemm.h"
#include "mixtrain/ops.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/random.h"

using namespace mixtrain;

namespace {

// ---- the tolerances, in one place ------------------------------------------------------------

/// Unit roundoff of a dtype: RNE to p significant bits errs by at most 2^-p relative
/// (fp32 p = 24, bf16 p = 8, fp16 p = 11).
double unit_roundoff(DType dt) {
  switch (dt) {
    case DType::bf16:
      return std::ldexp(1.0, -8);
    case DType::f16:
      return std::ldexp(1.0, -11);
    default:
      return std::ldexp(1.0, -24);
  }
}
constexpr double kU32 = 0x1p-24;  // fp32's, for the arithmetic every kernel does inside

enum class Kind {
  exact,       // moves values (copies, gathers, slices): no arithmetic, no rounding
  rounded,     // one rounding of a few fp32 operations (element-wise maps, casts, dropout)
  sum,         // sums of up to L terms in fp32, rounded once
  normalised,  // softmax, layer norm, cross-entropy: fp32 row statistics, then one rounding
  attention,   // scores, softmax and two products per head in fp32
  optimizer,   // a fused update: a chain of fp32 operations per element, per step
};

struct Tolerance {
  double fwd, bwd;
};

/// The tolerance of an op of kind `kind` whose sums run over up to `len` terms, in dtype dt.
Tolerance tolerance(Kind kind, DType dt, int64_t len = 1) {
  const double u = unit_roundoff(dt);
  // fp32 sums: pairwise or blocked, an error of about log2(len) roundings of 2^-24 relative to
  // the sum of |terms|, which random ±1 data keeps within sqrt(len) of the result's scale: 4x
  // sqrt(len) log2(len) ulps covers both.
  const double n = static_cast<double>(std::max<int64_t>(len, 2));
  const double acc = 4.0 * std::sqrt(n) * std::log2(n) * kU32;
  switch (kind) {
    case Kind::exact:
      // Forward moves bits; backward sums (a scatter-add, or a copy) in fp32.
      return {0.0, acc};
    case Kind::rounded:
      // The value rounded once (u) after a few fp32 operations (8 ulps: libm's tanh, exp and
      // log are within 1-2 ulps, GELU's exp within 2); the backward rounds once more, and a
      // broadcast input's gradient is a sum over the broadcast dims.
      return {u + 8 * kU32, 2 * u + acc + 16 * kU32};
    case Kind::sum:
      // One rounding of the fp32 sum; the backward of a sum broadcasts (and rounds) g.
      return {u + acc, 2 * u + acc};
    case Kind::normalised:
      // fp32 statistics (two passes over len values), one rounding of the output; the
      // backward's row reductions and one more rounding.
      return {u + 4 * acc, 2 * u + 8 * acc};
    case Kind::attention:
      // O is a convex combination of V's rows, rounded once; bf16 also rounds P (and dS in
      // backward) to bf16 before its products, as FlashAttention does: each term off by u,
      // so the sum by u of the sum of |terms| (at most a few times the result's scale here).
      return {(dt == DType::bf16 ? 4 : 1) * u + 4 * acc, (dt == DType::bf16 ? 8 : 2) * u + 8 * acc};
    case Kind::optimizer:
      // fp32 state and master, a dozen fp32 operations per element per step, against the
      // double-precision rule; the compute copy is the master rounded once (u).
      return {64 * kU32, 64 * kU32};
  }
  return {0, 0};
}

// ---- results ---------------------------------------------------------------------------------

/// max |got - ref| / max |ref| (0 when both are all zeros; NaN/Inf in got fail).
double rel_error(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double scale = 0, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
    const double e = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!std::isfinite(got[i])) return INFINITY;
    err = std::max(err, e);
  }
  return scale > 0 ? err / scale : err;
}

struct Check {
  std::string what;  // "fwd", "bwd dx", ...
  double err, tol;
};

struct Row {
  std::string op, dtype, backend, pass, verdict;
  double err = 0, tol = 0;
  bool failed = false;
};

// ---- inputs ----------------------------------------------------------------------------------

/// Random values uniform in [lo, hi), rounded to dt (what the kernel and the reference read).
struct Input {
  Tensor host;             // dt, on the CPU
  std::vector<float> ref;  // its values in fp32
};
Input input(const Shape& shape, DType dt, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = lo + (hi - lo) * rng.uniform();
  Input in;
  in.host = Tensor::from_vector(v, shape, dt);
  in.ref = in.host.to_vector();
  return in;
}

Tensor ids_tensor(const std::vector<int64_t>& ids, const Shape& shape, Device dev) {
  std::vector<float> f(ids.begin(), ids.end());
  return Tensor::from_vector(f, shape, DType::i64, dev);
}

std::vector<float> values(const Tensor& t) { return t.to_vector(); }
std::vector<float> values(const Variable& v) { return v.data().to_vector(); }
std::vector<float> grad_of(const Variable& v) { return v.grad().to_vector(); }

/// A leaf on `dev` holding `in`'s values in its dtype.
Variable leaf(const Input& in, Device dev) { return Variable(in.host.to(dev), true); }

// ---- the cases -------------------------------------------------------------------------------

struct Case {
  std::string op;
  std::function<std::vector<Check>(DType, Device)> run;
};

std::vector<Check> checks(std::initializer_list<Check> l) { return l; }

// Elementwise unary op against the reference and its derivative (per element of x and y).
Case unary_case(const std::string& name, Variable (*op)(const Variable&),
                Tensor (*ref_fwd)(const Tensor&), std::function<double(double x, double y)> dfdx,
                float lo = -3.0f, float hi = 3.0f) {
  return {name, [=](DType dt, Device dev) {
            const Input x = input({8, 33, 40}, dt, 1, lo, hi);
            const Input g = input({8, 33, 40}, dt, 2);
            Variable xv = leaf(x, dev);
            Variable y = op(xv);
            const Tensor want = ref_fwd(Tensor::from_vector(x.ref, x.host.shape()));
            const std::vector<float> yr = values(want);
            y.backward(g.host.to(y.dtype()).to(dev));
            std::vector<float> gx(x.ref.size());
            for (size_t i = 0; i < gx.size(); ++i)
              gx[i] = static_cast<float>(g.ref[i] * dfdx(x.ref[i], yr[i]));
            const Tolerance t = tolerance(Kind::rounded, dt);
            return checks({{"fwd", rel_error(values(y), yr), t.fwd},
                           {"bwd dx", rel_error(grad_of(xv), gx), t.bwd}});
          }};
}

// Broadcasting binary op: a [4, 30, 20] with b [30, 1]; the reference gradients per element,
// summed over b's broadcast dims.
Case binary_case(const std::string& name, Variable (*op)(const Variable&, const Variable&),
                 ref::Bin bin, std::function<double(double, double)> da,
                 std::function<double(double, double)> db) {
  return {name, [=](DType dt, Device dev) {
            const Input a = input({4, 30, 20}, dt, 3);
            const Input b = input({30, 1}, dt, 4, 0.5f, 1.5f);  // away from 0 for div
            const Input g = input({4, 30, 20}, dt, 5);
            Variable av = leaf(a, dev), bv = leaf(b, dev);
            Variable y = op(av, bv);
            const std::vector<float> yr = values(ref::binary(
                Tensor::from_vector(a.ref, {4, 30, 20}), Tensor::from_vector(b.ref, {30, 1}), bin));
            y.backward(g.host.to(dev));
            std::vector<float> ga(a.ref.size());
            std::vector<double> gb(b.ref.size(), 0.0);
            for (int64_t i = 0; i < 4; ++i)
              for (int64_t j = 0; j < 30; ++j)
                for (int64_t k = 0; k < 20; ++k) {
                  const size_t e = static_cast<size_t>((i * 30 + j) * 20 + k);
                  const double x = a.ref[e], z = b.ref[static_cast<size_t>(j)];
                  ga[e] = static_cast<float>(g.ref[e] * da(x, z));
                  gb[static_cast<size_t>(j)] += g.ref[e] * db(x, z);
                }
            const std::vector<float> gbf(gb.begin(), gb.end());
            const Tolerance t = tolerance(Kind::rounded, dt, 80);
            return checks({{"fwd", rel_error(values(y), yr), t.fwd},
                           {"bwd da", rel_error(grad_of(av), ga), t.bwd},
                           {"bwd db", rel_error(grad_of(bv), gbf), t.bwd}});
          }};
}

// a [M, K] · b [K, N] (or batched): dA = G·Bᵀ, dB = Aᵀ·G.
std::vector<Check> matmul_checks(DType dt, Device dev, int64_t Bt, int64_t M, int64_t K,
                                 int64_t N) {
  const Shape sa = Bt ? Shape{Bt, M, K} : Shape{M, K}, sb = Bt ? Shape{Bt, K, N} : Shape{K, N};
  const Shape sy = Bt ? Shape{Bt, M, N} : Shape{M, N};
  const Input a = input(sa, dt, 6), b = input(sb, dt, 7), g = input(sy, dt, 8);
  Variable av = leaf(a, dev), bv = leaf(b, dev);
  Variable y = matmul(av, bv);
  auto host = [](const Input& in) { return Tensor::from_vector(in.ref, in.host.shape()); };
  const int64_t d0 = Bt ? 1 : 0;
  y.backward(g.host.to(dev));
  const std::vector<float> yr = values(ref::matmul(host(a), host(b)));
  const std::vector<float> ga =
      values(ref::matmul(host(g), ref::transpose(host(b), d0, d0 + 1)).contiguous());
  const std::vector<float> gb =
      values(ref::matmul(ref::transpose(host(a), d0, d0 + 1), host(g)).contiguous());
  const Tolerance t = tolerance(Kind::sum, dt, std::max({K, M, N}));
  return {{"fwd", rel_error(values(y), yr), t.fwd},
          {"bwd da", rel_error(grad_of(av), ga), t.bwd},
          {"bwd db", rel_error(grad_of(bv), gb), t.bwd}};
}

// y = op(x)·wᵀ + b, op the identity or GELU: dx = (G·W)·op'(x), dW = Gᵀ·op(x), db = Σ G.
std::vector<Check> linear_checks(DType dt, Device dev, bool gelu_in) {
  const int64_t N = 60, in = 48, out = 40;
  const Input x = input({2, 30, in}, dt, 9, -2.0f, 2.0f), w = input({out, in}, dt, 10);
  const Input b = input({out}, dt, 11), g = input({2, 30, out}, dt, 12);
  Variable xv = leaf(x, dev), wv = leaf(w, dev), bv = leaf(b, dev);
  Variable y = gelu_in ? gelu_linear(xv, wv, bv) : linear(xv, wv, bv);
  y.backward(g.host.to(dev));
  const Tensor xh = Tensor::from_vector(x.ref, {N, in}), wh = Tensor::from_vector(w.ref, {out, in});
  const Tensor bh = Tensor::from_vector(b.ref, {out}), gh = Tensor::from_vector(g.ref, {N, out});
  // GELU's output is rounded to dt before the product, as the op keeps it.
  const Tensor ax = gelu_in ? ref::gelu(xh).to(dt).to(DType::f32) : xh;
  const std::vector<float> yr = values(ref::linear(ax, wh, bh));
  std::vector<float> gx = values(ref::matmul(gh, wh));
  if (gelu_in) {
    const std::vector<float> d = values(ref::gelu_grad(xh));
    // The product's gradient is rounded to dt before GELU's backward reads it.
    const std::vector<float> gxr = Tensor::from_vector(gx, {N, in}).to(dt).to_vector();
    for (size_t i = 0; i < gx.size(); ++i) gx[i] = gxr[i] * d[i];
  }
  const std::vector<float> gw = values(ref::matmul(ref::transpose(gh, 0, 1), ax).contiguous());
  const std::vector<float> gb = values(ref::sum(gh, {0}, false));
  const Tolerance t = tolerance(gelu_in ? Kind::rounded : Kind::sum, dt, in);
  const Tolerance ts = tolerance(Kind::sum, dt, N);
  return {{"fwd", rel_error(values(y), yr), t.fwd + ts.fwd},
          {"bwd dx", rel_error(grad_of(xv), gx), t.bwd + ts.bwd},
          {"bwd dw", rel_error(grad_of(wv), gw), ts.bwd},
          {"bwd db", rel_error(grad_of(bv), gb), ts.bwd}};
}

struct AttnShape {
  int64_t B, H, Tq, Tk, D;
  bool causal;
};

std::vector<Check> attention_checks(DType dt, Device dev, const AttnShape& c) {
  const Input q = input({c.B, c.H, c.Tq, c.D}, dt, 13, -2.0f, 2.0f);
  const Input k = input({c.B, c.H, c.Tk, c.D}, dt, 14, -2.0f, 2.0f);
  const Input v = input({c.B, c.H, c.Tk, c.D}, dt, 15);
  const Input g = input({c.B, c.H, c.Tq, c.D}, dt, 16);
  Variable qv = leaf(q, dev), kv = leaf(k, dev), vv = leaf(v, dev);
  Variable o = scaled_dot_product_attention(qv, kv, vv, c.causal);
  o.backward(g.host.to(dev));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  std::vector<float> want(static_cast<size_t>(c.B * c.H * c.Tq * c.D));
  ref::attention(q.ref.data(), k.ref.data(), v.ref.data(), c.B, c.H, c.Tq, c.Tk, c.D, c.causal,
                 scale, want.data());
  std::vector<float> dq(q.ref.size()), dk(k.ref.size()), dv(v.ref.size());
  ref::attention_backward(q.ref.data(), k.ref.data(), v.ref.data(), g.ref.data(), c.B, c.H, c.Tq,
                          c.Tk, c.D, c.causal, scale, dq.data(), dk.data(), dv.data());
  const Tolerance t = tolerance(Kind::attention, dt, std::max({c.Tq, c.Tk, c.D}));
  return {{"fwd", rel_error(values(o), want), t.fwd},
          {"bwd dq", rel_error(grad_of(qv), dq), t.bwd},
          {"bwd dk", rel_error(grad_of(kv), dk), t.bwd},
          {"bwd dv", rel_error(grad_of(vv), dv), t.bwd}};
}

// Three steps of an optimizer (fp32 master, the compute copy in dt, gradients in dt) against
// its rule in double precision (torch.optim's formulas).
std::vector<Check> optimizer_checks(DType dt, Device dev, const std::string& kind) {
  const int64_t n = 3000;  // several update blocks and a ragged tail
  const Input init = input({n}, DType::f32, 17);
  nn::Parameter p("w", init.host.to(dev), dt);
  std::vector<nn::Parameter*> ps{&p};
  std::unique_ptr<optim::Optimizer> opt;
  const double lr = 1e-2, wd = 0.01, mom = 0.9;
  if (kind == "adamw")
    opt = std::make_unique<optim::AdamW>(ps, optim::AdamOptions{.lr = lr, .weight_decay = wd});
  else if (kind == "sgd")
    opt = std::make_unique<optim::SGD>(
        ps, optim::SgdOptions{.lr = lr, .momentum = mom, .weight_decay = wd, .nesterov = true});
  else
    opt = std::make_unique<optim::RMSProp>(
        ps, optim::RMSPropOptions{.lr = lr, .weight_decay = wd, .momentum = mom, .centered = true});
  std::vector<double> w(init.ref.begin(), init.ref.end()), s0(n, 0), s1(n, 0), s2(n, 0);
  for (int step = 1; step <= 3; ++step) {
    const Input gi = input({n}, dt, 100 + static_cast<uint64_t>(step));
    p.weight.grad() = gi.host.to(dev);
    opt->step();
    for (int64_t i = 0; i < n; ++i) {
      double g = gi.ref[static_cast<size_t>(i)];
      double& x = w[static_cast<size_t>(i)];
      double &a = s0[static_cast<size_t>(i)], &b = s1[static_cast<size_t>(i)],
             &m = s2[static_cast<size_t>(i)];
      if (kind == "adamw") {
        x *= 1 - lr * wd;
        a = 0.9 * a + 0.1 * g;
        b = 0.999 * b + 0.001 * g * g;
        const double bc1 = 1 - std::pow(0.9, step), bc2 = 1 - std::pow(0.999, step);
        x -= lr / bc1 * a / (std::sqrt(b) / std::sqrt(bc2) + 1e-8);
      } else if (kind == "sgd") {
        const double d = g + wd * x;
        a = step == 1 ? d : mom * a + d;
        x -= lr * (d + mom * a);
      } else {
        g += wd * x;
        a = 0.99 * a + 0.01 * g * g;
        b = 0.99 * b + 0.01 * g;
        m = mom * m + g / (std::sqrt(a - b * b) + 1e-8);
        x -= lr * m;
      }
    }
  }
  const std::vector<float> want(w.begin(), w.end());
  const Tolerance t = tolerance(Kind::optimizer, dt);
  return {{"master", rel_error(opt->master_value(0).to_vector(), want), t.fwd},
          {"weight", rel_error(values(p.weight), want), t.fwd + unit_roundoff(dt)}};
}

// ---- GEMM with the fused epilogue, batches, strided operands ---------------------------------

double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

struct GemmSpec {
  std::string what;
  int64_t a_bt = 0, b_bt = 0;  // batch of A / B (0: 2-d)
  int64_t M, K, N;
  bool ta = false, tb = false;
  float alpha = 1.0f, beta = 0.0f;
  bool bias = false, strided_bias = false;
  Epilogue epi = Epilogue::none;
  bool strided_a = false;  // A a view with no unit stride (copied by a backend)
  bool col_major_c = false;
  DType c_dtype = DType::f64;  // f64: the case's dtype
};

// C = epi(alpha·op(A)·op(B) + bias + beta·C) through gemm_ex against the same in double.
Check gemm_check(DType dt, Device dev, const GemmSpec& s) {
  const DType cdt = s.c_dtype == DType::f64 ? dt : s.c_dtype;
  const int64_t M = s.M, K = s.K, N = s.N;
  const int64_t bt = std::max(s.a_bt, s.b_bt);
  auto with_batch = [](int64_t b, Shape sh) {
    if (b) sh.insert(sh.begin(), b);
    return sh;
  };
  const Shape sa = with_batch(s.a_bt, s.ta ? Shape{K, M} : Shape{M, K});
  const Shape sb = with_batch(s.b_bt, s.tb ? Shape{N, K} : Shape{K, N});
  const Shape sc = with_batch(bt, {M, N});
  const Input a = input(sa, dt, 60), b = input(sb, dt, 61), c0 = input(sc, cdt, 62);
  const Input bias = input({s.strided_bias ? 2 * N : N}, s.c_dtype == DType::f64 ? dt : cdt, 63);
  Tensor ad = a.host.to(dev);
  if (s.strided_a) {
    // The same values in a storage twice as long, every other element: no unit stride.
    Shape big = sa;
    big.back() *= 2;
    Tensor st = Tensor::zeros(big, dt, dev);
    Shape strides(sa.size());
    int64_t acc = 1;
    for (size_t i = sa.size(); i-- > 0;) strides[i] = acc, acc *= big[i];
    strides.back() = 2;
    Tensor v = st.as_strided(sa, strides);
    v.copy_from(ad);
    ad = v;
  }
  const Tensor bd = b.host.to(dev);
  Tensor cd;
  if (s.col_major_c) {
    Shape t = sc;
    std::swap(t[t.size() - 1], t[t.size() - 2]);
    cd = Tensor::empty(t, cdt, dev).transpose(-1, -2);
    cd.copy_from(c0.host);
  } else {
    cd = c0.host.to(dev);
  }
  Tensor biasd = bias.host.to(dev);
  if (s.strided_bias) biasd = biasd.as_strided({N}, {2});
  gemm_ex(ad, s.ta, bd, s.tb, cd, s.alpha, s.beta, s.bias ? &biasd : nullptr, s.epi);
  std::vector<float> want(static_cast<size_t>(shape_numel(sc)));
  for (int64_t q = 0; q < std::max<int64_t>(bt, 1); ++q)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t qa = s.a_bt ? q : 0, qb = s.b_bt ? q : 0;
          const double x = a.ref[static_cast<size_t>(qa * M * K + (s.ta ? k * M + i : i * K + k))];
          const double y = b.ref[static_cast<size_t>(qb * K * N + (s.tb ? j * K + k : k * N + j))];
          acc += x * y;
        }
        const size_t e = static_cast<size_t>((q * M + i) * N + j);
        double v = s.alpha * acc + s.beta * static_cast<double>(c0.ref[e]);
        if (s.bias) v += bias.ref[static_cast<size_t>(s.strided_bias ? 2 * j : j)];
        if (s.epi == Epilogue::relu) v = v > 0 ? v : 0;
        if (s.epi == Epilogue::gelu) v = gelu_ref(v);
        want[e] = static_cast<float>(v);
      }
  const Tolerance t = tolerance(Kind::sum, cdt, K);
  const double tol = t.fwd + (s.epi == Epilogue::gelu ? tolerance(Kind::rounded, cdt).fwd : 0.0);
  return {s.what, rel_error(values(cd.contiguous()), want), tol};
}

std::vector<Check> gemm_ex_checks(DType dt, Device dev) {
  std::vector<Check> out;
  GemmSpec s;
  s.what = "bias";
  s.M = 33, s.K = 40, s.N = 24, s.bias = true;
  out.push_back(gemm_check(dt, dev, s));
  s.what = "relu ᵀᵀ";
  s.ta = s.tb = true, s.alpha = 0.5f, s.beta = 0.75f, s.epi = Epilogue::relu;
  out.push_back(gemm_check(dt, dev, s));
  s.what = "gelu bias";
  s.ta = false, s.tb = true, s.epi = Epilogue::gelu;
  out.push_back(gemm_check(dt, dev, s));
  s.what = "strided bias";
  s.alpha = 1.0f, s.strided_bias = true;
  out.push_back(gemm_check(dt, dev, s));
  s.what = "gelu, no bias";
  s.alpha = 0.5f, s.bias = s.strided_bias = false;
  out.push_back(gemm_check(dt, dev, s));
  s.what = "->f32 bias";
  s.c_dtype = DType::f32, s.bias = true, s.epi = Epilogue::none;
  out.push_back(gemm_check(dt, dev, s));
  GemmSpec p;
  p.M = 17, p.K = 24, p.N = 20;
  p.what = "strided A, col C";
  p.strided_a = true, p.col_major_c = true, p.beta = 1.0f, p.tb = true;
  out.push_back(gemm_check(dt, dev, p));
  GemmSpec q;
  q.M = 16, q.K = 24, q.N = 20;
  q.what = "batched A, B 2-d";
  q.a_bt = 3, q.bias = true, q.epi = Epilogue::relu;
  out.push_back(gemm_check(dt, dev, q));
  q.what = "A 2-d, batched B";
  q.a_bt = 0, q.b_bt = 3, q.tb = true, q.epi = Epilogue::gelu, q.alpha = 2.0f;
  out.push_back(gemm_check(dt, dev, q));
  q.what = "batched ᵀ, beta";
  q.a_bt = 3, q.ta = true, q.beta = 0.5f, q.bias = false, q.epi = Epilogue::none;
  out.push_back(gemm_check(dt, dev, q));
  return out;
}

// ---- the fused optimizer update, every rule and master mode, bit for bit ----------------------

// Bits of a tensor (any device) as 32-bit words per element (16-bit ones widened).
std::vector<uint32_t> bits_of(const Tensor& t) {
  const Tensor h = t.to(Device::cpu).contiguous();
  std::vector<uint32_t> out(static_cast<size_t>(h.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (h.element_size() == 4)
      out[i] = static_cast<const uint32_t*>(h.raw_data())[i];
    else
      out[i] = static_cast<const uint16_t*>(h.raw_data())[i];
  }
  return out;
}

double mismatches(const std::vector<uint32_t>& x, const std::vector<uint32_t>& y) {
  if (x.size() != y.size()) return INFINITY;
  double n = 0;
  for (size_t i = 0; i < x.size(); ++i) n += x[i] != y[i];
  return n;
}

// One tensor's parameter and state on a device.
struct UpdateTensors {
  Tensor master, weight, aux, s0, s1, s2, grad;
};

UpdateTensors update_tensors(int64_t n, optim::MasterMode mode, DType dt, uint64_t seed,
                             Device dev) {
  const Input w = input({n}, DType::f32, seed, -2.0f, 2.0f);
  UpdateTensors t;
  t.master = w.host.to(dev);
  const bool fp32 = mode == optim::MasterMode::fp32;
  // A storage of its own (to(f32) of an f32 master would be the master itself).
  t.weight = (fp32 ? w.host.to(dt) : w.host.to(DType::bf16)).clone().to(dev);
  Tensor aux = Tensor::zeros({n}, DType::bf16);
  if (mode == optim::MasterMode::split16) {
    // The split16 pair of the master: the weight's bits and the low half.
    Tensor hi = Tensor::empty({n}, DType::bf16);
    const float* m = w.host.data<float>();
    for (int64_t i = 0; i < n; ++i)
      optim::detail::split16_encode(m[i], static_cast<uint16_t*>(hi.raw_data()) + i,
                                    static_cast<uint16_t*>(aux.raw_data()) + i);
    t.weight = hi.to(dev);
  }
  t.aux = aux.to(dev);
  t.s0 = Tensor::zeros({n}, DType::f32, dev);
  t.s1 = Tensor::zeros({n}, DType::f32, dev);
  t.s2 = Tensor::zeros({n}, DType::f32, dev);
  return t;
}

UpdateArgs update_args(UpdateTensors& t, optim::MasterMode mode, float mult, uint64_t seed,
                       uint64_t counter) {
  UpdateArgs a;
  a.mode = mode;
  a.grad_mult = mult;
  a.master = mode == optim::MasterMode::fp32 ? t.master.data<float>() : nullptr;
  a.weight = t.weight.raw_data();
  a.weight_dtype = t.weight.dtype();
  a.aux = mode == optim::MasterMode::bf16_kahan || mode == optim::MasterMode::split16
              ? static_cast<uint16_t*>(t.aux.raw_data())
              : nullptr;
  a.seed = seed;
  a.counter = counter;
  a.grad = t.grad.raw_data();
  a.grad_dtype = t.grad.dtype();
  a.s0 = t.s0.data<float>();
  a.s1 = t.s1.data<float>();
  a.s2 = t.s2.data<float>();
  a.n = t.master.numel();
  return a;
}

// Three steps of one rule over two tensors (one call each step: the multi-tensor pass) in each
// master mode, on the backend and with the CPU's scalar kernel on host copies: every bit of
// the parameters and state must agree (the update's per-element math is shared).
double update_mismatches(DType dt, Device dev, optim::detail::Rule rule) {
  double bad = 0;
  for (optim::MasterMode mode : {optim::MasterMode::fp32, optim::MasterMode::bf16_stochastic,
                                 optim::MasterMode::bf16_kahan, optim::MasterMode::split16}) {
    std::vector<UpdateTensors> on_dev, on_host;
    const int64_t sizes[2] = {5000, 777};
    for (int k = 0; k < 2; ++k) {
      on_dev.push_back(update_tensors(sizes[k], mode, dt, 70 + k, dev));
      on_host.push_back(update_tensors(sizes[k], mode, dt, 70 + k, Device::cpu));
    }
    for (int step = 1; step <= 3; ++step) {
      rule.adam.step = step;
      rule.sgd.first_step = step == 1;
      std::vector<UpdateArgs> da, ha;
      for (int k = 0; k < 2; ++k) {
        const Input g = input({sizes[k]}, dt, 80 + 10 * static_cast<uint64_t>(step) + k, -3, 3);
        on_dev[k].grad = g.host.to(dev);
        on_host[k].grad = g.host;
        const float mult = step == 2 ? 1.0f : 0.75f;
        da.push_back(update_args(on_dev[k], mode, mult, 1234 + step, 1000 * k));
        ha.push_back(update_args(on_host[k], mode, mult, 1234 + step, 1000 * k));
      }
      backend_for(dev).optimizer_update(rule, da);
      for (const UpdateArgs& a : ha) cpu::update_kernel<cpu::Isa::scalar>()(rule, a);
    }
    for (int k = 0; k < 2; ++k) {
      const UpdateTensors &d = on_dev[k], &h = on_host[k];
      if (mode == optim::MasterMode::fp32) bad += mismatches(bits_of(d.master), bits_of(h.master));
      bad += mismatches(bits_of(d.weight), bits_of(h.weight));
      bad += mismatches(bits_of(d.aux), bits_of(h.aux));
      bad += mismatches(bits_of(d.s0), bits_of(h.s0));
      bad += mismatches(bits_of(d.s1), bits_of(h.s1));
      bad += mismatches(bits_of(d.s2), bits_of(h.s2));
    }
  }
  return bad;
}

std::vector<Check> update_rule_checks(DType dt, Device dev) {
  using optim::detail::Rule;
  std::vector<Check> out;
  auto add = [&](const char* what, const Rule& r) {
    out.push_back({what, update_mismatches(dt, dev, r), 0.0});
  };
  Rule r;
  r.kind = Rule::Kind::adam;
  r.adam.weight_decay = 0.05f;
  add("adamw", r);
  r.adam.decoupled = false;
  add("adam l2", r);
  r = Rule();
  r.kind = Rule::Kind::sgd;
  r.sgd.weight_decay = 0.01f;
  add("sgd", r);
  r.sgd.momentum = 0.9f;
  r.sgd.dampening = 0.1f;
  add("sgd mom", r);
  r.sgd.dampening = 0.0f;
  r.sgd.nesterov = true;
  add("sgd nesterov", r);
  r = Rule();
  r.kind = Rule::Kind::rmsprop;
  r.rms.weight_decay = 0.01f;
  add("rms", r);
  r.rms.centered = true;
  add("rms centered", r);
  r.rms.momentum = 0.9f;
  add("rms c+mom", r);
  r.rms.centered = false;
  add("rms mom", r);
  return out;
}

// ---- the gradient passes and split16 ---------------------------------------------------------

// Gradients of dt with an Inf and a NaN planted: the scan's flags, first bad tensor and sum of
// squares of the finite values; the histograms against the CPU's (integer counts: equal).
std::vector<Check> grad_pass_checks(DType dt, Device dev) {
  const int64_t sizes[3] = {9000, 5000, 300};
  std::vector<Input> in;
  for (int k = 0; k < 3; ++k) in.push_back(input({sizes[k]}, dt, 90 + k, -2, 2));
  std::vector<Tensor> clean, bad;
  double want = 0;
  for (int k = 0; k < 3; ++k) {
    for (float v : in[k].ref) want += static_cast<double>(v) * v;
    clean.push_back(in[k].host.to(dev));
  }
  // Tensor 1 gets an Inf at 4500 (its first bad value) and a NaN at 4600; tensor 2 a NaN.
  std::vector<float> v1 = in[1].ref, v2 = in[2].ref;
  double want_bad = want - static_cast<double>(v1[4500]) * v1[4500] -
                    static_cast<double>(v1[4600]) * v1[4600] - static_cast<double>(v2[7]) * v2[7];
  v1[4500] = -INFINITY;
  v1[4600] = NAN;
  v2[7] = NAN;
  bad.push_back(clean[0]);
  bad.push_back(Tensor::from_vector(v1, {sizes[1]}, dt, dev));
  bad.push_back(Tensor::from_vector(v2, {sizes[2]}, dt, dev));
  Backend& be = backend_for(dev);
  const GradScan s = be.grad_scan(clean);
  const GradScan sb = be.grad_scan(bad);
  const double tol = tolerance(Kind::sum, DType::f32, 14300).fwd;
  std::vector<Check> out;
  out.push_back({"scan sumsq", std::fabs(s.sumsq - want) / want, tol});
  out.push_back({"scan clean", (s.found_inf || s.found_nan || s.first_bad != -1) ? 1.0 : 0.0, 0.0});
  out.push_back({"scan bad sumsq", std::fabs(sb.sumsq - want_bad) / want_bad, tol});
  out.push_back(
      {"scan bad flags",
       (sb.found_inf && sb.found_nan && sb.first_bad == 1 && !sb.first_bad_nan) ? 0.0 : 1.0, 0.0});
  // Histograms: a strided view too (every other element of tensor 0).
  std::vector<Tensor> hg = bad;
  hg.push_back(clean[0].as_strided({4500}, {2}));
  std::vector<Tensor> hh;
  for (const Tensor& t : hg) hh.push_back(t.to(Device::cpu));
  const auto got = be.grad_histograms(hg, 0.5f, 1024.0f);
  const auto ref = backend_for(Device::cpu).grad_histograms(hh, 0.5f, 1024.0f);
  double diff = got.size() == ref.size() ? 0.0 : 1.0;
  for (size_t t = 0; t < std::min(got.size(), ref.size()); ++t) {
    const amp::GradHistogram &x = got[t].hist, &y = ref[t].hist;
    diff += (x.numel != y.numel) + (x.zero != y.zero) + (x.inf != y.inf) + (x.nan != y.nan) +
            (x.below != y.below) + (x.above != y.above) + (x.bins != y.bins) +
            (x.max_abs != y.max_abs) + (x.fp16_zero != y.fp16_zero) +
            (x.fp16_subnormal != y.fp16_subnormal) + (x.fp16_overflow != y.fp16_overflow) +
            (got[t].first_bad != ref[t].first_bad) + (got[t].first_bad_nan != ref[t].first_bad_nan);
  }
  out.push_back({"histograms", diff, 0.0});
  // split16 of an fp32 master and back: lossless, the CPU's bits.
  const Input m = input({3001}, DType::f32, 95, -3, 3);
  const Tensor md = m.host.to(dev);
  Tensor hi = Tensor::empty({3001}, DType::bf16, dev), lo = Tensor::empty({3001}, DType::bf16, dev);
  Tensor back = Tensor::empty({3001}, DType::f32, dev);
  be.split16_split(md, hi, lo);
  be.split16_join(hi, lo, back);
  Tensor hih = Tensor::empty({3001}, DType::bf16), loh = Tensor::empty({3001}, DType::bf16);
  backend_for(Device::cpu).split16_split(m.host, hih, loh);
  out.push_back({"split16",
                 mismatches(bits_of(hi), bits_of(hih)) + mismatches(bits_of(lo), bits_of(loh)) +
                     mismatches(bits_of(back), bits_of(m.host)),
                 0.0});
  return out;
}

// fp8 quantization (amp/fp8.h) of a dt tensor: the amax, the per-tensor quantization into bf16
// and into the format's own codes, and MXFP8's blocks, each against the scalar per-element
// math (detail/fp8_math.h), bit for bit.
std::vector<Check> fp8_checks(DType dt, Device dev) {
  const int64_t R = 37, K = 100;  // 100: three blocks of 32 and one of 4 per row
  Input x = input({R, K}, dt, 96, -6.0f, 6.0f);
  const Tensor xd = x.host.to(dev);
  Backend& be = backend_for(dev);
  float want_amax = 0;
  for (float v : x.ref) want_amax = std::max(want_amax, std::fabs(v));
  std::vector<Check> out;
  out.push_back({"amax", be.amax(xd) == want_amax ? 0.0 : 1.0, 0.0});
  for (DType fmt : {DType::e4m3, DType::e5m2}) {
    const bool e5 = fmt == DType::e5m2;
    const float scale = amp::fp8_max(fmt) / want_amax * 2.0f;  // some values saturate
    auto rounded = [&](float v) {
      return e5 ? detail::fp8_round<true>(v, true) : detail::fp8_round<false>(v, true);
    };
    std::vector<float> want(x.ref.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = rounded(x.ref[i] * scale);
    for (DType qdt : {DType::bf16, fmt}) {
      Tensor q = Tensor::empty({R, K}, qdt, dev);
      be.fp8_quantize(xd, scale, fmt, q);
      out.push_back({fmt::format("{} into {}", dtype_name(fmt), dtype_name(qdt)),
                     mismatches(bits_of(q.to(Device::cpu).to(DType::f32)),
                                bits_of(Tensor::from_vector(want, {R, K}))),
                     0.0});
    }
    Tensor q = Tensor::empty({R, K}, DType::bf16, dev), sc = Tensor::empty({R, 4}, DType::u8, dev);
    const float am = be.mx_quantize(xd, fmt, q, sc);
    std::vector<float> mx(x.ref.size());
    std::vector<float> codes;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t b = 0; b < K; b += 32) {
        const int64_t end = std::min(K, b + 32);
        float bmax = 0;
        for (int64_t i = b; i < end; ++i) bmax = std::max(bmax, std::fabs(x.ref[r * K + i]));
        const uint8_t code = detail::e8m0_ceil_code(bmax, amp::fp8_max(fmt));
        codes.push_back(code);
        for (int64_t i = b; i < end; ++i)
          mx[r * K + i] = static_cast<float>(bf16(
              rounded(x.ref[r * K + i] * detail::e8m0_inverse(code)) * detail::e8m0_decode(code)));
      }
    const Tensor sch = sc.to(Device::cpu);
    double bad_codes = am == want_amax ? 0.0 : 1.0;
    for (size_t i = 0; i < codes.size(); ++i) bad_codes += sch.data<uint8_t>()[i] != codes[i];
    out.push_back({fmt::format("mx {} scales", dtype_name(fmt)), bad_codes, 0.0});
    out.push_back({fmt::format("mx {} values", dtype_name(fmt)),
                   mismatches(bits_of(q.to(Device::cpu).to(DType::f32)),
                              bits_of(Tensor::from_vector(mx, {R, K}))),
                   0.0});
  }
  return out;
}

// An fp8 operand of `fmt` holding the logical [rows, cols] `v` (values fmt holds exactly),
// stored transposed ([cols, rows] contiguous) when `trans`, on the CPU.
Tensor fp8_operand(const std::vector<float>& v, int64_t rows, int64_t cols, DType fmt, bool trans) {
  Tensor t = trans ? Tensor::empty({cols, rows}, fmt) : Tensor::empty({rows, cols}, fmt);
  auto* p = static_cast<uint8_t*>(t.raw_data());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const float x = v[static_cast<size_t>(i * cols + j)];
      p[trans ? j * rows + i : i * cols + j] =
          fmt == DType::e4m3 ? fp8_e4m3::saturate(x).bits() : fp8_e5m2::saturate(x).bits();
    }
  return t;
}

// Backend::fp8_gemm into a C of dtype dt (bf16 or f32; f16, which it does not write, records
// nothing). A backend without a native fp8 GEMM (has_fp8_gemm() false: the CPU) must decline
// (return false) and leave C as it was. Elsewhere each pair of formats the GEMM takes (E4M3 ·
// E4M3, E5M2 · E4M3, E4M3 · E5M2), with A and B each stored transposed or not, is checked
// against a scalar reference over the same codes, twice:
// - "exact": small integers (|v| <= 8, exact in both formats), power-of-two inverse scales and,
//   for a bf16 C, a bias of multiples of 1/16: every product and every partial sum (|s| <= 64·K
//   = 2^12) is exact in any accumulator of 13 bits or more, whatever the summation order (the
//   FP8 tensor cores' partial sums keep fewer than fp32's 24 bits before cuBLASLt promotes
//   them), so C is the exact value rounded once: bit for bit, tolerance 0.
// - "random": codes across a wide exponent range and arbitrary inverse scales: the products
//   are exact (at most 4 + 4 significant bits), the sums are not. Each output may be off by
//   the rounding into C (u of dt, relative) plus the accumulation error, bounded by 2^-12 times
//   the sum of |terms| (the ~14-bit accumulation of the FP8 tensor cores within a block, a few
//   roundings each, with room; fp32 accumulation would give about K·2^-24).
std::vector<Check> fp8_gemm_checks(DType dt, Device dev) {
  if (dt == DType::f16) return {};
  Backend& be = backend_for(dev);
  const int64_t M = 48, N = 32, K = 64;
  std::vector<Check> out;
  if (!be.has_fp8_gemm()) {
    const Tensor a = fp8_operand(std::vector<float>(M * K, 1.0f), M, K, DType::e4m3, false);
    const Tensor b = fp8_operand(std::vector<float>(K * N, 1.0f), N, K, DType::e4m3, false);
    Tensor c = Tensor::empty({M, N}, dt, dev);
    c.fill(7.0f);
    const bool ran = be.fp8_gemm(a.to(dev), false, b.to(dev), true, c, 1.0f, 1.0f, nullptr);
    const std::vector<float> got = c.to(Device::cpu).to_vector();
    double bad = ran ? 1.0 : 0.0;
    for (float v : got) bad += v != 7.0f;
    out.push_back({"declines", bad, 0.0});
    return out;
  }
  const std::pair<DType, DType> pairs[] = {
      {DType::e4m3, DType::e4m3}, {DType::e5m2, DType::e4m3}, {DType::e4m3, DType::e5m2}};
  uint64_t seed = 400;
  for (const auto& [fa, fb] : pairs) {
    for (const bool exact : {true, false}) {
      Rng rng(seed++);
      // The logical op(A) [M, K] and op(B) [K, N], values on their formats' grids.
      auto draw = [&](DType fmt) {
        float v;
        if (exact) {
          v = std::round(-8.0f + 16.0f * rng.uniform());
        } else {
          const float mag = amp::fp8_max(fmt) * std::exp2(-10.0f * rng.uniform());
          v = rng.uniform() < 0.5f ? -mag : mag;
        }
        return fmt == DType::e4m3 ? static_cast<float>(fp8_e4m3::saturate(v))
                                  : static_cast<float>(fp8_e5m2::saturate(v));
      };
      std::vector<float> av(M * K), bv(K * N), biasv(N);
      for (auto& x : av) x = draw(fa);
      for (auto& x : bv) x = draw(fb);
      for (auto& x : biasv) x = std::round(-32.0f + 64.0f * rng.uniform()) / 16.0f;
      const float sa = exact ? 0.5f : 1.0f / 300.0f, sb = exact ? 0.25f : 1.0f / 7.0f;
      const float alpha = sa * sb;  // the fp32 product the GEMM applies
      const bool with_bias = dt == DType::bf16;
      std::vector<float> ref(M * N);
      double max_terms = 0;  // max over outputs of alpha · sum |a·b|
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0, t = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double p = static_cast<double>(av[i * K + k]) * bv[k * N + j];
            s += p;
            t += std::fabs(p);
          }
          double r = static_cast<double>(alpha) * s;
          if (with_bias) r += biasv[static_cast<size_t>(j)];
          max_terms = std::max(max_terms, static_cast<double>(alpha) * t);
          const float rf = static_cast<float>(r);
          ref[i * N + j] = dt == DType::bf16 ? static_cast<float>(bf16(rf)) : rf;
        }
      double scale = 0;
      for (float v : ref) scale = std::max(scale, std::fabs(static_cast<double>(v)));
      const double tol = exact ? 0.0 : unit_roundoff(dt) + std::ldexp(1.0, -12) * max_terms / scale;
      const Tensor bias = Tensor::from_vector(biasv, {N}, DType::bf16, dev);
      double err = 0;
      std::vector<float> bt(K * N);  // op(B)ᵀ [N, K]: B's storage when not transposed
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < N; ++j) bt[j * K + k] = bv[k * N + j];
      for (const bool ta : {false, true})
        for (const bool tb : {false, true}) {
          // trans_b: B stored [N, K] (op(B)ᵀ row-major); else [K, N].
          const Tensor a = fp8_operand(av, M, K, fa, ta).to(dev);
          const Tensor b =
              (tb ? fp8_operand(bt, N, K, fb, false) : fp8_operand(bv, K, N, fb, false)).to(dev);
          Tensor c = Tensor::empty({M, N}, dt, dev);
          const bool ran = be.fp8_gemm(a, ta, b, tb, c, sa, sb, with_bias ? &bias : nullptr);
          err = std::max(err, ran ? rel_error(c.to(Device::cpu).to_vector(), ref) : INFINITY);
        }
      out.push_back({fmt::format("{}·{} {}{}", dtype_name(fa), dtype_name(fb),
                                 exact ? "exact" : "random", with_bias ? " +bias" : ""),
                     err, tol});
    }
  }
  return out;
}

std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"fp8_quantize", fp8_checks});
  c.push_back({"fp8_gemm", fp8_gemm_checks});
  c.push_back(
      {"matmul", [](DType dt, Device dev) { return matmul_checks(dt, dev, 0, 64, 48, 40); }});
  c.push_back({"matmul_batched",
               [](DType dt, Device dev) { return matmul_checks(dt, dev, 3, 16, 24, 20); }});
  c.push_back({"linear", [](DType dt, Device dev) { return linear_checks(dt, dev, false); }});
  c.push_back({"gelu_linear", [](DType dt, Device dev) { return linear_checks(dt, dev, true); }});
  c.push_back(binary_case(
      "add", add, ref::Bin::add, [](double, double) { return 1.0; },
      [](double, double) { return 1.0; }));
  c.push_back(binary_case(
      "sub", sub, ref::Bin::sub, [](double, double) { return 1.0; },
      [](double, double) { return -1.0; }));
  c.push_back(binary_case(
      "mul", mul, ref::Bin::mul, [](double, double b) { return b; },
      [](double a, double) { return a; }));
  c.push_back(binary_case(
      "div", div, ref::Bin::div, [](double, double b) { return 1.0 / b; },
      [](double a, double b) { return -a / (b * b); }));
  c.push_back(
      unary_case("relu", relu, ref::relu, [](double x, double) { return x > 0 ? 1.0 : 0.0; }));
  c.push_back(unary_case("gelu", gelu, ref::gelu, [](double x, double) {
    const double k = std::sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x);
    const double t = std::tanh(u);
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x);
  }));
  c.push_back(unary_case("tanh", tanh, ref::tanh, [](double, double y) { return 1 - y * y; }));
  c.push_back(unary_case(
      "abs", abs,
      [](const Tensor& x) {
        std::vector<float> v = x.to_vector();
        for (float& e : v) e = std::fabs(e);
        return Tensor::from_vector(v, x.shape());
      },
      [](double x, double) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }));
  c.push_back(unary_case(
      "exp", exp, ref::exp, [](double, double y) { return y; }, -3.0f, 3.0f));
  c.push_back(unary_case(
      "log", log, ref::log, [](double x, double) { return 1.0 / x; }, 0.1f, 3.0f));
  c.push_back({"scalar_add_mul", [](DType dt, Device dev) {
                 const Input x = input({5, 70}, dt, 18);
                 Variable xv = leaf(x, dev);
                 Variable y = mul(add(xv, 0.75f), -1.5f);
                 const Tensor xh = Tensor::from_vector(x.ref, {5, 70});
                 // The sum is rounded to dt before the product reads it.
                 const Tensor s = ref::add_scalar(xh, 0.75f).to(dt).to(DType::f32);
                 const std::vector<float> yr = values(ref::mul_scalar(s, -1.5f));
                 const Input g = input({5, 70}, dt, 19);
                 y.backward(g.host.to(dev));
                 std::vector<float> gx(g.ref);
                 for (float& v : gx) v *= -1.5f;
                 const Tolerance t = tolerance(Kind::rounded, dt);
                 return checks({{"fwd", rel_error(values(y), yr), 2 * t.fwd},
                                {"bwd dx", rel_error(grad_of(xv), gx), t.bwd}});
               }});
  for (bool is_mean : {false, true})
    c.push_back({is_mean ? "mean" : "sum", [is_mean](DType dt, Device dev) {
                   const Input x = input({6, 200, 30}, dt, 20);
                   Variable xv = leaf(x, dev);
                   Variable y = is_mean ? mean(xv, {1}) : sum(xv, {1});
                   const Tensor xh = Tensor::from_vector(x.ref, {6, 200, 30});
                   const std::vector<float> yr =
                       values(is_mean ? ref::mean(xh, {1}, false) : ref::sum(xh, {1}, false));
                   const Input g = input({6, 30}, DType::f32, 21);
                   y.backward(g.host.to(dev));
                   std::vector<float> gx(x.ref.size());
                   for (int64_t i = 0; i < 6; ++i)
                     for (int64_t r = 0; r < 200; ++r)
                       for (int64_t j = 0; j < 30; ++j)
                         gx[static_cast<size_t>((i * 200 + r) * 30 + j)] =
                             g.ref[static_cast<size_t>(i * 30 + j)] / (is_mean ? 200.0f : 1.0f);
                   const Tolerance t = tolerance(Kind::sum, DType::f32, 200);
                   return checks(
                       {{"fwd", rel_error(values(y), yr), t.fwd},
                        {"bwd dx", rel_error(grad_of(xv), gx), tolerance(Kind::rounded, dt).fwd}});
                 }});
  // Axes that are not one contiguous range (the kept dims moved first), and rows long enough
  // that a backend sums them in several blocks.
  c.push_back({"sum_axes_0_2", [](DType dt, Device dev) {
                 const Input x = input({6, 40, 30}, dt, 50);
                 Variable xv = leaf(x, dev);
                 Variable y = sum(xv, {0, 2});
                 const std::vector<float> yr =
                     values(ref::sum(Tensor::from_vector(x.ref, {6, 40, 30}), {0, 2}, false));
                 const Input g = input({40}, DType::f32, 51);
                 y.backward(g.host.to(dev));
                 std::vector<float> gx(x.ref.size());
                 for (size_t e = 0; e < gx.size(); ++e) gx[e] = g.ref[e / 30 % 40];
                 return checks(
                     {{"fwd", rel_error(values(y), yr), tolerance(Kind::sum, DType::f32, 180).fwd},
                      {"bwd dx", rel_error(grad_of(xv), gx), tolerance(Kind::rounded, dt).fwd}});
               }});
  c.push_back({"sum_long_rows", [](DType dt, Device dev) {
                 const int64_t R = 20000;
                 const Input x = input({3, R}, dt, 52);
                 Variable xv = leaf(x, dev);
                 Variable y = sum(xv, {1});
                 const std::vector<float> yr =
                     values(ref::sum(Tensor::from_vector(x.ref, {3, R}), {1}, false));
                 const Input g = input({3}, DType::f32, 53);
                 y.backward(g.host.to(dev));
                 std::vector<float> gx(x.ref.size());
                 for (size_t e = 0; e < gx.size(); ++e) gx[e] = g.ref[e / static_cast<size_t>(R)];
                 return checks(
                     {{"fwd", rel_error(values(y), yr), tolerance(Kind::sum, DType::f32, R).fwd},
                      {"bwd dx", rel_error(grad_of(xv), gx), tolerance(Kind::rounded, dt).fwd}});
               }});
  for (bool log : {false, true})
    c.push_back({log ? "log_softmax" : "softmax", [log](DType dt, Device dev) {
                   const int64_t N = 24, C = 300;
                   const Input x = input({4, 6, C}, dt, 22, -8.0f, 8.0f);
                   const Input g = input({4, 6, C}, dt, 23);
                   Variable xv = leaf(x, dev);
                   Variable y = log ? log_softmax(xv) : softmax(xv);
                   std::vector<float> yr(x.ref.size()), dx(x.ref.size());
                   (log ? ref::log_softmax : ref::softmax)(x.ref.data(), N, C, yr.data());
                   y.backward(g.host.to(dev));
                   // The backward reads the forward's output as stored (rounded to dt).
                   const std::vector<float> ys = values(y);
                   (log ? ref::log_softmax_backward : ref::softmax_backward)(
                       ys.data(), g.ref.data(), N, C, dx.data());
                   const Tolerance t = tolerance(Kind::normalised, dt, C);
                   return checks({{"fwd", rel_error(ys, yr), t.fwd},
                                  {"bwd dx", rel_error(grad_of(xv), dx), t.bwd}});
                 }});
  // Along a middle axis (lines strided in memory): x [4, 50, 6], softmax over the 50.
  c.push_back({"softmax_axis1", [](DType dt, Device dev) {
                 const int64_t A = 4, C = 50, I = 6;
                 const Input x = input({A, C, I}, dt, 54, -8.0f, 8.0f);
                 const Input g = input({A, C, I}, dt, 55);
                 Variable xv = leaf(x, dev);
                 Variable y = softmax(xv, 1);
                 y.backward(g.host.to(dev));
                 const std::vector<float> ys = values(y);
                 std::vector<float> yr(x.ref.size()), dx(x.ref.size());
                 std::vector<float> line(C), out(C), yl(C), gl(C);
                 for (int64_t a = 0; a < A; ++a)
                   for (int64_t i = 0; i < I; ++i) {
                     auto at = [&](int64_t j) { return static_cast<size_t>((a * C + j) * I + i); };
                     for (int64_t j = 0; j < C; ++j) line[j] = x.ref[at(j)];
                     ref::softmax(line.data(), 1, C, out.data());
                     for (int64_t j = 0; j < C; ++j) yr[at(j)] = out[j];
                     // The backward reads the forward's output as stored (rounded to dt).
                     for (int64_t j = 0; j < C; ++j) {
                       yl[j] = ys[at(j)];
                       gl[j] = g.ref[at(j)];
                     }
                     ref::softmax_backward(yl.data(), gl.data(), 1, C, out.data());
                     for (int64_t j = 0; j < C; ++j) dx[at(j)] = out[j];
                   }
                 const Tolerance t = tolerance(Kind::normalised, dt, C);
                 return checks({{"fwd", rel_error(ys, yr), t.fwd},
                                {"bwd dx", rel_error(grad_of(xv), dx), t.bwd}});
               }});
  // The index check itself (Backend::scan_indices): the first bad index and its position, the
  // count of indices that are not ignored before it, in i64 (f32 rows) and i32 (16-bit rows).
  c.push_back(
      {"index_scan", [](DType dt, Device dev) {
         const DType it = dt == DType::f32 ? DType::i64 : DType::i32;
         const int64_t n = 50, len = 3000;
         Rng rng(56);
         std::vector<float> ids(len);
         for (auto& v : ids) v = static_cast<float>(rng.below(n));
         for (int64_t i = 7; i < len; i += 13) ids[static_cast<size_t>(i)] = -100;
         Backend& be = backend_for(dev);
         auto scan = [&](const std::vector<float>& v, std::optional<int64_t> ignore) {
           return be.scan_indices(Tensor::from_vector(v, {len}, it, dev), n, ignore);
         };
         auto mismatch = [](const IndexScan& a, int64_t pos, int64_t value, int64_t counted) {
           return a.bad_pos != pos || (pos >= 0 && a.bad_value != value) || a.counted != counted;
         };
         const int64_t ignored = (len - 7 + 12) / 13;
         // All in range but the ignored ones; then two bad ones (the first one counts);
         // then the ignore value itself, unignored, is the first bad one.
         const bool ok_all = !mismatch(scan(ids, -100), -1, 0, len - ignored);
         std::vector<float> bad(ids);
         bad[2000] = 77;
         bad[2500] = -3;
         int64_t before = 0;
         for (int64_t i = 0; i < 2000; ++i) before += ids[static_cast<size_t>(i)] != -100;
         const bool ok_bad = !mismatch(scan(bad, -100), 2000, 77, before);
         const bool ok_unignored = !mismatch(scan(ids, std::nullopt), 7, -100, 7);
         return checks({{"in range", ok_all ? 0.0 : 1.0, 0.0},
                        {"bad", ok_bad ? 0.0 : 1.0, 0.0},
                        {"no ignore", ok_unignored ? 0.0 : 1.0, 0.0}});
       }});
  for (bool l1 : {false, true})
    c.push_back({l1 ? "l1_loss" : "mse_loss", [l1](DType dt, Device dev) {
                   const Input p = input({32, 5}, dt, 45, -2.0f, 2.0f), t = input({32, 5}, dt, 46);
                   Variable pv = leaf(p, dev), tv = leaf(t, dev);
                   Variable loss = l1 ? l1_loss(pv, tv) : mse_loss(pv, tv);
                   loss.backward(3.0f);
                   const double n = static_cast<double>(p.ref.size());
                   double want = 0;
                   std::vector<float> gp(p.ref.size()), gt(p.ref.size());
                   for (size_t i = 0; i < p.ref.size(); ++i) {
                     const double d = static_cast<double>(p.ref[i]) - t.ref[i];
                     want += l1 ? std::fabs(d) : d * d;
                     const double g = 3.0 * (l1 ? (d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0)) : 2 * d) / n;
                     gp[i] = static_cast<float>(g);
                     gt[i] = static_cast<float>(-g);
                   }
                   want /= n;
                   // fp32 internals whatever the dtype: the inputs are cast exactly, the sum of
                   // 160 terms carries fp32 error only; the gradients round once into dt.
                   const Tolerance t32 = tolerance(Kind::sum, DType::f32, 160);
                   const double u = unit_roundoff(dt);
                   return checks(
                       {{"fwd", rel_error(values(loss), {static_cast<float>(want)}), t32.fwd},
                        {"bwd dpred", rel_error(grad_of(pv), gp), u + t32.bwd},
                        {"bwd dtarget", rel_error(grad_of(tv), gt), u + t32.bwd}});
                 }});
  c.push_back({"cross_entropy", [](DType dt, Device dev) {
                 const int64_t N = 64, V = 300;
                 const Input x = input({N, V}, dt, 24, -6.0f, 6.0f);
                 Rng rng(25);
                 std::vector<int64_t> t(N);
                 for (auto& v : t) v = static_cast<int64_t>(rng.below(V));
                 t[5] = t[40] = -100;  // ignored rows
                 Variable xv = leaf(x, dev);
                 Variable loss = cross_entropy(xv, Variable(ids_tensor(t, {N}, dev)));
                 loss.backward(2.0f);
                 std::vector<float> dx(x.ref.size());
                 const float want =
                     ref::cross_entropy(x.ref.data(), t, N, V, -100, 2.0f, dx.data());
                 const Tolerance tol = tolerance(Kind::normalised, dt, V);
                 return checks({{"fwd", rel_error(values(loss), {want}),
                                 tolerance(Kind::normalised, DType::f32, N * V).fwd},
                                {"bwd dx", rel_error(grad_of(xv), dx), tol.bwd}});
               }});
  c.push_back({"layer_norm", [](DType dt, Device dev) {
                 const int64_t N = 64, C = 300;
                 // An offset mean (3) makes a one-pass variance lose digits; two passes must not.
                 const Input x = input({4, 16, C}, dt, 26, 2.0f, 4.0f);
                 const Input w = input({C}, dt, 27, 0.5f, 1.5f), b = input({C}, dt, 28);
                 const Input g = input({4, 16, C}, dt, 29);
                 Variable xv = leaf(x, dev), wv = leaf(w, dev), bv = leaf(b, dev);
                 Variable y = layer_norm(xv, wv, bv, 1e-5f);
                 y.backward(g.host.to(dev));
                 std::vector<float> yr(x.ref.size()), mean(N), rstd(N), dx(x.ref.size()), dw(C),
                     db(C);
                 ref::layer_norm(x.ref.data(), w.ref.data(), b.ref.data(), N, C, 1e-5f, yr.data(),
                                 mean.data(), rstd.data());
                 ref::layer_norm_backward(x.ref.data(), w.ref.data(), g.ref.data(), N, C, 1e-5f,
                                          dx.data(), dw.data(), db.data());
                 const Tolerance t = tolerance(Kind::normalised, dt, C);
                 const Tolerance ts = tolerance(Kind::sum, DType::f32, N);
                 return checks({{"fwd", rel_error(values(y), yr), t.fwd},
                                {"bwd dx", rel_error(grad_of(xv), dx), t.bwd},
                                {"bwd dw", rel_error(grad_of(wv), dw), ts.bwd},
                                {"bwd db", rel_error(grad_of(bv), db), ts.bwd}});
               }});
  c.push_back({"embedding", [](DType dt, Device dev) {
                 const int64_t V = 37, C = 70, N = 320;
                 Rng rng(30);
                 std::vector<int64_t> ids(N);
                 for (auto& i : ids) i = static_cast<int64_t>(rng.below(V));
                 ids[3] = ids[9] = ids[17] = 4;  // repeats: the backward adds
                 const Input tab = input({V, C}, dt, 31), g = input({8, 40, C}, dt, 32);
                 Variable tv = leaf(tab, dev);
                 Variable y = embedding(Variable(ids_tensor(ids, {8, 40}, dev)), tv);
                 y.backward(g.host.to(dev));
                 std::vector<float> yr(static_cast<size_t>(N * C)),
                     dt_ref(static_cast<size_t>(V * C));
                 ref::embedding(ids, tab.ref.data(), V, C, yr.data());
                 ref::embedding_backward(ids, g.ref.data(), V, C, dt_ref.data());
                 const Tolerance t = tolerance(Kind::exact, dt, N);
                 return checks({{"fwd", rel_error(values(y), yr), t.fwd},
                                {"bwd dtable", rel_error(grad_of(tv), dt_ref), t.bwd}});
               }});
  // Shapes for every path: D a multiple of 32 takes the fused kernels on AVX2 and AVX-512 levels
  // (ragged 8- and 6-row blocks and 32-key tiles), other D and the scalar level the GEMM path;
  // tiny heads the GEMM path everywhere. D = 128 and 80: the largest head size the CUDA kernels
  // take, and one they pad.
  for (const AttnShape s : {AttnShape{2, 3, 70, 70, 64, true}, AttnShape{1, 2, 37, 45, 32, false},
                            AttnShape{1, 2, 150, 150, 16, true}, AttnShape{1, 2, 7, 11, 5, false},
                            AttnShape{1, 2, 40, 40, 128, true}, AttnShape{2, 1, 33, 50, 80, false}})
    c.push_back(
        {fmt::format("attention_{}x{}x{}x{}{}", s.H, s.Tq, s.Tk, s.D, s.causal ? "_causal" : ""),
         [s](DType dt, Device dev) { return attention_checks(dt, dev, s); }});
  c.push_back({"attention_qkv", [](DType dt, Device dev) {
                 const int64_t B = 2, T = 45, H = 2, D = 32, C = H * D;
                 const Input x = input({B, T, 3 * C}, dt, 33, -2.0f, 2.0f);
                 const Input g = input({B, T, C}, dt, 34);
                 Variable xv = leaf(x, dev);
                 Variable o = attention_qkv(xv, H, true);
                 o.backward(g.host.to(dev));
                 // The reference on head-major copies of q, k, v and of the output gradient.
                 auto heads = [&](const std::vector<float>& src, int64_t part, int64_t width) {
                   std::vector<float> out(static_cast<size_t>(B * H * T * D));
                   for (int64_t b = 0; b < B; ++b)
                     for (int64_t h = 0; h < H; ++h)
                       for (int64_t t = 0; t < T; ++t)
                         for (int64_t d = 0; d < D; ++d)
                           out[static_cast<size_t>(((b * H + h) * T + t) * D + d)] =
                               src[static_cast<size_t>((b * T + t) * width + part * C + h * D + d)];
                   return out;
                 };
                 const auto q = heads(x.ref, 0, 3 * C), k = heads(x.ref, 1, 3 * C),
                            v = heads(x.ref, 2, 3 * C), gh = heads(g.ref, 0, C);
                 const float scale = 1.0f / std::sqrt(static_cast<float>(D));
                 std::vector<float> o4(q.size()), dq(q.size()), dk(q.size()), dv(q.size());
                 ref::attention(q.data(), k.data(), v.data(), B, H, T, T, D, true, scale,
                                o4.data());
                 ref::attention_backward(q.data(), k.data(), v.data(), gh.data(), B, H, T, T, D,
                                         true, scale, dq.data(), dk.data(), dv.data());
                 // Back to the packed layouts.
                 std::vector<float> want(static_cast<size_t>(B * T * C)),
                     dx(static_cast<size_t>(B * T * 3 * C));
                 for (int64_t b = 0; b < B; ++b)
                   for (int64_t h = 0; h < H; ++h)
                     for (int64_t t = 0; t < T; ++t)
                       for (int64_t d = 0; d < D; ++d) {
                         const size_t hm = static_cast<size_t>(((b * H + h) * T + t) * D + d);
                         want[static_cast<size_t>((b * T + t) * C + h * D + d)] = o4[hm];
                         const size_t p = static_cast<size_t>((b * T + t) * 3 * C + h * D + d);
                         dx[p] = dq[hm];
                         dx[p + C] = dk[hm];
                         dx[p + 2 * C] = dv[hm];
                       }
                 const Tolerance t = tolerance(Kind::attention, dt, T);
                 return checks({{"fwd", rel_error(values(o), want), t.fwd},
                                {"bwd dqkv", rel_error(grad_of(xv), dx), t.bwd}});
               }});
  c.push_back({"dropout", [](DType dt, Device dev) {
                 const Input x = input({40, 90}, dt, 35);
                 Rng rng(36);
                 const uint64_t seed = rng.seed, base = rng.counter;
                 Variable xv = leaf(x, dev);
                 Variable y = dropout(xv, 0.3f, true, rng);
                 const std::vector<float> yr =
                     values(ref::dropout(Tensor::from_vector(x.ref, {40, 90}), 0.3f, seed, base));
                 const Input g = input({40, 90}, dt, 37);
                 y.backward(g.host.to(dev));
                 const std::vector<float> gr =
                     values(ref::dropout(Tensor::from_vector(g.ref, {40, 90}), 0.3f, seed, base));
                 const Tolerance t = tolerance(Kind::rounded, dt);
                 return checks({{"fwd", rel_error(values(y), yr), t.fwd},
                                {"bwd dx", rel_error(grad_of(xv), gr), t.fwd}});
               }});
  c.push_back(
      {"concat_slice_transpose", [](DType dt, Device dev) {
         const Input a = input({3, 20, 7}, dt, 38), b = input({3, 11, 7}, dt, 39);
         Variable av = leaf(a, dev), bv = leaf(b, dev);
         // concat along 1, then a strided slice and a transposed copy (reshape of a
         // non-contiguous view copies).
         Variable y = reshape(transpose(slice(concat({av, bv}, 1), 1, 4, 29), 1, 2), {-1});
         const Tensor cat = ref::concat(
             {Tensor::from_vector(a.ref, {3, 20, 7}), Tensor::from_vector(b.ref, {3, 11, 7})}, 1);
         const std::vector<float> yr =
             values(ref::transpose(ref::slice(cat, 1, 4, 29), 1, 2).contiguous());
         const Input g = input({3 * 25 * 7}, dt, 40);
         y.backward(g.host.to(dev));
         // d/da, d/db: g scattered back through the transpose and the slice.
         std::vector<float> ga(a.ref.size(), 0.0f), gb(b.ref.size(), 0.0f);
         for (int64_t i = 0; i < 3; ++i)
           for (int64_t k = 0; k < 7; ++k)
             for (int64_t r = 0; r < 25; ++r) {
               const float v = g.ref[static_cast<size_t>((i * 7 + k) * 25 + r)];
               const int64_t row = 4 + r;
               if (row < 20)
                 ga[static_cast<size_t>((i * 20 + row) * 7 + k)] = v;
               else
                 gb[static_cast<size_t>((i * 11 + row - 20) * 7 + k)] = v;
             }
         return checks({{"fwd", rel_error(values(y), yr), 0.0},
                        {"bwd da", rel_error(grad_of(av), ga), 0.0},
                        {"bwd db", rel_error(grad_of(bv), gb), 0.0}});
       }});
  c.push_back({"cast", [](DType dt, Device dev) {
                 const Input x = input({50, 30}, DType::f32, 41, -100.0f, 100.0f);
                 Variable xv = leaf(x, dev);
                 Variable y = cast(xv, dt);
                 std::vector<float> yr(x.ref);
                 const Input g = input({50, 30}, dt, 42);
                 y.backward(g.host.to(dev));
                 return checks({{"fwd", rel_error(values(y), yr), unit_roundoff(dt)},
                                {"bwd dx", rel_error(grad_of(xv), g.ref), 0.0}});
               }});
  for (const char* k : {"adamw", "sgd", "rmsprop"})
    c.push_back({std::string("optimizer_") + k,
                 [k](DType dt, Device dev) { return optimizer_checks(dt, dev, k); }});
  c.push_back({"gemm_ex", gemm_ex_checks});
  c.push_back({"optimizer_update", update_rule_checks});
  c.push_back({"grad_passes", grad_pass_checks});
  c.push_back({"gradient_norm", [](DType dt, Device dev) {
                 nn::Parameter p("w", Tensor::zeros({5000}, DType::f32, dev), dt);
                 nn::Parameter q("v", Tensor::zeros({700}, DType::f32, dev), dt);
                 const Input gp = input({5000}, dt, 43), gq = input({700}, dt, 44);
                 p.weight.grad() = gp.host.to(dev);
                 q.weight.grad() = gq.host.to(dev);
                 double s = 0;
                 for (float v : gp.ref) s += static_cast<double>(v) * v;
                 for (float v : gq.ref) s += static_cast<double>(v) * v;
                 const optim::GradStats st = optim::gradient_stats({&p, &q}, 0.5f);
                 const double want = std::sqrt(s) * 0.5;
                 return checks({{"fwd", std::fabs(st.norm() - want) / want,
                                 tolerance(Kind::sum, DType::f32, 5700).fwd}});
               }});
  return c;
}

// ---- backends --------------------------------------------------------------------------------

struct BackendUnderTest {
  std::string name;
  Device device;
  cpu::Isa level = cpu::Isa::scalar;  // the CPU's level
  std::string skip;                   // why it cannot run here ("" when it can)
};

std::vector<BackendUnderTest> backends() {
  std::vector<BackendUnderTest> out;
  const char* lacks[] = {"", "AVX2, FMA or F16C", "AVX-512 F/BW/VL/DQ", "AVX512_BF16"};
  for (int l = cpu::kIsaCount - 1; l >= 0; --l) {
    const auto level = static_cast<cpu::Isa>(l);
    BackendUnderTest b{fmt::format("cpu/{}", cpu::isa_name(level)), Device::cpu, level, ""};
    if (!cpu::isa_supported(level))
      b.skip = fmt::format("this CPU lacks {}", lacks[l]);
    else if (level > cpu::isa())
      b.skip = fmt::format("capped by MIXTRAIN_ISA={}", cpu::isa_name(cpu::isa()));
    out.push_back(b);
  }
  BackendUnderTest cuda{"cuda", Device::cuda};
  std::string why;
  if (!backend_available(Device::cuda, &why)) cuda.skip = why;
  out.push_back(cuda);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string only_op, only_backend;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "-o" || a == "-b") && i + 1 < argc) {
      (a == "-o" ? only_op : only_backend) = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [-o OP] [-b BACKEND]\n", argv[0]);
      return 2;
    }
  }
  std::vector<Row> rows;
  int failed = 0, passed = 0, skipped = 0;
  for (const BackendUnderTest& be : backends()) {
    if (!only_backend.empty() && be.name.find(only_backend) == std::string::npos) continue;
    if (!be.skip.empty()) {
      rows.push_back({"*", "*", be.name, "-", "skipped: " + be.skip});
      ++skipped;
      continue;
    }
    const cpu::IsaCap cap(be.level);
    for (const Case& c : cases()) {
      if (!only_op.empty() && c.op.find(only_op) == std::string::npos) continue;
      for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
        try {
          for (const Check& k : c.run(dt, be.device)) {
            const bool ok = k.err <= k.tol;
            rows.push_back(
                {c.op, dtype_name(dt), be.name, k.what, ok ? "ok" : "FAIL", k.err, k.tol, !ok});
            ok ? ++passed : ++failed;
          }
        } catch (const std::exception& e) {
          rows.push_back(
              {c.op, dtype_name(dt), be.name, "-", fmt::format("FAIL: {}", e.what()), 0, 0, true});
          ++failed;
        }
      }
    }
  }
  std::printf("%-26s %-5s %-15s %-11s %-10s %-10s %s\n", "op", "dtype", "backend", "pass",
              "max error", "tolerance", "verdict");
  for (const Row& r : rows) {
    if (r.pass == "-")
      std::printf("%-26s %-5s %-15s %-11s %-10s %-10s %s\n", r.op.c_str(), r.dtype.c_str(),
                  r.backend.c_str(), r.pass.c_str(), "-", "-", r.verdict.c_str());
    else
      std::printf("%-26s %-5s %-15s %-11s %-10.2e %-10.2e %s\n", r.op.c_str(), r.dtype.c_str(),
                  r.backend.c_str(), r.pass.c_str(), r.err, r.tol, r.verdict.c_str());
  }
  std::printf("test_backend_ops: %d passed, %d failed, %d backends skipped\n", passed, failed,
              skipped);
  return failed ? 1 : 0;
}
