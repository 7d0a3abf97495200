// Linear, Embedding, LayerNorm, the activations and Sequential: thin wrappers over the ops, plus
// initialisers.
#include "mixtrain/nn/layers.h"

#include <cmath>

#include "mixtrain/ops.h"

namespace mixtrain::nn {

Tensor normal_tensor(const Shape& shape, float std, Rng& rng) {
  Tensor t = Tensor::empty(shape, DType::f32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = std * rng.normal();
  return t;
}

Tensor uniform_tensor(const Shape& shape, float bound, Rng& rng) {
  Tensor t = Tensor::empty(shape, DType::f32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = bound * (2.0f * rng.uniform() - 1.0f);
  return t;
}

Linear::Linear(int64_t in, int64_t out, bool with_bias, Rng& rng)
    : weight(register_parameter("weight",
                                uniform_tensor({out, in}, 1.0f / std::sqrt(float(in)), rng))) {
  if (with_bias)
    bias = &register_parameter("bias", uniform_tensor({out}, 1.0f / std::sqrt(float(in)), rng));
}

void Linear::init_normal(float std, Rng& rng) {
  weight.master.copy_from(normal_tensor(weight.master.shape(), std, rng));
  weight.refresh();
  if (bias) {
    bias->master.fill(0.0f);
    bias->refresh();
  }
}

Variable Linear::forward_impl(const Variable& x, bool gelu) const {
  ForwardScope scope(*this);
  // The scaling state: made by the first fp8 forward; one made for the doctor's probe is used
  // by any forward, so the probe can tell the linears apart.
  const amp::Policy* pol = amp::current_policy();
  amp::Fp8StateScope fp8(fp8_state(pol && pol->fp8_gemms ? pol->fp8_gemms->amax_history : 0),
                         training());
  const Variable b = bias ? bias->weight : Variable();
  return gelu ? gelu_linear(x, weight.weight, b) : linear(x, weight.weight, b);
}

amp::Fp8LinearState* Linear::fp8_state(int64_t history) const {
  if (!fp8_ && history > 0) fp8_ = std::make_unique<amp::Fp8LinearState>(history);
  return fp8_.get();
}

Variable Linear::forward(const Variable& x) const { return forward_impl(x, false); }

Variable Linear::forward_gelu(const Variable& x) const { return forward_impl(x, true); }

Embedding::Embedding(int64_t num, int64_t dim, float std, Rng& rng)
    : weight(register_parameter("weight", normal_tensor({num, dim}, std, rng))) {}

Variable Embedding::forward(const Variable& ids) const {
  ForwardScope scope(*this);
  return embedding(ids, weight.weight);
}

LayerNorm::LayerNorm(int64_t dim, float eps_)
    : weight(register_parameter("weight", Tensor::full({dim}, 1.0f, DType::f32))),
      bias(register_parameter("bias", Tensor::zeros({dim}, DType::f32))),
      eps(eps_) {}

Variable LayerNorm::forward(const Variable& x) const {
  ForwardScope scope(*this);
  return layer_norm(x, weight.weight, bias.weight, eps);
}

Variable ReLU::forward(const Variable& x) const {
  ForwardScope scope(*this);
  return relu(x);
}

Variable GELU::forward(const Variable& x) const {
  ForwardScope scope(*this);
  return gelu(x);
}

Variable Tanh::forward(const Variable& x) const {
  ForwardScope scope(*this);
  return tanh(x);
}

Variable Sequential::forward(const Variable& x) const {
  ForwardScope scope(*this);
  Variable h = x;
  for (const auto& step : steps_) h = step(h);
  return h;
}

}  // namespace mixtrain::nn
