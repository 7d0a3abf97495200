// Scalar fp32 reference ops: one obvious loop per op, index arithmetic spelled out. Slow on
// purpose; correctness is the only goal (see ops_ref.h).
#include "cpu/reference/ops_ref.h"

#include <fmt/format.h>
#include <cmath>

#include "mixtrain/error.h"
#include "mixtrain/random.h"

namespace mixtrain::ref {

namespace {

std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (size_t k = s.size(); k-- > 0;) {
    idx[k] = s[k] ? i % s[k] : 0;
    i = s[k] ? i / s[k] : 0;
  }
  return idx;
}

int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t i = 0;
  for (size_t k = 0; k < s.size(); ++k) i = i * s[k] + idx[k];
  return i;
}

int64_t wrap(int64_t d, int64_t nd) { return d < 0 ? d + nd : d; }

template <class F>
Tensor unary(const Tensor& x, F f) {
  const auto v = x.to_vector();
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = static_cast<float>(f(static_cast<double>(v[i])));
  return Tensor::from_vector(o, x.shape());
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  const bool batched = a.dim() == 3;
  const int64_t Bt = batched ? a.size(0) : 1, M = a.size(-2), K = a.size(-1), N = b.size(-1);
  const bool shared_b = b.dim() == 2;
  if (b.size(-2) != K) throw ShapeError("ref::matmul: inner dims differ");
  std::vector<float> o(static_cast<size_t>(Bt * M * N));
  for (int64_t t = 0; t < Bt; ++t)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k)
          s += static_cast<double>(va[(t * M + i) * K + k]) *
               vb[((shared_b ? 0 : t) * K + k) * N + j];
        o[(t * M + i) * N + j] = static_cast<float>(s);
      }
  return Tensor::from_vector(o, batched ? Shape{Bt, M, N} : Shape{M, N});
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const auto vx = x.to_vector(), vw = w.to_vector();
  const std::vector<float> vb = bias.defined() ? bias.to_vector() : std::vector<float>();
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / in;
  std::vector<float> o(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < out; ++j) {
      double s = vb.empty() ? 0.0 : vb[j];
      for (int64_t k = 0; k < in; ++k) s += static_cast<double>(vx[r * in + k]) * vw[j * in + k];
      o[r * out + j] = static_cast<float>(s);
    }
  Shape shape = x.shape();
  shape.back() = out;
  return Tensor::from_vector(o, shape);
}

Tensor binary(const Tensor& a, const Tensor& b, Bin op) {
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();
  const size_t nd = std::max(sa.size(), sb.size());
  Shape pa(nd, 1), pb(nd, 1), so(nd);
  for (size_t k = 0; k < sa.size(); ++k) pa[nd - sa.size() + k] = sa[k];
  for (size_t k = 0; k < sb.size(); ++k) pb[nd - sb.size() + k] = sb[k];
  for (size_t k = 0; k < nd; ++k) {
    if (pa[k] != pb[k] && pa[k] != 1 && pb[k] != 1)
      throw ShapeError("ref::binary: shapes do not broadcast");
    so[k] = pa[k] == 1 ? pb[k] : pa[k];
  }
  const auto va = a.to_vector(), vb = b.to_vector();
  std::vector<float> o(static_cast<size_t>(shape_numel(so)));
  for (int64_t i = 0; i < static_cast<int64_t>(o.size()); ++i) {
    const auto idx = unravel(i, so);
    std::vector<int64_t> ia(nd), ib(nd);
    for (size_t k = 0; k < nd; ++k) {
      ia[k] = pa[k] == 1 ? 0 : idx[k];
      ib[k] = pb[k] == 1 ? 0 : idx[k];
    }
    const float x = va[ravel(ia, pa)], y = vb[ravel(ib, pb)];
    switch (op) {
      case Bin::add:
        o[i] = x + y;
        break;
      case Bin::sub:
        o[i] = x - y;
        break;
      case Bin::mul:
        o[i] = x * y;
        break;
      case Bin::div:
        o[i] = x / y;
        break;
    }
  }
  return Tensor::from_vector(o, so);
}

Tensor add_scalar(const Tensor& x, float s) {
  return unary(x, [s](double v) { return static_cast<float>(v) + s; });
}
Tensor mul_scalar(const Tensor& x, float s) {
  return unary(x, [s](double v) { return static_cast<float>(v) * s; });
}

Tensor relu(const Tensor& x) {
  return unary(x, [](double v) { return v > 0 ? v : 0.0; });
}

Tensor gelu(const Tensor& x) {
  return unary(x, [](double v) {
    return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
  });
}

Tensor gelu_grad(const Tensor& x) {
  return unary(x, [](double v) {
    const double c = std::sqrt(2.0 / M_PI);
    const double t = std::tanh(c * (v + 0.044715 * v * v * v));
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * v * v);
  });
}

Tensor tanh(const Tensor& x) {
  return unary(x, [](double v) { return std::tanh(v); });
}
Tensor exp(const Tensor& x) {
  return unary(x, [](double v) { return std::exp(v); });
}
Tensor log(const Tensor& x) {
  return unary(x, [](double v) { return std::log(v); });
}

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes_in, bool keepdim) {
  const int64_t nd = x.dim();
  std::vector<bool> red(nd, axes_in.empty());
  for (int64_t a : axes_in) red[wrap(a, nd)] = true;
  Shape kshape = x.shape();
  for (int64_t k = 0; k < nd; ++k)
    if (red[k]) kshape[k] = 1;
  const auto v = x.to_vector();
  std::vector<double> acc(static_cast<size_t>(shape_numel(kshape)), 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    auto idx = unravel(i, x.shape());
    for (int64_t k = 0; k < nd; ++k)
      if (red[k]) idx[k] = 0;
    acc[ravel(idx, kshape)] += v[i];
  }
  Shape oshape;
  for (int64_t k = 0; k < nd; ++k)
    if (keepdim || !red[k]) oshape.push_back(kshape[k]);
  return Tensor::from_vector(std::vector<float>(acc.begin(), acc.end()), oshape);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  const Tensor s = sum(x, axes, keepdim);
  const int64_t count = x.numel() / std::max<int64_t>(1, s.numel());
  return mul_scalar(s, 1.0f / static_cast<float>(count));
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  d0 = wrap(d0, x.dim());
  d1 = wrap(d1, x.dim());
  Shape so = x.shape();
  std::swap(so[d0], so[d1]);
  const auto v = x.to_vector();
  std::vector<float> o(v.size());
  for (int64_t i = 0; i < x.numel(); ++i) {
    auto idx = unravel(i, x.shape());
    std::swap(idx[d0], idx[d1]);
    o[ravel(idx, so)] = v[i];
  }
  return Tensor::from_vector(o, so);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end) {
  dim = wrap(dim, x.dim());
  const int64_t n = x.shape()[dim];
  if (start < 0) start += n;
  if (end < 0) end += n;
  Shape so = x.shape();
  so[dim] = end - start;
  const auto v = x.to_vector();
  std::vector<float> o(static_cast<size_t>(shape_numel(so)));
  for (int64_t i = 0; i < static_cast<int64_t>(o.size()); ++i) {
    auto idx = unravel(i, so);
    idx[dim] += start;
    o[i] = v[ravel(idx, x.shape())];
  }
  return Tensor::from_vector(o, so);
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  dim = wrap(dim, xs[0].dim());
  Shape so = xs[0].shape();
  so[dim] = 0;
  for (const auto& x : xs) so[dim] += x.shape()[dim];
  std::vector<float> o(static_cast<size_t>(shape_numel(so)));
  int64_t pos = 0;
  for (const auto& x : xs) {
    const auto v = x.to_vector();
    for (int64_t i = 0; i < x.numel(); ++i) {
      auto idx = unravel(i, x.shape());
      idx[dim] += pos;
      o[ravel(idx, so)] = v[i];
    }
    pos += x.shape()[dim];
  }
  return Tensor::from_vector(o, so);
}

Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t base) {
  const auto v = x.to_vector();
  std::vector<float> o(v.size());
  const float scale = 1.0f / (1.0f - p);
  for (size_t i = 0; i < v.size(); ++i) {
    const float u = static_cast<float>(random_bits(seed, base + i) >> 40) / 16777216.0f;
    o[i] = u >= p ? v[i] * scale : 0.0f;
  }
  return Tensor::from_vector(o, x.shape());
}

}  // namespace mixtrain::ref
