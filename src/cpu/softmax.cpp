// Softmax, log-softmax and the fused cross-entropy on the CPU, with fp32 internals:
// max-subtracted exponentials, so ±80 logits in bf16 neither overflow nor vanish.
#include <cmath>
#include <vector>

#include "core/dispatch.h"
#include "cpu/backend.h"
#include "cpu/rows.h"

namespace mixtrain::cpu {

namespace {

/// Below this many elements a kernel runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 14;

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

}  // namespace

void CpuBackend::softmax(const Tensor& x, int64_t axis, bool log, const Tensor& y_in) {
  Tensor y = y_in;
  dispatch_compute(x.dtype(), log ? "log_softmax" : "softmax", [&](auto t0) {
    using T = decltype(t0);
    for_each_line<T>(x, nullptr, y, axis, [log](const float* a, const float*, float* o, int64_t n) {
      softmax_row(a, o, n, log);
    });
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& g, int64_t axis, bool log,
                                  const Tensor& dx_in) {
  Tensor dx = dx_in;
  dispatch_compute(y.dtype(), log ? "log_softmax" : "softmax", [&](auto t0) {
    using T = decltype(t0);
    for_each_line<T>(y, &g, dx, axis, [log](const float* yv, const float* gv, float* o, int64_t n) {
      if (log) {  // dx = g - softmax·sum(g), softmax = exp(y)
        const float s = sum_lanes(gv, n);
        for (int64_t j = 0; j < n; ++j) o[j] = gv[j] - std::exp(yv[j]) * s;
      } else {  // dx = y·(g - sum(g·y))
        const float s = dot_lanes(gv, yv, n);
        for (int64_t j = 0; j < n; ++j) o[j] = yv[j] * (gv[j] - s);
      }
    });
  });
}

IndexScan CpuBackend::scan_indices(const Tensor& ids_any, int64_t n,
                                   std::optional<int64_t> ignore) {
  const Tensor ids = ids_any.contiguous();
  IndexScan r;
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t t = index_at(ids, i);
    if (t == ignore) continue;
    if (t < 0 || t >= n) {
      r.bad_pos = i;
      r.bad_value = t;
      return r;
    }
    ++r.counted;
  }
  return r;
}

void CpuBackend::cross_entropy(const Tensor& x, const Tensor& tg, int64_t ignore_index,
                               int64_t count, const Tensor& lse, const Tensor& loss) {
  const int64_t V = x.size(-1);
  const int64_t N = tg.numel();
  // The row losses are summed in double in row order, so the loss does not depend on the
  // thread count.
  std::vector<float> row_loss(static_cast<size_t>(N), 0.0f);
  float* lp = lse.data<float>();
  dispatch_compute(x.dtype(), "cross_entropy", [&](auto t0) {
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
  const float mean = count ? static_cast<float>(total / count) : 0.0f;
  convert(&mean, DType::f32, loss.raw_data(), loss.dtype(), 1);
}

void CpuBackend::cross_entropy_backward(const Tensor& x, const Tensor& tg, int64_t ignore_index,
                                        int64_t count, const Tensor& lse, const Tensor& g_t,
                                        const Tensor& dx) {
  const int64_t V = x.size(-1);
  const int64_t N = tg.numel();
  const float g = g_t.item();
  const DType dt = x.dtype();
  // d(mean loss)/dx[n, j] = g/count · (softmax(x_n)_j - [j == t_n]); ignored rows are 0 (and
  // with count 0 every row is ignored: zero gradient, no 0/0).
  const float coef = count ? g / static_cast<float>(count) : 0.0f;
  const float* lp = lse.data<float>();
  const size_t es = dtype_size(dx.dtype());
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
        store_row(o.data(), V, dp + n * V * es, dx.dtype());
      }
    }
  });
}

}  // namespace mixtrain::cpu
