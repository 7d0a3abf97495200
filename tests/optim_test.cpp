// Optimizers against a double-precision reference written here (several steps, every option,
// every gradient and weight-copy dtype), against torch.optim when /usr/bin/python3 has torch,
// master-free modes (split16 bit-identical, stochastic rounding unbiased, convergence on a
// regression problem vs plain bf16 RNE updates), state tensors, bytes per parameter, schedules.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "mixtrain/error.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/optim/schedule.h"
#include "mixtrain/random.h"

using namespace mixtrain;
using namespace mixtrain::optim;

namespace {

// Gradient of step s for element i: a fixed pseudo-random pattern, sign-changing, with a few
// larger values so moments and momentum matter.
float grad_value(int s, int64_t i) {
  Rng r(1000 + s, static_cast<uint64_t>(i));
  return (r.uniform() - 0.45f) * (i % 7 == 0 ? 4.0f : 1.0f);
}

struct Config {
  std::string kind;
  double lr, wd, momentum = 0, dampening = 0;
  bool nesterov = false, centered = false;
};

std::unique_ptr<Optimizer> make(const Config& c, std::vector<nn::Parameter*> ps,
                                CommonOptions common = {}) {
  if (c.kind == "sgd")
    return std::make_unique<SGD>(ps, SgdOptions{.lr = c.lr,
                                                .momentum = c.momentum,
                                                .dampening = c.dampening,
                                                .weight_decay = c.wd,
                                                .nesterov = c.nesterov,
                                                .common = common});
  if (c.kind == "adam")
    return std::make_unique<Adam>(ps,
                                  AdamOptions{.lr = c.lr, .weight_decay = c.wd, .common = common});
  if (c.kind == "adamw")
    return std::make_unique<AdamW>(ps,
                                   AdamOptions{.lr = c.lr, .weight_decay = c.wd, .common = common});
  return std::make_unique<RMSProp>(ps, RMSPropOptions{.lr = c.lr,
                                                      .weight_decay = c.wd,
                                                      .momentum = c.momentum,
                                                      .centered = c.centered,
                                                      .common = common});
}

// The double-precision reference: torch.optim's formulas, one element at a time.
struct RefState {
  double p, s0 = 0, s1 = 0, s2 = 0;
};
void ref_step(const Config& c, RefState& st, double g, int t) {
  double& p = st.p;
  if (c.kind == "sgd") {
    double d = g + c.wd * p;
    if (c.momentum != 0) {
      st.s0 = t == 1 ? d : c.momentum * st.s0 + (1 - c.dampening) * d;
      d = c.nesterov ? d + c.momentum * st.s0 : st.s0;
    }
    p -= c.lr * d;
  } else if (c.kind == "adam" || c.kind == "adamw") {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    if (c.kind == "adamw")
      p *= 1 - c.lr * c.wd;
    else
      g += c.wd * p;
    st.s0 = b1 * st.s0 + (1 - b1) * g;
    st.s1 = b2 * st.s1 + (1 - b2) * g * g;
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    p -= c.lr / bc1 * st.s0 / (std::sqrt(st.s1) / std::sqrt(bc2) + eps);
  } else {
    const double alpha = 0.99, eps = 1e-8;
    g += c.wd * p;
    st.s0 = alpha * st.s0 + (1 - alpha) * g * g;
    double avg;
    if (c.centered) {
      st.s1 = alpha * st.s1 + (1 - alpha) * g;
      avg = std::sqrt(st.s0 - st.s1 * st.s1) + eps;
    } else {
      avg = std::sqrt(st.s0) + eps;
    }
    if (c.momentum > 0) {
      st.s2 = c.momentum * st.s2 + g / avg;
      p -= c.lr * st.s2;
    } else {
      p -= c.lr * g / avg;
    }
  }
}

const std::vector<Config>& configs() {
  static const std::vector<Config> c = {
      {"sgd", 0.1, 0},
      {"sgd", 0.1, 0.01, 0.9},
      {"sgd", 0.05, 0.01, 0.9, 0.1},
      {"sgd", 0.05, 0.0, 0.8, 0, true},
      {"adam", 1e-2, 0},
      {"adam", 1e-2, 0.05},
      {"adamw", 1e-2, 0.1},
      {"rmsprop", 1e-3, 0},
      {"rmsprop", 1e-3, 0.01, 0.9},
      {"rmsprop", 1e-3, 0.0, 0, 0, false, true},
      {"rmsprop", 1e-3, 0.01, 0.5, 0, false, true},
  };
  return c;
}

std::string describe(const Config& c) {
  return c.kind + " lr " + std::to_string(c.lr) + " wd " + std::to_string(c.wd) + " mom " +
         std::to_string(c.momentum) + (c.nesterov ? " nesterov" : "") +
         (c.centered ? " centered" : "");
}

}  // namespace

TEST(Optim, MatchesDoubleReferenceAllOptionsAndDtypes) {
  // 33000 elements: more than one parallel piece (32768), so the split is exercised too.
  constexpr int64_t kN = 33000;
  constexpr int kSteps = 6;
  std::vector<std::vector<float>> grads(kSteps + 1, std::vector<float>(kN));
  std::vector<float> init(kN);
  for (int64_t i = 0; i < kN; ++i) init[i] = grad_value(99, i) * 2.0f;
  for (int s = 1; s <= kSteps; ++s)
    for (int64_t i = 0; i < kN; ++i) grads[s][i] = grad_value(s, i);
  for (const Config& c : configs())
    for (DType gdt : {DType::f32, DType::bf16, DType::f16})
      for (DType cdt : {DType::bf16, DType::f16, DType::f32}) {
        nn::Parameter p("w", Tensor::from_vector(init, {kN}), cdt);
        auto opt = make(c, {&p});
        std::vector<RefState> ref(kN);
        for (int64_t i = 0; i < kN; ++i) ref[i].p = init[i];
        for (int s = 1; s <= kSteps; ++s) {
          p.weight.grad() = Tensor::from_vector(grads[s], {kN}, gdt);
          const std::vector<float> gq = p.grad().to_vector();  // what the optimizer reads
          opt->step();
          for (int64_t i = 0; i < kN; ++i) ref_step(c, ref[i], gq[i], s);
        }
        const std::vector<float> m = p.master.to_vector();
        // fp32 arithmetic over 6 steps of O(1) values: a few ulp of the value, plus (Adam,
        // RMSProp) the division by sqrt of small second moments amplifying fp32 rounding of
        // the moments: 2e-6 absolute bounds both with margin.
        double worst = 0;
        for (int64_t i = 0; i < kN; ++i)
          worst = std::max(worst, std::fabs(m[i] - ref[i].p) / std::max(1.0, std::fabs(ref[i].p)));
        EXPECT_LT(worst, 2e-6) << describe(c) << " grad " << dtype_name(gdt) << " copy "
                               << dtype_name(cdt);
        // The compute copy is the RNE rounding of the master, written in the same pass.
        if (cdt != DType::f32) {
          const auto copy = p.weight.data().to_vector();
          const auto want = p.master.to(cdt).to_vector();
          EXPECT_EQ(copy, want) << describe(c) << " copy " << dtype_name(cdt);
        } else {
          EXPECT_TRUE(p.shares_master());
        }
      }
}

// The fused update is built per ISA level (src/cpu/optimizer.isa.cpp) with contraction off, so
// every level this CPU runs must give the same bits: every rule, every master mode, gradients
// and weight copies in every dtype, a ragged tail and more than one parallel piece.
TEST(Optim, EveryIsaLevelGivesTheSameBits) {
  constexpr int64_t kN = 33000;
  const std::vector<cpu::Isa> levels = cpu::supported_isas();
  ASSERT_FALSE(levels.empty());
  struct Mode {
    MasterMode master;
    DType compute, grad;
  };
  const Mode modes[] = {{MasterMode::fp32, DType::bf16, DType::f32},
                        {MasterMode::fp32, DType::f16, DType::f16},
                        {MasterMode::fp32, DType::f32, DType::bf16},
                        {MasterMode::split16, DType::bf16, DType::bf16},
                        {MasterMode::bf16_stochastic, DType::bf16, DType::f32},
                        {MasterMode::bf16_kahan, DType::bf16, DType::f16}};
  for (const Config& c : configs())
    for (const Mode& m : modes) {
      // Everything the step writes, as raw bits, after 3 steps at one level.
      auto run = [&](cpu::Isa level) {
        const cpu::IsaCap cap(level);
        std::vector<float> init(kN);
        for (int64_t i = 0; i < kN; ++i) init[i] = grad_value(99, i) * 2.0f;
        nn::Parameter p("w", Tensor::from_vector(init, {kN}), m.compute);
        auto opt = make(c, {&p}, {.master = m.master, .seed = 5});
        for (int s = 1; s <= 3; ++s) {
          std::vector<float> g(kN);
          for (int64_t i = 0; i < kN; ++i) g[i] = grad_value(s, i);
          p.weight.grad() = Tensor::from_vector(g, {kN}, m.grad);
          opt->step();
        }
        std::vector<std::vector<float>> out{opt->master_value(0).to_vector(),
                                            p.weight.data().to_vector()};
        for (const auto& [name, t] : opt->state_tensors())
          if (t.dtype() != DType::i64) out.push_back(t.to(DType::f32).to_vector());
        return out;
      };
      const auto want = run(levels.front());
      for (size_t l = 1; l < levels.size(); ++l) {
        const auto got = run(levels[l]);
        ASSERT_EQ(got.size(), want.size());
        for (size_t k = 0; k < got.size(); ++k)
          EXPECT_EQ(std::memcmp(got[k].data(), want[k].data(), got[k].size() * 4), 0)
              << describe(c) << " master " << master_mode_name(m.master) << ": level "
              << cpu::isa_name(levels[l]) << " differs from " << cpu::isa_name(levels.front())
              << " in output " << k;
      }
    }
}

TEST(Optim, GradMultiplierFoldsUnscaleAndClip) {
  // prepare_gradients(1/S) + clip == stepping on the unscaled, clipped gradient.
  nn::Parameter a("a", Tensor::full({1000}, 0.5f, DType::f32), DType::bf16);
  nn::Parameter b("b", Tensor::full({1000}, 0.5f, DType::f32), DType::bf16);
  AdamW oa({&a}, {.lr = 0.01});
  AdamW ob({&b}, {.lr = 0.01});
  std::vector<float> g(1000);
  for (int i = 0; i < 1000; ++i) g[i] = grad_value(1, i);
  std::vector<float> scaled(g), clipped(g);
  double norm = 0;
  for (float v : g) norm += static_cast<double>(v) * v;
  norm = std::sqrt(norm);
  const double coef = 0.5 / (norm + 1e-6);
  for (int i = 0; i < 1000; ++i) {
    scaled[i] = g[i] * 1024.0f;
    clipped[i] = static_cast<float>(g[i] * static_cast<float>(coef));
  }
  a.weight.grad() = Tensor::from_vector(scaled, {1000});
  b.weight.grad() = Tensor::from_vector(clipped, {1000});
  const GradStats& st = oa.prepare_gradients(1.0f / 1024);
  EXPECT_NEAR(st.norm(), norm, 1e-6 * norm);
  EXPECT_NEAR(oa.clip_grad_norm(0.5), norm, 1e-6 * norm);
  const StepResult r = oa.step();
  ob.step();
  EXPECT_NEAR(r.clip_coef, coef, 1e-6 * coef);
  const auto ma = a.master.to_vector(), mb = b.master.to_vector();
  for (int i = 0; i < 1000; ++i) EXPECT_NEAR(ma[i], mb[i], 1e-7) << i;
}

TEST(Optim, UndefinedGradientSkipsParameter) {
  nn::Parameter a("a", Tensor::full({8}, 1.0f, DType::f32));
  nn::Parameter b("b", Tensor::full({8}, 1.0f, DType::f32));
  SGD opt({&a, &b}, {.lr = 0.5, .weight_decay = 0.1});
  a.weight.grad() = Tensor::full({8}, 1.0f, DType::f32);
  opt.step();
  EXPECT_EQ(b.master.to_vector(), std::vector<float>(8, 1.0f));  // as torch: no grad, no decay
  EXPECT_NE(a.master.to_vector(), std::vector<float>(8, 1.0f));
}

TEST(Optim, ErrorsNameTheProblem) {
  nn::Parameter a("layer.w", Tensor::full({8}, 1.0f, DType::f32));
  SGD opt({&a});
  a.weight.grad() = Tensor::full({9}, 1.0f, DType::f32);
  try {
    opt.step();
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("layer.w"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SGD({&a}, {.lr = -1}), ConfigError);
  EXPECT_THROW(SGD({&a}, {.momentum = 0, .nesterov = true}), ConfigError);
  EXPECT_THROW(AdamW({&a}, {.common = {.master = MasterMode::split16}}),
               ConfigError);  // f32 compute
  EXPECT_THROW(parse_master_mode("fp64"), ConfigError);
  EXPECT_EQ(parse_master_mode("bf16-sr"), MasterMode::bf16_stochastic);
  EXPECT_THROW(make_optimizer("lion", {&a}, 1e-3, 0, 0), ConfigError);
}

TEST(Optim, StateTensorsRoundTripAndNameProblems) {
  auto run = [](Optimizer& opt, nn::Parameter& p, int from, int to) {
    for (int s = from; s < to; ++s) {
      std::vector<float> g(100);
      for (int i = 0; i < 100; ++i) g[i] = grad_value(s, i);
      p.weight.grad() = Tensor::from_vector(g, {100});
      opt.step();
    }
  };
  for (MasterMode mode : {MasterMode::fp32, MasterMode::split16, MasterMode::bf16_kahan,
                          MasterMode::bf16_stochastic}) {
    nn::Parameter a("w", Tensor::full({100}, 0.3f, DType::f32), DType::bf16);
    nn::Parameter b("w", Tensor::full({100}, 0.3f, DType::f32), DType::bf16);
    AdamW oa({&a}, {.lr = 1e-2, .common = {.master = mode, .seed = 7}});
    AdamW ob({&b}, {.lr = 1e-2, .common = {.master = mode, .seed = 7}});
    run(oa, a, 1, 4);
    // b resumes from a's checkpoint: parameter values and optimizer state.
    b.master.copy_from(a.master);
    b.refresh();
    ob.load_state(oa.state_tensors());
    EXPECT_EQ(ob.steps(), 3);
    run(oa, a, 4, 7);
    run(ob, b, 4, 7);
    EXPECT_EQ(oa.master_value(0).to_vector(), ob.master_value(0).to_vector())
        << master_mode_name(mode);
  }
  nn::Parameter a("w", Tensor::full({100}, 0.3f, DType::f32));
  AdamW opt({&a});
  auto st = opt.state_tensors();
  ASSERT_EQ(st[0].first, "optim.w.exp_avg");
  ASSERT_EQ(st[1].first, "optim.w.exp_avg_sq");
  auto missing = st;
  missing.erase(missing.begin() + 1);
  try {
    opt.load_state(missing);
    FAIL();
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("optim.w.exp_avg_sq"), std::string::npos) << e.what();
  }
  auto bad = st;
  bad[0].second = Tensor::zeros({99}, DType::f32);
  try {
    opt.load_state(bad);
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("optim.w.exp_avg"), std::string::npos) << e.what();
  }
}

TEST(Optim, BytesPerParameter) {
  const BytesPerParam ref = bytes_per_parameter(MasterMode::fp32, DType::bf16, DType::f32, 2);
  EXPECT_EQ(ref.total(), 18);  // 4 master + 8 Adam m,v + 2 bf16 copy + 4 fp32 grad
  EXPECT_EQ(bytes_per_parameter(MasterMode::bf16_stochastic).total(), 14);
  EXPECT_EQ(bytes_per_parameter(MasterMode::bf16_kahan).total(), 16);
  EXPECT_EQ(bytes_per_parameter(MasterMode::split16).total(), 16);
  EXPECT_EQ(bytes_per_parameter(MasterMode::fp32, DType::f32, DType::f32, 2).total(), 16);
  EXPECT_EQ(bytes_per_parameter(MasterMode::bf16_stochastic, DType::bf16, DType::bf16, 2).total(),
            12);
  EXPECT_FALSE(bytes_per_parameter(MasterMode::split16).note.empty());
}

// ---- master-free modes ----------------------------------------------------------------------

TEST(MasterFree, Split16IsBitIdenticalToFp32Master) {
  // Gradients depend on the parameter's fp32 value (a quadratic pull to a target), so any
  // difference in the master would feed back and grow.
  constexpr int64_t kN = 4096;
  for (const Config& c : configs()) {
    std::vector<float> init(kN), target(kN);
    for (int64_t i = 0; i < kN; ++i) init[i] = grad_value(7, i), target[i] = grad_value(8, i);
    nn::Parameter a("w", Tensor::from_vector(init, {kN}), DType::bf16);
    nn::Parameter b("w", Tensor::from_vector(init, {kN}), DType::bf16);
    auto oa = make(c, {&a});
    auto ob = make(c, {&b}, {.master = MasterMode::split16});
    EXPECT_TRUE(b.shares_master());  // the fp32 master is gone
    for (int s = 0; s < 20; ++s) {
      for (auto [p, o] : {std::pair{&a, oa.get()}, std::pair{&b, ob.get()}}) {
        const auto m = o->master_value(0).to_vector();
        std::vector<float> g(kN);
        for (int64_t i = 0; i < kN; ++i) g[i] = 2.0f * (m[i] - target[i]);
        p->weight.grad() = Tensor::from_vector(g, {kN}, s % 2 ? DType::bf16 : DType::f32);
        o->step();
      }
    }
    const auto ma = oa->master_value(0).to_vector(), mb = ob->master_value(0).to_vector();
    int64_t diff = 0;
    for (int64_t i = 0; i < kN; ++i)
      diff += std::bit_cast<uint32_t>(ma[i]) != std::bit_cast<uint32_t>(mb[i]);
    EXPECT_EQ(diff, 0) << describe(c);
    // The bf16 weight differs from the RNE copy only on exact ties (the low half 0x8000):
    // a lossless 16+16 split can not also be RNE (2^16+1 fp32 values round to an even bf16).
    const auto wa = a.weight.data().to_vector(), wb = b.weight.data().to_vector();
    for (int64_t i = 0; i < kN; ++i)
      if (wa[i] != wb[i]) EXPECT_EQ(std::bit_cast<uint32_t>(ma[i]) & 0xffffu, 0x8000u);
  }
}

TEST(MasterFree, Split16EncodingIsLossless) {
  Rng r(3);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t u = static_cast<uint32_t>(r.next_u64());
    uint16_t hi, lo;
    optim::detail::split16_encode(std::bit_cast<float>(u), &hi, &lo);
    ASSERT_EQ(std::bit_cast<uint32_t>(optim::detail::split16_decode(hi, lo)), u);
  }
}

TEST(MasterFree, StochasticRoundingIsUnbiasedAndReproducible) {
  // SGD lr 1 on w = 1 with gradient d: the exact result 1 - d lies 30% of a bf16 step
  // (2^-8 below 1) under 1, so it rounds down with probability 0.3.
  constexpr int64_t kN = 200000;
  const double d = 0.3 * std::ldexp(1.0, -8);
  auto run = [&](uint64_t seed) {
    nn::Parameter p("w", Tensor::full({kN}, 1.0f, DType::f32), DType::bf16);
    SGD opt({&p}, {.lr = 1.0, .common = {.master = MasterMode::bf16_stochastic, .seed = seed}});
    p.weight.grad() = Tensor::full({kN}, static_cast<float>(d), DType::f32);
    opt.step();
    return p.weight.data().to_vector();
  };
  const auto w = run(42);
  double mean = 0;
  for (float v : w) {
    ASSERT_TRUE(v == 1.0f || v == 1.0f - std::ldexp(1.0f, -8)) << v;
    mean += v;
  }
  mean /= kN;
  // Standard error of the mean: 2^-8 * sqrt(0.3 * 0.7 / N) = 4.0e-6; allow 5 sigma.
  EXPECT_NEAR(mean, 1.0 - d, 5 * std::ldexp(1.0, -8) * std::sqrt(0.21 / kN));
  EXPECT_EQ(run(42), w);  // same seed, same bits (threads or not)
  EXPECT_NE(run(43), w);
}

namespace {

// Linear regression y = X w* + noise trained by AdamW on Tensors directly. The loss and its
// gradient are computed in double from the bf16 weights forward would read.
struct Regression {
  static constexpr int kRows = 512, kDim = 16;
  std::vector<double> x, y;
  Regression() {
    Rng r(11);
    std::vector<double> w(kDim);
    for (auto& v : w) v = 2.0 + 2.0 * r.uniform();  // [2, 4): bf16 steps of 2^-6 there
    x.resize(kRows * kDim);
    y.resize(kRows);
    for (int i = 0; i < kRows; ++i) {
      double s = 0;
      for (int j = 0; j < kDim; ++j) s += (x[i * kDim + j] = r.normal()) * w[j];
      y[i] = s + 0.5 * r.normal();  // noise variance 0.25: the floor of the loss
    }
  }
  double loss(const std::vector<float>& w, std::vector<float>* grad) const {
    double l = 0;
    std::vector<double> g(kDim, 0.0);
    for (int i = 0; i < kRows; ++i) {
      double e = -y[i];
      for (int j = 0; j < kDim; ++j) e += x[i * kDim + j] * w[j];
      l += e * e;
      for (int j = 0; j < kDim; ++j) g[j] += 2 * e * x[i * kDim + j] / kRows;
    }
    if (grad)
      for (int j = 0; j < kDim; ++j) (*grad)[j] = static_cast<float>(g[j]);
    return l / kRows;
  }
  // mode < 0: fp32 master with plain bf16 RNE rounding of the master after every step
  // (bf16 weights without any master: what master-free modes improve on).
  double train(int mode) const {
    nn::Parameter p("w", Tensor::zeros({kDim}, DType::f32), DType::bf16);
    const MasterMode mm = mode < 0 ? MasterMode::fp32 : static_cast<MasterMode>(mode);
    AdamW opt({&p}, {.lr = 5e-3, .weight_decay = 0, .common = {.master = mm, .seed = 5}});
    LrScheduler sched(
        {.kind = LrSchedule::cosine, .base_lr = 5e-3, .min_lr = 5e-5, .warmup = 20, .total = 3000});
    std::vector<float> g(kDim);
    for (int s = 0; s < 3000; ++s) {
      loss(p.weight.data().to_vector(), &g);
      p.weight.grad() = Tensor::from_vector(g, {kDim});
      sched.apply(opt);
      sched.step(opt.step());
      if (mode < 0) {
        p.master.copy_from(p.master.to(DType::bf16));
        p.refresh();
      }
    }
    return loss(p.weight.data().to_vector(), nullptr);
  }
};

}  // namespace

TEST(MasterFree, ConvergeLikeFp32MasterWhilePlainBf16Stalls) {
  const Regression r;
  const double ref = r.train(static_cast<int>(MasterMode::fp32));
  const double plain = r.train(-1);
  std::printf("regression loss: fp32 master %.5f, plain bf16 RNE %.5f\n", ref, plain);
  EXPECT_LT(ref, 0.3);  // near the noise floor 0.25
  for (MasterMode m : {MasterMode::bf16_stochastic, MasterMode::bf16_kahan, MasterMode::split16}) {
    const double l = r.train(static_cast<int>(m));
    std::printf("regression loss: %s %.5f (%.2f%% of fp32 master)\n", master_mode_name(m), l,
                100 * (l - ref) / ref);
    EXPECT_LT(std::fabs(l - ref), 0.02 * ref) << master_mode_name(m);
  }
  // Updates of at most lr = 5e-3 are under half a bf16 step (2^-7 = 7.8e-3 for weights in
  // [2, 4)): RNE throws them away and the weights stall far from the optimum.
  EXPECT_GT(plain, 2 * ref);
}

// ---- schedules --------------------------------------------------------------------------------

TEST(Schedule, WarmupCosineAndSkippedSteps) {
  LrScheduler s(
      {.kind = LrSchedule::cosine, .base_lr = 1.0, .min_lr = 0.1, .warmup = 4, .total = 14});
  EXPECT_DOUBLE_EQ(s.lr(), 0.25);
  StepResult ok, skipped;
  skipped.applied = false;
  s.step(skipped);  // does not advance by default
  EXPECT_EQ(s.position(), 0);
  for (int i = 0; i < 3; ++i) s.step(ok);
  EXPECT_DOUBLE_EQ(s.lr(), 1.0);  // last warm-up step
  s.step(ok);
  EXPECT_DOUBLE_EQ(s.lr(), 1.0);  // cosine start
  for (int i = 0; i < 5; ++i) s.step(ok);
  EXPECT_NEAR(s.lr(), 0.55, 1e-12);  // half way: min + (base - min) / 2
  for (int i = 0; i < 10; ++i) s.step(ok);
  EXPECT_DOUBLE_EQ(s.lr(), 0.1);  // held at min_lr
  LrScheduler c({.base_lr = 0.3, .advance_on_skip = true});
  c.step(skipped);
  EXPECT_EQ(c.position(), 1);
  EXPECT_DOUBLE_EQ(c.lr(), 0.3);
  EXPECT_THROW(LrScheduler({.kind = LrSchedule::cosine, .warmup = 5, .total = 5}), ConfigError);
  EXPECT_THROW(parse_schedule("step"), ConfigError);
}

// ---- torch.optim (optional) -----------------------------------------------------------------

TEST(Optim, MatchesTorchOptimWhenAvailable) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "/usr/bin/python3 has no torch";
  constexpr int kN = 257, kSteps = 5;
  const std::string dir = ::testing::TempDir();
  {
    std::ofstream f(dir + "/optim_grads.txt");
    f.precision(9);
    for (int s = 0; s <= kSteps; ++s)
      for (int i = 0; i < kN; ++i) f << grad_value(s == 0 ? 99 : s, i) << (i + 1 < kN ? ' ' : '\n');
  }
  std::ofstream py(dir + "/optim_torch.py");
  py << "import torch, sys\n"
        "rows = [list(map(float, l.split())) for l in open(sys.argv[1])]\n"
        "cfgs = [l.split() for l in sys.stdin]\n"
        "for kind, lr, wd, mom, damp, nest, cent in cfgs:\n"
        "    p = torch.nn.Parameter(torch.tensor(rows[0]) * 2)\n"
        "    lr, wd, mom, damp = float(lr), float(wd), float(mom), float(damp)\n"
        "    if kind == 'sgd': o = torch.optim.SGD([p], lr=lr, momentum=mom, dampening=damp, "
        "weight_decay=wd, nesterov=nest == '1')\n"
        "    elif kind == 'adam': o = torch.optim.Adam([p], lr=lr, weight_decay=wd)\n"
        "    elif kind == 'adamw': o = torch.optim.AdamW([p], lr=lr, weight_decay=wd)\n"
        "    else: o = torch.optim.RMSprop([p], lr=lr, weight_decay=wd, momentum=mom, "
        "centered=cent == '1')\n"
        "    for g in rows[1:]:\n"
        "        p.grad = torch.tensor(g); o.step()\n"
        "    print(' '.join(repr(v) for v in p.detach().tolist()))\n";
  py.close();
  std::string cfg;
  for (const Config& c : configs())
    cfg += c.kind + " " + std::to_string(c.lr) + " " + std::to_string(c.wd) + " " +
           std::to_string(c.momentum) + " " + std::to_string(c.dampening) + " " +
           (c.nesterov ? "1" : "0") + " " + (c.centered ? "1" : "0") + "\n";
  {
    std::ofstream f(dir + "/optim_cfg.txt");
    f << cfg;
  }
  FILE* pipe = popen(("/usr/bin/python3 " + dir + "/optim_torch.py " + dir + "/optim_grads.txt < " +
                      dir + "/optim_cfg.txt")
                         .c_str(),
                     "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  while (fgets(buf, sizeof buf, pipe)) out += buf;
  ASSERT_EQ(pclose(pipe), 0);
  std::istringstream lines(out);
  for (const Config& c : configs()) {
    std::vector<float> init(kN);
    for (int i = 0; i < kN; ++i) init[i] = grad_value(99, i) * 2.0f;
    nn::Parameter p("w", Tensor::from_vector(init, {kN}));
    auto opt = make(c, {&p});
    for (int s = 1; s <= kSteps; ++s) {
      std::vector<float> g(kN);
      for (int i = 0; i < kN; ++i) g[i] = grad_value(s, i);
      p.weight.grad() = Tensor::from_vector(g, {kN});
      opt->step();
    }
    std::string line;
    ASSERT_TRUE(std::getline(lines, line)) << describe(c);
    std::istringstream vals(line);
    const auto m = p.master.to_vector();
    double worst = 0;
    for (int i = 0; i < kN; ++i) {
      double t;
      vals >> t;
      worst = std::max(worst, std::fabs(m[i] - t) / std::max(1.0, std::fabs(t)));
    }
    // Same fp32 formulas in the same order; torch's own kernels vectorise differently (and
    // may contract to FMA), so allow a few ulp of O(1) values.
    EXPECT_LT(worst, 1e-6) << describe(c);
  }
}
