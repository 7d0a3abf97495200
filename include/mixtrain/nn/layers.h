// Layers: Linear, Embedding, LayerNorm, the activations, Sequential. Weights in torch layout;
// initialisation from a seeded Rng so a run is reproducible from its seed.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mixtrain/nn/module.h"
#include "mixtrain/random.h"

namespace mixtrain::nn {

/// y = x·Wᵀ + b with W [out, in]. Default init as torch: U(-1/sqrt(in), 1/sqrt(in)).
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias, Rng& rng);
  std::string type() const override { return "Linear"; }
  Variable forward(const Variable& x) const;
  /// forward(gelu(x)) keeping x, not gelu(x), for backward (ops.h gelu_linear).
  Variable forward_gelu(const Variable& x) const;
  /// Re-initialises the weight from normal(0, std) and zeroes the bias (GPT-2 init).
  void init_normal(float std, Rng& rng);
  /// Its scaling state under an fp8 policy (amp/fp8.h), made by the first fp8 forward with the
  /// policy's history length.
  amp::Fp8LinearState* fp8_state(int64_t history = 0) const override;
  Parameter& weight;
  Parameter* bias = nullptr;

 private:
  Variable forward_impl(const Variable& x, bool gelu) const;
  mutable std::unique_ptr<amp::Fp8LinearState> fp8_;
};

/// Table lookup: ids [...] -> [..., C]. Init normal(0, std).
class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, float std, Rng& rng);
  std::string type() const override { return "Embedding"; }
  Variable forward(const Variable& ids) const;
  Parameter& weight;
};

/// Layer norm over the last dim, fp32 statistics; weight 1, bias 0.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, float eps = 1e-5f);
  std::string type() const override { return "LayerNorm"; }
  Variable forward(const Variable& x) const;
  Parameter& weight;
  Parameter& bias;
  float eps;
};

/// Activations as modules (no parameters), for Sequential.
class ReLU : public Module {
 public:
  std::string type() const override { return "ReLU"; }
  Variable forward(const Variable& x) const;
};
class GELU : public Module {
 public:
  std::string type() const override { return "GELU"; }
  Variable forward(const Variable& x) const;
};
class Tanh : public Module {
 public:
  std::string type() const override { return "Tanh"; }
  Variable forward(const Variable& x) const;
};

/// Modules applied one after another, each through its forward(const Variable&) const; named
/// "0", "1", ... (so parameters are "0.weight", "2.bias", ...).
///   nn::Sequential net;
///   net.add<nn::Linear>(784, 256, true, rng);
///   net.add<nn::ReLU>();
///   net.add<nn::Linear>(256, 10, true, rng);
///   Variable logits = net.forward(x);
class Sequential : public Module {
 public:
  std::string type() const override { return "Sequential"; }
  /// Appends a module of type M built from args; returns it.
  template <class M, class... Args>
  M& add(Args&&... args) {
    return append(std::make_unique<M>(std::forward<Args>(args)...));
  }
  /// Appends a module already built; returns it.
  template <class M>
  M& append(std::unique_ptr<M> m) {
    const M* p = m.get();
    steps_.push_back([p](const Variable& x) { return p->forward(x); });
    return register_module(std::to_string(steps_.size() - 1), std::move(m));
  }
  size_t size() const { return steps_.size(); }
  Variable forward(const Variable& x) const;

 private:
  std::vector<std::function<Variable(const Variable&)>> steps_;
};

/// Tensor of normal(0, std) values (fp32).
Tensor normal_tensor(const Shape& shape, float std, Rng& rng);
/// Tensor of uniform[-bound, bound) values (fp32).
Tensor uniform_tensor(const Shape& shape, float bound, Rng& rng);

}  // namespace mixtrain::nn
