// isa: scalar avx2 avx512
// Layer norm's row kernels (cpu/layer_norm.h), one build per level. The vector builds contract
// multiply-adds into FMAs, so they differ from the scalar one in the last bits; each is tested
// against the reference.
#include "cpu/isa_target.h"

#include <cmath>
#include <cstdint>

#include "cpu/layer_norm.h"
#include "cpu/rows.h"

namespace mixtrain::cpu {
namespace {

// One row on fp32 buffers, forward: t = (x - mean)·rstd·w + b. Two passes (mean, then
// squared deviations): the one-pass E[x²] - E[x]² cancels catastrophically when |mean| >> std.
// The row buffers are distinct, hence __restrict: behind runtime alias checks on seven
// pointers g++ left the backward's first loop scalar (0.8 -> 0.38 ms per bf16 [2048, 384]).
MT_FLATTEN void ln_row_forward(const float* __restrict xr, const float* __restrict w,
                               const float* __restrict b, int64_t C, float eps, float* __restrict t,
                               float* __restrict mean, float* __restrict rstd) {
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
MT_FLATTEN void ln_row_backward(const float* __restrict xr, const float* __restrict gr,
                                const float* __restrict w, float m, float rs, int64_t C,
                                float* __restrict xh, float* __restrict gh, float* __restrict bw,
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

}  // namespace

template <>
const LayerNormRows& layer_norm_rows<kIsa>() {
  static constexpr LayerNormRows k{ln_row_forward, ln_row_backward};
  return k;
}

}  // namespace mixtrain::cpu
