// The low-level API through the umbrella header alone: a bf16 matmul under a policy, its fp32
// loss and gradients. (The README's library example is built against an installed package by
// scripts/install_check.sh.)
#include <gtest/gtest.h>

#include <mixtrain/mixtrain.h>

using namespace mixtrain;

TEST(UmbrellaHeader, ABf16MatmulUnderAPolicyHasFp32LossAndGradients) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2}, DType::bf16);  // rounded to bf16 (RNE)
  Variable w(Tensor::from_vector({0.5f, -1, 2, 0.25f}, {2, 2}), /*requires_grad=*/true);
  amp::PolicyScope bf16(amp::Policy::bf16());    // matmul runs in bf16, fp32 accumulation
  Variable loss = mean(matmul(Variable(a), w));  // reductions in fp32
  loss.backward();                               // w.grad() accumulates in fp32
  // a·w = [[4.5, -0.5], [9.5, -2]]: mean 2.875, exact in bf16 inputs and fp32 accumulation.
  EXPECT_EQ(loss.data().item(), 2.875f);
  EXPECT_EQ(loss.dtype(), DType::f32);
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().dtype(), DType::f32);
  // d mean / d w[k][j] = sum_i a[i][k] / 4: column sums of a are 4 and 6.
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{1.0f, 1.0f, 1.5f, 1.5f}));
}
