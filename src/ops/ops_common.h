// What the op files in src/ops share: argument checks that name the op, numpy broadcasting,
// gradient dtypes, and the calls into the device's backend that allocate their output on the
// inputs' device. Nothing here touches tensor memory: the backend does.
#pragma once

#include <fmt/format.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "mixtrain/autograd.h"
#include "mixtrain/tensor.h"

namespace mixtrain::ops_detail {

/// "Tensor[2, 3] bf16" for a Variable.
inline std::string vstr(const Variable& v) { return v.data().str(); }

/// Normalises a possibly negative dim; throws ShapeError naming the op.
inline int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  if (d < -ndim || d >= ndim)
    throw ShapeError(fmt::format("{}: dimension {} out of range for a {}-d tensor", op, d, ndim));
  return d < 0 ? d + ndim : d;
}

/// Normalises a possibly negative axis of x; throws ShapeError naming the op and x.
inline int64_t wrap_axis(int64_t axis, int64_t ndim, const char* op, const Tensor& x) {
  if (axis < -ndim || axis >= ndim)
    throw ShapeError(fmt::format("{}: axis {} out of range for {}", op, axis, x.str()));
  return axis < 0 ? axis + ndim : axis;
}

/// Throws DTypeError unless x is f32, bf16 or f16 (the dtypes every kernel is built for).
inline void check_compute_dtype(const Tensor& x, const char* op, const char* what) {
  if (x.dtype() != DType::f32 && x.dtype() != DType::bf16 && x.dtype() != DType::f16)
    throw DTypeError(
        fmt::format("{}: {} {} is not a compute dtype (f32, bf16, f16)", op, what, x.str()));
}

/// Throws DTypeError unless t holds integer indices (i32 or i64).
inline void check_index(const Tensor& t, const char* op, const char* what) {
  if (t.dtype() != DType::i32 && t.dtype() != DType::i64)
    throw DTypeError(fmt::format("{}: {} {} must be i32 or i64", op, what, t.str()));
}

/// Throws ShapeError unless v is defined.
inline void check_defined(const Variable& v, const char* op, const char* what) {
  if (!v.defined()) throw ShapeError(fmt::format("{}: {} is undefined", op, what));
}

/// The backend of the device every input lives on; throws BackendError naming the op when
/// they differ.
inline Backend& backend_of(const char* op, std::initializer_list<const Tensor*> tensors) {
  return backend_for(common_device(op, tensors));
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

/// Whether a gradient for v may stay fp32 although v is narrower: a leaf (the engine
/// converts into its grad dtype, fp32 for parameters) or a cast's output (whose backward
/// converts). Parameter gradients (embedding table, norm weight) then skip a 16-bit rounding.
inline bool f32_grad_ok_any_leaf(const Variable& v) {
  return v.is_leaf() || (v.grad_fn() && v.grad_fn()->op == "cast");
}

/// An fp32 gradient handed back in the dtype the engine wants for its input.
inline Tensor grad_for(Tensor g32, DType input_dtype, bool f32_ok) {
  return f32_ok ? g32 : g32.to(input_dtype);
}

/// out = op(ins...) (backend MapOp), the inputs broadcast to `shape`, in dtype `dt` on the
/// inputs' device.
Tensor apply_map(MapOp op, std::initializer_list<Tensor> ins, const Shape& shape, DType dt,
                 float s = 0.0f);

/// The fp32 sum of x over `axes` (normalised, sorted, unique) times `scale`, keepdim shape.
Tensor sum_f32(const Tensor& x, const std::vector<int64_t>& axes, float scale = 1.0f);

/// The gradient of a broadcast: g (of a broadcast output shape) summed down to `shape`
/// (fp32 accumulation), returned contiguous in `dt` with one rounding.
Tensor reduce_to_shape(const Tensor& g, const Shape& shape, DType dt, const char* op);

}  // namespace mixtrain::ops_detail
