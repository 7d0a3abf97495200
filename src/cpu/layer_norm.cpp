// Layer norm over the last dim on the CPU: fused forward (fp32 two-pass statistics, saved for
// backward) and fused backward (dx per row; dweight/dbias summed over fixed row blocks), rows by
// the level's kernels (layer_norm.isa.cpp).
#include <cmath>
#include <vector>

#include "core/dispatch.h"
#include "cpu/backend.h"
#include "cpu/layer_norm.h"
#include "cpu/rows.h"

namespace mixtrain::cpu {

const LayerNormRows& layer_norm_rows() {
  static const IsaTable<LayerNormRows> table({&layer_norm_rows<Isa::scalar>(),
                                              &layer_norm_rows<Isa::avx2>(),
                                              &layer_norm_rows<Isa::avx512>(), nullptr});
  return *table.get();
}

namespace {

/// Below this many elements a kernel runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 14;

// Rows per block of the dweight/dbias reduction: depends on the row count only (never on the
// thread count), so the gradients are bit-identical however many threads run.
int64_t row_block(int64_t rows) { return std::max<int64_t>(32, (rows + 255) / 256); }

template <class T>
void ln_forward(const T* x, const float* w, const float* b, int64_t N, int64_t C, float eps,
                void* y, DType ydt, float* mean, float* rstd) {
  const size_t yes = dtype_size(ydt);
  const auto f = layer_norm_rows().forward;
#pragma omp parallel if (N * C > kParallelMin)
  {
    std::vector<float> xbuf(C), ybuf(C);
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = load_row(x + n * C, C, xbuf.data());
      f(xr, w, b, C, eps, ybuf.data(), mean + n, rstd + n);
      store_row(ybuf.data(), C, static_cast<char*>(y) + n * C * yes, ydt);
    }
  }
}

template <class T>
void ln_backward(const T* x, const float* w, const Tensor& g, const float* mean, const float* rstd,
                 int64_t N, int64_t C, void* dx, DType dxdt, float* dw, float* db) {
  const int64_t rb = row_block(N);
  const int64_t nblk = (N + rb - 1) / rb;
  std::vector<float> pw(static_cast<size_t>(nblk * C), 0.0f),
      pb(static_cast<size_t>(nblk * C), 0.0f);
  const DType gdt = g.dtype();
  const size_t ges = dtype_size(gdt), dxes = dtype_size(dxdt);
  const char* gp = static_cast<const char*>(g.raw_data());
  const auto f = layer_norm_rows().backward;
#pragma omp parallel if (N * C > kParallelMin)
  {
    std::vector<float> xbuf(C), gbuf(C), xh(C), gh(C);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      float* bw = pw.data() + blk * C;
      float* bb = pb.data() + blk * C;
      for (int64_t n = blk * rb; n < std::min(N, (blk + 1) * rb); ++n) {
        const float* xr = load_row(x + n * C, C, xbuf.data());
        convert(gp + n * C * ges, gdt, gbuf.data(), DType::f32, static_cast<size_t>(C));
        f(xr, gbuf.data(), w, mean[n], rstd[n], C, xh.data(), gh.data(), bw, bb);
        store_row(gh.data(), C, static_cast<char*>(dx) + n * C * dxes, dxdt);
      }
    }
  }
  // Block partials summed in block order (deterministic).
  std::fill(dw, dw + C, 0.0f);
  std::fill(db, db + C, 0.0f);
  for (int64_t blk = 0; blk < nblk; ++blk)
    for (int64_t c = 0; c < C; ++c) {
      dw[c] += pw[blk * C + c];
      db[c] += pb[blk * C + c];
    }
}

}  // namespace

void CpuBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps,
                            const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const int64_t C = x.size(-1);
  const int64_t N = C ? x.numel() / C : 0;
  dispatch_compute(x.dtype(), "layer_norm", [&](auto t0) {
    using T = decltype(t0);
    ln_forward<T>(x.data<T>(), w.data<float>(), b.data<float>(), N, C, eps, y.raw_data(), y.dtype(),
                  mean.data<float>(), rstd.data<float>());
  });
}

void CpuBackend::layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& g,
                                     const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                                     const Tensor& dw, const Tensor& db) {
  const int64_t C = x.size(-1);
  const int64_t N = C ? x.numel() / C : 0;
  dispatch_compute(x.dtype(), "layer_norm", [&](auto t0) {
    using T = decltype(t0);
    ln_backward<T>(x.data<T>(), w.data<float>(), g, mean.data<float>(), rstd.data<float>(), N, C,
                   dx.raw_data(), dx.dtype(), dw.data<float>(), db.data<float>());
  });
}

}  // namespace mixtrain::cpu
