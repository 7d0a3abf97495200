// Regression losses: mse_loss and l1_loss, mean over every element with fp32 internals. Built
// from differentiable ops on fp32 casts of the inputs (the difference, its square or absolute
// value and the mean are fp32), so the backward is theirs: the gradient reaches pred through
// the cast, in pred's dtype.
#include "mixtrain/ops.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

namespace {

Variable difference(const char* op, const Variable& pred, const Variable& target) {
  check_defined(pred, op, "pred");
  check_defined(target, op, "target");
  check_compute_dtype(pred.data(), op, "pred");
  check_compute_dtype(target.data(), op, "target");
  if (pred.shape() != target.shape())
    throw ShapeError(fmt::format("{}: pred {} and target {} must have the same shape", op,
                                 vstr(pred), vstr(target)));
  return sub(cast(pred, DType::f32), cast(target, DType::f32));
}

}  // namespace

Variable mse_loss(const Variable& pred, const Variable& target) {
  const Variable d = difference("mse_loss", pred, target);
  return mean(mul(d, d));
}

Variable l1_loss(const Variable& pred, const Variable& target) {
  return mean(abs(difference("l1_loss", pred, target)));
}

}  // namespace mixtrain
