// Shape ops, forward and backward side by side: reshape, transpose, slice (views where the
// layout allows) and concat (copies into slices). Category same: no dtype change, no
// arithmetic.
#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

Variable reshape(const Variable& x, const Shape& shape) {
  Tensor out;
  try {
    out = x.data().reshape(shape);
  } catch (const ShapeError&) {
    throw ShapeError(fmt::format("reshape: cannot reshape {} ({} elements) to {}", vstr(x),
                                 x.numel(), shape_str(shape)));
  }
  const Shape xshape = x.shape();
  return make_op_result(out, {x}, "reshape", [xshape](const Tensor& g) {
    return std::vector<Tensor>{g.reshape(xshape)};
  });
}

Variable transpose(const Variable& x, int64_t d0, int64_t d1) {
  d0 = wrap_dim(d0, x.dim(), "transpose");
  d1 = wrap_dim(d1, x.dim(), "transpose");
  return make_op_result(x.data().transpose(d0, d1), {x}, "transpose", [d0, d1](const Tensor& g) {
    return std::vector<Tensor>{g.transpose(d0, d1)};
  });
}

Variable slice(const Variable& x, int64_t dim, int64_t start, int64_t end) {
  dim = wrap_dim(dim, x.dim(), "slice");
  const int64_t n = x.shape()[dim];
  const int64_t s = start < 0 ? start + n : start, e = end < 0 ? end + n : end;
  if (s < 0 || e > n || s > e)
    throw ShapeError(fmt::format("slice: range [{}, {}) out of bounds for dim {} of {}", start, end,
                                 dim, vstr(x)));
  const Shape xshape = x.shape();
  const DType xdt = x.dtype();
  return make_op_result(x.data().slice(dim, s, e), {x}, "slice", [=](const Tensor& g) {
    // Zeros everywhere but the slice, which receives g (a copy into the strided view: one run
    // of each outer row).
    Tensor gx = Tensor::zeros(xshape, xdt, g.device());
    gx.slice(dim, s, e).copy_from(g);
    return std::vector<Tensor>{gx};
  });
}

Variable concat(const std::vector<Variable>& xs, int64_t dim) {
  if (xs.empty()) throw ShapeError("concat: no inputs");
  const int64_t nd = xs[0].dim();
  dim = wrap_dim(dim, nd, "concat");
  DType dt = xs[0].dtype();
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Variable& x = xs[i];
    bool ok = x.dim() == nd;
    for (int64_t k = 0; k < nd && ok; ++k) ok = k == dim || x.shape()[k] == xs[0].shape()[k];
    if (!ok)
      throw ShapeError(fmt::format("concat along dim {}: input {} {} does not match input 0 {}",
                                   dim, i, vstr(x), vstr(xs[0])));
    if (!is_floating(x.dtype()))
      throw DTypeError(fmt::format("concat: input {} {} is not floating", i, vstr(x)));
    dt = amp::promote_types({dt, x.dtype()});
    total += x.shape()[dim];
  }
  dt = amp::op_dtype("concat", amp::OpCategory::same, {dt});
  std::vector<Variable> ins;
  for (const auto& x : xs) ins.push_back(cast(x, dt));
  Shape shape = xs[0].shape();
  shape[dim] = total;
  Tensor out = Tensor::empty(shape, dt, ins[0].data().device());
  // Each input fills its slice of the output (a contiguous run of every outer row).
  std::vector<int64_t> starts;
  int64_t pos = 0;
  for (const auto& x : ins) {
    if (x.data().device() != out.device())
      throw BackendError(fmt::format("concat: input {} is on {} but input 0 is on {}", vstr(x),
                                     device_name(x.data().device()), device_name(out.device())));
    starts.push_back(pos);
    const int64_t e = x.shape()[dim];
    out.slice(dim, pos, pos + e).copy_from(x.data());
    pos += e;
  }
  std::vector<int64_t> extents;
  for (const auto& x : ins) extents.push_back(x.shape()[dim]);
  return make_op_result(out, ins, "concat", [=](const Tensor& g) {
    std::vector<Tensor> gr;
    for (size_t i = 0; i < starts.size(); ++i)
      gr.push_back(g.slice(dim, starts[i], starts[i] + extents[i]).contiguous());
    return gr;
  });
}

}  // namespace mixtrain
