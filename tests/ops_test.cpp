// Tensor ops (ops.h) against the scalar fp32 reference (src/cpu/reference/ops_ref.h) in fp32,
// bf16 and fp16; broadcasting; precision-policy dtypes; error messages; dropout replay; and a
// small MLP trained by SGD.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <cmath>

#include <functional>
#include <string>

#include "cpu/reference/ops_ref.h"
#include "gradcheck.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/ops.h"

namespace mixtrain {
namespace {

using testing::random_tensor;

const DType kDTypes[] = {DType::f32, DType::bf16, DType::f16};

// Relative tolerance from the output rounding: one RNE rounding of an fp32-computed value
// moves it by at most half an ulp, 2^-8 of the value in bf16 (8 significant bits) and 2^-11
// in fp16 (11). fp32 results differ from the double-accumulating reference only by fp32
// arithmetic: a few ulps (2^-24 each) for elementwise ops.
float out_rtol(DType dt) {
  switch (dt) {
    case DType::bf16:
      return 1.0f / 256;
    case DType::f16:
      return 1.0f / 2048;
    default:
      return 4e-7f;
  }
}

// |got - want| <= atol + rtol·|want| for every element (got of any dtype, want fp32).
void expect_close(const Tensor& got, const Tensor& want, float rtol, float atol,
                  const std::string& what) {
  ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
  const auto g = got.to_vector(), w = want.to_vector();
  int bad = 0;
  for (size_t i = 0; i < g.size() && bad < 5; ++i) {
    const float tol = atol + rtol * std::fabs(w[i]);
    if (!(std::fabs(g[i] - w[i]) <= tol)) {
      ADD_FAILURE() << what << ": element " << i << " got " << g[i] << " want " << w[i] << " (tol "
                    << tol << ")";
      ++bad;
    }
  }
}

// Runs `op` on inputs rounded to each dtype and compares with the reference evaluated on the
// same rounded values. The expected output dtype is dt (or fp32 for fp32-category ops).
// `extra_rtol` covers fp32 arithmetic error before the final rounding (e.g. long dot
// products); atol_frac × max|want| covers cancellation.
void check_op(const std::string& name, const std::vector<Tensor>& inputs,
              const std::function<Variable(const std::vector<Variable>&)>& op,
              const std::function<Tensor(const std::vector<Tensor>&)>& reference,
              bool fp32_out = false, float extra_rtol = 0.0f, float atol_frac = 1e-7f) {
  for (DType dt : kDTypes) {
    std::vector<Variable> vs;
    std::vector<Tensor> rounded;
    for (const auto& t : inputs) {
      rounded.push_back(t.to(dt));
      vs.emplace_back(rounded.back());
    }
    const Variable out = op(vs);
    const Tensor want = reference(rounded);
    const DType out_dt = fp32_out ? DType::f32 : dt;
    EXPECT_EQ(out.dtype(), out_dt) << name << " in " << dtype_name(dt);
    float maxw = 0;
    for (float v : want.to_vector()) maxw = std::max(maxw, std::fabs(v));
    // fp16 outputs below 2^-14 are subnormal: absolute spacing 2^-24.
    const float atol = atol_frac * maxw + (out_dt == DType::f16 ? 6e-8f : 0.0f);
    expect_close(out.data(), want, out_rtol(out_dt) + extra_rtol, atol,
                 name + " in " + dtype_name(dt));
  }
}

template <class E, class F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg << " lacks " << p;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// ---- elementwise ----

TEST(OpsElementwise, BinarySameShapeMatchesReference) {
  const Tensor a = random_tensor({7, 130}, 1), b = random_tensor({7, 130}, 2, 0.5f, 2.0f);
  const struct {
    const char* name;
    Variable (*f)(const Variable&, const Variable&);
    ref::Bin r;
  } cases[] = {{"add", add, ref::Bin::add},
               {"sub", sub, ref::Bin::sub},
               {"mul", mul, ref::Bin::mul},
               {"div", div, ref::Bin::div}};
  for (const auto& c : cases)
    check_op(
        c.name, {a, b}, [&](auto& v) { return c.f(v[0], v[1]); },
        [&](auto& t) { return ref::binary(t[0], t[1], c.r); });
}

TEST(OpsElementwise, BroadcastingMatchesReference) {
  // Trailing, leading, middle and both-sided broadcasts, and a 0-d operand.
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{4, 5}, {5}},          {{4, 5}, {4, 1}}, {{1, 5}, {3, 1}},  {{2, 3, 4}, {3, 1}},
      {{2, 1, 4}, {1, 3, 1}}, {{2, 3, 4}, {}},  {{600, 70}, {70}}, {{3, 1, 2000}, {3, 5, 1}}};
  uint64_t seed = 10;
  for (const auto& [sa, sb] : shapes) {
    const Tensor a = random_tensor(sa, seed++), b = random_tensor(sb, seed++, 0.5f, 2.0f);
    const std::string what = shape_str(sa) + " with " + shape_str(sb);
    check_op(
        "mul " + what, {a, b}, [](auto& v) { return mul(v[0], v[1]); },
        [](auto& t) { return ref::binary(t[0], t[1], ref::Bin::mul); });
    // Divisors kept away from zero so fp16 quotients stay finite.
    const Tensor a_pos = random_tensor(sa, seed++, 0.5f, 2.0f);
    check_op(
        "div " + what, {b, a_pos}, [](auto& v) { return div(v[0], v[1]); },
        [](auto& t) { return ref::binary(t[0], t[1], ref::Bin::div); });
  }
}

TEST(OpsElementwise, BroadcastGradientSumsOverBroadcastDims) {
  // d/db sum(a + b) with b [C] broadcast over [N, C] is N for every element.
  Variable a(random_tensor({6, 4}, 3), true), b(random_tensor({4}, 4), true);
  Variable s = sum(add(a, b));
  s.backward();
  for (float g : b.grad().to_vector()) EXPECT_FLOAT_EQ(g, 6.0f);
  for (float g : a.grad().to_vector()) EXPECT_FLOAT_EQ(g, 1.0f);
}

TEST(OpsElementwise, StridedInputsAreHandled) {
  // Transposed and sliced (non-contiguous) views as inputs of a binary op and an activation:
  // the kernel gathers them in place, in every dtype.
  const Tensor a = random_tensor({5, 9}, 5), b = random_tensor({9, 5}, 6);
  check_op(
      "add transposed", {a, b}, [](auto& v) { return add(transpose(v[0], 0, 1), v[1]); },
      [](auto& t) { return ref::binary(ref::transpose(t[0], 0, 1), t[1], ref::Bin::add); });
  check_op(
      "mul sliced", {a, b},
      [](auto& v) { return mul(slice(v[0], 1, 2, 7), transpose(slice(v[1], 0, 4, 9), 0, 1)); },
      [](auto& t) {
        return ref::binary(ref::slice(t[0], 1, 2, 7),
                           ref::transpose(ref::slice(t[1], 0, 4, 9), 0, 1), ref::Bin::mul);
      });
  check_op(
      "gelu transposed", {a}, [](auto& v) { return gelu(transpose(v[0], 0, 1)); },
      [](auto& t) { return ref::gelu(ref::transpose(t[0], 0, 1)); }, false, 2e-6f, 1e-7f);
  Variable at = transpose(Variable(a), 0, 1);
  EXPECT_FALSE(at.data().is_contiguous());
}

TEST(OpsElementwise, ScalarFormsAndBiasAdd) {
  const Tensor x = random_tensor({3, 4, 33}, 7), b = random_tensor({33}, 8);
  check_op(
      "mul scalar", {x}, [](auto& v) { return mul(v[0], 2.5f); },
      [](auto& t) { return ref::mul_scalar(t[0], 2.5f); });
  check_op(
      "add scalar", {x}, [](auto& v) { return add(v[0], -0.75f); },
      [](auto& t) { return ref::add_scalar(t[0], -0.75f); });
  check_op(
      "bias_add", {x, b}, [](auto& v) { return bias_add(v[0], v[1]); },
      [](auto& t) { return ref::binary(t[0], t[1], ref::Bin::add); });
}

TEST(OpsElementwise, ActivationsMatchReference) {
  const Tensor x = random_tensor({4, 257}, 9, -4.0f, 4.0f);
  const Tensor pos = random_tensor({4, 257}, 10, 0.01f, 10.0f);
  // Transcendentals: libm's float tanh/exp/log are within a few ulp; 2e-6 relative.
  check_op(
      "relu", {x}, [](auto& v) { return relu(v[0]); }, [](auto& t) { return ref::relu(t[0]); });
  check_op(
      "gelu", {x}, [](auto& v) { return gelu(v[0]); }, [](auto& t) { return ref::gelu(t[0]); },
      false, 2e-6f, 1e-7f);
  check_op(
      "tanh", {x}, [](auto& v) { return tanh(v[0]); }, [](auto& t) { return ref::tanh(t[0]); },
      false, 2e-6f);
  check_op(
      "exp", {x}, [](auto& v) { return exp(v[0]); }, [](auto& t) { return ref::exp(t[0]); }, true,
      2e-6f);
  check_op(
      "log", {pos}, [](auto& v) { return log(v[0]); }, [](auto& t) { return ref::log(t[0]); }, true,
      2e-6f, 1e-7f);
}

TEST(OpsElementwise, ReluGradientIsASelectOnEveryCode) {
  // relu's backward passes g where y > 0 and gives 0 elsewhere, for every bf16 and fp16 code of
  // x (NaN and -0 included), and a non-finite g where y <= 0 becomes 0 (torch's
  // threshold_backward), not Inf * 0 = NaN.
  for (DType dt : {DType::bf16, DType::f16}) {
    Tensor x = Tensor::empty({65536}, dt);
    auto* codes = static_cast<uint16_t*>(x.raw_data());
    for (int i = 0; i < 65536; ++i) codes[i] = static_cast<uint16_t>(i);
    Variable xv(x, true);
    Variable y = relu(xv);
    y.backward(Tensor::full({65536}, std::numeric_limits<float>::infinity(), dt));
    const Tensor gx = xv.grad().to(DType::f32);
    const Tensor xf = x.to(DType::f32);
    int64_t passed = 0;
    for (int i = 0; i < 65536; ++i) {
      const float xi = xf.data<float>()[i], gi = gx.data<float>()[i];
      if (xi > 0.0f) {
        ASSERT_TRUE(std::isinf(gi) && gi > 0) << dtype_name(dt) << " code " << i;
        ++passed;
      } else {
        ASSERT_EQ(gi, 0.0f) << dtype_name(dt) << " code " << i;
      }
    }
    EXPECT_EQ(passed, dt == DType::bf16 ? 0x7f80 : 0x7c00);  // every positive code, +Inf too
  }
  Variable xf(Tensor::from_vector({-1.0f, -0.0f, 0.0f, 1e-30f, 2.0f, NAN}, {6}), true);
  relu(xf).backward(Tensor::full({6}, 3.0f, DType::f32));
  const float* g = xf.grad().data<float>();
  EXPECT_EQ(std::vector<float>(g, g + 6), (std::vector<float>{0, 0, 0, 3, 3, 0}));
}

TEST(Autograd, TapeKeepsOnlyWhatBackwardNeeds) {
  // y = relu(a·w) + b: once the forward's handles are gone, the matmul's output (read by relu's
  // backward only through relu's own saved output) and relu's output (an add input, which add's
  // backward never reads) hold no data on the tape; the gradients are unchanged; under a
  // KeepActivationsGuard every output keeps its data.
  const Tensor at = random_tensor({4, 6}, 50), wt = random_tensor({6, 5}, 51);
  const Tensor bt = random_tensor({4, 5}, 52), g = random_tensor({4, 5}, 53);
  auto run = [&](bool keep, std::vector<Tensor>* grads) {
    KeepActivationsGuard guard(keep);
    Variable a(at, true), w(wt, true), b(bt, true);
    Variable y = add(relu(matmul(a, w)), b);
    const auto& add_in = y.grad_fn()->inputs[0];       // relu's output
    const auto& relu_in = add_in->grad_fn->inputs[0];  // matmul's output
    const bool released = !add_in->data.defined() && !relu_in->data.defined();
    y.backward(g);
    *grads = {a.grad(), w.grad(), b.grad()};
    return released;
  };
  std::vector<Tensor> kept, released;
  EXPECT_FALSE(run(true, &kept));
  EXPECT_TRUE(run(false, &released));
  for (size_t i = 0; i < kept.size(); ++i)
    EXPECT_EQ(kept[i].to_vector(), released[i].to_vector()) << "gradient " << i;
  // A handle the caller keeps keeps the data.
  Variable a(at, true), w(wt, true);
  Variable h = matmul(a, w);
  Variable y = relu(h);
  EXPECT_TRUE(h.data().defined());
  EXPECT_EQ(h.data().to_vector(), matmul(Variable(at), Variable(wt)).data().to_vector());
}

TEST(Autograd, BackwardFreesWhatEachOpSavedAsItGoes) {
  // x -> probe -> six gelus. Each gelu saves its input; the five in the middle are held by
  // nothing but the next gelu's backward. When the walk reaches the probe (last), those 5 MiB
  // must already be gone: live bytes there are below the end-of-forward figure even though
  // the seed and the gradient in flight (1 MiB each) are live. Kept until the walk's end, they
  // would put the probe 2-3 MiB above it.
  const int64_t n = 1 << 18;  // 1 MiB of fp32
  Variable x(random_tensor({n}, 60), true);
  int64_t at_probe = -1;
  Variable y = make_op_result(x.data().clone(), {x}, "probe", [&](const Tensor& g) {
    at_probe = memory_stats().current_bytes;
    return std::vector<Tensor>{g};
  });
  for (int i = 0; i < 6; ++i) y = gelu(y);
  const Tensor seed = Tensor::full({n}, 1.0f, DType::f32);
  const int64_t after_forward = memory_stats().current_bytes;
  y.backward(seed);
  ASSERT_GE(at_probe, 0);
  EXPECT_LT(at_probe, after_forward - n * 4);
  ASSERT_TRUE(x.grad().defined());
  // The walk released what the ops saved: walking the graph again is an error naming the op.
  try {
    y.backward(seed);
    ADD_FAILURE() << "a second backward through the same graph did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("backward of gelu"), std::string::npos) << e.what();
  }
}

TEST(OpsElementwise, GeluMatchesTorchTanhFormula) {
  // Values of torch.nn.functional.gelu(x, approximate='tanh') at a few points.
  const Tensor x = Tensor::from_vector({-3.0f, -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 3.0f}, {7});
  const std::vector<float> want = {-0.0036373437f, -0.15880801f, -0.15428598f, 0.0f,
                                   0.34571401f,    0.84119199f,  2.9963627f};
  const auto got = gelu(Variable(x)).data().to_vector();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6f) << i;
}

TEST(OpsElementwise, GeluKeepsRelativeAccuracyInTheNegativeTail) {
  // For x in [-5, -3] gelu is 1e-2 .. 1e-7 of |x|: computing 1 + tanh(u) in fp32 would cancel
  // to an absolute error ~6e-8, i.e. up to 100% there. The double reference is exact enough
  // (its cancellation is at 1e-16); fp32 arithmetic allows ~1e-5 relative.
  const Tensor x = random_tensor({1000}, 70, -5.0f, -3.0f);
  expect_close(gelu(Variable(x)).data(), ref::gelu(x), 1e-5f, 0, "gelu tail");
  // The backward's derivative against the double reference over [-8, 8] (it crosses zero
  // near x = -0.75, hence the small absolute term).
  Variable xv(random_tensor({2000}, 71, -8.0f, 8.0f), true);
  sum(gelu(xv)).backward();
  expect_close(xv.grad(), ref::gelu_grad(xv.data()), 1e-5f, 1e-7f, "gelu'");
}

TEST(OpsElementwise, CastRoundsAndBackwardReturnsSourceDType) {
  Tensor x = random_tensor({3, 5}, 11);
  Variable v(x.to(DType::bf16), false);
  Variable xf(x, true);
  Variable c = cast(xf, DType::bf16);
  EXPECT_EQ(c.dtype(), DType::bf16);
  expect_close(c.data(), x.to(DType::bf16).to(DType::f32), 0, 0, "cast rounds RNE");
  EXPECT_EQ(cast(xf, DType::f32).impl(), xf.impl()) << "a cast to the same dtype is free";
  sum(c).backward();
  EXPECT_EQ(xf.grad().dtype(), DType::f32);
  for (float g : xf.grad().to_vector()) EXPECT_EQ(g, 1.0f);
}

// ---- reductions ----

TEST(OpsReduce, SumMeanMatchReferenceOverAxes) {
  const Tensor x = random_tensor({3, 4, 5, 6}, 12);
  const std::vector<std::vector<int64_t>> axes = {{},     {0},    {1},    {3},         {-1},
                                                  {1, 2}, {0, 2}, {0, 3}, {0, 1, 2, 3}};
  for (const auto& ax : axes)
    for (bool keep : {false, true}) {
      const std::string what = fmt::format("[{}] keepdim={}", fmt::join(ax, ","), keep);
      // fp32 output: the fp32 accumulation of <= 360 terms against the double reference.
      check_op(
          "sum " + what, {x}, [&](auto& v) { return sum(v[0], ax, keep); },
          [&](auto& t) { return ref::sum(t[0], ax, keep); }, true, 1e-6f, 1e-6f);
      check_op(
          "mean " + what, {x}, [&](auto& v) { return mean(v[0], ax, keep); },
          [&](auto& t) { return ref::mean(t[0], ax, keep); }, true, 1e-6f, 1e-6f);
    }
  Variable s = sum(Variable(x));
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.dtype(), DType::f32);
}

TEST(OpsReduce, LongSumStaysAccurate) {
  // 2^21 values of ~0.1: a naive fp32 running sum drifts by ~1e-3 relative here (each add
  // rounds at the scale of the growing total); the blocked/pairwise sum stays within ~1e-6.
  const int64_t n = int64_t(1) << 21;
  const Tensor x = random_tensor({n}, 13, 0.05f, 0.15f);
  double exact = 0;
  float naive = 0;
  for (float v : x.to_vector()) {
    exact += v;
    naive += v;
  }
  const double got = sum(Variable(x)).data().item();
  EXPECT_LT(std::fabs(got - exact) / exact, 1e-6);
  EXPECT_GT(std::fabs(naive - exact) / exact, 10 * std::fabs(got - exact) / exact)
      << "the test must be able to tell naive from pairwise summation";
  // Columns ([n/64, 64] summed over rows) and bf16 inputs take the same care.
  const Tensor xb = x.to(DType::bf16);
  const Tensor cols = sum(Variable(xb.view({n / 64, 64})), {0}).data();
  const Tensor want = ref::sum(xb.view({n / 64, 64}), {0}, false);
  expect_close(cols, want, 2e-6f, 0, "column sums");
}

TEST(OpsReduce, ColumnSumsByRowChunksEveryDtype) {
  // [2, 1500, 700] summed over the rows: three row chunks (512, 512, 476: the parallel tasks,
  // added pairwise after), two column tiles (512 and a ragged 188, whose last 4 fp16 columns
  // miss the 8-wide F16C loop). Positive values, so Σ|x| is the sum itself: 64-row blocks
  // summed in order, then pairwise, keep |error| <= (64 + log2(1500/64) + 1)·2^-24·sum.
  const Tensor x = random_tensor({2, 1500, 700}, 16, 0.05f, 0.15f);
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor xd = x.to(dt);
    const Tensor got = sum(Variable(xd), {1}).data();
    const Tensor want = ref::sum(xd, {1}, false);
    expect_close(got, want, 70.0f / (1 << 24), 0, std::string("column sums ") + dtype_name(dt));
  }
  // No rows at all: one (empty) chunk, zeros.
  const auto empty = sum(Variable(Tensor::zeros({0, 5}, DType::bf16)), {0}).data().to_vector();
  EXPECT_EQ(empty, std::vector<float>(5, 0.0f));
}

// ---- shape ----

TEST(OpsShape, ReshapeTransposeSliceConcatMatchReference) {
  const Tensor x = random_tensor({2, 3, 4}, 14), y = random_tensor({2, 5, 4}, 15);
  check_op(
      "reshape", {x},
      [](auto& v) {
        return reshape(v[0], {4, -1});
      },
      [](auto& t) {
        return t[0].contiguous().view({4, 6}).to(DType::f32);
      });
  check_op(
      "transpose", {x}, [](auto& v) { return transpose(v[0], 0, 2); },
      [](auto& t) { return ref::transpose(t[0], 0, 2); });
  check_op(
      "slice", {x}, [](auto& v) { return slice(v[0], 1, 1, -1); },
      [](auto& t) { return ref::slice(t[0], 1, 1, -1); });
  check_op(
      "concat", {x, y},
      [](auto& v) {
        return concat({v[0], v[1], v[0]}, 1);
      },
      [](auto& t) {
        return ref::concat({t[0], t[1], t[0]}, 1);
      });
  check_op(
      "concat last", {x, x},
      [](auto& v) {
        return concat({v[0], v[1]}, -1);
      },
      [](auto& t) {
        return ref::concat({t[0], t[1]}, -1);
      });
  // Reshape of a transposed (non-contiguous) view copies.
  check_op(
      "reshape strided", {x}, [](auto& v) { return reshape(transpose(v[0], 0, 1), {-1}); },
      [](auto& t) { return ref::transpose(t[0], 0, 1).view({24}); });
}

TEST(OpsShape, ConcatPromotesMixedDTypes) {
  Variable a(random_tensor({2, 2}, 16).to(DType::bf16)), b(random_tensor({2, 2}, 17));
  EXPECT_EQ(concat({a, b}, 0).dtype(), DType::f32);
}

// ---- GEMM ----

TEST(OpsMatmul, MatmulMatchesReference) {
  // fp32 accumulation over K terms vs the double reference: relative error ~ K·2^-24 of the
  // sum of |products|, covered by atol_frac of the largest output (values are O(1)).
  const Tensor a = random_tensor({17, 40}, 20), b = random_tensor({40, 23}, 21);
  check_op(
      "matmul 2-d", {a, b}, [](auto& v) { return matmul(v[0], v[1]); },
      [](auto& t) { return ref::matmul(t[0], t[1]); }, false, 1e-6f, 1e-5f);
  const Tensor a3 = random_tensor({3, 9, 16}, 22), b3 = random_tensor({3, 16, 7}, 23);
  check_op(
      "matmul batched", {a3, b3}, [](auto& v) { return matmul(v[0], v[1]); },
      [](auto& t) { return ref::matmul(t[0], t[1]); }, false, 1e-6f, 1e-5f);
  const Tensor b2 = random_tensor({16, 7}, 24);
  check_op(
      "matmul shared B", {a3, b2}, [](auto& v) { return matmul(v[0], v[1]); },
      [](auto& t) { return ref::matmul(t[0], t[1]); }, false, 1e-6f, 1e-5f);
  const Tensor bt = random_tensor({23, 40}, 25);
  check_op(
      "matmul transposed B", {a, bt}, [](auto& v) { return matmul(v[0], transpose(v[1], 0, 1)); },
      [](auto& t) { return ref::matmul(t[0], ref::transpose(t[1], 0, 1)); }, false, 1e-6f, 1e-5f);
}

TEST(OpsMatmul, LinearMatchesReference) {
  const Tensor x = random_tensor({2, 5, 48}, 26), w = random_tensor({24, 48}, 27),
               b = random_tensor({24}, 28);
  check_op(
      "linear+bias", {x, w, b}, [](auto& v) { return linear(v[0], v[1], v[2]); },
      [](auto& t) { return ref::linear(t[0], t[1], t[2]); }, false, 1e-6f, 1e-5f);
  check_op(
      "linear", {x, w}, [](auto& v) { return linear(v[0], v[1]); },
      [](auto& t) { return ref::linear(t[0], t[1], Tensor()); }, false, 1e-6f, 1e-5f);
}

// gelu_linear is linear(gelu(x)) keeping x, not gelu(x): the same bits forward and backward
// (the same kernels run again in backward), in each dtype, with and without bias, and its
// errors name it.
TEST(OpsMatmul, GeluLinearIsLinearOfGeluBitForBit) {
  for (DType dt : kDTypes) {
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " bias " << with_bias);
      const Tensor xt = random_tensor({2, 5, 48}, 41).to(dt),
                   wt = random_tensor({24, 48}, 42).to(dt);
      const Tensor bt = random_tensor({24}, 43).to(dt), gy = random_tensor({2, 5, 24}, 44).to(dt);
      auto run = [&](bool fused) {
        Variable x(xt, true), w(wt, true), b(bt, true);
        const Variable bias = with_bias ? b : Variable();
        Variable y = fused ? gelu_linear(x, w, bias) : linear(gelu(x), w, bias);
        y.backward(gy);
        std::vector<Tensor> out{y.data(), x.grad(), w.grad()};
        if (with_bias) out.push_back(b.grad());
        return out;
      };
      const std::vector<Tensor> plain = run(false), fused = run(true);
      ASSERT_EQ(plain.size(), fused.size());
      for (size_t i = 0; i < plain.size(); ++i) {
        EXPECT_EQ(plain[i].dtype(), fused[i].dtype()) << i;
        EXPECT_EQ(plain[i].to_vector(), fused[i].to_vector()) << "output/gradient " << i;
      }
    }
  }
  try {
    gelu_linear(Variable(random_tensor({4, 8}, 45)), Variable(random_tensor({3, 7}, 46)));
    ADD_FAILURE() << "no error";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("gelu_linear: x Tensor[4, 8] f32 and w Tensor[3, 7]"),
              std::string::npos)
        << e.what();
  }
}

TEST(OpsPolicy, CategoriesPickDTypes) {
  amp::PolicyScope scope(amp::Policy::bf16());
  Variable x(random_tensor({4, 8}, 30)), w(random_tensor({3, 8}, 31), true);
  Variable y = linear(x, w);
  EXPECT_EQ(y.dtype(), DType::bf16) << "lower: compute dtype";
  EXPECT_EQ(gelu(y).dtype(), DType::bf16) << "same";
  EXPECT_EQ(exp(y).dtype(), DType::f32) << "fp32";
  EXPECT_EQ(sum(y).dtype(), DType::f32) << "fp32";
  EXPECT_EQ(add(y, Variable(random_tensor({4, 3}, 32))).dtype(), DType::f32)
      << "promote: bf16 with f32";
  sum(y).backward();
  // The fp32 master gets an fp32 gradient that matches the fp32 one to bf16 input rounding.
  EXPECT_EQ(w.grad().dtype(), DType::f32);
  Tensor want = ref::sum(x.data().to(DType::bf16), {0}, false);  // dW[j, :] = sum_i x[i, :]
  for (int64_t j = 0; j < 3; ++j)
    expect_close(w.grad().slice(0, j, j + 1).reshape({8}), want, 1e-6f, 1e-6f, "dW row");
}

TEST(OpsPolicy, Bf16LeafWeightGetsUnroundedFp32Gradient) {
  // A Parameter's compute copy: a bf16 leaf accumulating its gradient in fp32. linear's dW
  // leaves the GEMM in fp32 and must reach it unrounded: equal to the fp32 product of the
  // same bf16 values to fp32 accuracy, far tighter than bf16's 2^-8.
  const Tensor xb = random_tensor({16, 24}, 33).to(DType::bf16);
  const Tensor wb = random_tensor({8, 24}, 34).to(DType::bf16);
  const Tensor gy = random_tensor({16, 8}, 35);
  Variable w(wb, true);
  w.set_grad_dtype(DType::f32);
  Variable y = linear(Variable(xb), w);
  EXPECT_EQ(y.dtype(), DType::bf16);
  y.backward(gy.to(DType::bf16));
  ASSERT_EQ(w.grad().dtype(), DType::f32);
  // dW = gyᵀ · x with gy as the bf16 seed the backward saw.
  const Tensor want = ref::matmul(ref::transpose(gy.to(DType::bf16), 0, 1), xb);
  expect_close(w.grad(), want, 1e-6f, 1e-6f, "dW in fp32");
}

TEST(OpsPolicy, Bf16LeafBiasGetsUnroundedBatchSum) {
  // bias_add's bias gradient sums g over 512 rows: handed to a bf16 leaf in fp32, it equals
  // the exact column sums to fp32 accuracy (rounded to bf16 it would be off by up to 2^-9).
  const Tensor g = random_tensor({512, 16}, 36).to(DType::bf16);
  Variable b(random_tensor({16}, 37).to(DType::bf16), true);
  Variable y = bias_add(Variable(Tensor::zeros({512, 16}, DType::bf16)), b);
  y.backward(g);
  ASSERT_EQ(b.grad().dtype(), DType::f32);
  expect_close(b.grad(), ref::sum(g, {0}, false), 1e-6f, 1e-6f, "db in fp32");
}

// ---- errors ----

TEST(OpsErrors, MessagesNameOpShapesAndDTypes) {
  Variable a(random_tensor({2, 3}, 40)), b(random_tensor({4, 5}, 41).to(DType::bf16));
  expect_error<ShapeError>([&] { matmul(a, b); },
                           {"matmul", "[2, 3]", "[4, 5]", "f32", "bf16", "3 != 4"});
  expect_error<ShapeError>([&] { add(a, b); }, {"add", "[2, 3]", "[4, 5]", "broadcast"});
  expect_error<ShapeError>([&] { linear(a, b); }, {"linear", "[2, 3]", "[4, 5]"});
  expect_error<ShapeError>([&] { bias_add(a, Variable(random_tensor({2}, 42))); },
                           {"bias_add", "[2, 3]", "[2]"});
  expect_error<ShapeError>([&] { sum(a, {2}); }, {"sum", "axis 2", "[2, 3]"});
  expect_error<ShapeError>([&] { reshape(a, {4, 2}); }, {"reshape", "[2, 3]", "[4, 2]"});
  expect_error<ShapeError>([&] { slice(a, 1, 2, 5); }, {"slice", "[2, 5)", "[2, 3]"});
  expect_error<ShapeError>([&] { concat({a, b}, 0); }, {"concat", "[2, 3]", "[4, 5]"});
  expect_error<ShapeError>([&] { transpose(a, 0, 3); }, {"transpose", "3"});
  Variable ids(Tensor::zeros({2, 3}, DType::i64));
  expect_error<DTypeError>([&] { relu(ids); }, {"relu", "i64"});
  expect_error<DTypeError>([&] { matmul(ids, a); }, {"matmul", "i64"});
  Rng rng(1);
  expect_error<ConfigError>([&] { dropout(a, 1.0f, true, rng); }, {"dropout", "p = 1"});
}

// ---- dropout ----

TEST(OpsDropout, MaskReplaysFromRngStateAndMatchesReference) {
  const Tensor x = random_tensor({100, 100}, 50, 0.5f, 1.5f);
  for (DType dt : kDTypes) {
    const Tensor xd = x.to(dt);
    Rng r1(7, 100), r2(7, 100);
    Variable v(xd, true);
    Variable y1 = dropout(v, 0.3f, true, r1);
    Variable y2 = dropout(Variable(xd), 0.3f, true, r2);
    EXPECT_EQ(r1.counter, 100u + 10000u) << "reserves one counter per element";
    EXPECT_EQ(y1.dtype(), dt);
    const auto a = y1.data().to_vector(), b = y2.data().to_vector();
    EXPECT_EQ(a, b) << "same rng state, same mask";
    expect_close(y1.data(), ref::dropout(xd, 0.3f, 7, 100), out_rtol(dt), 0, "dropout ref");
    int64_t kept = 0;
    for (float f : a) kept += f != 0.0f;
    EXPECT_NEAR(kept / 10000.0, 0.7, 0.02);  // deterministic given the seed
    // The next call draws a different mask.
    Variable y3 = dropout(Variable(xd), 0.3f, true, r1);
    EXPECT_NE(y3.data().to_vector(), a);
    // Backward: the same mask times 1/(1-p).
    sum(y1).backward();
    const auto g = v.grad().to_vector();
    for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i] != 0.0f, a[i] != 0.0f) << i;
  }
  Rng rng(3);
  Variable v(x);
  EXPECT_EQ(dropout(v, 0.0f, true, rng).impl(), v.impl());
  EXPECT_EQ(dropout(v, 0.5f, false, rng).impl(), v.impl());
  EXPECT_EQ(rng.counter, 0u) << "an identity dropout draws nothing";
}

// ---- end to end ----

TEST(OpsEndToEnd, TwoLayerMlpTrainsBySgd) {
  // Regression of a smooth target y = sin(x·u) with a 8 -> 32 -> 1 GELU MLP, MSE loss.
  const int64_t B = 64, in = 8, hidden = 32;
  const Tensor x = random_tensor({B, in}, 60);
  const Tensor u = random_tensor({in, 1}, 61);
  const auto xu = ref::matmul(x, u).to_vector();
  std::vector<float> yv;
  for (float v : xu) yv.push_back(std::sin(v));
  const Variable X(x), Y(Tensor::from_vector(yv, {B, 1}));
  Variable w1(random_tensor({hidden, in}, 62, -0.35f, 0.35f), true),
      b1(Tensor::zeros({hidden}, DType::f32), true),
      w2(random_tensor({1, hidden}, 63, -0.18f, 0.18f), true),
      b2(Tensor::zeros({1}, DType::f32), true);
  auto loss_fn = [&] {
    Variable d = sub(linear(gelu(linear(X, w1, b1)), w2, b2), Y);
    return mean(mul(d, d));
  };
  const float lr = 0.1f;
  float first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    Variable loss = loss_fn();
    if (step == 0) first = loss.data().item();
    last = loss.data().item();
    loss.backward();
    for (Variable* p : {&w1, &b1, &w2, &b2}) {
      ASSERT_TRUE(p->grad().defined());
      float* d = p->data().data<float>();
      const auto g = p->grad().to_vector();
      for (size_t i = 0; i < g.size(); ++i) d[i] -= lr * g[i];
      p->zero_grad();
    }
  }
  EXPECT_LT(last, 0.5f * first) << "first " << first << " last " << last;
}

}  // namespace
}  // namespace mixtrain
