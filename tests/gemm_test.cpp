// gemm / gemm_ex (oneDNN) against the scalar reference GEMM: every dtype combination ×
// transposes × accumulate × batching, odd shapes, strided views, fused epilogues, errors.
//
// Tolerances. Inputs are generated in their storage dtype, so the reference reads exactly the
// rounded bf16/fp16 values the fast path reads; what is left is the fp32 accumulation and the
// rounding of C. For any summation order, fp32 sums of K products (each product rounded at
// most once) and the alpha, bias and beta steps give |err| <= (K + 4)·2^-24·mag with
// mag = |alpha|·Σ|a||b| + |bias| + |beta|·|c| (Higham's gamma_n bound, first order). A 16-bit
// C then rounds once more: relative 2^-8 for bf16 (8 significant bits: spacing 2^-7 in
// [1, 2), half of it 2^-8) and 2^-11 for fp16 (11 bits).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/reference/gemm_ref.h"
#include "mixtrain/gemm.h"

namespace mixtrain {
namespace {

constexpr double kU32 = 1.0 / (1 << 24);  // fp32 unit roundoff

Tensor random_tensor(const Shape& shape, DType dt, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(gen);
  return Tensor::from_vector(v, shape, dt);
}

Tensor abs_f32(const Tensor& t) {
  std::vector<float> v = t.to_vector();
  for (float& x : v) x = std::fabs(x);
  return Tensor::from_vector(v, t.shape(), DType::f32);
}

double out_rounding(DType dt) {
  if (dt == DType::bf16) return 1.0 / 256;  // 2^-8
  if (dt == DType::f16) return 1.0 / 2048;  // 2^-11
  return kU32;
}

// Runs the reference on the same inputs and its magnitude bound on |inputs|, then checks
// every element of `got` within (K + 4)·u·mag + rounding(C)·|ref| (+ extra for epilogues).
void expect_close(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c_before,
                  const Tensor& got, float alpha, float beta, const Tensor* bias = nullptr,
                  Epilogue epi = Epilogue::none) {
  const int64_t K = ta ? a.size(-2) : a.size(-1);
  Tensor ref = c_before.to(DType::f32).clone();
  reference::gemm(a, ta, b, tb, ref, alpha, beta, bias, epi);
  Tensor mag = abs_f32(c_before);
  const Tensor abias = bias ? abs_f32(*bias) : Tensor();
  reference::gemm(abs_f32(a), ta, abs_f32(b), tb, mag, std::fabs(alpha), std::fabs(beta),
                  bias ? &abias : nullptr, Epilogue::none);
  const std::vector<float> r = ref.to_vector(), m = mag.to_vector(), g = got.to_vector();
  ASSERT_EQ(r.size(), g.size());
  // GELU: the pre-activation error passes through |gelu'| <= 1.13, and oneDNN evaluates
  // tanh with an fp32 polynomial (a few ulps): 1.2× the linear bound plus 2^-20 of the
  // magnitude. ReLU is exact (1-Lipschitz, no arithmetic).
  const double epi_gain = epi == Epilogue::gelu ? 1.2 : 1.0;
  const double epi_abs = epi == Epilogue::gelu ? 1.0 / (1 << 20) : 0.0;
  int bad = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    const double tol = epi_gain * (K + 4) * kU32 * m[i] + epi_abs * (m[i] + std::fabs(r[i])) +
                       out_rounding(got.dtype()) * std::fabs(r[i]);
    if (!(std::fabs(static_cast<double>(g[i]) - r[i]) <= tol) && ++bad <= 5)
      ADD_FAILURE() << "element " << i << ": got " << g[i] << ", reference " << r[i] << ", tol "
                    << tol << " (K " << K << ", C " << got.str() << ")";
  }
  EXPECT_EQ(bad, 0);
}

// An operand whose op() is [bt?, rows, cols]: stored [.., cols, rows] when transposed.
Shape stored_shape(int64_t bt, int64_t rows, int64_t cols, bool trans) {
  Shape s = trans ? Shape{cols, rows} : Shape{rows, cols};
  if (bt > 0) s.insert(s.begin(), bt);
  return s;
}

struct Combo {
  DType in, out;
};
std::string combo_name(const Combo& c) {
  return std::string(dtype_name(c.in)) + "_to_" + dtype_name(c.out);
}

class GemmCombo : public ::testing::TestWithParam<Combo> {};

// Batching: 0 plain 2-d; 1 A, B, C 3-d; 2 shared 2-d B; 3 shared 2-d A.
TEST_P(GemmCombo, AllTransposesAccumulateBatching) {
  const Combo combo = GetParam();
  const int64_t shapes[][3] = {{7, 33, 5}, {1, 7, 33}, {33, 1, 17}, {16, 24, 40}};
  uint32_t seed = 1;
  for (const auto& mnk : shapes) {
    const int64_t M = mnk[0], N = mnk[1], K = mnk[2];
    for (int batching = 0; batching < 4; ++batching) {
      const int64_t bt = batching == 0 ? 0 : 3;
      const int64_t bt_a = (batching == 1 || batching == 2) ? bt : 0;
      const int64_t bt_b = (batching == 1 || batching == 3) ? bt : 0;
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        for (int acc = 0; acc < 2; ++acc) {
          const float alpha = acc ? 0.75f : 1.0f, beta = acc ? -1.5f : 0.0f;
          SCOPED_TRACE(::testing::Message()
                       << "M " << M << " N " << N << " K " << K << " batching " << batching
                       << " ta " << ta << " tb " << tb << " alpha " << alpha << " beta " << beta);
          const Tensor a = random_tensor(stored_shape(bt_a, M, K, ta), combo.in, seed++);
          const Tensor b = random_tensor(stored_shape(bt_b, K, N, tb), combo.in, seed++);
          const Tensor c0 = random_tensor(stored_shape(bt, M, N, false), combo.out, seed++);
          Tensor c = c0.clone();
          gemm(a, ta, b, tb, c, alpha, beta);
          expect_close(a, ta, b, tb, c0, c, alpha, beta);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, GemmCombo,
    ::testing::Values(Combo{DType::f32, DType::f32}, Combo{DType::bf16, DType::f32},
                      Combo{DType::bf16, DType::bf16}, Combo{DType::f16, DType::f32},
                      Combo{DType::f16, DType::f16}, Combo{DType::f32, DType::bf16}),
    [](const auto& info) { return combo_name(info.param); });

TEST(Gemm, LargerBlockedShapesBf16) {
  // Big enough for oneDNN's blocked kernels (several K blocks, partial tiles).
  const Tensor a = random_tensor({130, 257}, DType::bf16, 11);
  const Tensor b = random_tensor({257, 97}, DType::bf16, 12);
  const Tensor c0 = Tensor::zeros({130, 97}, DType::bf16);
  Tensor c = c0.clone();
  gemm(a, false, b, false, c);
  expect_close(a, false, b, false, c0, c, 1.0f, 0.0f);
}

TEST(Gemm, WidenedFallbackGoesByPieces) {
  // Where oneDNN has no matmul for a 16-bit dtype (fp16 without AVX512-FP16, bf16 on AVX2)
  // the product runs widened to fp32 by pieces of about 2^21 elements: a 16-bit C by blocks of
  // its rows (4200 rows of 520: 4032 + 168), an fp32 C by blocks of the reduction (K 5000
  // against 600 columns: 3456 + 1544, summed into C). Transposed and plain operands (they slice
  // differently), accumulation (only the first reduction block takes beta), and the row blocks
  // with bias and GELU. fp16 takes the fallback on every CPU these builds target; bf16 on AVX2
  // (elsewhere it checks the native matmul). Small K and M keep the scalar reference quick
  // (this runs under ASan too).
  struct Case {
    DType dt;
    bool ta, tb;
    float beta;
  };
  for (const Case& k : {Case{DType::f16, false, false, 0.0f}, Case{DType::f16, true, true, 1.0f},
                        Case{DType::f16, false, true, 1.0f}, Case{DType::f16, true, false, 0.0f},
                        Case{DType::bf16, true, false, 1.0f}}) {
    SCOPED_TRACE(::testing::Message()
                 << dtype_name(k.dt) << " ta " << k.ta << " tb " << k.tb << " beta " << k.beta);
    const Tensor a = random_tensor(stored_shape(0, 4200, 4, k.ta), k.dt, 91);
    const Tensor b = random_tensor(stored_shape(0, 4, 520, k.tb), k.dt, 92);
    const Tensor c0 = random_tensor({4200, 520}, k.dt, 93);
    Tensor c = c0.clone();
    gemm(a, k.ta, b, k.tb, c, 0.5f, k.beta);
    expect_close(a, k.ta, b, k.tb, c0, c, 0.5f, k.beta);

    const Tensor ak = random_tensor(stored_shape(0, 2, 5000, k.ta), k.dt, 94);
    const Tensor bk = random_tensor(stored_shape(0, 5000, 600, k.tb), k.dt, 95);
    const Tensor ck0 = random_tensor({2, 600}, DType::f32, 96);
    Tensor ck = ck0.clone();
    gemm(ak, k.ta, bk, k.tb, ck, 0.5f, k.beta);
    expect_close(ak, k.ta, bk, k.tb, ck0, ck, 0.5f, k.beta);
  }
  const Tensor a = random_tensor({4200, 4}, DType::f16, 97);
  const Tensor w = random_tensor({520, 4}, DType::f16, 98);
  const Tensor bias = random_tensor({520}, DType::f32, 99);
  const Tensor c0 = Tensor::zeros({4200, 520}, DType::f16);
  Tensor c = c0.clone();
  gemm_ex(a, false, w, true, c, 1.0f, 0.0f, &bias, Epilogue::gelu);
  expect_close(a, false, w, true, c0, c, 1.0f, 0.0f, &bias, Epilogue::gelu);
}

TEST(Gemm, PlainBWithPowerOfTwoRowsIsCopiedPadded) {
  // Without AVX-512, a short product (M 128 against N 256) with a plain B whose rows lie a
  // multiple of 256 floats apart runs on a padded copy of B (gemm_onednn.cpp: oneDNN's no-copy
  // kernel is half speed there); with AVX-512 it runs as given. Either way the result is the
  // reference's. B contiguous (rows 256 apart) and a column slice of a wider tensor (rows 512
  // apart: the copy must follow the source's row stride), fp32 and bf16 (on AVX2 bf16 is
  // widened straight into the padded rows), with alpha, beta and a fused bias + GELU.
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor a = random_tensor({128, 96}, dt, 61);
    const Tensor bbase = random_tensor({96, 512}, dt, 62);
    for (const Tensor& b : {random_tensor({96, 256}, dt, 63), bbase.slice(1, 0, 256)}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " B strides " << b.strides()[0]);
      const std::vector<float> b_before = b.to_vector();
      const Tensor c0 = random_tensor({128, 256}, dt, 64);
      Tensor c = c0.clone();
      gemm(a, false, b, false, c, 0.5f, 1.0f);
      expect_close(a, false, b, false, c0, c, 0.5f, 1.0f);
      EXPECT_EQ(b.to_vector(), b_before);

      const Tensor bias = random_tensor({256}, DType::f32, 65);
      Tensor ce = Tensor::zeros({128, 256}, dt);
      gemm_ex(a, false, b, false, ce, 1.0f, 0.0f, &bias, Epilogue::gelu);
      expect_close(a, false, b, false, Tensor::zeros({128, 256}, dt), ce, 1.0f, 0.0f, &bias,
                   Epilogue::gelu);
    }
  }
}

TEST(Gemm, StridedViewsWithoutCopies) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dt));
    // A: columns 2..9 of a wider tensor (row stride 13); B: a transpose() view (column-major).
    const Tensor abase = random_tensor({9, 13}, dt, 21);
    const Tensor a = abase.slice(1, 2, 10);  // [9, 8], strides [13, 1]
    const Tensor bbase = random_tensor({6, 8}, dt, 22);
    const Tensor b = bbase.transpose(0, 1);  // [8, 6], strides [1, 8]
    // C: columns 1..6 of a wider fp32 buffer; the columns around it must stay untouched.
    Tensor cbase = random_tensor({9, 10}, DType::f32, 23);
    const std::vector<float> before = cbase.to_vector();
    Tensor c = cbase.slice(1, 1, 7);
    const Tensor c0 = c.clone();
    gemm(a, false, b, false, c, 1.0f, 1.0f);
    expect_close(a, false, b, false, c0, c, 1.0f, 1.0f);
    const std::vector<float> after = cbase.to_vector();
    for (int64_t i = 0; i < 9; ++i)
      for (int64_t j : {0, 7, 8, 9}) EXPECT_EQ(after[i * 10 + j], before[i * 10 + j]);
  }
}

TEST(Gemm, ColumnMajorAndFullyStridedOperands) {
  // C as a transpose() view (column-major: computed as Cᵀ = Bᵀ·Aᵀ), and a batched A whose
  // last two dims have no unit stride (copied first).
  const Tensor a = random_tensor({5, 11}, DType::bf16, 31);
  const Tensor b = random_tensor({11, 7}, DType::bf16, 32);
  Tensor cbase = random_tensor({7, 5}, DType::f32, 33);
  Tensor c = cbase.transpose(0, 1);  // [5, 7], strides [1, 5]
  const Tensor c0 = c.clone();
  gemm(a, false, b, false, c, 2.0f, 0.5f);
  expect_close(a, false, b, false, c0, c, 2.0f, 0.5f);

  const Tensor base = random_tensor({3, 4, 6}, DType::f32, 34);
  const Tensor a3 = base.transpose(0, 2);  // [6, 4, 3], strides [1, 6, 24]
  const Tensor b3 = random_tensor({3, 5}, DType::f32, 35);
  Tensor c3 = Tensor::zeros({6, 4, 5}, DType::f32);
  gemm(a3, false, b3, false, c3);
  expect_close(a3, false, b3, false, Tensor::zeros({6, 4, 5}, DType::f32), c3, 1.0f, 0.0f);
}

TEST(Gemm, FusedBiasAndEpilogues) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    for (Epilogue epi : {Epilogue::none, Epilogue::relu, Epilogue::gelu}) {
      for (float alpha : {1.0f, 0.5f}) {
        for (float beta : {0.0f, 1.0f}) {
          SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " " << epilogue_name(epi)
                                            << " alpha " << alpha << " beta " << beta);
          const Tensor a = random_tensor({3, 9, 17}, dt, 41);
          const Tensor w = random_tensor({12, 17}, dt, 42);  // torch layout [out, in]
          const Tensor bias = random_tensor({12}, dt == DType::f16 ? DType::f32 : dt, 43);
          const Tensor c0 = random_tensor({3, 9, 12}, dt, 44);
          Tensor c = c0.clone();
          gemm_ex(a, false, w, true, c, alpha, beta, &bias, epi);
          expect_close(a, false, w, true, c0, c, alpha, beta, &bias, epi);
        }
      }
    }
  }
}

TEST(Gemm, StridedBias) {
  const Tensor a = random_tensor({4, 6}, DType::f32, 51);
  const Tensor b = random_tensor({6, 5}, DType::f32, 52);
  const Tensor bias = random_tensor({5, 2}, DType::f32, 53).slice(1, 1, 2).reshape({5});
  const Tensor bias_strided = random_tensor({2, 5}, DType::f32, 54).transpose(0, 1).slice(1, 0, 1);
  Tensor c = Tensor::zeros({4, 5}, DType::f32);
  gemm_ex(a, false, b, false, c, 1.0f, 0.0f, &bias, Epilogue::relu);
  expect_close(a, false, b, false, Tensor::zeros({4, 5}, DType::f32), c, 1.0f, 0.0f, &bias,
               Epilogue::relu);
  EXPECT_EQ(bias_strided.dim(), 2);  // [5, 1]: not a valid bias
  EXPECT_THROW(gemm_ex(a, false, b, false, c, 1.0f, 0.0f, &bias_strided, Epilogue::none),
               ShapeError);
}

TEST(Gemm, BetaZeroDoesNotReadC) {
  const Tensor a = random_tensor({4, 3}, DType::bf16, 61);
  const Tensor b = random_tensor({3, 5}, DType::bf16, 62);
  Tensor c = Tensor::full({4, 5}, std::nanf(""), DType::f32);
  gemm(a, false, b, false, c);
  for (float v : c.to_vector()) EXPECT_TRUE(std::isfinite(v));
  expect_close(a, false, b, false, Tensor::zeros({4, 5}, DType::f32), c, 1.0f, 0.0f);
}

TEST(Gemm, EmptyDims) {
  // K = 0: the product is empty, so C = bias + beta·C exactly.
  const Tensor a = Tensor::empty({3, 0}, DType::f32);
  const Tensor b = Tensor::empty({0, 2}, DType::f32);
  Tensor c = Tensor::full({3, 2}, 2.0f, DType::f32);
  const Tensor bias = Tensor::from_vector({1.0f, -10.0f}, {2});
  gemm_ex(a, false, b, false, c, 1.0f, 0.5f, &bias, Epilogue::relu);
  EXPECT_EQ(c.to_vector(), (std::vector<float>{2, 0, 2, 0, 2, 0}));
  // M = 0: nothing to do, nothing thrown.
  Tensor c0 = Tensor::empty({0, 2}, DType::f32);
  EXPECT_NO_THROW(
      gemm(Tensor::empty({0, 4}, DType::f32), false, Tensor::empty({4, 2}, DType::f32), false, c0));
}

TEST(Gemm, MatmulTensorShapesAndDtype) {
  const Tensor a = random_tensor({2, 5, 3}, DType::bf16, 71);
  const Tensor b = random_tensor({4, 3}, DType::bf16, 72);
  const Tensor c = matmul_tensor(a, false, b, true, DType::f32);
  EXPECT_EQ(c.shape(), (Shape{2, 5, 4}));
  EXPECT_EQ(c.dtype(), DType::f32);
  expect_close(a, false, b, true, Tensor::zeros({2, 5, 4}, DType::f32), c, 1.0f, 0.0f);
}

TEST(Gemm, CacheReusesPrimitives) {
  const Tensor a = random_tensor({19, 23}, DType::f32, 81);
  const Tensor b = random_tensor({23, 29}, DType::f32, 82);
  Tensor c = Tensor::zeros({19, 29}, DType::f32);
  gemm(a, false, b, false, c);
  const int64_t n = gemm_cache_size();
  for (int i = 0; i < 5; ++i) gemm(a, false, b, false, c);
  EXPECT_EQ(gemm_cache_size(), n);  // same shapes, strides, dtypes: no new primitive
  gemm(a, false, b, false, c, 1.0f, 1.0f);
  EXPECT_EQ(gemm_cache_size(), n + 1);  // beta is part of the key
  // alpha != 1 is one primitive whatever its value (a run-time output scale): fp8 GEMMs pass
  // new inverse scales on nearly every call.
  gemm(a, false, b, false, c, 0.5f, 0.0f);
  EXPECT_EQ(gemm_cache_size(), n + 2);
  for (float alpha : {0.25f, 3.0f, 1e-3f, -7.5f, 1.0f / 448.0f}) {
    const Tensor zero = Tensor::zeros({19, 29}, DType::f32);
    Tensor out = zero.clone();
    gemm(a, false, b, false, out, alpha, 0.0f);
    expect_close(a, false, b, false, zero, out, alpha, 0.0f);
  }
  EXPECT_EQ(gemm_cache_size(), n + 2);
}

TEST(Gemm, ConcurrentCallsFromThreads) {
  const Tensor a = random_tensor({31, 40}, DType::bf16, 91);
  const Tensor b = random_tensor({40, 27}, DType::bf16, 92);
  Tensor expect = Tensor::zeros({31, 27}, DType::f32);
  gemm(a, false, b, false, expect);
  std::vector<Tensor> outs(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    outs[t] = Tensor::zeros({31, 27}, DType::f32);
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) gemm(a, false, b, false, outs[t]);
    });
  }
  for (auto& th : threads) th.join();
  // Same primitive, same inputs: bit-identical results from every thread.
  for (const Tensor& o : outs) EXPECT_EQ(o.to_vector(), expect.to_vector());
}

TEST(Gemm, ErrorsNameOpShapesAndDtypes) {
  const Tensor a = Tensor::zeros({2, 3}, DType::bf16);
  const Tensor b = Tensor::zeros({4, 5}, DType::bf16);
  Tensor c = Tensor::zeros({2, 5}, DType::f32);
  try {
    gemm(a, false, b, false, c);
    FAIL() << "inner-dim mismatch accepted";
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("gemm"), std::string::npos) << m;
    EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
    EXPECT_NE(m.find("[4, 5]"), std::string::npos) << m;
    EXPECT_NE(m.find("bf16"), std::string::npos) << m;
    EXPECT_NE(m.find("3 != 4"), std::string::npos) << m;
  }
  try {
    const Tensor bf = Tensor::zeros({3, 5}, DType::f32);
    gemm(a, false, bf, false, c);
    FAIL() << "mixed input dtypes accepted";
  } catch (const DTypeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("bf16"), std::string::npos) << m;
    EXPECT_NE(m.find("f32"), std::string::npos) << m;
  }
  const Tensor ai = Tensor::zeros({2, 3}, DType::i32), bi = Tensor::zeros({3, 5}, DType::i32);
  EXPECT_THROW(gemm(ai, false, bi, false, c), DTypeError);
  Tensor c_wrong = Tensor::zeros({5, 2}, DType::f32);
  EXPECT_THROW(gemm(a, false, Tensor::zeros({3, 5}, DType::bf16), false, c_wrong), ShapeError);
  Tensor c8 = Tensor::zeros({2, 5}, DType::e4m3);
  EXPECT_THROW(gemm(a, false, Tensor::zeros({3, 5}, DType::bf16), false, c8), DTypeError);
  Tensor c3 = Tensor::zeros({2, 2, 5}, DType::f32);
  EXPECT_THROW(gemm(Tensor::zeros({2, 2, 3}, DType::f32), false,
                    Tensor::zeros({3, 3, 5}, DType::f32), false, c3),
               ShapeError);  // batch 2 != 3
  EXPECT_THROW(
      gemm(Tensor::zeros({2}, DType::f32), false, Tensor::zeros({2, 5}, DType::f32), false, c),
      ShapeError);
  const Tensor bad_bias = Tensor::zeros({4}, DType::f32);
  Tensor cf = Tensor::zeros({2, 5}, DType::f32);
  EXPECT_THROW(gemm_ex(Tensor::zeros({2, 3}, DType::f32), false, Tensor::zeros({3, 5}, DType::f32),
                       false, cf, 1.0f, 0.0f, &bad_bias, Epilogue::none),
               ShapeError);
}

TEST(Gemm, BackendInfo) {
  const GemmBackendInfo info = gemm_backend_info();
  EXPECT_EQ(info.library, "oneDNN");
  EXPECT_EQ(info.version.rfind("2.", 0), 0u) << info.version;
  EXPECT_NE(info.isa, "unknown");
  EXPECT_GE(info.threads, 1);
}

}  // namespace
}  // namespace mixtrain
