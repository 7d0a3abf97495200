// Define-by-run autograd. A Variable is a Tensor plus its place on the tape: the Node that
// produced it and, for leaves, an accumulated gradient. Ops (ops.h) build Nodes whose
// backward closures sit beside the forward code in src/ops/.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixtrain/tensor.h"

namespace mixtrain {

class Variable;
struct Node;

/// Gradient of the op's output -> gradients of its inputs (one per input, undefined where the
/// input needs none).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

struct VariableImpl {
  Tensor data;
  Tensor grad;  ///< leaves only; accumulated in grad_dtype
  bool requires_grad = false;
  /// dtype leaf gradients accumulate in: f32 by default (sums over micro-batches stay exact
  /// enough); a parameter may choose its compute dtype to save memory.
  DType grad_dtype = DType::f32;
  std::shared_ptr<Node> grad_fn;  ///< null for leaves
  std::string name;
  /// Called after this leaf's gradient has been fully accumulated in a backward pass (used by
  /// data-parallel training to start a bucket's all-reduce while backward goes on).
  std::function<void(VariableImpl&)> grad_ready_hook;
  /// An op output whose data was released (see make_op_result) keeps its shape here, for the
  /// tape walker's gradient shape check.
  Shape released_shape;
};

class Variable {
 public:
  Variable() = default;
  explicit Variable(Tensor data, bool requires_grad = false, std::string name = {});

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const { return impl_->data; }
  Tensor& data() { return impl_->data; }
  const Shape& shape() const { return impl_->data.shape(); }
  DType dtype() const { return impl_->data.dtype(); }
  int64_t dim() const { return impl_->data.dim(); }
  int64_t size(int64_t d) const { return impl_->data.size(d); }
  int64_t numel() const { return impl_->data.numel(); }
  const std::string& name() const { return impl_->name; }

  bool requires_grad() const { return impl_ && impl_->requires_grad; }
  bool is_leaf() const { return !impl_->grad_fn; }
  /// The accumulated gradient of a leaf (undefined until a backward pass reaches it).
  const Tensor& grad() const { return impl_->grad; }
  Tensor& grad() { return impl_->grad; }
  void zero_grad() { impl_->grad = Tensor(); }
  void set_grad_dtype(DType dt) { impl_->grad_dtype = dt; }
  DType grad_dtype() const { return impl_->grad_dtype; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }

  /// Back-propagates from this variable. With no seed it must hold one element and the seed
  /// is 1 (times `scale`: loss scaling multiplies the seed, never the loss tensor). Each op's
  /// saved tensors are freed as soon as its backward has run, so a graph is walked once; a
  /// second walk throws (run the forward again).
  void backward(float scale = 1.0f) const;
  void backward(const Tensor& seed) const;

  /// Same data, cut from the tape.
  Variable detach() const { return Variable(impl_->data, false); }
  VariableImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<VariableImpl>& impl_ptr() const { return impl_; }

 private:
  friend Variable make_op_result(Tensor, std::vector<Variable>, const char*, BackwardFn);
  std::shared_ptr<VariableImpl> impl_;
  /// Shared by every handle of a tape-made output: when the last one goes, the output's data is
  /// released (make_op_result). Null for leaves and untaped results.
  std::shared_ptr<void> hold_;
};

struct Node {
  std::string op;  ///< op name, for error messages and diagnostics
  /// Edges to the inputs. They do not keep an op output's data alive (see make_op_result): a
  /// backward keeps what it needs by capturing it.
  std::vector<std::shared_ptr<VariableImpl>> inputs;
  BackwardFn backward;
  /// Activation checkpointing (nn/checkpoint.h): called by the tape walker just before
  /// `backward`, it re-runs a checkpointed block's forward with the tape on, so `backward` can
  /// walk that block's own graph. Empty for ordinary ops.
  std::function<void()> recompute;
  /// Run by the tape walker before `recompute` and `backward`: the hook that was current
  /// (BeforeBackwardScope) when the op was recorded. Sharded data parallelism gathers a unit's
  /// parameters with it before the backward of the ops its forward recorded. Shared by every
  /// op of that forward, so it must be cheap once its work is done.
  std::shared_ptr<const std::function<void()>> before_backward;
};

/// Whether ops record the tape (thread-local; on by default).
bool grad_enabled();
/// Disables tape recording in a scope (inference, optimizer steps).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

/// Sets whether ops record the tape for a scope, either way (a checkpointed block's
/// recompute needs the tape even under an outer NoGradGuard); restores the previous mode.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool prev_;
};

/// Ops recorded while one is alive on this thread carry `hook` (Node::before_backward); the
/// previous hook is current again when it goes. A null hook leaves the current one in place.
class BeforeBackwardScope {
 public:
  explicit BeforeBackwardScope(std::shared_ptr<const std::function<void()>> hook);
  ~BeforeBackwardScope();
  BeforeBackwardScope(const BeforeBackwardScope&) = delete;
  BeforeBackwardScope& operator=(const BeforeBackwardScope&) = delete;

 private:
  std::shared_ptr<const std::function<void()>> prev_;
  bool set_ = false;
};

/// Builds an op's output: records a Node if grad is enabled and any input requires grad.
/// `backward` receives the output gradient in the output's dtype, and must capture (as Tensors
/// or Variables) whatever it reads: when the last Variable handle of a taped output goes (the
/// forward is done with it), its data is released even though the tape still links to it, so
/// the tape keeps only what backwards need (an add's inputs, say, are not kept).
Variable make_op_result(Tensor out, std::vector<Variable> inputs, const char* op,
                        BackwardFn backward);

/// While one is alive on this thread, taped outputs keep their data after their last handle
/// goes (the fp16 forward-overflow finder reads every activation on the tape).
class KeepActivationsGuard {
 public:
  explicit KeepActivationsGuard(bool keep = true);
  ~KeepActivationsGuard();
  KeepActivationsGuard(const KeepActivationsGuard&) = delete;
  KeepActivationsGuard& operator=(const KeepActivationsGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace mixtrain
