// Scalar reference implementations of the neural-network ops: the plainest loops that compute
// the definition, with double accumulators (see nn_ref.h).
#include "cpu/reference/nn_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mixtrain::ref {

void embedding(const std::vector<int64_t>& ids, const float* table, int64_t V, int64_t C,
               float* out) {
  for (size_t n = 0; n < ids.size(); ++n)
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = table[ids[n] * C + c];
}

void embedding_backward(const std::vector<int64_t>& ids, const float* dout, int64_t V, int64_t C,
                        float* dtable) {
  std::vector<double> acc(static_cast<size_t>(V * C), 0.0);
  for (size_t n = 0; n < ids.size(); ++n)
    for (int64_t c = 0; c < C; ++c) acc[ids[n] * C + c] += dout[n * C + c];
  for (int64_t i = 0; i < V * C; ++i) dtable[i] = static_cast<float>(acc[i]);
}

void layer_norm(const float* x, const float* w, const float* b, int64_t N, int64_t C, float eps,
                float* y, float* mean, float* rstd) {
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    double m = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= C;
    double var = 0;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - m) * (xr[c] - m);
    var /= C;
    const double rs = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < C; ++c)
      y[n * C + c] = static_cast<float>((xr[c] - m) * rs * w[c] + b[c]);
    if (mean) mean[n] = static_cast<float>(m);
    if (rstd) rstd[n] = static_cast<float>(rs);
  }
}

void layer_norm_backward(const float* x, const float* w, const float* dy, int64_t N, int64_t C,
                         float eps, float* dx, float* dw, float* db) {
  std::vector<double> gw(static_cast<size_t>(C), 0.0), gb(static_cast<size_t>(C), 0.0);
  std::vector<double> xhat(static_cast<size_t>(C));
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    const float* g = dy + n * C;
    double m = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= C;
    double var = 0;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - m) * (xr[c] - m);
    var /= C;
    const double rs = 1.0 / std::sqrt(var + eps);
    double mean_g = 0, mean_gx = 0;
    for (int64_t c = 0; c < C; ++c) {
      xhat[c] = (xr[c] - m) * rs;
      const double gh = static_cast<double>(g[c]) * w[c];
      mean_g += gh;
      mean_gx += gh * xhat[c];
      gw[c] += g[c] * xhat[c];
      gb[c] += g[c];
    }
    mean_g /= C;
    mean_gx /= C;
    for (int64_t c = 0; c < C; ++c)
      dx[n * C + c] =
          static_cast<float>(rs * (static_cast<double>(g[c]) * w[c] - mean_g - xhat[c] * mean_gx));
  }
  for (int64_t c = 0; c < C; ++c) {
    dw[c] = static_cast<float>(gw[c]);
    db[c] = static_cast<float>(gb[c]);
  }
}

namespace {
// max and log(sum(exp(x - max))) of one row, in double.
void row_stats(const float* x, int64_t C, double& m, double& log_s) {
  m = -INFINITY;
  for (int64_t c = 0; c < C; ++c) m = std::max(m, static_cast<double>(x[c]));
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += std::exp(x[c] - m);
  log_s = std::log(s);
}
}  // namespace

void softmax(const float* x, int64_t N, int64_t C, float* y) {
  for (int64_t n = 0; n < N; ++n) {
    double m, ls;
    row_stats(x + n * C, C, m, ls);
    for (int64_t c = 0; c < C; ++c)
      y[n * C + c] = static_cast<float>(std::exp(x[n * C + c] - m - ls));
  }
}

void log_softmax(const float* x, int64_t N, int64_t C, float* y) {
  for (int64_t n = 0; n < N; ++n) {
    double m, ls;
    row_stats(x + n * C, C, m, ls);
    for (int64_t c = 0; c < C; ++c) y[n * C + c] = static_cast<float>(x[n * C + c] - m - ls);
  }
}

void softmax_backward(const float* y, const float* dy, int64_t N, int64_t C, float* dx) {
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += static_cast<double>(dy[n * C + c]) * y[n * C + c];
    for (int64_t c = 0; c < C; ++c)
      dx[n * C + c] = static_cast<float>(y[n * C + c] * (dy[n * C + c] - s));
  }
}

void log_softmax_backward(const float* y, const float* dy, int64_t N, int64_t C, float* dx) {
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += dy[n * C + c];
    for (int64_t c = 0; c < C; ++c)
      dx[n * C + c] =
          static_cast<float>(dy[n * C + c] - std::exp(static_cast<double>(y[n * C + c])) * s);
  }
}

float cross_entropy(const float* logits, const std::vector<int64_t>& targets, int64_t N, int64_t V,
                    int64_t ignore_index, float gscale, float* dlogits) {
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += targets[n] != ignore_index;
  double loss = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * V;
    if (targets[n] == ignore_index) {
      if (dlogits) std::fill(dlogits + n * V, dlogits + (n + 1) * V, 0.0f);
      continue;
    }
    double m, ls;
    row_stats(x, V, m, ls);
    loss += m + ls - x[targets[n]];
    if (dlogits)
      for (int64_t c = 0; c < V; ++c)
        dlogits[n * V + c] = static_cast<float>(
            gscale * (std::exp(x[c] - m - ls) - (c == targets[n] ? 1.0 : 0.0)) / count);
  }
  return count ? static_cast<float>(loss / count) : 0.0f;
}

namespace {
// Probabilities P [Tq, Tk] of one head (masked entries 0), in double.
std::vector<double> head_probs(const float* q, const float* k, int64_t Tq, int64_t Tk, int64_t D,
                               bool causal, float scale) {
  std::vector<double> p(static_cast<size_t>(Tq * Tk), 0.0);
  for (int64_t i = 0; i < Tq; ++i) {
    const int64_t jn = causal ? i + 1 : Tk;
    double m = -INFINITY;
    for (int64_t j = 0; j < jn; ++j) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += static_cast<double>(q[i * D + d]) * k[j * D + d];
      p[i * Tk + j] = s * scale;
      m = std::max(m, p[i * Tk + j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < jn; ++j) sum += p[i * Tk + j] = std::exp(p[i * Tk + j] - m);
    for (int64_t j = 0; j < jn; ++j) p[i * Tk + j] /= sum;
  }
  return p;
}
}  // namespace

void attention(const float* q, const float* k, const float* v, int64_t B, int64_t H, int64_t Tq,
               int64_t Tk, int64_t D, bool causal, float scale, float* out) {
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const float* qh = q + bh * Tq * D;
    const float* kh = k + bh * Tk * D;
    const float* vh = v + bh * Tk * D;
    const auto p = head_probs(qh, kh, Tq, Tk, D, causal, scale);
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j < Tk; ++j) o += p[i * Tk + j] * vh[j * D + d];
        out[(bh * Tq + i) * D + d] = static_cast<float>(o);
      }
  }
}

void attention_backward(const float* q, const float* k, const float* v, const float* dout,
                        int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal,
                        float scale, float* dq, float* dk, float* dv) {
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const float* qh = q + bh * Tq * D;
    const float* kh = k + bh * Tk * D;
    const float* vh = v + bh * Tk * D;
    const float* go = dout + bh * Tq * D;
    const auto p = head_probs(qh, kh, Tq, Tk, D, causal, scale);
    // dP = dO·Vᵀ; dS = P ∘ (dP - rowsum(P ∘ dP)); dQ = scale·dS·K; dK = scale·dSᵀ·Q; dV = Pᵀ·dO.
    std::vector<double> ds(static_cast<size_t>(Tq * Tk));
    for (int64_t i = 0; i < Tq; ++i) {
      double rowdot = 0;
      for (int64_t j = 0; j < Tk; ++j) {
        double dp = 0;
        for (int64_t d = 0; d < D; ++d) dp += static_cast<double>(go[i * D + d]) * vh[j * D + d];
        ds[i * Tk + j] = dp;
        rowdot += p[i * Tk + j] * dp;
      }
      for (int64_t j = 0; j < Tk; ++j) ds[i * Tk + j] = p[i * Tk + j] * (ds[i * Tk + j] - rowdot);
    }
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t d = 0; d < D; ++d) {
        double a = 0;
        for (int64_t j = 0; j < Tk; ++j) a += ds[i * Tk + j] * kh[j * D + d];
        dq[(bh * Tq + i) * D + d] = static_cast<float>(a * scale);
      }
    for (int64_t j = 0; j < Tk; ++j)
      for (int64_t d = 0; d < D; ++d) {
        double a = 0, b = 0;
        for (int64_t i = 0; i < Tq; ++i) {
          a += ds[i * Tk + j] * qh[i * D + d];
          b += p[i * Tk + j] * go[i * D + d];
        }
        dk[(bh * Tk + j) * D + d] = static_cast<float>(a * scale);
        dv[(bh * Tk + j) * D + d] = static_cast<float>(b);
      }
  }
}

}  // namespace mixtrain::ref
