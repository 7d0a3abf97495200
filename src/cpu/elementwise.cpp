// Element-wise kernels of the CPU backend: the broadcasting map (load -> fp32 -> compute ->
// round once on store) for every MapOp, gradient accumulation and dropout.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/backend.h"
#include "cpu/rows.h"
#include "cpu/vmath.h"
#include "mixtrain/detail/map_math.h"
#include "mixtrain/detail/random_bits.h"

namespace mixtrain::cpu {

namespace {

/// Below this many elements a kernel runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 15;

// out = f over `out`'s shape with N (1..3) inputs broadcast to it, by tiles of kTile elements:
// tile(a0, a1, a2, o, n) computes n outputs from the inputs' fp32 values, which are rounded
// once into out's dtype. Inputs may have any compute dtype each and any strides (read in
// place). Parallel over tiles (OpenMP) for large outputs.
template <int N, class Tile>
void map_tiles(std::span<const Tensor> ins_in, const Tensor& out, Tile tile) {
  static_assert(N >= 1 && N <= 3);
  const Shape& shape = out.shape();
  const DType out_dt = out.dtype();
  const int64_t nd = static_cast<int64_t>(shape.size());
  const int64_t total = out.numel();
  if (total == 0) return;
  Tensor ins[N];
  // strides[i][k]: element stride of input i along output dim k (0 where broadcast).
  std::vector<Shape> strides(N, Shape(nd, 0));
  for (int i = 0; i < N; ++i) {
    // Strided views (transposes, slices) are read in place; only dtypes without a gather
    // path below are copied to contiguous first.
    const DType d = ins_in[i].dtype();
    const bool gather_ok = d == DType::f32 || d == DType::bf16 || d == DType::f16;
    ins[i] = gather_ok ? ins_in[i] : ins_in[i].contiguous();
    const Shape& s = ins[i].shape();
    const Shape& st = ins[i].strides();
    const int64_t lead = nd - static_cast<int64_t>(s.size());
    for (int64_t k = 0; k < static_cast<int64_t>(s.size()); ++k)
      strides[i][lead + k] = s[k] == 1 ? 0 : st[k];
  }
  // Collapse adjacent dims that every input walks contiguously (or every input broadcasts in
  // the same way), so the inner loop is as long as possible.
  Shape cshape;
  std::vector<Shape> cstr(N);
  for (int64_t k = 0; k < nd; ++k) {
    if (shape[k] == 1) continue;
    bool merge = !cshape.empty();
    for (int i = 0; i < N && merge; ++i) merge = cstr[i].back() == strides[i][k] * shape[k];
    if (merge) {
      cshape.back() *= shape[k];
      for (int i = 0; i < N; ++i) cstr[i].back() = strides[i][k];
    } else {
      cshape.push_back(shape[k]);
      for (int i = 0; i < N; ++i) cstr[i].push_back(strides[i][k]);
    }
  }
  if (cshape.empty()) {
    cshape.push_back(1);
    for (int i = 0; i < N; ++i) cstr[i].push_back(0);
  }
  const int64_t cnd = static_cast<int64_t>(cshape.size());
  const int64_t inner = cshape.back();
  const int64_t tiles_per_row = (inner + kTile - 1) / kTile;
  const int64_t rows = total / inner;
  const int64_t ntiles = rows * tiles_per_row;
  const void* base[3] = {};
  DType dts[3] = {DType::f32, DType::f32, DType::f32};
  int64_t istep[3] = {0, 0, 0};
  for (int i = 0; i < N; ++i) {
    base[i] = ins[i].raw_data();
    dts[i] = ins[i].dtype();
    istep[i] = cstr[i].back();
  }
  void* obase = out.raw_data();
#pragma omp parallel for schedule(static) if (total > kParallelMin)
  for (int64_t t = 0; t < ntiles; ++t) {
    alignas(64) float buf[3][kTile];
    alignas(64) float obuf[kTile];
    const int64_t row = t / tiles_per_row;
    const int64_t j0 = (t % tiles_per_row) * kTile;
    const int64_t n = std::min(kTile, inner - j0);
    // Offsets of this row's first element in each input.
    int64_t off[3] = {0, 0, 0};
    int64_t r = row;
    for (int64_t k = cnd - 2; k >= 0; --k) {
      const int64_t idx = r % cshape[k];
      r /= cshape[k];
      for (int i = 0; i < N; ++i) off[i] += idx * cstr[i][k];
    }
    const float* p[3] = {buf[0], buf[0], buf[0]};
    for (int i = 0; i < N; ++i) {
      if (istep[i] == 0) {  // broadcast along the inner dim: splat one value
        float v;
        convert(at(base[i], dts[i], off[i]), dts[i], &v, DType::f32, 1);
        std::fill(buf[i], buf[i] + n, v);
        p[i] = buf[i];
      } else if (istep[i] == 1) {
        p[i] = load_f32(at(base[i], dts[i], off[i] + j0), dts[i], n, buf[i]);
      } else {  // strided inner dim: gather, then widen (16-bit codes through the SIMD path)
        const int64_t st = istep[i], o0 = off[i] + j0 * st;
        if (dts[i] == DType::f32) {
          const float* src = static_cast<const float*>(base[i]);
          for (int64_t j = 0; j < n; ++j) buf[i][j] = src[o0 + j * st];
        } else {
          alignas(64) uint16_t codes[kTile];
          const uint16_t* src = static_cast<const uint16_t*>(base[i]);
          for (int64_t j = 0; j < n; ++j) codes[j] = src[o0 + j * st];
          convert(codes, dts[i], buf[i], DType::f32, static_cast<size_t>(n));
        }
        p[i] = buf[i];
      }
    }
    float* o = out_dt == DType::f32 ? static_cast<float*>(obase) + row * inner + j0 : obuf;
    tile(p[0], p[1], p[2], o, n);
    if (o == obuf) convert(obuf, DType::f32, at(obase, out_dt, row * inner + j0), out_dt, n);
  }
}

// map_tiles with a per-element function f(a0, a1, a2).
template <int N, class F>
void map_each(std::span<const Tensor> ins, const Tensor& out, F f) {
  map_tiles<N>(ins, out,
               [f](const float* __restrict a0, const float* __restrict a1,
                   const float* __restrict a2, float* o, int64_t n) {
                 for (int64_t j = 0; j < n; ++j) o[j] = f(a0[j], a1[j], a2[j]);
               });
}

// dx = y > 0 ? g : 0 for contiguous g and y of one dtype: a select, exact in every dtype (as
// torch's threshold_backward: an Inf or NaN gradient where y <= 0 gives 0, not NaN). 16-bit
// codes are compared as integers, so nothing is widened.
void relu_grad_select(const Tensor& g, const Tensor& y, const Tensor& out) {
  const int64_t n = g.numel();
  if (g.dtype() == DType::f32) {
    const float* __restrict gp = g.data<float>();
    const float* __restrict yp = y.data<float>();
    float* __restrict o = out.data<float>();
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      const float gv = gp[i];  // loaded unconditionally, so the select vectorises
      o[i] = yp[i] > 0.0f ? gv : 0.0f;
    }
    return;
  }
  // Read as int16: positive codes are 1 .. +Inf's code, NaNs lie above it, negatives below 0
  // (signed 16-bit compares, which every x86-64 vectorises).
  const int16_t inf = g.dtype() == DType::bf16 ? 0x7f80 : 0x7c00;
  const int16_t* __restrict gp = static_cast<const int16_t*>(g.raw_data());
  const int16_t* __restrict yp = static_cast<const int16_t*>(y.raw_data());
  int16_t* __restrict o = static_cast<int16_t*>(out.raw_data());
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const int16_t keep = -static_cast<int16_t>((yp[i] > 0) & (yp[i] <= inf));  // all ones or 0
    o[i] = static_cast<int16_t>(gp[i] & keep);
  }
}

bool same_layout(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous();
}

}  // namespace

void CpuBackend::map(MapOp op, std::span<const Tensor> ins, float s, const Tensor& out) {
  using F = float;
  switch (op) {
    case MapOp::add:
      return map_each<2>(ins, out, [](F x, F y, F) { return x + y; });
    case MapOp::sub:
      return map_each<2>(ins, out, [](F x, F y, F) { return x - y; });
    case MapOp::mul:
      return map_each<2>(ins, out, [](F x, F y, F) { return x * y; });
    case MapOp::div:
      return map_each<2>(ins, out, [](F x, F y, F) { return x / y; });
    case MapOp::neg:
      return map_each<1>(ins, out, [](F x, F, F) { return -x; });
    case MapOp::add_scalar:
      return map_each<1>(ins, out, [s](F x, F, F) { return x + s; });
    case MapOp::mul_scalar:
      return map_each<1>(ins, out, [s](F x, F, F) { return x * s; });
    case MapOp::relu:
      return map_each<1>(ins, out, [](F x, F, F) { return mixtrain::detail::relu(x); });
    case MapOp::tanh:
      return map_each<1>(ins, out, [](F x, F, F) { return mixtrain::detail::tanh_f32(x); });
    case MapOp::abs:
      return map_each<1>(ins, out, [](F x, F, F) { return std::fabs(x); });
    case MapOp::exp:
      return map_each<1>(ins, out, [](F x, F, F) { return mixtrain::detail::exp_f32(x); });
    case MapOp::log:
      return map_each<1>(ins, out, [](F x, F, F) { return mixtrain::detail::log_f32(x); });
    case MapOp::gelu:  // the vectorised kernel on each tile (cpu/vmath.h)
      return map_tiles<1>(ins, out,
                          [](const float* a, const float*, const float*, float* o, int64_t n) {
                            vmath().gelu(a, o, n);
                          });
    case MapOp::relu_grad:
      if (ins[0].dtype() == out.dtype() && ins[1].dtype() == out.dtype() &&
          same_layout(ins[0], ins[1]) && same_layout(ins[0], out))
        return relu_grad_select(ins[0], ins[1], out);
      return map_each<2>(ins, out, [](F g, F y, F) { return mixtrain::detail::relu_grad(g, y); });
    case MapOp::tanh_grad:
      return map_each<2>(ins, out, [](F g, F y, F) { return mixtrain::detail::tanh_grad(g, y); });
    case MapOp::abs_grad:
      return map_each<2>(ins, out, [](F g, F x, F) { return mixtrain::detail::abs_grad(g, x); });
    case MapOp::exp_grad:
      return map_each<2>(ins, out, [](F g, F y, F) { return g * y; });
    case MapOp::log_grad:
      return map_each<2>(ins, out, [](F g, F x, F) { return mixtrain::detail::log_grad(g, x); });
    case MapOp::gelu_grad:
      return map_tiles<2>(ins, out,
                          [](const float* g, const float* x, const float*, float* o, int64_t n) {
                            vmath().gelu_grad(x, g, o, n);
                          });
    case MapOp::div_grad_b:
      return map_each<3>(ins, out,
                         [](F g, F a, F b) { return mixtrain::detail::div_grad_b(g, a, b); });
  }
  throw Error(fmt::format("map: unknown op {}", static_cast<int>(op)));
}

void CpuBackend::add_into(const Tensor& dst, const Tensor& src_any) {
  // By blocks through the SIMD conversions: the residual stream's bf16 gradients meet here
  // every block.
  const Tensor s = src_any.contiguous();
  constexpr int64_t kBlock = 2048;
  const int64_t n = dst.numel();
  const DType dd = dst.dtype(), sd = s.dtype();
  char* dp = static_cast<char*>(dst.raw_data());
  const char* sp = static_cast<const char*>(s.raw_data());
  const int64_t des = static_cast<int64_t>(dst.element_size());
  const int64_t ses = static_cast<int64_t>(s.element_size());
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    alignas(64) float a[kBlock], b[kBlock];
    const int64_t len = std::min(kBlock, n - i0);
    convert(dp + i0 * des, dd, a, DType::f32, static_cast<size_t>(len));
    convert(sp + i0 * ses, sd, b, DType::f32, static_cast<size_t>(len));
    for (int64_t j = 0; j < len; ++j) a[j] += b[j];
    convert(a, DType::f32, dp + i0 * des, dd, static_cast<size_t>(len));
  }
}

void CpuBackend::dropout(const Tensor& x_any, uint64_t seed, uint64_t base, float p, float scale,
                         const Tensor& y) {
  const Tensor x = x_any.contiguous();
  const int64_t n = x.numel();
  const int64_t tiles = (n + kTile - 1) / kTile;
  const DType dt = x.dtype();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t t = 0; t < tiles; ++t) {
    alignas(64) float buf[kTile];
    alignas(64) float o[kTile];
    const int64_t j0 = t * kTile, m = std::min(kTile, n - j0);
    const float* v = load_f32(at(x.raw_data(), dt, j0), dt, m, buf);
    // Kept when the draw (the top 24 bits, as Rng::uniform) is >= p: the device's function.
    for (int64_t j = 0; j < m; ++j)
      o[j] = v[j] * detail::dropout_factor(seed, base + static_cast<uint64_t>(j0 + j), p, scale);
    convert(o, DType::f32, at(y.raw_data(), y.dtype(), j0), y.dtype(), static_cast<size_t>(m));
  }
}

}  // namespace mixtrain::cpu
