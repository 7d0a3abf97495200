// Scalar fp32 reference GEMM: triple loop over fp32 views of the operands, double sums.
#include "cpu/reference/gemm_ref.h"

#include <cmath>
#include <vector>

#include <fmt/format.h>

namespace mixtrain::reference {

namespace {

// Element (i, j) of op(X), batch index bi (0 for a 2-d, shared X), read as fp32 from a
// contiguous fp32 copy of X.
struct View {
  std::vector<float> v;
  int64_t sb = 0, sr = 0, sc = 0;
  double at(int64_t bi, int64_t i, int64_t j) const { return v[bi * sb + i * sr + j * sc]; }
};

View view_of(const Tensor& t, bool trans) {
  View w;
  w.v = t.to_vector();  // row-major values of the (possibly strided) view
  const int64_t d = t.dim(), rows = t.size(-2), cols = t.size(-1);
  w.sb = d == 3 ? rows * cols : 0;
  w.sr = cols;
  w.sc = 1;
  if (trans) std::swap(w.sr, w.sc);
  return w;
}

}  // namespace

void gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha, float beta,
          const Tensor* bias, Epilogue epi) {
  if (a.dim() < 2 || a.dim() > 3 || b.dim() < 2 || b.dim() > 3)
    throw ShapeError(
        fmt::format("reference::gemm: A {} and B {} must be 2-d or 3-d", a.str(), b.str()));
  const int64_t M = ta ? a.size(-1) : a.size(-2), K = ta ? a.size(-2) : a.size(-1);
  const int64_t N = tb ? b.size(-2) : b.size(-1);
  const int64_t K2 = tb ? b.size(-1) : b.size(-2);
  const bool batched = a.dim() == 3 || b.dim() == 3;
  const int64_t bt = a.dim() == 3 ? a.size(0) : (batched ? b.size(0) : 1);
  const Shape want = batched ? Shape{bt, M, N} : Shape{M, N};
  if (K != K2 || (a.dim() == 3 && b.dim() == 3 && a.size(0) != b.size(0)) || c.shape() != want ||
      (bias && (bias->dim() != 1 || bias->size(0) != N)))
    throw ShapeError(
        fmt::format("reference::gemm: A {} B {} C {} do not fit", a.str(), b.str(), c.str()));
  const View A = view_of(a, ta), B = view_of(b, tb);
  const std::vector<float> c_in = beta != 0.0f ? c.to_vector() : std::vector<float>();
  const std::vector<float> bv = bias ? bias->to_vector() : std::vector<float>();
  std::vector<float> out(static_cast<size_t>(bt * M * N));
  for (int64_t p = 0; p < bt; ++p) {
    const int64_t pa = a.dim() == 3 ? p : 0, pb = b.dim() == 3 ? p : 0;
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        double s = 0.0;
        for (int64_t k = 0; k < K; ++k) s += A.at(pa, i, k) * B.at(pb, k, j);
        const size_t o = static_cast<size_t>((p * M + i) * N + j);
        double x = static_cast<double>(alpha) * s;
        if (bias) x += bv[j];
        if (beta != 0.0f) x += static_cast<double>(beta) * c_in[o];
        if (epi == Epilogue::relu) x = x > 0.0 ? x : 0.0;
        if (epi == Epilogue::gelu)
          x = 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        out[o] = static_cast<float>(x);
      }
    }
  }
  // The double result is rounded to fp32 here and (for a 16-bit C) once more by copy_from;
  // double rounding differs from a single rounding only on exact fp32 ties, far inside the
  // tolerances the tests use.
  c.copy_from(Tensor::from_vector(out, c.shape(), DType::f32));
}

}  // namespace mixtrain::reference
