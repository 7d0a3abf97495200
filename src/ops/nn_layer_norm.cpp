// layer_norm over the last dim: fused forward (fp32 two-pass statistics, saved for backward)
// and fused backward (dx per row; dweight/dbias summed over fixed row blocks).
#include <cmath>
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops_nn.h"
#include "ops/nn_common.h"

namespace mixtrain {

using namespace nn_detail;

namespace {

constexpr const char* kOp = "layer_norm";

// Rows per block of the dweight/dbias reduction: depends on the row count only (never on the
// thread count), so the gradients are bit-identical however many threads run.
int64_t row_block(int64_t rows) { return std::max<int64_t>(32, (rows + 255) / 256); }

// One row on fp32 buffers, forward: t = (x - mean)·rstd·w + b. Two passes (mean, then
// squared deviations): the one-pass E[x²] - E[x]² cancels catastrophically when |mean| >> std.
// The row buffers are distinct, hence __restrict: behind runtime alias checks on seven
// pointers g++ left the backward's first loop scalar (0.8 -> 0.38 ms per bf16 [2048, 384]).
[[gnu::always_inline]] inline void ln_row_forward_body(
    const float* __restrict xr, const float* __restrict w, const float* __restrict b, int64_t C,
    float eps, float* __restrict t, float* __restrict mean, float* __restrict rstd) {
  const float m = sum_lanes(xr, C) / static_cast<float>(C);
  for (int64_t c = 0; c < C; ++c) t[c] = xr[c] - m;
  const float var = dot_lanes(t, t, C) / static_cast<float>(C);
  const float rs = 1.0f / std::sqrt(var + eps);
  for (int64_t c = 0; c < C; ++c) t[c] = t[c] * rs * w[c] + b[c];
  *mean = m;
  *rstd = rs;
}

// One row, backward: gh = rstd·(g·w - mean(g·w) - x̂·mean(g·w·x̂)), x̂ = (x - mean)·rstd;
// bw += g·x̂, bb += g (the row block's dweight/dbias partials).
[[gnu::always_inline]] inline void ln_row_backward_body(const float* __restrict xr,
                                                        const float* __restrict gr,
                                                        const float* __restrict w, float m,
                                                        float rs, int64_t C, float* __restrict xh,
                                                        float* __restrict gh, float* __restrict bw,
                                                        float* __restrict bb) {
  for (int64_t c = 0; c < C; ++c) {
    xh[c] = (xr[c] - m) * rs;
    gh[c] = gr[c] * w[c];
    bw[c] += gr[c] * xh[c];
    bb[c] += gr[c];
  }
  const float mg = sum_lanes(gh, C) / static_cast<float>(C);
  const float mgx = dot_lanes(gh, xh, C) / static_cast<float>(C);
  for (int64_t c = 0; c < C; ++c) gh[c] = rs * (gh[c] - mg - xh[c] * mgx);
}

// The row bodies built for AVX-512, AVX2+FMA and the baseline (simd_variant picks one). The
// vector builds contract multiply-adds into FMAs, so they differ from the baseline in the last
// bits; each is tested against the reference (MIXTRAIN_ISA caps the choice).
#define MIXTRAIN_LN_VARIANT(suffix, attr)                                                       \
  attr void ln_row_forward_##suffix(const float* xr, const float* w, const float* b, int64_t C, \
                                    float eps, float* t, float* mean, float* rstd) {            \
    ln_row_forward_body(xr, w, b, C, eps, t, mean, rstd);                                       \
  }                                                                                             \
  attr void ln_row_backward_##suffix(const float* xr, const float* gr, const float* w, float m, \
                                     float rs, int64_t C, float* xh, float* gh, float* bw,      \
                                     float* bb) {                                               \
    ln_row_backward_body(xr, gr, w, m, rs, C, xh, gh, bw, bb);                                  \
  }
MIXTRAIN_LN_VARIANT(avx512, MIXTRAIN_TARGET_AVX512)
MIXTRAIN_LN_VARIANT(avx2, MIXTRAIN_TARGET_AVX2)
MIXTRAIN_LN_VARIANT(base, MIXTRAIN_TARGET_BASE)
#undef MIXTRAIN_LN_VARIANT

using RowForward = void (*)(const float*, const float*, const float*, int64_t, float, float*,
                            float*, float*);
using RowBackward = void (*)(const float*, const float*, const float*, float, float, int64_t,
                             float*, float*, float*, float*);

template <class T>
void ln_forward(const T* x, const float* w, const float* b, int64_t N, int64_t C, float eps,
                void* y, DType ydt, float* mean, float* rstd) {
  const size_t yes = dtype_size(ydt);
  const RowForward fwd[3] = {ln_row_forward_base, ln_row_forward_avx2, ln_row_forward_avx512};
  const RowForward f = fwd[simd_variant()];
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
  const RowBackward bwd[3] = {ln_row_backward_base, ln_row_backward_avx2, ln_row_backward_avx512};
  const RowBackward f = bwd[simd_variant()];
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

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, float eps) {
  check_defined(x, kOp, "x");
  check_defined(weight, kOp, "weight");
  check_defined(bias, kOp, "bias");
  check_float(x.data(), kOp, "x");
  check_float(weight.data(), kOp, "weight");
  check_float(bias.data(), kOp, "bias");
  if (x.dim() < 1)
    throw ShapeError(fmt::format("{}: x {} needs at least one dim", kOp, x.data().str()));
  const int64_t C = x.size(-1);
  if (weight.shape() != Shape{C} || bias.shape() != Shape{C})
    throw ShapeError(fmt::format("{}: weight {} and bias {} must be [{}] for x {}", kOp,
                                 weight.data().str(), bias.data().str(), C, x.data().str()));
  if (!(eps >= 0.0f)) throw ShapeError(fmt::format("{}: eps {} must be >= 0", kOp, eps));
  const DType dt =
      amp::op_dtype(kOp, amp::OpCategory::stats32, {x.dtype(), weight.dtype(), bias.dtype()});
  const Tensor xs = x.data().to(dt).contiguous();
  // weight and bias are read in fp32 whatever their dtype (exact: C values, no rounding).
  const Tensor w = weight.data().to(DType::f32).contiguous();
  const Tensor b = bias.data().to(DType::f32).contiguous();
  const int64_t N = C ? xs.numel() / C : 0;
  Tensor y = Tensor::empty(xs.shape(), dt);
  Tensor mean = Tensor::empty({N}, DType::f32);
  Tensor rstd = Tensor::empty({N}, DType::f32);
  dispatch_compute(dt, kOp, [&](auto t0) {
    using T = decltype(t0);
    ln_forward<T>(xs.data<T>(), w.data<float>(), b.data<float>(), N, C, eps, y.raw_data(), dt,
                  mean.data<float>(), rstd.data<float>());
  });
  const DType x_dt = x.dtype(), w_dt = weight.dtype(), b_dt = bias.dtype();
  const bool w_f32 = f32_grad_ok(weight), b_f32 = f32_grad_ok(bias);
  return make_op_result(
      y, {x, weight, bias}, kOp,
      [xs, w, mean, rstd, N, C, dt, x_dt, w_dt, b_dt, w_f32, b_f32](const Tensor& g_in) {
        const Tensor g = g_in.contiguous();
        Tensor dx = Tensor::empty(xs.shape(), x_dt);
        Tensor dw = Tensor::empty({C}, DType::f32), db = Tensor::empty({C}, DType::f32);
        dispatch_compute(dt, kOp, [&](auto t0) {
          using T = decltype(t0);
          ln_backward<T>(xs.data<T>(), w.data<float>(), g, mean.data<float>(), rstd.data<float>(),
                         N, C, dx.raw_data(), x_dt, dw.data<float>(), db.data<float>());
        });
        return std::vector<Tensor>{dx, grad_for(dw, w_dt, w_f32), grad_for(db, b_dt, b_f32)};
      });
}

}  // namespace mixtrain
