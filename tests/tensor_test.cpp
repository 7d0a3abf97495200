// Tensor views, copies, dtype conversion and the memory tracker.
#include <gtest/gtest.h>

#include "core/sanitizers.h"
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

// The strided copy (collapsed dims, memcpy runs, typed loops, threads for large copies)
// against an element-by-element reference over permutations and slices of a 4-d tensor, for
// 1-, 2-, 4- and 8-byte elements, with and without a dtype change.
TEST(Tensor, StridedCopiesMatchElementwiseReference) {
  const Shape shape{3, 5, 4, 6};
  const int perms[][4] = {{0, 1, 2, 3}, {0, 2, 1, 3}, {1, 0, 3, 2}, {3, 2, 1, 0}, {2, 0, 3, 1}};
  std::vector<float> v(3 * 5 * 4 * 6);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 251);
  for (DType dt : {DType::u8, DType::bf16, DType::f32, DType::f64, DType::i64}) {
    const Tensor base = Tensor::from_vector(v, shape).to(dt);
    for (const auto& p : perms) {
      // Permute by successive transposes, then slice the (new) dims 1 and 3.
      Tensor t = base;
      int cur[4] = {0, 1, 2, 3};
      for (int k = 0; k < 4; ++k) {
        int j = k;
        while (cur[j] != p[k]) ++j;
        if (j != k) {
          t = t.transpose(k, j);
          std::swap(cur[k], cur[j]);
        }
      }
      t = t.slice(1, 1, t.size(1)).slice(3, 0, t.size(3) - 1);
      // Reference: element by element through the linear index.
      std::vector<float> want;
      const Shape s = t.shape();
      for (int64_t a = 0; a < s[0]; ++a)
        for (int64_t b = 0; b < s[1]; ++b)
          for (int64_t c = 0; c < s[2]; ++c)
            for (int64_t d = 0; d < s[3]; ++d) {
              int64_t idx[4] = {a, b + 1, c, d};
              int64_t src[4];
              for (int k = 0; k < 4; ++k) src[p[k]] = idx[k];
              want.push_back(v[((src[0] * 5 + src[1]) * 4 + src[2]) * 6 + src[3]]);
            }
      EXPECT_EQ(t.contiguous().to_vector(), want) << dtype_name(dt);
      EXPECT_EQ(t.to(DType::f32).to_vector(), want) << dtype_name(dt);  // gather + convert
      Tensor dst = Tensor::zeros(Shape{s[3], s[2], s[1], s[0]}, dt).transpose(0, 3).transpose(1, 2);
      dst.copy_from(t);  // strided -> strided
      EXPECT_EQ(dst.to_vector(), want) << dtype_name(dt);
    }
  }
  // Large enough to take the threaded path: a [64, 256, 6, 64] head transpose in bf16.
  Tensor big = Tensor::from_vector(std::vector<float>(64 * 256 * 6 * 64, 0.0f), {64, 256, 6, 64});
  float* bp = big.data<float>();
  for (int64_t i = 0; i < big.numel(); ++i) bp[i] = static_cast<float>(i % 256);
  const Tensor bt = big.to(DType::bf16).transpose(1, 2).contiguous();
  const Tensor back = bt.transpose(1, 2).contiguous().to(DType::f32);
  EXPECT_EQ(back.to_vector(), big.to_vector());
}

TEST(Tensor, TransposedCopiesByTilesMatchIndexReference) {
  // Copies whose last two dims are transposed go by 32×32 tiles through a buffer: ragged edge
  // tiles (45 and 70 are not multiples of 32), a batch dim, a sliced source (row stride 72, not
  // the extent), both directions (a contiguous copy of a transposed view; copy_from into a
  // transposed destination), for 2-, 4- and 8-byte elements. Reference: index arithmetic.
  const int64_t B = 3, R = 45, C = 70, W = 72;  // source [B, R, W], sliced to [B, R, C]
  std::vector<float> v(B * R * W);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 251);  // exact in bf16
  for (DType dt : {DType::bf16, DType::f32, DType::f64}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor src = Tensor::from_vector(v, {B, R, W}).to(dt).slice(2, 1, C + 1);
    std::vector<float> want;  // [B, C, R]: want[b][c][r] = src[b][r][c]
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t r = 0; r < R; ++r) want.push_back(v[(b * R + r) * W + c + 1]);
    const Tensor t = src.transpose(1, 2).contiguous();  // reads columns, writes rows
    ASSERT_TRUE(t.is_contiguous());
    EXPECT_EQ(t.to(DType::f32).to_vector(), want);
    Tensor back = Tensor::zeros({B, R, C}, dt);
    back.transpose(1, 2).copy_from(t);  // reads rows, writes columns
    std::vector<float> orig;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c) orig.push_back(v[(b * R + r) * W + c + 1]);
    EXPECT_EQ(back.to(DType::f32).to_vector(), orig);
  }
}

TEST(Tensor, AsStridedViewsInPlaceAndChecksBounds) {
  // A [2, 3] view of every other element of a 12-element buffer, starting at element 1.
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {12});
  Tensor v = t.as_strided({2, 3}, {6, 2}, 1);
  EXPECT_EQ(v.to_vector(), (std::vector<float>{1, 3, 5, 7, 9, 11}));
  v.fill(-1.0f);  // writes through to t
  EXPECT_EQ(t.to_vector()[11], -1.0f);
  EXPECT_EQ(t.to_vector()[10], 10.0f);
  EXPECT_THROW(t.as_strided({2, 3}, {6, 2}, 2), ShapeError);  // would reach element 12
  EXPECT_THROW(t.as_strided({2}, {-1}, 0), ShapeError);       // would reach element -1
  EXPECT_THROW(t.as_strided({2, 3}, {6}, 0), ShapeError);     // rank mismatch
  EXPECT_EQ(t.as_strided({0, 3}, {100, 100}, 0).numel(), 0);  // empty views touch nothing
}

constexpr bool kAsan = kAddressSanitizer;

TEST(Tensor, LargeBuffersAreKeptForReuseAndReleasable) {
  release_cached_memory();
  const int64_t two_mib = int64_t{2} << 20;
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({two_mib / 4}, DType::f32);
    first = a.raw_data();
  }
  if (kAsan) {  // nothing is kept under AddressSanitizer, so it still sees a use after free
    EXPECT_EQ(memory_stats().cached_bytes, 0);
    return;
  }
  EXPECT_EQ(memory_stats().cached_bytes, two_mib);
  Tensor b = Tensor::empty({two_mib / 2}, DType::bf16);  // same byte size: the same block
  EXPECT_EQ(b.raw_data(), first);
  EXPECT_EQ(memory_stats().cached_bytes, 0);
  { Tensor small = Tensor::empty({1 << 14}, DType::bf16); }  // 32 KiB: left to malloc
  EXPECT_EQ(memory_stats().cached_bytes, 0);
  b = Tensor();
  EXPECT_EQ(memory_stats().cached_bytes, two_mib);
  release_cached_memory();
  EXPECT_EQ(memory_stats().cached_bytes, 0);
}

// Devices: the CPU is always there and to(Device::cpu) of a CPU tensor is the tensor itself; a
// device this build lacks answers with the CMake option that builds its backend, before
// anything is allocated, and ops refuse operands on two devices, naming both.
TEST(Tensor, DevicesAnswerWhatTheBuildHas) {
  EXPECT_TRUE(device_available(Device::cpu));
  EXPECT_FALSE(device_description(Device::cpu).empty());
  const Tensor a = Tensor::from_vector({1, 2, 3}, {3});
  EXPECT_EQ(a.to(Device::cpu).storage(), a.storage());
  EXPECT_EQ(parse_device("cuda"), Device::cuda);
  EXPECT_THROW(parse_device("tpu"), ConfigError);
  std::string why;
  if (device_available(Device::cuda, &why)) GTEST_SKIP() << "this machine has a CUDA device";
  EXPECT_NE(why.find("cuda"), std::string::npos) << why;
  for (auto make : {+[] { return Tensor::empty({4}, DType::f32, Device::cuda); },
                    +[] {
                      return Tensor::from_vector({1, 2}, {2}, DType::f32, Device::cuda);
                    }}) {
    try {
      make();
      ADD_FAILURE() << "a cuda tensor in a build or machine without CUDA";
    } catch (const BackendError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("cuda"), std::string::npos) << msg;
      if (msg.find("no CUDA backend") != std::string::npos)
        EXPECT_NE(msg.find("MIXTRAIN_CUDA=ON"), std::string::npos) << msg;
    }
  }
  EXPECT_THROW(a.to(Device::cuda), BackendError);
}
