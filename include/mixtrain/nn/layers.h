// Layers: Linear, Embedding, LayerNorm. Weights in torch layout; initialisation from a seeded
// Rng so a run is reproducible from its seed.
#pragma once

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
  Parameter& weight;
  Parameter* bias = nullptr;
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

/// Tensor of normal(0, std) values (fp32).
Tensor normal_tensor(const Shape& shape, float std, Rng& rng);
/// Tensor of uniform[-bound, bound) values (fp32).
Tensor uniform_tensor(const Shape& shape, float bound, Rng& rng);

}  // namespace mixtrain::nn
