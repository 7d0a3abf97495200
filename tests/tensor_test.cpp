// Tensor views, copies, dtype conversion and the memory tracker.
#include <gtest/gtest.h>

#include "mixtrain/tensor.h"

using namespace mixtrain;

TEST(Tensor, ViewsShareStorageAndTransposeCopies) {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.shape(), (Shape{3, 2}));
  EXPECT_EQ(tt.contiguous().to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  Tensor s = t.slice(1, 1, 3);
  EXPECT_EQ(s.to_vector(), (std::vector<float>{1, 2, 4, 5}));
  t.data<float>()[1] = 10;
  EXPECT_EQ(s.to_vector()[0], 10);
  EXPECT_EQ(t.reshape({3, 2}).to_vector()[1], 10);
  EXPECT_EQ(t.view({-1}).shape(), (Shape{6}));
  EXPECT_THROW(tt.view({6}), ShapeError);
  EXPECT_THROW(t.slice(0, 1, 5), ShapeError);
}

TEST(Tensor, ConvertsDtypesAndAligns) {
  Tensor t = Tensor::from_vector({1.0f, 1.00390625f, -2.5f}, {3}, DType::bf16);
  EXPECT_EQ(t.element_size(), 2u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7 in bf16: rounds to even (1.0).
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1.0f, 1.0f, -2.5f}));
  EXPECT_EQ(t.to(DType::f16).to(DType::f32).to_vector(), t.to_vector());
  EXPECT_THROW(t.data<float>(), DTypeError);
}

TEST(Tensor, MemoryTrackerCountsPerDtype) {
  const auto before = memory_stats();
  {
    Tensor a = Tensor::empty({1024}, DType::bf16);
    const auto during = memory_stats();
    EXPECT_EQ(during.current_bytes - before.current_bytes, 2048);
    EXPECT_EQ(during.current_by_dtype[static_cast<int>(DType::bf16)] -
                  before.current_by_dtype[static_cast<int>(DType::bf16)],
              2048);
    EXPECT_GE(during.peak_bytes, during.current_bytes);
  }
  EXPECT_EQ(memory_stats().current_bytes, before.current_bytes);
}
