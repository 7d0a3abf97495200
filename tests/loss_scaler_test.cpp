// LossScaler: the scale trajectory over scripted clean/overflowing steps against the rules
// (growth, backoff, floor, ceiling, hysteresis, floor error), skipped-step reporting,
// once-per-step unscale, accumulation, several optimizers, bf16/fp32 gradients at scale 1,
// state round trips, and (where torch >= 2.3 is installed) torch.amp.GradScaler("cpu").
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "mixtrain/amp/loss_scaler.h"
#include "mixtrain/error.h"
#include "mixtrain/optim/optimizer.h"

using namespace mixtrain;
using amp::LossScaler;
using amp::LossScalerOptions;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Fixture {
  std::vector<nn::Parameter> ps;
  std::vector<nn::Parameter*> ptrs;
  explicit Fixture(DType grad_dtype = DType::f32, int count = 2) {
    ps.reserve(count);
    for (int i = 0; i < count; ++i)
      ps.emplace_back(fmt::format("p{}", i), Tensor::full({4}, 1.0f, DType::f32), DType::bf16);
    for (auto& p : ps) ptrs.push_back(&p);
    set_grads(0.5f, grad_dtype);
  }
  // Every gradient element `v` (scaled by `scale`, as a backward with that seed would give),
  // except element 2 of parameter `bad` which gets `bad_value`.
  void set_grads(float v, DType dt = DType::f32, float scale = 1.0f, int bad = -1,
                 float bad_value = 0) {
    for (size_t i = 0; i < ps.size(); ++i) {
      std::vector<float> g(4, v * scale);
      if (static_cast<int>(i) == bad) g[2] = bad_value;
      ps[i].weight.grad() = Tensor::from_vector(g, {4}, dt);
    }
  }
};

// One training step driven by the scaler; `overflow` plants an Inf in p1's gradient.
optim::StepResult scripted_step(LossScaler& s, optim::Optimizer& opt, Fixture& f, bool overflow) {
  f.set_grads(0.25f, DType::f32, s.scale(), overflow ? 1 : -1, kInf);
  optim::StepResult r = s.step(opt);
  s.update();
  return r;
}

// The rules written out independently: PyTorch's growth tracker plus floor, ceiling and
// DeepSpeed hysteresis. Returns the scale after each step.
std::vector<float> reference_trajectory(const LossScalerOptions& o, const std::vector<bool>& ovf) {
  double scale = o.init_scale;
  int64_t tracker = 0, hyst = o.hysteresis;
  std::vector<float> out;
  for (bool bad : ovf) {
    if (bad) {
      tracker = 0;
      if (hyst > 1)
        --hyst;
      else
        scale = std::max(scale * o.backoff_factor, static_cast<double>(o.min_scale));
    } else {
      if (o.consecutive_hysteresis) hyst = o.hysteresis;
      if (++tracker == o.growth_interval) {
        scale = std::min(scale * o.growth_factor, static_cast<double>(o.max_scale));
        tracker = 0;
        hyst = o.hysteresis;
      }
    }
    out.push_back(static_cast<float>(scale));
  }
  return out;
}

std::vector<float> run_trajectory(const LossScalerOptions& o, const std::vector<bool>& ovf) {
  Fixture f;
  optim::SGD opt(f.ptrs, {.lr = 0.1});
  LossScaler s(o);
  std::vector<float> out;
  for (bool bad : ovf) {
    scripted_step(s, opt, f, bad);
    out.push_back(s.scale());
  }
  return out;
}

std::vector<bool> pattern(const std::string& p) {  // 'x' overflow, '.' clean
  std::vector<bool> v;
  for (char c : p) v.push_back(c == 'x');
  return v;
}

}  // namespace

TEST(LossScaler, DefaultsArePyTorchGradScaler) {
  LossScaler s;
  EXPECT_EQ(s.scale(), 65536.0f);
  EXPECT_EQ(s.options().growth_interval, 2000);
  EXPECT_EQ(s.options().growth_factor, 2.0f);
  EXPECT_EQ(s.options().backoff_factor, 0.5f);
  EXPECT_EQ(s.options().hysteresis, 1);
  EXPECT_EQ(s.options().min_scale, 1.0f);
  EXPECT_EQ(s.options().max_scale, 16777216.0f);
}

TEST(LossScaler, HandWrittenTrajectory) {
  LossScalerOptions o;
  o.init_scale = 8;
  o.growth_interval = 3;
  o.min_scale = 2;
  o.max_scale = 32;
  // clean x3 -> 16; overflow -> 8; clean x2, overflow (tracker reset) -> 4; x -> 2 (floor);
  // x -> 2 (stays at floor); clean x3 -> 4; x6 clean -> 16; x3 -> 32 (ceiling); x3 -> 32.
  const auto got = run_trajectory(o, pattern("...x..xxx..."
                                             "......"
                                             "..."
                                             "..."));
  const std::vector<float> want = {8, 8, 16, 8, 8, 8,  4,  2,  2,  2,  2,  4,
                                   4, 4, 8,  8, 8, 16, 16, 16, 32, 32, 32, 32};
  EXPECT_EQ(got, want);
}

TEST(LossScaler, TrajectoryMatchesRulesOnLongScript) {
  // A pseudo-random script with runs of clean steps long enough to grow, for several option
  // sets: plain, hysteresis 3, consecutive hysteresis, tight floor and ceiling.
  std::vector<bool> script;
  uint64_t x = 12345;
  for (int i = 0; i < 400; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    script.push_back(((x >> 33) % 7) == 0);
  }
  for (int variant = 0; variant < 4; ++variant) {
    LossScalerOptions o;
    o.init_scale = 1024;
    o.growth_interval = 5;
    o.max_overflows_at_floor = 1000;
    if (variant == 1) o.hysteresis = 3;
    if (variant == 2) o.hysteresis = 2, o.consecutive_hysteresis = true;
    if (variant == 3) o.min_scale = 256, o.max_scale = 4096, o.growth_factor = 4;
    EXPECT_EQ(run_trajectory(o, script), reference_trajectory(o, script)) << "variant " << variant;
  }
}

TEST(LossScaler, HysteresisDelaysBackoff) {
  LossScalerOptions o;
  o.init_scale = 64;
  o.hysteresis = 3;
  o.growth_interval = 100;
  // Two overflows are tolerated, the third backs off; the tolerance is not refilled by clean
  // steps (DeepSpeed default) until the scale grows, so the next overflow backs off at once.
  EXPECT_EQ(run_trajectory(o, pattern("xxx.x")), (std::vector<float>{64, 64, 32, 32, 16}));
  o.consecutive_hysteresis = true;  // refilled by each clean step
  EXPECT_EQ(run_trajectory(o, pattern("xxx.xx")), (std::vector<float>{64, 64, 32, 32, 32, 32}));
}

TEST(LossScaler, GrowthRefusedWhenNonFinite) {
  LossScalerOptions o;
  o.init_scale = 3e38f;
  o.max_scale = kInf;
  o.growth_interval = 1;
  EXPECT_EQ(run_trajectory(o, pattern("..")), (std::vector<float>{3e38f, 3e38f}));
}

TEST(LossScaler, FloorErrorNamesParameterAndKind) {
  LossScalerOptions o;
  o.init_scale = 4;
  o.min_scale = 1;
  o.max_overflows_at_floor = 3;
  Fixture f;
  optim::SGD opt(f.ptrs, {.lr = 0.1});
  LossScaler s(o);
  auto overflow_nan = [&] {
    f.set_grads(0.25f, DType::f32, s.scale(), 1, kNaN);
    s.step(opt);
    s.update();
  };
  overflow_nan();  // 4 -> 2
  overflow_nan();  // 2 -> 1
  overflow_nan();  // at floor: 1
  overflow_nan();  // 2
  EXPECT_EQ(s.scale(), 1.0f);
  try {
    overflow_nan();  // 3rd at the floor
    FAIL() << "expected NumericalError";
  } catch (const NumericalError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'p1'"), std::string::npos) << m;
    EXPECT_NE(m.find("NaN"), std::string::npos) << m;
    EXPECT_NE(m.find("floor"), std::string::npos) << m;
  }
  // A clean step at the floor resets the count.
  LossScaler s2(o);
  s2.load_state({.scale = 1, .overflows_at_floor = 2});
  f.set_grads(0.25f);
  s2.step(opt);
  s2.update();
  EXPECT_EQ(s2.state().overflows_at_floor, 0);
}

TEST(LossScaler, StepReportsSkipAndWhy) {
  Fixture f;
  optim::SGD opt(f.ptrs, {.lr = 0.5});
  LossScaler s({.init_scale = 8, .growth_interval = 100});
  const std::vector<float> before = opt.master_value(0).to_vector();
  f.set_grads(0.25f, DType::f32, s.scale(), 0, -kInf);
  optim::StepResult r = s.step(opt);
  s.update();
  EXPECT_FALSE(r.applied);
  EXPECT_EQ(r.reason, optim::SkipReason::inf_grad);
  EXPECT_EQ(r.bad_param, "p0");
  EXPECT_EQ(r.scale, 8.0f);
  EXPECT_NE(r.str().find("skipped: Inf gradient in 'p0'"), std::string::npos) << r.str();
  EXPECT_EQ(opt.master_value(0).to_vector(), before);  // untouched
  EXPECT_EQ(opt.steps(), 0);
  EXPECT_TRUE(s.last_overflowed());
  EXPECT_EQ(s.scale(), 4.0f);

  // Clean: applied, norm of the unscaled gradient (8 values of 0.25 -> sqrt(8)/4).
  f.set_grads(0.25f, DType::f32, s.scale());
  r = s.step(opt);
  s.update();
  EXPECT_TRUE(r.applied);
  EXPECT_EQ(r.reason, optim::SkipReason::none);
  EXPECT_NEAR(r.grad_norm, std::sqrt(8.0) * 0.25, 1e-7);
  EXPECT_EQ(r.scale, 4.0f);
  // SGD: 1 - 0.5 * 0.25 (the 1/scale fold is exact for a power of two).
  EXPECT_EQ(opt.master_value(0).to_vector(), std::vector<float>(4, 0.875f));
}

TEST(LossScaler, UnscaleOncePerStepThenClip) {
  Fixture f;
  optim::SGD opt(f.ptrs, {.lr = 1.0});
  LossScaler s({.init_scale = 16});
  f.set_grads(3.0f, DType::f32, s.scale());  // unscaled norm sqrt(8)*3
  const auto& st = s.unscale(opt);
  EXPECT_NEAR(st.norm(), std::sqrt(8.0) * 3, 1e-6);
  try {
    s.unscale(opt);
    FAIL() << "second unscale must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already called"), std::string::npos) << e.what();
  }
  const double norm = opt.clip_grad_norm(1.0);  // after unscale: sees the unscaled norm
  EXPECT_NEAR(norm, std::sqrt(8.0) * 3, 1e-6);
  const optim::StepResult r = s.step(opt);
  s.update();
  ASSERT_TRUE(r.applied);
  EXPECT_LT(r.clip_coef, 1.0f);
  // Clipped gradient has norm 1: each of the 8 elements is 1/sqrt(8).
  const float want = static_cast<float>(1.0 - 3.0 * (1.0 / (std::sqrt(8.0) * 3 + 1e-6)));
  for (float v : opt.master_value(0).to_vector()) EXPECT_NEAR(v, want, 1e-6f);
  EXPECT_THROW(s.update(), Error);  // nothing recorded since the last update
}

TEST(LossScaler, Bf16AndFp32GradientsAtScaleOne) {
  for (DType dt : {DType::bf16, DType::f32, DType::f16}) {
    Fixture f(dt);
    optim::AdamW opt(f.ptrs);
    LossScaler s({.mode = amp::LossScaling::none});
    EXPECT_EQ(s.scale(), 1.0f);
    f.set_grads(0.5f, dt);
    const optim::StepResult r = s.step(opt);
    s.update();
    EXPECT_TRUE(r.applied) << dtype_name(dt);
    EXPECT_NEAR(r.grad_norm, std::sqrt(8.0) * 0.5, 1e-6) << dtype_name(dt);
    EXPECT_EQ(s.scale(), 1.0f);
  }
}

TEST(LossScaler, AccumulationKeepsScaleAndMatchesFullBatch) {
  // Two micro-batches of half-gradients accumulated under a fixed scale, unscaled and
  // stepped once at the boundary, give the same update as one full batch.
  Fixture a, b;
  optim::AdamW oa(a.ptrs, {.lr = 0.01, .weight_decay = 0.1});
  optim::AdamW ob(b.ptrs, {.lr = 0.01, .weight_decay = 0.1});
  LossScaler sa({.init_scale = 1024}), sb({.init_scale = 1024});
  for (int step = 0; step < 3; ++step) {
    const float scale = sa.scale();
    Tensor acc = Tensor::zeros({4}, DType::f32);
    for (int micro = 0; micro < 2; ++micro) {
      EXPECT_EQ(sa.scale(), scale);  // fixed within the window
      std::vector<float> g = acc.to_vector();
      for (auto& v : g) v += 0.5f * (0.3f + step) * scale;
      acc = Tensor::from_vector(g, {4});
    }
    for (auto& p : a.ps) p.weight.grad() = acc.clone();
    sa.step(oa);
    sa.update();
    b.set_grads(0.3f + step, DType::f32, sb.scale());
    sb.step(ob);
    sb.update();
  }
  EXPECT_EQ(oa.master_value(0).to_vector(), ob.master_value(0).to_vector());
}

TEST(LossScaler, SharedByTwoOptimizers) {
  Fixture f1, f2;
  optim::SGD o1(f1.ptrs, {.lr = 0.1});
  optim::AdamW o2(f2.ptrs);
  LossScaler s({.init_scale = 64});
  f1.set_grads(0.25f, DType::f32, s.scale());
  f2.set_grads(0.25f, DType::f32, s.scale(), 0, kInf);
  const auto r1 = s.step(o1);
  const auto r2 = s.step(o2);
  s.update();
  EXPECT_TRUE(r1.applied);      // its own gradients were clean
  EXPECT_FALSE(r2.applied);     // skips on its own overflow
  EXPECT_EQ(s.scale(), 32.0f);  // backs off: one of them overflowed
  EXPECT_EQ(o1.steps(), 1);
  EXPECT_EQ(o2.steps(), 0);
}

TEST(LossScaler, FixedModeKeepsScaleAndStillSkips) {
  Fixture f;
  optim::SGD opt(f.ptrs, {.lr = 0.1});
  LossScaler s({.mode = amp::LossScaling::fixed, .init_scale = 128, .growth_interval = 1});
  EXPECT_FALSE(scripted_step(s, opt, f, true).applied);
  EXPECT_TRUE(scripted_step(s, opt, f, false).applied);
  EXPECT_TRUE(scripted_step(s, opt, f, false).applied);
  EXPECT_EQ(s.scale(), 128.0f);
}

TEST(LossScaler, StateRoundTrips) {
  amp::LossScalerState st{.scale = 1234.5f,
                          .growth_tracker = 17,
                          .hysteresis_left = 2,
                          .overflows_at_floor = 1,
                          .steps = 99,
                          .skipped_steps = 4};
  EXPECT_EQ(amp::LossScalerState::from_tensors(st.to_tensors()), st);
  EXPECT_EQ(amp::LossScalerState::from_map(st.to_map()), st);
  const auto t = st.to_tensors("opt0.scaler.");
  EXPECT_EQ(t[0].first, "opt0.scaler.scale");
  EXPECT_EQ(t[0].second.dtype(), DType::f32);
  EXPECT_EQ(t[1].second.dtype(), DType::i64);
  EXPECT_THROW(amp::LossScalerState::from_tensors(t), IOError);  // wrong prefix: missing
  auto m = st.to_map();
  m["scale"] = "abc";
  EXPECT_THROW(amp::LossScalerState::from_map(m), IOError);

  // A restored scaler continues exactly as the original would.
  LossScalerOptions o{.init_scale = 16, .growth_interval = 3};
  Fixture f;
  optim::SGD opt(f.ptrs, {.lr = 0.1});
  LossScaler a(o);
  scripted_step(a, opt, f, false);
  scripted_step(a, opt, f, false);
  LossScaler b(o);
  b.load_state(amp::LossScalerState::from_tensors(a.state().to_tensors()));
  scripted_step(a, opt, f, false);
  scripted_step(b, opt, f, false);
  EXPECT_EQ(a.state(), b.state());
  EXPECT_EQ(b.scale(), 32.0f);
  EXPECT_THROW(b.load_state({.scale = 0}), ConfigError);
}

TEST(LossScaler, BadOptionsThrow) {
  EXPECT_THROW(LossScaler({.init_scale = -1}), ConfigError);
  EXPECT_THROW(LossScaler({.backoff_factor = 1.5f}), ConfigError);
  EXPECT_THROW(LossScaler({.min_scale = 8, .max_scale = 4}), ConfigError);
  EXPECT_THROW(LossScaler({.hysteresis = 0}), ConfigError);
}

// The same script against torch.amp.GradScaler("cpu") (torch >= 2.3). Debian's torch is 1.13,
// so this skips here; it runs wherever a newer torch is installed.
TEST(LossScaler, MatchesTorchGradScalerWhenAvailable) {
  // Version from the package metadata: importing torch takes seconds.
  const char* probe =
      "/usr/bin/python3 -c \"import importlib.metadata as m,sys; v=tuple(int(x) for x in "
      "m.version('torch').split('+')[0].split('.')[:2]); sys.exit(0 if v>=(2,3) else 1)\" "
      ">/dev/null 2>&1";
  if (std::system(probe) != 0) GTEST_SKIP() << "torch >= 2.3 not installed for /usr/bin/python3";
  const std::string script_bits = "....x...xx......x.x.........x....";
  const std::string py = std::string(::testing::TempDir()) + "/gradscaler.py";
  {
    std::ofstream f(py);
    f << "import torch\n"
         "s = torch.amp.GradScaler('cpu', init_scale=1024., growth_interval=4)\n"
         "p = torch.nn.Parameter(torch.ones(4))\n"
         "opt = torch.optim.SGD([p], lr=0.1)\n"
         "for c in '"
      << script_bits
      << "':\n"
         "    opt.zero_grad()\n"
         "    p.grad = torch.full((4,), 0.25 * s.get_scale())\n"
         "    if c == 'x': p.grad[2] = float('inf')\n"
         "    s.step(opt); s.update()\n"
         "    print(repr(s.get_scale()))\n";
  }
  FILE* pipe = popen(("/usr/bin/python3 " + py).c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::vector<float> torch_scales;
  char buf[128];
  while (fgets(buf, sizeof buf, pipe)) torch_scales.push_back(std::stof(buf));
  ASSERT_EQ(pclose(pipe), 0);
  LossScalerOptions o{.init_scale = 1024, .growth_interval = 4, .max_scale = kInf};
  o.min_scale = std::numeric_limits<float>::min();  // torch has no floor
  EXPECT_EQ(run_trajectory(o, pattern(script_bits)), torch_scales);
}
