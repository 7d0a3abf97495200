// Private helpers shared by the tensor-op files in src/ops/: broadcasting, the blocked
// elementwise map kernel (load -> fp32 -> compute -> round once on store), gradient dtypes,
// and the fp32 reductions the backwards use to undo broadcasting.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "mixtrain/autograd.h"
#include "mixtrain/tensor.h"

namespace mixtrain::ops_detail {

/// Below this many elements a kernel runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 15;
/// Elements per tile of the map kernel: three fp32 staging buffers of this size stay in L1.
constexpr int64_t kTile = 512;

/// "Tensor[2, 3] bf16" for a Variable.
inline std::string vstr(const Variable& v) { return v.data().str(); }

/// Normalises a possibly negative dim; throws ShapeError naming the op.
inline int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  if (d < -ndim || d >= ndim)
    throw ShapeError(fmt::format("{}: dimension {} out of range for a {}-d tensor", op, d, ndim));
  return d < 0 ? d + ndim : d;
}

/// Throws DTypeError unless x is f32, bf16 or f16 (the dtypes every kernel is built for).
inline void check_compute_dtype(const Tensor& x, const char* op, const char* what) {
  if (x.dtype() != DType::f32 && x.dtype() != DType::bf16 && x.dtype() != DType::f16)
    throw DTypeError(
        fmt::format("{}: {} {} is not a compute dtype (f32, bf16, f16)", op, what, x.str()));
}

/// numpy broadcasting of two shapes; throws ShapeError naming the op and both operands.
Shape broadcast_shapes(const Tensor& a, const Tensor& b, const char* op);

/// Whether the gradient for input `v` may be handed back in fp32 even though v is narrower:
/// a leaf accumulating in fp32 (the default for parameters) or the output of a cast (whose
/// backward converts to its own input's dtype). GEMM weight gradients use it so the fp32
/// master never sees a bf16-rounded gradient; a leaf that accumulates in its compute dtype
/// gets the product in that dtype directly (no fp32 temporary).
inline bool f32_grad_ok(const Variable& v) {
  return (v.is_leaf() && v.grad_dtype() == DType::f32) ||
         (v.grad_fn() && v.grad_fn()->op == "cast");
}

/// Reads `n` elements of a contiguous run as fp32: f32 data is used in place, 16-bit data is
/// converted into `buf` with the SIMD bulk conversion (exact: every bf16/fp16 value is an
/// fp32 value).
inline const float* load_f32(const void* p, DType dt, int64_t n, float* buf) {
  if (dt == DType::f32) return static_cast<const float*>(p);
  convert(p, dt, buf, DType::f32, static_cast<size_t>(n));
  return buf;
}

/// GELU of a contiguous x and its backward (dx = g·gelu'(x)), written in dt: the kernels of
/// gelu(), shared with gelu_linear(), which recomputes gelu(x) in its backward (same bits).
Tensor gelu_forward(const Tensor& x, DType dt);
Tensor gelu_backward(const Tensor& x, const Tensor& g, DType dt);

/// Element offset helper for a byte pointer.
inline const void* at(const void* base, DType dt, int64_t off) {
  return static_cast<const char*>(base) + off * static_cast<int64_t>(dtype_size(dt));
}
inline void* at(void* base, DType dt, int64_t off) {
  return static_cast<char*>(base) + off * static_cast<int64_t>(dtype_size(dt));
}

/// out[i] = f(in0[i], in1[i], in2[i]) over `shape`, each input broadcast (numpy rules) to
/// `shape`, computed in fp32 and rounded once into `out_dt`. N (1..3) inputs are used; the
/// rest are ignored. Inputs may have any compute dtype each and any strides (read in
/// place). Parallel over tiles of kTile elements (OpenMP) for large outputs.
template <int N, class F>
Tensor map_kernel(const char* op, const std::vector<Tensor>& ins_in, const Shape& shape,
                  DType out_dt, F f) {
  static_assert(N >= 1 && N <= 3);
  const int64_t nd = static_cast<int64_t>(shape.size());
  Tensor out = Tensor::empty(shape, out_dt);
  const int64_t total = out.numel();
  if (total == 0) return out;
  std::vector<Tensor> ins(N);
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
    const float* __restrict a0 = p[0];
    const float* __restrict a1 = p[1];
    const float* __restrict a2 = p[2];
    for (int64_t j = 0; j < n; ++j) o[j] = f(a0[j], a1[j], a2[j]);
    if (o == obuf) convert(obuf, DType::f32, at(obase, out_dt, row * inner + j0), out_dt, n);
  }
  return out;
}

/// Sum of x over `axes` (normalised, sorted, unique) in fp32 with blocked/pairwise
/// accumulation, as an fp32 tensor of the keepdim shape. Deterministic: the blocking does not
/// depend on the thread count.
Tensor sum_f32(const Tensor& x, const std::vector<int64_t>& axes, const char* op);

/// The gradient of a broadcast: g (of a broadcast output shape) summed down to `shape`
/// (fp32 accumulation), returned contiguous in `dt` with one rounding.
Tensor reduce_to_shape(const Tensor& g, const Shape& shape, DType dt, const char* op);

}  // namespace mixtrain::ops_detail
