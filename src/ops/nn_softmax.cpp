// softmax, log_softmax (any axis) and the fused cross-entropy (log-softmax + NLL), forward and
// backward side by side; fp32 internals in the backend's kernels (Backend::softmax,
// Backend::cross_entropy).
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops_nn.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

namespace {

Variable softmax_impl(const Variable& x, int64_t axis, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_defined(x, op, "x");
  check_compute_dtype(x.data(), op, "x");
  if (x.dim() == 0) throw ShapeError(fmt::format("{}: x {} is a scalar", op, x.data().str()));
  const int64_t ax = wrap_axis(axis, x.dim(), op, x.data());
  const DType dt = amp::op_dtype(op, amp::OpCategory::stats32, {x.dtype()});
  const Tensor xs = x.data().to(dt).contiguous();
  Tensor y = Tensor::empty(xs.shape(), dt, xs.device());
  backend_for(xs.device()).softmax(xs, ax, log, y);
  const DType x_dt = x.dtype();
  // Saves the output (not the input): both backwards are functions of y alone.
  return make_op_result(y, {x}, op, [y, ax, dt, x_dt, log](const Tensor& g_in) {
    const Tensor g = g_in.to(dt).contiguous();
    Tensor dx = Tensor::empty(y.shape(), dt, y.device());
    backend_for(y.device()).softmax_backward(y, g, ax, log, dx);
    return std::vector<Tensor>{dx.to(x_dt)};
  });
}

}  // namespace

Variable softmax(const Variable& x, int64_t axis) { return softmax_impl(x, axis, false); }
Variable log_softmax(const Variable& x, int64_t axis) { return softmax_impl(x, axis, true); }

Variable cross_entropy(const Variable& logits, const Variable& targets, int64_t ignore_index) {
  constexpr const char* kOp = "cross_entropy";
  check_defined(logits, kOp, "logits");
  check_defined(targets, kOp, "targets");
  check_compute_dtype(logits.data(), kOp, "logits");
  check_index(targets.data(), kOp, "targets");
  if (logits.dim() < 1)
    throw ShapeError(fmt::format("{}: logits {} need a class dim", kOp, logits.data().str()));
  const Shape lead(logits.shape().begin(), logits.shape().end() - 1);
  if (targets.shape() != lead)
    throw ShapeError(fmt::format("{}: targets {} must have shape {} to match logits {}", kOp,
                                 targets.data().str(), shape_str(lead), logits.data().str()));
  Backend& be = backend_of(kOp, {&logits.data(), &targets.data()});
  // The loss dtype (fp32 under every preset); the logits are read in their own dtype with
  // fp32 internals, never cast to fp32 in memory (a [B·T, V] copy would cost more than the op).
  const DType loss_dt = amp::op_dtype(kOp, amp::OpCategory::fp32, {logits.dtype()});
  const Tensor x = logits.data().contiguous();
  const Tensor tg = targets.data().contiguous();
  const int64_t V = logits.size(-1);
  const int64_t N = tg.numel();
  const IndexScan scan = be.scan_indices(tg, V, ignore_index);
  if (scan.bad_pos >= 0)
    throw ShapeError(
        fmt::format("{}: target {} at position {} of targets {} is out of range "
                    "for V = {} classes (logits {}, ignore_index {})",
                    kOp, scan.bad_value, scan.bad_pos, tg.str(), V, x.str(), ignore_index));
  const int64_t count = scan.counted;
  // Per-row logsumexp saved for backward (N floats).
  Tensor lse = Tensor::empty({N}, DType::f32, x.device());
  Tensor out = Tensor::empty({}, loss_dt, x.device());
  be.cross_entropy(x.view({N, V}), tg.view({N}), ignore_index, count, lse, out);
  return make_op_result(out, {logits, targets}, kOp,
                        [x, tg, lse, N, V, count, ignore_index](const Tensor& g) {
                          Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
                          backend_for(x.device())
                              .cross_entropy_backward(x.view({N, V}), tg.view({N}), ignore_index,
                                                      count, lse, g, dx.view({N, V}));
                          return std::vector<Tensor>{dx, Tensor()};
                        });
}

}  // namespace mixtrain
