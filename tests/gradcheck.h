// Finite-difference gradient checks for ops, and the low-precision rerun: the same op with
// bf16/fp16 inputs must give gradients close to the fp32 analytic ones, within a tolerance set
// per op and dtype (bf16 keeps 8 significant bits: relative rounding 2^-9 = 0.2% per value;
// fp16 keeps 11: 2^-12 = 0.024%; errors grow with the number of roundings an op chains).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "mixtrain/autograd.h"
#include "mixtrain/random.h"

namespace mixtrain::testing {

using OpFn = std::function<Variable(const std::vector<Variable>&)>;

/// Random fp32 tensor with values uniform in [lo, hi).
inline Tensor random_tensor(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = lo + (hi - lo) * rng.uniform();
  return Tensor::from_vector(v, shape);
}

/// sum(out * r) in double: the scalar whose gradient we check.
inline double project(const Tensor& out, const std::vector<float>& r) {
  const auto o = out.to_vector();
  double s = 0;
  for (size_t i = 0; i < o.size(); ++i) s += static_cast<double>(o[i]) * r[i];
  return s;
}

/// Analytic gradients of sum(f(inputs) * r) for inputs in dtype `dt` (returned as fp32
/// vectors), with r a fixed random projection of the output.
inline std::vector<std::vector<float>> analytic_grads(const OpFn& f, const std::vector<Tensor>& in,
                                                      DType dt, const std::vector<bool>& diff,
                                                      uint64_t seed = 99) {
  std::vector<Variable> vars;
  for (size_t i = 0; i < in.size(); ++i)
    vars.emplace_back(is_floating(in[i].dtype()) ? in[i].to(dt) : in[i], diff[i]);
  Variable out = f(vars);
  const Tensor r = random_tensor(out.shape(), seed);
  out.backward(r.to(out.dtype()));
  std::vector<std::vector<float>> g;
  for (size_t i = 0; i < vars.size(); ++i)
    g.push_back(diff[i] && vars[i].grad().defined() ? vars[i].grad().to_vector()
                                                    : std::vector<float>());
  return g;
}

/// Central finite differences in fp32 against the analytic gradient. `diff[i]` says which
/// inputs are differentiable (integer ids are not). Tolerance: |num - ana| <= atol + rtol*|ana|.
inline void gradcheck(const OpFn& f, const std::vector<Tensor>& in, std::vector<bool> diff = {},
                      float eps = 1e-2f, float atol = 2e-3f, float rtol = 2e-2f) {
  if (diff.empty()) diff.assign(in.size(), true);
  const auto ana = analytic_grads(f, in, DType::f32, diff);
  std::vector<Variable> probe;
  for (const auto& t : in) probe.emplace_back(t, false);
  const std::vector<float> r = random_tensor(f(probe).shape(), 99).to_vector();
  for (size_t i = 0; i < in.size(); ++i) {
    if (!diff[i]) continue;
    ASSERT_EQ(ana[i].size(), static_cast<size_t>(in[i].numel()))
        << "input " << i << " got no gradient";
    for (int64_t k = 0; k < in[i].numel(); ++k) {
      auto eval = [&](float delta) {
        std::vector<Variable> vs;
        for (size_t j = 0; j < in.size(); ++j) {
          Tensor t = in[j].clone();
          if (j == i) t.data<float>()[k] += delta;
          vs.emplace_back(t, false);
        }
        return project(f(vs).data(), r);
      };
      const double num = (eval(eps) - eval(-eps)) / (2.0 * eps);
      const double a = ana[i][static_cast<size_t>(k)];
      ASSERT_NEAR(num, a, atol + rtol * std::fabs(a)) << "input " << i << " element " << k;
    }
  }
}

/// Reruns the op with inputs in `dt` and compares gradients with the fp32 analytic ones:
/// max |g_dt - g_f32| <= tol * max(|g_f32|) per input (a max-norm relative error).
inline void lowp_gradcheck(const OpFn& f, const std::vector<Tensor>& in, DType dt, float tol,
                           std::vector<bool> diff = {}) {
  if (diff.empty()) diff.assign(in.size(), true);
  const auto ref = analytic_grads(f, in, DType::f32, diff);
  const auto low = analytic_grads(f, in, dt, diff);
  for (size_t i = 0; i < in.size(); ++i) {
    if (!diff[i]) continue;
    ASSERT_EQ(ref[i].size(), low[i].size());
    double maxref = 0, maxerr = 0;
    for (size_t k = 0; k < ref[i].size(); ++k) {
      maxref = std::max(maxref, std::fabs(static_cast<double>(ref[i][k])));
      maxerr = std::max(maxerr, std::fabs(static_cast<double>(ref[i][k]) - low[i][k]));
    }
    EXPECT_LE(maxerr, tol * std::max(maxref, 1e-12))
        << "input " << i << " in " << dtype_name(dt) << ": max error " << maxerr << " vs max |g| "
        << maxref;
  }
}

}  // namespace mixtrain::testing
