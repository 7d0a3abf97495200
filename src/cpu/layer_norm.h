// Layer norm's per-level row kernels (layer_norm.isa.cpp), behind CpuBackend::layer_norm.
#pragma once

#include <cstdint>

#include "cpu/isa.h"

namespace mixtrain::cpu {

struct LayerNormRows {
  /// One row of C on fp32 buffers: t = (x - mean)·rstd·w + b, and the row's mean and rstd.
  void (*forward)(const float* xr, const float* w, const float* b, int64_t C, float eps, float* t,
                  float* mean, float* rstd);
  /// One row backward: gh = rstd·(g·w - mean(g·w) - x̂·mean(g·w·x̂)); bw += g·x̂, bb += g.
  void (*backward)(const float* xr, const float* gr, const float* w, float m, float rs, int64_t C,
                   float* xh, float* gh, float* bw, float* bb);
};
template <Isa>
const LayerNormRows& layer_norm_rows();  // built for scalar, avx2, avx512
/// The kernels of the level in use.
const LayerNormRows& layer_norm_rows();

}  // namespace mixtrain::cpu
