// Finite-difference gradient checks of every tensor op (fp32), and the low-precision reruns:
// gradients with bf16 / fp16 inputs against the fp32 analytic ones (tests/gradcheck.h).
//
// lowp tolerances (max-norm relative, see lowp_gradcheck): the bf16 run rounds the inputs
// (2^-9 relative each), rounds the forward output and every gradient it stores (2^-9 each),
// so a gradient that is one product of rounded values (elementwise ops) lands within a few
// 2^-9 = 0.2%: we allow 1e-2 for bf16 and 2e-3 for fp16 (2^-12 per rounding). Ops that sum
// many rounded terms or divide (GEMMs, div, log) get more, noted at the call.
#include <gtest/gtest.h>

#include "gradcheck.h"
#include "mixtrain/ops.h"

namespace mixtrain {
namespace {

using testing::gradcheck;
using testing::lowp_gradcheck;
using testing::random_tensor;
using V = std::vector<Variable>;

constexpr float kBf16Tol = 1e-2f;
constexpr float kFp16Tol = 2e-3f;

// Values with |x| in [0.1, 1]: central differences with eps = 1e-2 never straddle the kink of
// relu or the pole of 1/x.
Tensor away_from_zero(const Shape& shape, uint64_t seed) {
  Tensor t = random_tensor(shape, seed, 0.1f, 1.0f);
  Tensor s = random_tensor(shape, seed + 1000);
  float* p = t.data<float>();
  const auto sv = s.to_vector();
  for (size_t i = 0; i < sv.size(); ++i)
    if (sv[i] < 0) p[i] = -p[i];
  return t;
}

void check_all(const testing::OpFn& f, const std::vector<Tensor>& in, float bf16_tol = kBf16Tol,
               float fp16_tol = kFp16Tol) {
  gradcheck(f, in);
  lowp_gradcheck(f, in, DType::bf16, bf16_tol);
  lowp_gradcheck(f, in, DType::f16, fp16_tol);
}

TEST(OpsGradcheck, Cast) {
  // The fp16 round trip loses up to 2^-12 relative per evaluation; eps = 0.25 keeps that
  // below 1e-3 in the difference quotient (the function is the identity, so a large eps is
  // exact otherwise).
  gradcheck([](const V& v) { return cast(cast(v[0], DType::f16), DType::f32); },
            {random_tensor({3, 4}, 1)}, {}, 0.25f);
  lowp_gradcheck([](const V& v) { return cast(v[0], DType::f32); }, {random_tensor({3, 4}, 1)},
                 DType::bf16, kBf16Tol);
}

TEST(OpsGradcheck, BinaryOpsWithBroadcasting) {
  const Tensor a = random_tensor({3, 4}, 2), b = random_tensor({4}, 3);
  const Tensor c = random_tensor({3, 1}, 4, 0.5f, 1.5f);
  check_all([](const V& v) { return add(v[0], v[1]); }, {a, b});
  check_all([](const V& v) { return sub(v[0], v[1]); }, {b, a});
  check_all([](const V& v) { return mul(v[0], v[1]); }, {a, c});
  // div's gradient for b is -g·a/b²: three rounded factors, and b down to 0.5 doubles it.
  check_all([](const V& v) { return div(v[0], v[1]); }, {a, c}, 2e-2f, 4e-3f);
  check_all([](const V& v) { return bias_add(v[0], v[1]); }, {a, b});
}

TEST(OpsGradcheck, ScalarForms) {
  const Tensor x = random_tensor({2, 5}, 5);
  check_all([](const V& v) { return mul(v[0], -1.5f); }, {x});
  check_all([](const V& v) { return add(v[0], 0.25f); }, {x});
}

TEST(OpsGradcheck, Activations) {
  const Tensor x = away_from_zero({3, 7}, 6);
  check_all([](const V& v) { return relu(v[0]); }, {x});
  check_all([](const V& v) { return gelu(v[0]); }, {random_tensor({3, 7}, 7, -3.0f, 3.0f)});
  check_all([](const V& v) { return tanh(v[0]); }, {random_tensor({3, 7}, 8, -2.0f, 2.0f)});
  check_all([](const V& v) { return exp(v[0]); }, {random_tensor({3, 7}, 9)});
  // log's gradient 1/x: the input rounding of x in [0.5, 2] enters once, relative.
  check_all([](const V& v) { return log(v[0]); }, {random_tensor({3, 7}, 10, 0.5f, 2.0f)});
}

TEST(OpsGradcheck, Reductions) {
  const Tensor x = random_tensor({3, 4, 5}, 11);
  check_all([](const V& v) { return sum(v[0], {1}); }, {x});
  check_all([](const V& v) { return mean(v[0], {0, 2}, true); }, {x});
  check_all([](const V& v) { return sum(v[0]); }, {x});
  check_all([](const V& v) { return mean(v[0]); }, {x});
}

TEST(OpsGradcheck, ShapeOps) {
  const Tensor x = random_tensor({2, 3, 4}, 12), y = random_tensor({2, 2, 4}, 13);
  // Each view op is followed by a multiply so the gradient reaching it is not all ones.
  const Tensor w = random_tensor({4, 6}, 14);
  check_all([&](const V& v) { return mul(reshape(v[0], {4, 6}), Variable(w)); }, {x});
  check_all([](const V& v) { return mul(transpose(v[0], 0, 2), transpose(v[0], 0, 2)); }, {x});
  check_all([](const V& v) { return mul(slice(v[0], 1, 1, 3), v[1]); }, {x, y});
  check_all([](const V& v) { return concat({v[0], v[1], v[0]}, 1); }, {x, y});
}

TEST(OpsGradcheck, Dropout) {
  // A fresh Rng with the same state on every call: the same mask each evaluation.
  check_all(
      [](const V& v) {
        Rng rng(21, 5);
        return dropout(v[0], 0.4f, true, rng);
      },
      {random_tensor({4, 9}, 15)});
}

TEST(OpsGradcheck, MatmulAndLinear) {
  // GEMM gradients sum K products of rounded values: relative errors of 2^-9 each add up
  // like a random walk (~sqrt(K)·2^-9 against a sum that itself grows like sqrt(K)), plus the
  // rounding of the stored gradient; 2e-2 (bf16) and 3e-3 (fp16) hold with margin at K <= 8.
  const float bf = 2e-2f, hf = 3e-3f;
  check_all([](const V& v) { return matmul(v[0], v[1]); },
            {random_tensor({3, 5}, 16), random_tensor({5, 4}, 17)}, bf, hf);
  check_all([](const V& v) { return matmul(v[0], v[1]); },
            {random_tensor({2, 3, 5}, 18), random_tensor({2, 5, 4}, 19)}, bf, hf);
  check_all([](const V& v) { return matmul(v[0], v[1]); },
            {random_tensor({2, 3, 5}, 20), random_tensor({5, 4}, 21)}, bf, hf);
  check_all([](const V& v) { return matmul(v[0], transpose(v[1], 0, 1)); },
            {random_tensor({3, 5}, 22), random_tensor({4, 5}, 23)}, bf, hf);
  check_all([](const V& v) { return linear(v[0], v[1], v[2]); },
            {random_tensor({2, 3, 6}, 24), random_tensor({4, 6}, 25), random_tensor({4}, 26)}, bf,
            hf);
  check_all([](const V& v) { return linear(v[0], v[1]); },
            {random_tensor({5, 6}, 27), random_tensor({4, 6}, 28)}, bf, hf);
}

TEST(OpsGradcheck, Composite) {
  // A small chain through several ops, as a model uses them.
  check_all([](const V& v) { return mean(gelu(linear(v[0], v[1], v[2])), {-1}); },
            {random_tensor({3, 6}, 30), random_tensor({5, 6}, 31), random_tensor({5}, 32)}, 2e-2f,
            3e-3f);
}

}  // namespace
}  // namespace mixtrain
