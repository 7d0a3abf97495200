// layer_norm over the last dim, forward and backward side by side: fp32 statistics saved for
// backward (Backend::layer_norm), output in x's dtype (category stats32).
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops_nn.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

namespace {
constexpr const char* kOp = "layer_norm";
}  // namespace

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, float eps) {
  check_defined(x, kOp, "x");
  check_defined(weight, kOp, "weight");
  check_defined(bias, kOp, "bias");
  check_compute_dtype(x.data(), kOp, "x");
  check_compute_dtype(weight.data(), kOp, "weight");
  check_compute_dtype(bias.data(), kOp, "bias");
  if (x.dim() < 1)
    throw ShapeError(fmt::format("{}: x {} needs at least one dim", kOp, x.data().str()));
  const int64_t C = x.size(-1);
  if (weight.shape() != Shape{C} || bias.shape() != Shape{C})
    throw ShapeError(fmt::format("{}: weight {} and bias {} must be [{}] for x {}", kOp,
                                 weight.data().str(), bias.data().str(), C, x.data().str()));
  if (!(eps >= 0.0f)) throw ShapeError(fmt::format("{}: eps {} must be >= 0", kOp, eps));
  const DType dt =
      amp::op_dtype(kOp, amp::OpCategory::stats32, {x.dtype(), weight.dtype(), bias.dtype()});
  Backend& be = backend_of(kOp, {&x.data(), &weight.data(), &bias.data()});
  const Tensor xs = x.data().to(dt).contiguous();
  // weight and bias are read in fp32 whatever their dtype (exact: C values, no rounding).
  const Tensor w = weight.data().to(DType::f32).contiguous();
  const Tensor b = bias.data().to(DType::f32).contiguous();
  const int64_t N = C ? xs.numel() / C : 0;
  const Device dev = xs.device();
  Tensor y = Tensor::empty(xs.shape(), dt, dev);
  Tensor mean = Tensor::empty({N}, DType::f32, dev);
  Tensor rstd = Tensor::empty({N}, DType::f32, dev);
  be.layer_norm(xs, w, b, eps, y, mean, rstd);
  const DType x_dt = x.dtype(), w_dt = weight.dtype(), b_dt = bias.dtype();
  const bool w_f32 = f32_grad_ok_any_leaf(weight), b_f32 = f32_grad_ok_any_leaf(bias);
  return make_op_result(
      y, {x, weight, bias}, kOp,
      [xs, w, mean, rstd, C, dev, x_dt, w_dt, b_dt, w_f32, b_f32](const Tensor& g_in) {
        const Tensor g = g_in.contiguous();
        Tensor dx = Tensor::empty(xs.shape(), x_dt, dev);
        Tensor dw = Tensor::empty({C}, DType::f32, dev), db = Tensor::empty({C}, DType::f32, dev);
        backend_for(dev).layer_norm_backward(xs, w, g, mean, rstd, dx, dw, db);
        return std::vector<Tensor>{dx, grad_for(dw, w_dt, w_f32), grad_for(db, b_dt, b_f32)};
      });
}

}  // namespace mixtrain
