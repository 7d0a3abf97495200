// Neural-network ops (ops_nn.h): fused fast paths against the scalar fp32 reference
// (src/cpu/reference/nn_ref.h) in fp32, bf16 and fp16, plus the numerical edge cases
// (±80 logits, ignore_index, causal masking) and the error messages.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cpu/reference/nn_ref.h"
#include "gradcheck.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"
#include "mixtrain/ops_nn.h"

namespace mixtrain {
namespace {

using testing::random_tensor;

// Unit roundoff of the output dtype: RNE to p significant bits errs by at most 2^-p relative
// (bf16 p = 8, fp16 p = 11). fp32 outputs: the fast path's fp32 internals against the double
// reference differ by a few fp32 ulps times the length of the sums (~1e-6 relative); 1e-5.
float unit_roundoff(DType dt) {
  switch (dt) {
    case DType::bf16:
      return 1.0f / 256;
    case DType::f16:
      return 1.0f / 2048;
    default:
      return 0.0f;
  }
}
float rtol_for(DType dt) { return unit_roundoff(dt) + 1e-5f; }

// |got - want| <= rtol·|want| + atol elementwise; reports the worst element.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, float rtol,
                  float atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t worst = 0, bad = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double lim = rtol * std::fabs(want[i]) + atol;
    if (!(err <= lim)) ++bad;
    if (!(err - lim <= worst_excess)) {
      worst_excess = err - lim;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements off; worst at "
                     << worst << ": got " << got[worst] << " want " << want[worst];
}

// Values of t after rounding to dt: what the fast path really reads.
std::vector<float> rounded(const Tensor& t, DType dt) { return t.to(dt).to_vector(); }

Tensor ids_tensor(const std::vector<int64_t>& ids, const Shape& shape, DType dt = DType::i64) {
  std::vector<float> f(ids.begin(), ids.end());
  return Tensor::from_vector(f, shape, dt);
}

class NnDTypeTest : public ::testing::TestWithParam<DType> {};

// ---- embedding ----

TEST_P(NnDTypeTest, EmbeddingMatchesReference) {
  const DType dt = GetParam();
  const int64_t V = 37, C = 70;  // C not a multiple of the 64-column backward blocks
  Rng rng(5);
  std::vector<int64_t> ids(8 * 40);
  for (auto& i : ids) i = static_cast<int64_t>(rng.below(V));
  ids[3] = ids[9] = ids[17] = 4;  // repeats: the backward must add, not overwrite
  const Tensor table = random_tensor({V, C}, 1);
  const Tensor dy = random_tensor({8, 40, C}, 2);
  for (DType idt : {DType::i32, DType::i64}) {
    Variable tab(table.to(dt), true);
    Variable out = embedding(Variable(ids_tensor(ids, {8, 40}, idt)), tab);
    ASSERT_EQ(out.shape(), (Shape{8, 40, C}));
    ASSERT_EQ(out.dtype(), dt);
    std::vector<float> want(ids.size() * C);
    const auto tv = rounded(table, dt);
    ref::embedding(ids, tv.data(), V, C, want.data());
    // A gather copies values: exact in every dtype.
    expect_close(out.data().to_vector(), want, 0, 0, "embedding forward");
    out.backward(dy.to(dt));
    ASSERT_EQ(tab.grad().dtype(), DType::f32);
    std::vector<float> gwant(V * C);
    const auto dyv = rounded(dy, dt);
    ref::embedding_backward(ids, dyv.data(), V, C, gwant.data());
    // fp32 sums of a few terms in another order than the double reference.
    expect_close(tab.grad().to_vector(), gwant, 1e-6f, 1e-6f, "embedding backward");
  }
}

// ---- layer norm ----

TEST_P(NnDTypeTest, LayerNormMatchesReference) {
  const DType dt = GetParam();
  const int64_t N = 64, C = 300;  // 19200 elements: the threaded path
  // An offset mean (3) makes a one-pass variance lose digits; the two-pass one must not.
  const Tensor x = random_tensor({4, 16, C}, 3, 2.0f, 4.0f);
  const Tensor w = random_tensor({C}, 4, 0.5f, 1.5f);
  const Tensor b = random_tensor({C}, 5);
  const Tensor dy = random_tensor({4, 16, C}, 6);
  Variable xv(x.to(dt), true), wv(w.to(dt), true), bv(b.to(dt), true);
  Variable y = layer_norm(xv, wv, bv, 1e-5f);
  ASSERT_EQ(y.dtype(), dt);
  const auto xr = rounded(x, dt), wr = rounded(w, dt), br = rounded(b, dt);
  std::vector<float> want(N * C), mean(N), rstd(N);
  ref::layer_norm(xr.data(), wr.data(), br.data(), N, C, 1e-5f, want.data(), mean.data(),
                  rstd.data());
  // Outputs near zero (x̂·w ≈ -b) carry fp32 cancellation error of order 1e-6·|x̂·w|: atol.
  expect_close(y.data().to_vector(), want, rtol_for(dt), 1e-5f, "layer_norm forward");

  y.backward(dy.to(dt));
  const auto dyr = rounded(dy, dt);
  std::vector<float> dx(N * C), dw(C), db(C);
  ref::layer_norm_backward(xr.data(), wr.data(), dyr.data(), N, C, 1e-5f, dx.data(), dw.data(),
                           db.data());
  ASSERT_EQ(xv.grad().dtype(), DType::f32);
  // dx is rounded once into x's dtype, then widened to the fp32 leaf grad. Its three-term
  // difference rstd·(g·w - mean - x̂·mean) cancels: absolute error ~1e-6·rstd·|g·w| (rstd ≈ 2).
  expect_close(xv.grad().to_vector(), dx, rtol_for(dt), 2e-5f, "layer_norm dx");
  // dw, db: fp32 sums over 64 rows kept in fp32 (leaf): fp32 summation error only.
  expect_close(wv.grad().to_vector(), dw, 1e-5f, 1e-5f, "layer_norm dweight");
  expect_close(bv.grad().to_vector(), db, 1e-5f, 1e-5f, "layer_norm dbias");
}

// ---- softmax / log-softmax ----

TEST_P(NnDTypeTest, SoftmaxAndLogSoftmaxMatchReference) {
  const DType dt = GetParam();
  const int64_t N = 50, C = 513;
  const Tensor x = random_tensor({N, C}, 7, -6.0f, 6.0f);
  const Tensor dy = random_tensor({N, C}, 8);
  const auto xr = rounded(x, dt), dyr = rounded(dy, dt);
  for (bool log : {false, true}) {
    const std::string name = log ? "log_softmax" : "softmax";
    Variable xv(x.to(dt), true);
    Variable y = log ? log_softmax(xv) : softmax(xv);
    ASSERT_EQ(y.dtype(), dt) << name;
    std::vector<float> want(N * C);
    (log ? ref::log_softmax : ref::softmax)(xr.data(), N, C, want.data());
    // Probabilities down to e^-12/513 ~ 1e-8: fp16 keeps them as subnormals with absolute
    // error up to 2^-25 ~ 3e-8, hence the atol.
    expect_close(y.data().to_vector(), want, rtol_for(dt), 4e-8f, name + " forward");
    y.backward(dy.to(dt));
    // The backward is a function of the saved (rounded) output y: the reference gets the same y.
    const auto yv = y.data().to_vector();
    std::vector<float> dx(N * C);
    (log ? ref::log_softmax_backward : ref::softmax_backward)(yv.data(), dyr.data(), N, C,
                                                              dx.data());
    // dx = y·(g - s) or g - p·s: differences of O(1) terms, rounded once in dt; fp32 sums of
    // 513 terms add ~1e-6 absolute.
    expect_close(xv.grad().to_vector(), dx, rtol_for(dt), 1e-5f, name + " backward");
  }
}

TEST_P(NnDTypeTest, SoftmaxAlongInnerAxis) {
  const DType dt = GetParam();
  const Tensor x = random_tensor({3, 5, 7}, 9, -3.0f, 3.0f);
  const auto xr = rounded(x, dt);
  Variable y = softmax(Variable(x.to(dt)), 1);
  // Reference on the axis-1 lines gathered into rows.
  std::vector<float> rows(3 * 7 * 5), want(3 * 7 * 5);
  for (int o = 0; o < 3; ++o)
    for (int i = 0; i < 7; ++i)
      for (int j = 0; j < 5; ++j) rows[(o * 7 + i) * 5 + j] = xr[(o * 5 + j) * 7 + i];
  ref::softmax(rows.data(), 21, 5, want.data());
  std::vector<float> got(3 * 7 * 5);
  const auto yv = y.data().to_vector();
  for (int o = 0; o < 3; ++o)
    for (int i = 0; i < 7; ++i)
      for (int j = 0; j < 5; ++j) got[(o * 7 + i) * 5 + j] = yv[(o * 5 + j) * 7 + i];
  expect_close(got, want, rtol_for(dt), 1e-7f, "softmax axis 1");
}

// ---- cross-entropy ----

TEST_P(NnDTypeTest, CrossEntropyMatchesReference) {
  const DType dt = GetParam();
  const int64_t N = 64, V = 300;
  const Tensor x = random_tensor({N, V}, 10, -5.0f, 5.0f);
  Rng rng(11);
  std::vector<int64_t> t(N);
  for (auto& v : t) v = static_cast<int64_t>(rng.below(V));
  t[5] = t[20] = -100;
  Variable xv(x.to(dt), true);
  Variable loss = cross_entropy(xv, Variable(ids_tensor(t, {N})));
  ASSERT_EQ(loss.dtype(), DType::f32);
  ASSERT_EQ(loss.shape(), Shape{});
  const auto xr = rounded(x, dt);
  std::vector<float> dx(N * V);
  const float want = ref::cross_entropy(xr.data(), t, N, V, -100, 2.0f, dx.data());
  // fp32 loss from the same rounded logits: fp32 internals only.
  EXPECT_NEAR(loss.data().item(), want, 1e-5f * std::fabs(want));
  loss.backward(2.0f);
  ASSERT_EQ(xv.grad().dtype(), DType::f32);
  // The logits' gradient is written once in dt; fp32 exp/logsumexp add ~1e-6 relative.
  // Gradients of unlikely classes are ~1e-7: fp16 holds them as subnormals spaced 2^-24, so
  // the absolute rounding error there is up to 2^-25 (the underflow loss scaling exists for).
  const float atol = dt == DType::f16 ? std::ldexp(1.0f, -25) : 1e-8f;
  expect_close(xv.grad().to_vector(), dx, rtol_for(dt), atol, "cross_entropy dlogits");
  for (int64_t v = 0; v < V; ++v) {  // ignored rows: exactly zero
    EXPECT_EQ(xv.grad().to_vector()[5 * V + v], 0.0f);
    EXPECT_EQ(xv.grad().to_vector()[20 * V + v], 0.0f);
  }
}

// ---- attention ----

struct AttnCase {
  int64_t B, H, Tq, Tk, D;
  bool causal;
};

TEST_P(NnDTypeTest, AttentionMatchesReference) {
  const DType dt = GetParam();
  // 150 causal rows: two full 64-row blocks and a ragged one (query_blocks); 40 rows: one.
  // T 600: only two heads' scores fit the score buffer (2^20 floats), so each batch row runs in
  // head chunks of 2 and 1.
  for (const AttnCase& c :
       {AttnCase{2, 3, 40, 40, 16, true}, AttnCase{1, 2, 150, 150, 16, true},
        AttnCase{1, 2, 7, 11, 5, false}, AttnCase{1, 1, 1, 1, 3, true},
        AttnCase{2, 3, 600, 600, 8, true},
        // D a multiple of 32: the fused kernels on AVX-512 and AVX2 CPUs (8- or 6-row blocks,
        // 32-key tiles: 70 and 45 leave ragged ones; MIXTRAIN_ISA=scalar runs the GEMM path);
        // 37 queries against 45 keys, not causal, checks every key's dK and dV row on both
        // paths. 64 keys in 6-row blocks end in a block past the last 32-key tile (66 > 64).
        AttnCase{2, 3, 70, 70, 64, true}, AttnCase{1, 2, 37, 45, 32, false},
        AttnCase{1, 2, 64, 64, 32, true}, AttnCase{1, 1, 64, 64, 32, false}}) {
    const std::string name = fmt::format("attention B{} H{} Tq{} Tk{} D{} {}", c.B, c.H, c.Tq, c.Tk,
                                         c.D, c.causal ? "causal" : "full");
    const Tensor q = random_tensor({c.B, c.H, c.Tq, c.D}, 12, -2.0f, 2.0f);
    const Tensor k = random_tensor({c.B, c.H, c.Tk, c.D}, 13, -2.0f, 2.0f);
    const Tensor v = random_tensor({c.B, c.H, c.Tk, c.D}, 14);
    const Tensor dy = random_tensor({c.B, c.H, c.Tq, c.D}, 15);
    Variable qv(q.to(dt), true), kv(k.to(dt), true), vv(v.to(dt), true);
    Variable o = scaled_dot_product_attention(qv, kv, vv, c.causal);
    ASSERT_EQ(o.dtype(), dt) << name;
    const auto qr = rounded(q, dt), kr = rounded(k, dt), vr = rounded(v, dt), dyr = rounded(dy, dt);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
    std::vector<float> want(o.numel());
    ref::attention(qr.data(), kr.data(), vr.data(), c.B, c.H, c.Tq, c.Tk, c.D, c.causal, scale,
                   want.data());
    // o is a convex combination of v rows (|v| < 1): fp32 error ~1e-6 absolute, then one
    // rounding in dt. bf16 also rounds P (and in backward dS) to bf16 before its GEMMs, as
    // FlashAttention does: each term of a sum is off by at most 2^-9 relative, so the sum by at
    // most 2^-9 of the sum of |terms|, which these inputs keep below twice the largest
    // |result| of the tensor: an absolute allowance of 2^-8 · max|result|.
    auto atol = [&](const std::vector<float>& ref, float base) {
      if (dt != DType::bf16) return base;
      float m = 0;
      for (float x : ref) m = std::max(m, std::fabs(x));
      return base + m / 256;
    };
    expect_close(o.data().to_vector(), want, rtol_for(dt), atol(want, 1e-5f), name + " forward");
    o.backward(dy.to(dt));
    std::vector<float> dq(q.numel()), dk(k.numel()), dv(v.numel());
    ref::attention_backward(qr.data(), kr.data(), vr.data(), dyr.data(), c.B, c.H, c.Tq, c.Tk, c.D,
                            c.causal, scale, dq.data(), dk.data(), dv.data());
    // Gradients are sums over up to Tq terms of mixed sign, rounded once in dt: relative error
    // is unit roundoff of the result plus fp32 cancellation error of order 1e-6 times the
    // magnitude of the terms (|dq| terms ~ 1).
    expect_close(qv.grad().to_vector(), dq, rtol_for(dt), atol(dq, 2e-5f), name + " dq");
    expect_close(kv.grad().to_vector(), dk, rtol_for(dt), atol(dk, 2e-5f), name + " dk");
    expect_close(vv.grad().to_vector(), dv, rtol_for(dt), atol(dv, 2e-5f), name + " dv");
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, NnDTypeTest,
                         ::testing::Values(DType::f32, DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// ---- numerical edge cases ----

TEST(NnOps, SoftmaxOfLargeBf16LogitsIsFiniteAndSumsToOne) {
  // ±80: exp(80) = 5.5e34 is finite in fp32 but a sum of a few of them is not far from
  // overflow and exp(-80) underflows in fp32 without the max subtraction; in fp16 exp(80)
  // overflows outright. The max-subtracted fp32 path must stay finite.
  const int64_t C = 16;
  std::vector<float> v(2 * C);
  for (int64_t i = 0; i < C; ++i) {
    v[i] = (i % 2 ? 80.0f : -80.0f) + static_cast<float>(i) * 0.25f;
    v[C + i] = 80.0f;
  }
  for (bool log : {false, true}) {
    Variable x(Tensor::from_vector(v, {2, C}, DType::bf16), true);
    Variable y = log ? log_softmax(x) : softmax(x);
    const auto yv = y.data().to_vector();
    for (int r = 0; r < 2; ++r) {
      double s = 0;
      for (int64_t i = 0; i < C; ++i) {
        ASSERT_TRUE(std::isfinite(yv[r * C + i])) << (log ? "log_softmax" : "softmax");
        s += log ? std::exp(static_cast<double>(yv[r * C + i])) : yv[r * C + i];
      }
      // Each of 16 (or 8 nonzero) probabilities is rounded to bf16: the sum is 1 within
      // the output rounding (2^-8 relative); log-softmax outputs near -2.08 have ulp 2^-6 so
      // exp of them errs up to 2^-7 relative.
      EXPECT_NEAR(s, 1.0, log ? 1.0 / 128 : 1.0 / 256) << "row " << r;
    }
    // Row 1 is uniform: every probability 1/16 exactly.
    if (!log)
      for (int64_t i = 0; i < C; ++i) EXPECT_EQ(yv[C + i], 1.0f / 16);
    y.backward(Tensor::full({2, C}, 1.0f, DType::bf16));
    for (float g : x.grad().to_vector()) EXPECT_TRUE(std::isfinite(g));
  }
}

TEST(NnOps, CrossEntropyIgnoreIndex) {
  const Tensor x = random_tensor({4, 6}, 20, -3.0f, 3.0f);
  // Rows 1 and 3 ignored (custom ignore_index 5 is also a valid class otherwise).
  const std::vector<int64_t> t = {2, 5, 0, 5};
  Variable xv(x, true);
  Variable loss = cross_entropy(xv, Variable(ids_tensor(t, {4}, DType::i32)), 5);
  // The mean over rows 0 and 2 only.
  const auto xs = x.to_vector();
  std::vector<float> two(xs.begin(), xs.begin() + 6);
  two.insert(two.end(), xs.begin() + 12, xs.begin() + 18);
  const float want = ref::cross_entropy(two.data(), {2, 0}, 2, 6, -100);
  EXPECT_NEAR(loss.data().item(), want, 1e-6f);
  loss.backward();
  const auto g = xv.grad().to_vector();
  for (int j = 0; j < 6; ++j) {
    EXPECT_EQ(g[6 + j], 0.0f);
    EXPECT_EQ(g[18 + j], 0.0f);
  }
  // Softmax gradient rows sum to zero.
  double s = 0;
  for (int j = 0; j < 6; ++j) s += g[j];
  EXPECT_NEAR(s, 0.0, 1e-6);

  // Every row ignored: loss 0 and zero gradient, no 0/0 NaN.
  Variable xa(x.to(DType::bf16), true);
  Variable la = cross_entropy(xa, Variable(ids_tensor({-100, -100, -100, -100}, {4})));
  EXPECT_EQ(la.data().item(), 0.0f);
  la.backward();
  for (float v : xa.grad().to_vector()) EXPECT_EQ(v, 0.0f);
}

TEST(NnOps, CrossEntropyAcceptsLeadingDims) {
  // GPT logits [B, T, V] with targets [B, T]: same as the flattened [B·T, V].
  const Tensor x = random_tensor({2, 3, 5}, 21, -2.0f, 2.0f);
  const std::vector<int64_t> t = {0, 4, 2, 1, 3, 3};
  const float a = cross_entropy(Variable(x), Variable(ids_tensor(t, {2, 3}))).data().item();
  const float b =
      cross_entropy(Variable(x.reshape({6, 5})), Variable(ids_tensor(t, {6}))).data().item();
  EXPECT_EQ(a, b);
}

TEST(NnOps, AttentionQkvMatchesSplitHeadsAttention) {
  // attention_qkv reads the heads inside the packed [B, T, 3C] rows and writes [B, T, C] and the
  // [B, T, 3C] gradient in place; it must agree with splitting q, k, v out, transposing to
  // head-major and calling scaled_dot_product_attention. The kernels are the same; only GEMM
  // operand strides (so possibly summation order) differ, so the tolerance is a few units in
  // the last place of each dtype: fp32 1e-5, fp16 2^-9, bf16 2^-6 (8 significant bits; outputs
  // and dP/dS operands are rounded once each on both sides), relative to the largest value.
  struct Case {
    int64_t B, T, H, D;
    bool causal;
  };
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    const float tol = dt == DType::f32 ? 1e-5f : dt == DType::f16 ? 1.0f / 512 : 1.0f / 64;
    // 150 causal rows: GEMM path, three query blocks; 5 rows: the per-head loops.
    for (const Case& c : {Case{2, 150, 2, 16, true}, Case{2, 70, 3, 8, false},
                          Case{1, 5, 2, 3, true}, Case{2, 45, 3, 32, true}}) {
      const int64_t C = c.H * c.D;
      const Tensor data = random_tensor({c.B, c.T, 3 * C}, 40).to(dt);
      const Tensor g = random_tensor({c.B, c.T, C}, 41).to(dt);
      Variable a(data.clone(), true), b(data.clone(), true);
      Variable ya = attention_qkv(a, c.H, c.causal);
      ya.backward(g);
      Variable b5 = reshape(b, {c.B, c.T, 3, c.H, c.D});
      auto head_major = [&](int64_t i) {
        return transpose(reshape(slice(b5, 2, i, i + 1), {c.B, c.T, c.H, c.D}), 1, 2);
      };
      Variable yb = reshape(transpose(scaled_dot_product_attention(head_major(0), head_major(1),
                                                                   head_major(2), c.causal),
                                      1, 2),
                            {c.B, c.T, C});
      yb.backward(g);
      const std::string name =
          fmt::format("{} B{} T{} H{} D{}", dtype_name(dt), c.B, c.T, c.H, c.D);
      ASSERT_EQ(ya.shape(), (Shape{c.B, c.T, C})) << name;
      for (auto [x, y, what] :
           {std::tuple{ya.data(), yb.data(), "output"}, std::tuple{a.grad(), b.grad(), "dqkv"}}) {
        const std::vector<float> u = x.to_vector(), v = y.to_vector();
        ASSERT_EQ(u.size(), v.size());
        float peak = 0, diff = 0;
        for (size_t i = 0; i < u.size(); ++i) {
          peak = std::max(peak, std::fabs(v[i]));
          diff = std::max(diff, std::fabs(u[i] - v[i]));
        }
        EXPECT_GT(peak, 0.0f) << name << " " << what;
        EXPECT_LE(diff, tol * peak) << name << " " << what;
      }
    }
  }
  try {
    attention_qkv(Variable(Tensor::zeros({1, 4, 10}, DType::f32)), 2);
    ADD_FAILURE() << "a width that is not 3·heads·D was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("attention_qkv"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[1, 4, 10]"), std::string::npos) << e.what();
  }
}

TEST(NnOps, CausalAttentionIgnoresTheFuture) {
  const int64_t T = 6, D = 4, tp = 3;
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor q = random_tensor({1, 2, T, D}, 30).to(dt);
    Tensor k = random_tensor({1, 2, T, D}, 31).to(dt);
    Tensor v = random_tensor({1, 2, T, D}, 32).to(dt);
    const auto base = scaled_dot_product_attention(Variable(q), Variable(k), Variable(v), true)
                          .data()
                          .to_vector();
    // Perturb q, k and v at time tp (both heads): outputs before tp must not move at all;
    // outputs from tp on must.
    const std::vector<float> big = random_tensor({1, 2, T, D}, 33, 1.0f, 2.0f).to_vector();
    auto perturb = [&](const Tensor& t) {
      auto vals = t.to_vector();
      for (int h = 0; h < 2; ++h)
        for (int64_t d = 0; d < D; ++d) vals[(h * T + tp) * D + d] += big[(h * T + tp) * D + d];
      return Tensor::from_vector(vals, t.shape(), dt);
    };
    const auto pert = scaled_dot_product_attention(Variable(perturb(q)), Variable(perturb(k)),
                                                   Variable(perturb(v)), true)
                          .data()
                          .to_vector();
    for (int h = 0; h < 2; ++h)
      for (int64_t t = 0; t < T; ++t) {
        double diff = 0;
        for (int64_t d = 0; d < D; ++d)
          diff += std::fabs(pert[(h * T + t) * D + d] - base[(h * T + t) * D + d]);
        if (t < tp)
          EXPECT_EQ(diff, 0.0) << dtype_name(dt) << " head " << h << " t " << t;
        else
          EXPECT_GT(diff, 1e-3) << dtype_name(dt) << " head " << h << " t " << t;
      }
    // The non-causal op does see the future.
    const auto full_b = scaled_dot_product_attention(Variable(q), Variable(k), Variable(v), false)
                            .data()
                            .to_vector();
    const auto full_p = scaled_dot_product_attention(Variable(perturb(q)), Variable(perturb(k)),
                                                     Variable(perturb(v)), false)
                            .data()
                            .to_vector();
    EXPECT_NE(full_b[0], full_p[0]);
  }
}

TEST(NnOps, EmbeddingGradientAccumulatesInFp32) {
  // 3000 lookups of one row with gradient bf16(0.01): a bf16 running sum stalls near 4 (its
  // ulp there, 2^-5, exceeds twice the addend); the fp32 scatter-add reaches 3000·0.01.
  const int64_t N = 3000;
  Variable tab(random_tensor({3, 2}, 40).to(DType::bf16), true);
  Variable out = embedding(Variable(ids_tensor(std::vector<int64_t>(N, 1), {N})), tab);
  out.backward(Tensor::full({N, 2}, 0.01f, DType::bf16));
  const float addend = static_cast<float>(bf16(0.01f));
  const auto g = tab.grad().to_vector();
  EXPECT_NEAR(g[2], N * addend, 1e-4 * N * addend);
  EXPECT_NEAR(g[3], N * addend, 1e-4 * N * addend);
  EXPECT_EQ(g[0], 0.0f);
  EXPECT_EQ(g[5], 0.0f);
}

TEST(NnOps, PolicyDecidesComputeDtypes) {
  const Tensor q = random_tensor({1, 1, 4, 8}, 50);
  Variable qv(q, true), kv(q.clone(), true), vv(q.clone(), true);
  amp::PolicyScope scope(amp::Policy::bf16());
  // Attention is category lower: fp32 inputs computed in bf16; gradients come back in the
  // leaves' fp32.
  Variable o = scaled_dot_product_attention(qv, kv, vv);
  EXPECT_EQ(o.dtype(), DType::bf16);
  o.backward(Tensor::full(o.shape(), 1.0f, DType::bf16));
  EXPECT_EQ(qv.grad().dtype(), DType::f32);
  // stats32 ops keep their input's dtype; cross_entropy returns fp32.
  EXPECT_EQ(softmax(Variable(q)).dtype(), DType::f32);
  EXPECT_EQ(softmax(Variable(q.to(DType::f16))).dtype(), DType::f16);
  EXPECT_EQ(cross_entropy(Variable(q.reshape({4, 8}).to(DType::bf16)),
                          Variable(ids_tensor({0, 1, 2, 3}, {4})))
                .dtype(),
            DType::f32);
  // A per-op override wins: layer norm forced to fp32 for bf16 activations.
  amp::Policy p = amp::Policy::bf16();
  p.op_overrides["layer_norm"] = DType::f32;
  amp::PolicyScope inner(p);
  Variable xb(q.reshape({4, 8}).to(DType::bf16), true);
  Variable y = layer_norm(xb, Variable(Tensor::full({8}, 1.0f, DType::f32)),
                          Variable(Tensor::zeros({8}, DType::f32)));
  EXPECT_EQ(y.dtype(), DType::f32);
}

// ---- errors ----

template <class E, class F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    FAIL() << "no exception; expected one naming " << parts[0];
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
}

TEST(NnOps, ErrorsNameOpShapesAndDtypes) {
  const Variable tab(random_tensor({5, 3}, 60));
  expect_error<ShapeError>(
      [&] {
        embedding(Variable(ids_tensor({0, 7, 1}, {3})), tab);
      },
      {"embedding", "id 7", "V = 5"});
  expect_error<ShapeError>([&] { embedding(Variable(ids_tensor({-1}, {1})), tab); },
                           {"embedding", "id -1"});
  expect_error<DTypeError>([&] { embedding(Variable(random_tensor({2}, 1)), tab); },
                           {"embedding", "ids", "f32"});
  const Variable x(random_tensor({2, 4}, 61));
  expect_error<ShapeError>(
      [&] { layer_norm(x, Variable(random_tensor({3}, 1)), Variable(random_tensor({3}, 2))); },
      {"layer_norm", "[3]", "[2, 4]"});
  expect_error<DTypeError>(
      [&] {
        layer_norm(Variable(ids_tensor({1, 2}, {1, 2})), Variable(random_tensor({2}, 1)),
                   Variable(random_tensor({2}, 2)));
      },
      {"layer_norm", "i64"});
  expect_error<ShapeError>([&] { softmax(x, 2); }, {"softmax", "axis 2"});
  expect_error<ShapeError>([&] { log_softmax(x, -3); }, {"log_softmax", "axis -3"});
  expect_error<ShapeError>(
      [&] {
        cross_entropy(x, Variable(ids_tensor({0, 4}, {2})));
      },
      {"cross_entropy", "target 4", "V = 4"});
  expect_error<ShapeError>(
      [&] {
        cross_entropy(x, Variable(ids_tensor({0, 1, 2}, {3})));
      },
      {"cross_entropy", "[3]", "[2, 4]"});
  expect_error<DTypeError>([&] { cross_entropy(x, Variable(random_tensor({2}, 1))); },
                           {"cross_entropy", "targets", "f32"});
  const Variable q(random_tensor({1, 2, 3, 4}, 62));
  const Variable k5(random_tensor({1, 2, 5, 4}, 63));
  expect_error<ShapeError>([&] { scaled_dot_product_attention(q, k5, k5, true); },
                           {"scaled_dot_product_attention", "Tq == Tk", "[1, 2, 3, 4]"});
  expect_error<ShapeError>([&] { scaled_dot_product_attention(q, q, k5, false); },
                           {"scaled_dot_product_attention", "[1, 2, 5, 4]"});
  expect_error<ShapeError>([&] { scaled_dot_product_attention(x, x, x); },
                           {"scaled_dot_product_attention", "4-d"});
  // Non-causal attention with Tk != Tq is fine.
  EXPECT_EQ(scaled_dot_product_attention(q, k5, k5, false).shape(), (Shape{1, 2, 3, 4}));
}

}  // namespace
}  // namespace mixtrain
