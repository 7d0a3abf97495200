// softmax, log_softmax (any axis) and the fused cross-entropy (log-softmax + NLL) with fp32
// internals: max-subtracted exponentials, so ±80 logits in bf16 neither overflow nor vanish.
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops_nn.h"
#include "ops/nn_common.h"

namespace mixtrain {

using namespace nn_detail;

namespace {

// Views x as [outer, n, inner] around `axis` and applies row_fn(in, out, n) to every line of
// n elements along the axis, in fp32. Lines along the last axis (inner == 1) are contiguous
// and go through the bulk conversion; other axes gather with a stride.
template <class T, class RowFn>
void for_each_line(const Tensor& a, const Tensor* b, Tensor& out, int64_t axis, RowFn row_fn) {
  const Shape& s = a.shape();
  const int64_t n = s[axis];
  int64_t inner = 1;
  for (size_t d = axis + 1; d < s.size(); ++d) inner *= s[d];
  const int64_t outer = n * inner != 0 ? a.numel() / (n * inner) : 0;
  const T* ap = a.data<T>();
  const T* bp = b ? b->data<T>() : nullptr;
  T* op = out.data<T>();
  const int64_t lines = outer * inner;
#pragma omp parallel if (a.numel() > kParallelMin)
  {
    std::vector<float> ab(n), bb(n), ob(n);
#pragma omp for
    for (int64_t l = 0; l < lines; ++l) {
      const int64_t o = l / inner, i = l % inner;
      const int64_t base = o * n * inner + i;
      const float* av;
      const float* bv = nullptr;
      if (inner == 1) {
        av = load_row(ap + base, n, ab.data());
        if (bp) bv = load_row(bp + base, n, bb.data());
      } else {
        for (int64_t j = 0; j < n; ++j) ab[j] = to_f32(ap[base + j * inner]);
        if (bp)
          for (int64_t j = 0; j < n; ++j) bb[j] = to_f32(bp[base + j * inner]);
        av = ab.data();
        bv = bb.data();
      }
      row_fn(av, bv, ob.data(), n);
      if (inner == 1) {
        store_row(ob.data(), n, op + base, dtype_of<T>());
      } else {
        for (int64_t j = 0; j < n; ++j) op[base + j * inner] = from_f32<T>(ob[j]);
      }
    }
  }
}

// y = exp(x - max - log(sum)) or x - max - log(sum), fp32.
void softmax_row(const float* x, float* y, int64_t n, bool log) {
  const float m = max_row(x, n);
  // A row of -inf only: define the max as 0 so exp gives 0, not NaN from (-inf) - (-inf).
  const float mm = std::isfinite(m) ? m : 0.0f;
  for (int64_t j = 0; j < n; ++j) y[j] = std::exp(x[j] - mm);
  const float s = sum_lanes(y, n);
  if (log) {
    const float sub = mm + std::log(s);
    for (int64_t j = 0; j < n; ++j) y[j] = x[j] - sub;
  } else {
    const float inv = 1.0f / s;
    for (int64_t j = 0; j < n; ++j) y[j] *= inv;
  }
}

Variable softmax_impl(const Variable& x, int64_t axis, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_defined(x, op, "x");
  check_float(x.data(), op, "x");
  if (x.dim() == 0) throw ShapeError(fmt::format("{}: x {} is a scalar", op, x.data().str()));
  const int64_t ax = wrap_axis(axis, x.dim(), op, x.data());
  const DType dt = amp::op_dtype(op, amp::OpCategory::stats32, {x.dtype()});
  const Tensor xs = x.data().to(dt).contiguous();
  Tensor y = Tensor::empty(xs.shape(), dt);
  dispatch_compute(dt, op, [&](auto t0) {
    using T = decltype(t0);
    for_each_line<T>(xs, nullptr, y, ax, [log](const float* a, const float*, float* o, int64_t n) {
      softmax_row(a, o, n, log);
    });
  });
  const DType x_dt = x.dtype();
  // Saves the output (not the input): both backwards are functions of y alone.
  return make_op_result(y, {x}, op, [y, ax, dt, x_dt, log, op](const Tensor& g_in) {
    const Tensor g = g_in.to(dt).contiguous();
    Tensor dx = Tensor::empty(y.shape(), dt);
    dispatch_compute(dt, op, [&](auto t0) {
      using T = decltype(t0);
      for_each_line<T>(y, &g, dx, ax, [log](const float* yv, const float* gv, float* o, int64_t n) {
        if (log) {  // dx = g - softmax·sum(g), softmax = exp(y)
          const float s = sum_lanes(gv, n);
          for (int64_t j = 0; j < n; ++j) o[j] = gv[j] - std::exp(yv[j]) * s;
        } else {  // dx = y·(g - sum(g·y))
          const float s = dot_lanes(gv, yv, n);
          for (int64_t j = 0; j < n; ++j) o[j] = yv[j] * (gv[j] - s);
        }
      });
    });
    return std::vector<Tensor>{dx.to(x_dt)};
  });
}

}  // namespace

Variable softmax(const Variable& x, int64_t axis) { return softmax_impl(x, axis, false); }
Variable log_softmax(const Variable& x, int64_t axis) { return softmax_impl(x, axis, true); }

Variable cross_entropy(const Variable& logits, const Variable& targets, int64_t ignore_index) {
  constexpr const char* kOp = "cross_entropy";
  check_defined(logits, kOp, "logits");
  check_defined(targets, kOp, "targets");
  check_float(logits.data(), kOp, "logits");
  check_index(targets.data(), kOp, "targets");
  if (logits.dim() < 1)
    throw ShapeError(fmt::format("{}: logits {} need a class dim", kOp, logits.data().str()));
  const Shape lead(logits.shape().begin(), logits.shape().end() - 1);
  if (targets.shape() != lead)
    throw ShapeError(fmt::format("{}: targets {} must have shape {} to match logits {}", kOp,
                                 targets.data().str(), shape_str(lead), logits.data().str()));
  // The loss dtype (fp32 under every preset); the logits are read in their own dtype with
  // fp32 internals, never cast to fp32 in memory (a [B·T, V] copy would cost more than the op).
  const DType loss_dt = amp::op_dtype(kOp, amp::OpCategory::fp32, {logits.dtype()});
  const Tensor x = logits.data().contiguous();
  const Tensor tg = targets.data().contiguous();
  const int64_t V = logits.size(-1);
  const int64_t N = tg.numel();
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = index_at(tg, n);
    if (t == ignore_index) continue;
    if (t < 0 || t >= V)
      throw ShapeError(
          fmt::format("{}: target {} at position {} of targets {} is out of range "
                      "for V = {} classes (logits {}, ignore_index {})",
                      kOp, t, n, tg.str(), V, x.str(), ignore_index));
    ++count;
  }
  // Per-row logsumexp saved for backward (N floats); the row losses are summed in double in
  // row order, so the loss does not depend on the thread count.
  Tensor lse = Tensor::empty({N}, DType::f32);
  std::vector<float> row_loss(static_cast<size_t>(N), 0.0f);
  float* lp = lse.data<float>();
  dispatch_compute(x.dtype(), kOp, [&](auto t0) {
    using T = decltype(t0);
    const T* xp = x.data<T>();
#pragma omp parallel if (N * V > kParallelMin)
    {
      std::vector<float> buf(V), e(V);
#pragma omp for
      for (int64_t n = 0; n < N; ++n) {
        const int64_t t = index_at(tg, n);
        if (t == ignore_index) {
          lp[n] = 0.0f;
          continue;
        }
        const float* r = load_row(xp + n * V, V, buf.data());
        const float m = max_row(r, V);
        for (int64_t j = 0; j < V; ++j) e[j] = std::exp(r[j] - m);
        lp[n] = m + std::log(sum_lanes(e.data(), V));
        row_loss[n] = lp[n] - r[t];
      }
    }
  });
  double total = 0;
  for (int64_t n = 0; n < N; ++n) total += row_loss[n];
  const float loss = count ? static_cast<float>(total / count) : 0.0f;
  Tensor out = Tensor::full({}, loss, loss_dt);
  return make_op_result(out, {logits, targets}, kOp,
                        [x, tg, lse, N, V, count, ignore_index](const Tensor& g_in) {
                          const float g = g_in.item();
                          const DType dt = x.dtype();
                          Tensor dx = Tensor::empty(x.shape(), dt);
                          // d(mean loss)/dx[n, j] = g/count · (softmax(x_n)_j - [j == t_n]);
                          // ignored rows are 0 (and with count 0 every row is ignored: zero
                          // gradient, no 0/0).
                          const float coef = count ? g / static_cast<float>(count) : 0.0f;
                          const float* lp = lse.data<float>();
                          const size_t es = dtype_size(dt);
                          char* dp = static_cast<char*>(dx.raw_data());
                          dispatch_compute(dt, "cross_entropy backward", [&](auto t0) {
                            using T = decltype(t0);
                            const T* xp = x.data<T>();
#pragma omp parallel if (N * V > kParallelMin)
                            {
                              std::vector<float> buf(V), o(V);
#pragma omp for
                              for (int64_t n = 0; n < N; ++n) {
                                const int64_t t = index_at(tg, n);
                                if (t == ignore_index) {
                                  std::fill(o.begin(), o.end(), 0.0f);
                                } else {
                                  const float* r = load_row(xp + n * V, V, buf.data());
                                  const float l = lp[n];
                                  for (int64_t j = 0; j < V; ++j) o[j] = coef * std::exp(r[j] - l);
                                  o[t] -= coef;
                                }
                                store_row(o.data(), V, dp + n * V * es, dt);
                              }
                            }
                          });
                          return std::vector<Tensor>{dx, Tensor()};
                        });
}

}  // namespace mixtrain
