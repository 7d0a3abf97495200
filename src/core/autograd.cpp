// The tape walker: topological order from the root, then each Node's backward in reverse,
// summing gradients that meet at a variable (fp32 internals) and accumulating leaf gradients
// in the leaf's grad dtype.
#include "mixtrain/autograd.h"

#include <fmt/format.h>
#include <chrono>
#include <unordered_map>
#include <unordered_set>

#include "backend/backend.h"
#include "core/dispatch.h"
#include "mixtrain/profile.h"

namespace mixtrain {

namespace {
thread_local bool g_grad_enabled = true;
thread_local bool g_keep_activations = false;
thread_local std::shared_ptr<const std::function<void()>> g_before_backward;

// dst += src elementwise (same shape, any float dtypes), computed in fp32 and rounded once
// into dst's dtype, by dst's backend. dst is a gradient this walker made or a leaf's
// (contiguous).
void accumulate_into(Tensor& dst, const Tensor& src) {
  if (dst.shape() != src.shape())
    throw ShapeError(fmt::format("backward: gradient {} does not match {}", src.str(), dst.str()));
  if (!dst.is_contiguous())
    throw Error(fmt::format("backward: accumulating into a strided gradient {}", dst.str()));
  for (DType dt : {dst.dtype(), src.dtype()})  // gradients are floating point
    dispatch_float(dt, "grad accumulate", [](auto) {});
  common_device("backward (gradient accumulation)", {&dst, &src});
  backend_for(dst.device()).add_into(dst, src);
}
// Whether t is the only view of its whole storage, so a leaf may keep it as its gradient and
// later add into it in place without touching anything else.
bool sole_owner(const Tensor& t) {
  return t.storage() && t.storage().use_count() == 1 && t.is_contiguous() && t.offset() == 0 &&
         t.storage()->nbytes() == static_cast<size_t>(t.numel()) * t.element_size();
}
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }
GradModeGuard::GradModeGuard(bool enabled) : prev_(g_grad_enabled) { g_grad_enabled = enabled; }
GradModeGuard::~GradModeGuard() { g_grad_enabled = prev_; }
KeepActivationsGuard::KeepActivationsGuard(bool keep) : prev_(g_keep_activations) {
  g_keep_activations = g_keep_activations || keep;
}
KeepActivationsGuard::~KeepActivationsGuard() { g_keep_activations = prev_; }
BeforeBackwardScope::BeforeBackwardScope(std::shared_ptr<const std::function<void()>> hook) {
  if (!hook) return;
  prev_ = std::move(g_before_backward);
  g_before_backward = std::move(hook);
  set_ = true;
}
BeforeBackwardScope::~BeforeBackwardScope() {
  if (set_) g_before_backward = std::move(prev_);
}

Variable::Variable(Tensor data, bool requires_grad, std::string name)
    : impl_(std::make_shared<VariableImpl>()) {
  impl_->data = std::move(data);
  impl_->requires_grad = requires_grad;
  impl_->name = std::move(name);
}

Variable make_op_result(Tensor out, std::vector<Variable> inputs, const char* op,
                        BackwardFn backward) {
  bool needs = false;
  if (g_grad_enabled)
    for (const auto& v : inputs) needs = needs || v.requires_grad();
  Variable result(std::move(out), needs);
  profile::op_done(op);
  if (needs) {
    auto node = std::make_shared<Node>();
    node->op = op;
    node->inputs.reserve(inputs.size());
    for (const Variable& v : inputs) node->inputs.push_back(v.impl_ptr());
    node->backward = std::move(backward);
    node->before_backward = g_before_backward;
    result.impl()->grad_fn = std::move(node);
    if (!g_keep_activations) {
      // The handles share one token; its deleter runs when the last handle goes and drops the
      // data (the storage lives on where a backward captured it).
      std::weak_ptr<VariableImpl> w = result.impl_ptr();
      result.hold_ = std::shared_ptr<void>(nullptr, [w](void*) {
        if (auto p = w.lock()) {
          p->released_shape = p->data.shape();
          p->data = Tensor();
        }
      });
    }
  }
  return result;
}

void Variable::backward(float scale) const {
  if (numel() != 1)
    throw ShapeError(fmt::format("backward: a seedless backward needs a one-element output, got {}",
                                 data().str()));
  backward(Tensor::full(shape(), scale, DType::f32, data().device()).to(dtype()));
}

void Variable::backward(const Tensor& seed) const {
  if (!requires_grad()) throw Error("backward: the variable does not require grad");
  // Topological order by iterative DFS (deep graphs must not overflow the stack).
  std::vector<VariableImpl*> order;
  std::unordered_set<VariableImpl*> seen;
  std::vector<std::pair<VariableImpl*, size_t>> stack{{impl_.get(), 0}};
  seen.insert(impl_.get());
  while (!stack.empty()) {
    auto& [v, next] = stack.back();
    if (v->grad_fn && next < v->grad_fn->inputs.size()) {
      VariableImpl* in = v->grad_fn->inputs[next++].get();
      if (in->requires_grad && seen.insert(in).second) stack.push_back({in, 0});
    } else {
      order.push_back(v);
      stack.pop_back();
    }
  }
  std::unordered_map<VariableImpl*, Tensor> grads;
  std::unordered_set<VariableImpl*> owned;  // grads we copied and may add into in place
  grads[impl_.get()] = seed.dtype() == dtype() ? seed : seed.to(dtype());
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    VariableImpl* v = *it;
    auto g = grads.find(v);
    if (g == grads.end()) continue;
    Tensor grad = std::move(g->second);
    grads.erase(g);
    if (!v->grad_fn) {  // leaf: accumulate
      if (!v->grad.defined()) {
        if (grad.dtype() != v->grad_dtype)
          v->grad = grad.to(v->grad_dtype);
        else if (sole_owner(grad))
          v->grad = std::move(grad);  // a fresh product nobody else sees: no copy
        else
          v->grad = grad.contiguous().clone();  // may alias another gradient or a saved tensor
      } else {
        accumulate_into(v->grad, grad);
      }
      if (v->grad_ready_hook) v->grad_ready_hook(*v);
      continue;
    }
    Node& node = *v->grad_fn;
    if (!node.backward)
      throw Error(fmt::format(
          "backward of {}: this graph was already walked by an earlier backward, which released "
          "what its ops saved; run the forward again",
          node.op));
    if (node.before_backward) (*node.before_backward)();
    if (node.recompute) node.recompute();
    const auto t_bwd = profile::enabled() ? std::chrono::steady_clock::now()
                                          : std::chrono::steady_clock::time_point{};
    std::vector<Tensor> in_grads = node.backward(grad);
    // What the op saved for its backward (captured by the closure) is not needed again: free
    // it now, so activations go as the walk passes them instead of all at its end (the peak
    // is then the forward's activations, not activations plus every gradient).
    node.backward = nullptr;
    node.recompute = nullptr;
    node.before_backward = nullptr;
    if (profile::enabled())
      profile::add("bwd " + node.op,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t_bwd).count());
    if (in_grads.size() != node.inputs.size())
      throw Error(fmt::format("backward of {}: returned {} gradients for {} inputs", node.op,
                              in_grads.size(), node.inputs.size()));
    for (size_t i = 0; i < in_grads.size(); ++i) {
      VariableImpl* in = node.inputs[i].get();
      if (!in->requires_grad || !in_grads[i].defined()) continue;
      const Shape& in_shape = in->data.defined() ? in->data.shape() : in->released_shape;
      if (in_grads[i].shape() != in_shape)
        throw ShapeError(fmt::format("backward of {}: gradient {} for input {} of shape {}",
                                     node.op, in_grads[i].str(), i, shape_str(in_shape)));
      auto [slot, inserted] = grads.try_emplace(in, in_grads[i]);
      if (!inserted) {
        // A backward may hand the same tensor to several inputs (add): copy before adding.
        if (owned.insert(in).second) slot->second = slot->second.clone();
        accumulate_into(slot->second, in_grads[i]);
      }
    }
  }
}

}  // namespace mixtrain
