// Activation checkpointing: the tape node of a checkpointed call, its recompute hook (run by
// the tape walker right before the node's backward) and the backward that walks the
// recomputed graph. The forward runs the same function with the tape off, so the output the
// rest of the model sees is bit-for-bit the recomputed one.
#include "mixtrain/nn/checkpoint.h"

#include <fmt/format.h>
#include <charconv>
#include <memory>
#include <optional>

#include "mixtrain/amp/policy.h"

namespace mixtrain::nn {

namespace {

// What a checkpointed call keeps between its forward and its backward: the input (shared
// with the tape edge, so no extra bytes), the function, the policy and the RNG state at entry.
// x and y hold the recomputed graph only from the recompute to the end of the backward.
struct Saved {
  CheckpointFn fn;
  Tensor input;
  bool input_requires_grad = false;
  std::optional<amp::Policy> policy;  // nullopt: no policy was current (ops keep input dtypes)
  Rng rng;
  Variable x, y;

  void recompute() {
    GradModeGuard tape_on(true);
    amp::PolicyScope scope(policy ? &*policy : nullptr);
    x = Variable(input, input_requires_grad);
    // Without checkpointing x's gradient is summed in x's own dtype (it is not a leaf there);
    // a leaf would convert it to fp32, so the leaf here keeps x's dtype.
    x.set_grad_dtype(input.dtype());
    Rng r = rng;  // the same counters as the forward: identical dropout masks
    y = fn(x, r);
  }
};

}  // namespace

Variable checkpoint(CheckpointFn fn, const Variable& x, Rng& rng, std::vector<Variable> params) {
  if (!grad_enabled()) return fn(x, rng);
  auto st = std::make_shared<Saved>();
  st->input = x.data();
  st->input_requires_grad = x.requires_grad();
  if (const amp::Policy* p = amp::current_policy()) st->policy = *p;
  st->rng = rng;
  Variable y;
  {
    NoGradGuard tape_off;  // the intermediates die as soon as the next op is done with them
    y = fn(x, rng);
  }
  st->fn = std::move(fn);
  std::vector<Variable> inputs;
  inputs.reserve(params.size() + 1);
  inputs.push_back(x);
  for (Variable& p : params) inputs.push_back(std::move(p));
  const size_t n = inputs.size();
  Variable out =
      make_op_result(y.data(), std::move(inputs), "checkpoint", [st, n](const Tensor& grad_out) {
        if (!st->y.defined()) st->recompute();  // a walker that skipped the hook
        Variable x_re = std::move(st->x), y_re = std::move(st->y);
        std::vector<Tensor> grads(n);
        // Parameters are leaves of the recomputed graph: their gradients accumulate into
        // them during this walk, so the node hands back only x's.
        if (y_re.requires_grad()) {
          y_re.backward(grad_out);
          if (x_re.requires_grad()) grads[0] = x_re.grad();
        }
        return grads;
      });
  if (out.grad_fn()) out.grad_fn()->recompute = [st] { st->recompute(); };
  return out;
}

Variable checkpoint(const std::function<Variable(const Variable&)>& fn, const Variable& x,
                    std::vector<Variable> params) {
  Rng unused;
  return checkpoint([fn](const Variable& v, Rng&) { return fn(v); }, x, unused, std::move(params));
}

Variable checkpoint(const Module& m, const Variable& x, Rng& rng, const CheckpointFn& fn) {
  if (!m.checkpointed() || !grad_enabled()) return fn(x, rng);
  return checkpoint(fn, x, rng, m.parameter_variables());
}

ActivationCheckpointing parse_activation_checkpointing(std::string_view spec) {
  if (spec == "none") return {};
  if (spec == "gelu") return {.gelu = true};
  if (spec == "blocks") return {.every = 1};
  if (spec.substr(0, 6) == "every:") {
    const std::string_view num = spec.substr(6);
    int64_t n = 0;
    const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
    if (ec == std::errc() && end == num.data() + num.size() && n >= 1) return {.every = n};
  }
  throw ConfigError(
      fmt::format("--checkpoint-activations: unknown value '{}' (none, gelu, blocks or every:N "
                  "with N >= 1)",
                  spec));
}

}  // namespace mixtrain::nn
