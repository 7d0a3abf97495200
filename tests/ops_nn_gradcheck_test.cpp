// Finite-difference gradient checks of the neural-network ops (ops_nn.h), and their
// low-precision reruns: gradients with bf16/fp16 inputs against the fp32 analytic ones.
//
// lowp tolerances (max-norm relative, see gradcheck.h). The bf16 run rounds every input and
// the output-gradient projection to 8 significant bits (unit roundoff u = 2^-8 = 0.39%) and
// the fp16 run to 11 (u = 2^-11 = 0.05%). A gradient then moves by u times the op's
// sensitivity to those inputs, plus one rounding of itself. The tolerances below are stated in
// units of u, about two to three times the worst error measured over these seeds (noted per op).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "gradcheck.h"
#include "mixtrain/ops_nn.h"

namespace mixtrain {
namespace {

using testing::gradcheck;
using testing::lowp_gradcheck;
using testing::random_tensor;

constexpr float kU16 = 1.0f / 256;   // bf16 unit roundoff
constexpr float kU11 = 1.0f / 2048;  // fp16 unit roundoff

Tensor ids(const std::vector<float>& v, const Shape& s, DType dt = DType::i64) {
  return Tensor::from_vector(v, s, dt);
}

TEST(NnGradcheck, Embedding) {
  const std::vector<Tensor> in = {ids({0, 3, 1, 3, 3, 2}, {2, 3}), random_tensor({4, 5}, 1)};
  auto f = [](const std::vector<Variable>& v) { return embedding(v[0], v[1]); };
  gradcheck(f, in, {false, true});
  // The table's gradient is a sum of rounded output-gradient entries kept in fp32: errors are
  // the rounding of r (u) summed over at most three repeats. Measured: 0.6u, 0.4u.
  lowp_gradcheck(f, in, DType::bf16, 2 * kU16, {false, true});
  lowp_gradcheck(f, in, DType::f16, 2 * kU11, {false, true});
  // i32 ids take the same path.
  gradcheck(f, {ids({1, 1, 0}, {3}, DType::i32), random_tensor({2, 3}, 2)}, {false, true});
}

TEST(NnGradcheck, LayerNorm) {
  const std::vector<Tensor> in = {random_tensor({3, 8}, 3, -2.0f, 2.0f),
                                  random_tensor({8}, 4, 0.5f, 1.5f), random_tensor({8}, 5)};
  auto f = [](const std::vector<Variable>& v) { return layer_norm(v[0], v[1], v[2]); };
  gradcheck(f, in);
  // dx = rstd·(g·w - mean - x̂·mean): three O(1) terms cancel to a smaller result, so input
  // rounding is amplified a few-fold relative to max|dx|.
  // Measured: 1.4u (bf16), 1.2u (fp16).
  lowp_gradcheck(f, in, DType::bf16, 4 * kU16);
  lowp_gradcheck(f, in, DType::f16, 4 * kU11);
}

TEST(NnGradcheck, Softmax) {
  const std::vector<Tensor> in = {random_tensor({4, 7}, 6, -3.0f, 3.0f)};
  auto f = [](const std::vector<Variable>& v) { return softmax(v[0]); };
  gradcheck(f, in);
  // The backward reads the rounded output y and the rounded g: y·(g - Σg·y) cancels.
  // Measured: 1.3u (bf16), 2.0u (fp16).
  lowp_gradcheck(f, in, DType::bf16, 4 * kU16);
  lowp_gradcheck(f, in, DType::f16, 4 * kU11);
  // A non-last axis.
  auto f1 = [](const std::vector<Variable>& v) { return softmax(v[0], 0); };
  gradcheck(f1, {random_tensor({5, 3, 2}, 7, -2.0f, 2.0f)});
}

TEST(NnGradcheck, LogSoftmax) {
  const std::vector<Tensor> in = {random_tensor({4, 7}, 8, -3.0f, 3.0f)};
  auto f = [](const std::vector<Variable>& v) { return log_softmax(v[0]); };
  gradcheck(f, in);
  // The saved output log p ~ -2 has absolute error u·2, so exp of it errs up to 2u relative;
  // it multiplies Σg, and dx = g - p·Σg is a difference. Measured: 0.7u (both).
  lowp_gradcheck(f, in, DType::bf16, 2 * kU16);
  lowp_gradcheck(f, in, DType::f16, 2 * kU11);
  auto f1 = [](const std::vector<Variable>& v) { return log_softmax(v[0], -2); };
  gradcheck(f1, {random_tensor({3, 4, 2}, 9, -2.0f, 2.0f)});
}

TEST(NnGradcheck, CrossEntropy) {
  const std::vector<Tensor> in = {random_tensor({5, 6}, 10, -2.0f, 2.0f),
                                  ids({1, 0, -100, 5, 2}, {5})};
  auto f = [](const std::vector<Variable>& v) { return cross_entropy(v[0], v[1]); };
  // The loss is a mean over 4 rows: gradients ~0.05, so a finer absolute tolerance.
  gradcheck(f, in, {true, false}, 1e-2f, 2e-4f, 2e-2f);
  // Only the logits are rounded (the loss and its seed stay fp32): softmax of rounded logits
  // moves by ~u relative, the result is rounded once more. Measured: 0.5u, 0.4u.
  lowp_gradcheck(f, in, DType::bf16, 1 * kU16, {true, false});
  lowp_gradcheck(f, in, DType::f16, 1 * kU11, {true, false});
}

TEST(NnGradcheck, AttentionCausal) {
  const std::vector<Tensor> in = {random_tensor({1, 2, 5, 3}, 11, -1.5f, 1.5f),
                                  random_tensor({1, 2, 5, 3}, 12, -1.5f, 1.5f),
                                  random_tensor({1, 2, 5, 3}, 13)};
  auto f = [](const std::vector<Variable>& v) {
    return scaled_dot_product_attention(v[0], v[1], v[2], true);
  };
  gradcheck(f, in);
  // dq, dk are sums of p·(dp - Σp·dp)·k with cancelling terms; all of q, k, v, r rounded.
  // Measured: 0.8u (bf16), 1.2u (fp16).
  lowp_gradcheck(f, in, DType::bf16, 3 * kU16);
  lowp_gradcheck(f, in, DType::f16, 3 * kU11);
}

TEST(NnGradcheck, AttentionFullWithScale) {
  const std::vector<Tensor> in = {random_tensor({2, 1, 3, 4}, 14, -1.5f, 1.5f),
                                  random_tensor({2, 1, 6, 4}, 15, -1.5f, 1.5f),
                                  random_tensor({2, 1, 6, 4}, 16)};
  auto f = [](const std::vector<Variable>& v) {
    return scaled_dot_product_attention(v[0], v[1], v[2], false, 0.7f);
  };
  gradcheck(f, in);
  // As above. Measured: 0.8u (bf16), 0.8u (fp16).
  lowp_gradcheck(f, in, DType::bf16, 3 * kU16);
  lowp_gradcheck(f, in, DType::f16, 3 * kU11);
}

}  // namespace
}  // namespace mixtrain
