// Reductions: sum and mean over axes (forward and backward), and the fp32 sums the
// elementwise backwards use to undo broadcasting (Backend::sum).
#include <algorithm>
#include <numeric>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "ops/ops_common.h"

namespace mixtrain {

namespace ops_detail {

Tensor sum_f32(const Tensor& x, const std::vector<int64_t>& axes, float scale) {
  Shape kshape = x.shape();
  for (int64_t a : axes) kshape[a] = 1;
  Tensor out = Tensor::empty(kshape, DType::f32, x.device());
  backend_for(x.device()).sum(x, axes, scale, out);
  return out;
}

Tensor reduce_to_shape(const Tensor& g, const Shape& shape, DType dt, const char* op) {
  const int64_t nd = g.dim();
  const int64_t lead = nd - static_cast<int64_t>(shape.size());
  if (lead < 0)
    throw ShapeError(
        fmt::format("{} backward: gradient {} cannot reduce to {}", op, g.str(), shape_str(shape)));
  std::vector<int64_t> axes;
  for (int64_t k = 0; k < nd; ++k)
    if (k < lead || (shape[k - lead] == 1 && g.shape()[k] != 1)) axes.push_back(k);
  if (axes.empty()) return g.contiguous().to(dt).view(shape);
  return sum_f32(g, axes).view(shape).to(dt);
}

}  // namespace ops_detail

using namespace ops_detail;

namespace {

// Sorted, unique, non-negative axes (empty: all of them).
std::vector<int64_t> norm_axes(const Variable& x, const std::vector<int64_t>& axes,
                               const char* op) {
  const int64_t nd = x.dim();
  std::vector<int64_t> out;
  if (axes.empty()) {
    for (int64_t k = 0; k < nd; ++k) out.push_back(k);
    return out;
  }
  for (int64_t a : axes) {
    if (a < -nd || a >= nd)
      throw ShapeError(fmt::format("{}: axis {} out of range for {}", op, a, vstr(x)));
    out.push_back(a < 0 ? a + nd : a);
  }
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())
    throw ShapeError(
        fmt::format("{}: repeated axis in [{}] for {}", op, fmt::join(axes, ", "), vstr(x)));
  return out;
}

Variable reduce_op(const Variable& x, const std::vector<int64_t>& axes_in, bool keepdim,
                   bool is_mean, const char* op) {
  check_compute_dtype(x.data(), op, "input");
  const auto axes = norm_axes(x, axes_in, op);
  // Category fp32: accumulate in fp32 whatever the input; the output dtype is the policy's
  // (fp32 unless a per-op override says otherwise).
  const DType dt = amp::op_dtype(op, amp::OpCategory::fp32, {x.dtype()});
  int64_t count = 1;
  for (int64_t a : axes) count *= x.shape()[a];
  const float scale = is_mean ? 1.0f / static_cast<float>(count) : 1.0f;
  Tensor s = sum_f32(x.data(), axes, scale);
  const Shape kshape = s.shape();
  Shape oshape;
  for (int64_t k = 0; k < x.dim(); ++k)
    if (keepdim || !std::binary_search(axes.begin(), axes.end(), k)) oshape.push_back(kshape[k]);
  Tensor out = s.view(oshape).to(dt);
  const Shape xshape = x.shape();
  const DType xdt = x.dtype();
  return make_op_result(out, {x}, op, [=](const Tensor& g) {
    // d/dx sum = 1 (mean: 1/count) broadcast back over the reduced axes.
    Tensor gk = g.reshape(kshape);
    return std::vector<Tensor>{apply_map(MapOp::mul_scalar, {gk}, xshape, xdt, scale)};
  });
}

}  // namespace

Variable sum(const Variable& x, const std::vector<int64_t>& axes, bool keepdim) {
  return reduce_op(x, axes, keepdim, false, "sum");
}
Variable mean(const Variable& x, const std::vector<int64_t>& axes, bool keepdim) {
  return reduce_op(x, axes, keepdim, true, "mean");
}
Variable sum(const Variable& x) { return reduce_op(x, {}, false, false, "sum"); }
Variable mean(const Variable& x) { return reduce_op(x, {}, false, true, "mean"); }

}  // namespace mixtrain
