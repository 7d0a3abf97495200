// The optimizer's shared per-element math (mixtrain/detail/update_math.h), which the CUDA update
// kernel runs element by element, against the CPU's update kernels at every ISA level this
// machine runs: many random elements (and special values), every rule and variant, every home
// (master mode and compute-copy dtype), every gradient dtype, several steps; every output bit
// must match. Also the branch-free roundings against scalar.h's, and the histogram
// classification (mixtrain/detail/grad_math.h) against the rule it encodes.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "cpu/optimizer.h"
#include "mixtrain/amp/diagnostics.h"
#include "mixtrain/detail/grad_math.h"
#include "mixtrain/detail/update_math.h"
#include "mixtrain/dtype.h"
#include "mixtrain/random.h"

// The reference loop below runs the shared functions inlined into this file's functions, so
// this file must not contract a*b+c either (the kernels under test do not).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

using namespace mixtrain;
namespace md = mixtrain::detail;
using optim::MasterMode;
using optim::detail::Rule;
using optim::detail::UpdateArgs;

namespace {

// ---- the reference: update_element() per element, as the CUDA kernel runs it ----------------

float load_grad(const UpdateArgs& a, int64_t i) {
  switch (a.grad_dtype) {
    case DType::bf16:
      return md::bf16_bits_to_f32(static_cast<const uint16_t*>(a.grad)[i]);
    case DType::f16:
      return md::f16_bits_to_f32(static_cast<const uint16_t*>(a.grad)[i]);
    default:
      return static_cast<const float*>(a.grad)[i];
  }
}

template <class R, md::Home H>
void ref_home(const R& r, const UpdateArgs& a) {
  for (int64_t i = 0; i < a.n; ++i)
    md::update_element<R, H>(
        r, a.master, static_cast<uint16_t*>(a.weight), static_cast<float*>(a.weight), a.aux, a.s0,
        a.s1, a.s2, i, load_grad(a, i), a.grad_mult,
        H == md::Home::stochastic ? md::update_random(a.seed, a.counter, i) : 0u);
}

template <class R>
void ref_rule(const R& r, const UpdateArgs& a) {
  switch (a.mode) {
    case MasterMode::fp32:
      if (!a.weight) return ref_home<R, md::Home::f32>(r, a);
      if (a.weight_dtype == DType::bf16) return ref_home<R, md::Home::f32_copy_bf16>(r, a);
      if (a.weight_dtype == DType::f16) return ref_home<R, md::Home::f32_copy_f16>(r, a);
      return ref_home<R, md::Home::f32_copy_f32>(r, a);
    case MasterMode::bf16_stochastic:
      return ref_home<R, md::Home::stochastic>(r, a);
    case MasterMode::bf16_kahan:
      return ref_home<R, md::Home::kahan>(r, a);
    case MasterMode::split16:
      return ref_home<R, md::Home::split16>(r, a);
  }
}

void ref_update(const Rule& rule, const UpdateArgs& a) {
  switch (rule.kind) {
    case Rule::Kind::adam: {
      const auto& h = rule.adam;
      const md::AdamConsts c =
          md::adam_consts(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.step);
      if (h.decoupled) return ref_rule(md::AdamRule<true>(c), a);
      return ref_rule(md::AdamRule<false>(c), a);
    }
    case Rule::Kind::sgd: {
      const auto& h = rule.sgd;
      const md::SgdConsts c =
          md::sgd_consts(h.lr, h.momentum, h.dampening, h.weight_decay, h.first_step);
      if (h.momentum == 0.0f) return ref_rule(md::SgdRule<false, false>(c), a);
      if (h.nesterov) return ref_rule(md::SgdRule<true, true>(c), a);
      return ref_rule(md::SgdRule<true, false>(c), a);
    }
    case Rule::Kind::rmsprop: {
      const auto& h = rule.rms;
      const md::RmsConsts c = md::rms_consts(h.lr, h.alpha, h.eps, h.weight_decay, h.momentum);
      const bool mom = h.momentum > 0.0f;
      if (h.centered)
        return mom ? ref_rule(md::RmsRule<true, true>(c), a)
                   : ref_rule(md::RmsRule<true, false>(c), a);
      return mom ? ref_rule(md::RmsRule<false, true>(c), a)
                 : ref_rule(md::RmsRule<false, false>(c), a);
    }
  }
}

// ---- one tensor's state, run by one implementation -------------------------------------------

struct State {
  std::vector<float> master, wf, s0, s1, s2;
  std::vector<uint16_t> w16, aux;
};

struct Config {
  std::string name;
  Rule rule;
  MasterMode mode;
  DType weight_dtype;  // fp32 mode's copy (f32, bf16, f16) or none (f64 stands for "no copy")
  DType grad_dtype;
};

UpdateArgs args_for(const Config& c, State& s, const std::vector<uint16_t>& g16,
                    const std::vector<float>& g32, float mult, uint64_t seed, uint64_t counter) {
  UpdateArgs a;
  a.mode = c.mode;
  a.grad_mult = mult;
  a.n = static_cast<int64_t>(s.s0.size());
  if (c.mode == MasterMode::fp32) {
    a.master = s.master.data();
    a.weight_dtype = c.weight_dtype == DType::f64 ? DType::f32 : c.weight_dtype;
    if (c.weight_dtype == DType::f32) a.weight = s.wf.data();
    if (c.weight_dtype == DType::bf16 || c.weight_dtype == DType::f16) a.weight = s.w16.data();
  } else {
    a.weight = s.w16.data();
    a.weight_dtype = DType::bf16;
    if (c.mode != MasterMode::bf16_stochastic) a.aux = s.aux.data();
  }
  a.seed = seed;
  a.counter = counter;
  a.grad_dtype = c.grad_dtype;
  a.grad = c.grad_dtype == DType::f32 ? static_cast<const void*>(g32.data()) : g16.data();
  a.s0 = s.s0.data();
  a.s1 = s.s1.data();
  a.s2 = s.s2.data();
  return a;
}

template <class T>
::testing::AssertionResult same_bits(const char* what, const std::vector<T>& x,
                                     const std::vector<T>& y) {
  for (size_t i = 0; i < x.size(); ++i)
    if (std::memcmp(&x[i], &y[i], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << what << "[" << i << "] differs";
  return ::testing::AssertionSuccess();
}

// A gradient value: mostly O(1) random values, some tiny, huge, zero, subnormal.
float random_grad(Rng& rng) {
  const uint64_t k = rng.below(64);
  const float u = rng.uniform() * 2.0f - 1.0f;
  if (k == 0) return 0.0f;
  if (k == 1) return u * 1e-30f;
  if (k == 2) return u * 1e-41f;  // fp32 subnormal
  if (k == 3) return u * 1e20f;
  if (k == 4) return u * 3e4f;
  return u * (k < 32 ? 1.0f : 1e-3f);
}

std::vector<Config> configs() {
  std::vector<Rule> rules;
  for (bool decoupled : {true, false}) {
    Rule r;
    r.kind = Rule::Kind::adam;
    r.adam.lr = 3e-3f;
    r.adam.weight_decay = 0.05f;
    r.adam.decoupled = decoupled;
    rules.push_back(r);
  }
  for (int v = 0; v < 4; ++v) {
    Rule r;
    r.kind = Rule::Kind::sgd;
    r.sgd.lr = 1e-2f;
    r.sgd.weight_decay = 1e-3f;
    r.sgd.momentum = v == 0 ? 0.0f : 0.9f;
    r.sgd.nesterov = v == 2;
    r.sgd.dampening = v == 3 ? 0.1f : 0.0f;
    rules.push_back(r);
  }
  for (int v = 0; v < 4; ++v) {
    Rule r;
    r.kind = Rule::Kind::rmsprop;
    r.rms.lr = 1e-3f;
    r.rms.weight_decay = 1e-2f;
    r.rms.centered = v & 1;
    r.rms.momentum = v & 2 ? 0.9f : 0.0f;
    rules.push_back(r);
  }
  std::vector<Config> out;
  for (const Rule& r : rules)
    for (DType g : {DType::f32, DType::bf16, DType::f16}) {
      const char* rn =
          r.kind == Rule::Kind::adam ? (r.adam.decoupled ? "adamw" : "adam")
          : r.kind == Rule::Kind::sgd
              ? (r.sgd.momentum == 0   ? "sgd"
                 : r.sgd.nesterov      ? "sgd_nesterov"
                 : r.sgd.dampening > 0 ? "sgd_dampened"
                                       : "sgd_momentum")
              : (r.rms.centered ? (r.rms.momentum > 0 ? "rms_centered_mom" : "rms_centered")
                                : (r.rms.momentum > 0 ? "rms_mom" : "rms"));
      const std::string base = std::string(rn) + "/grad_" + dtype_name(g);
      for (DType w : {DType::f64, DType::f32, DType::bf16, DType::f16})
        out.push_back({base + "/fp32_copy_" + (w == DType::f64 ? "none" : dtype_name(w)), r,
                       MasterMode::fp32, w, g});
      out.push_back({base + "/bf16_sr", r, MasterMode::bf16_stochastic, DType::bf16, g});
      out.push_back({base + "/bf16_kahan", r, MasterMode::bf16_kahan, DType::bf16, g});
      out.push_back({base + "/split16", r, MasterMode::split16, DType::bf16, g});
    }
  return out;
}

}  // namespace

// Every rule x home x gradient dtype, 5 steps over 1537 elements (three CPU blocks and a ragged
// tail), the shared element function against each level's kernel: all bits equal.
TEST(UpdateMath, SharedElementRuleMatchesCpuKernelsAtEveryLevel) {
  constexpr int64_t n = 1537;
  std::vector<cpu::Isa> levels;
  for (int l = 0; l < 3; ++l)  // the optimizer is built for scalar, avx2 and avx512
    if (cpu::isa_supported(static_cast<cpu::Isa>(l))) levels.push_back(static_cast<cpu::Isa>(l));
  ASSERT_FALSE(levels.empty());
  const cpu::UpdateKernel kernels[3] = {cpu::update_kernel<cpu::Isa::scalar>(),
                                        cpu::update_kernel<cpu::Isa::avx2>(),
                                        cpu::update_kernel<cpu::Isa::avx512>()};
  int checked = 0;
  for (const Config& c : configs()) {
    SCOPED_TRACE(c.name);
    Rng rng(12345 + static_cast<uint64_t>(checked));
    State init;
    init.master.resize(n);
    init.wf.resize(n);
    init.w16.resize(n);
    init.aux.resize(n);
    init.s0.assign(n, 0.0f);
    init.s1.assign(n, 0.0f);
    init.s2.assign(n, 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      const float w = (rng.uniform() * 2.0f - 1.0f) * (i % 7 == 0 ? 100.0f : 1.0f);
      init.master[i] = w;
      init.wf[i] = w;
      if (c.mode == MasterMode::split16)
        md::split16_encode(w, &init.w16[i], &init.aux[i]);
      else
        init.w16[i] = md::bf16_bits_rne(w);
    }
    std::vector<State> runs(levels.size() + 1, init);  // [0]: the reference
    for (int step = 1; step <= 5; ++step) {
      std::vector<float> g32(n);
      std::vector<uint16_t> g16(n);
      for (int64_t i = 0; i < n; ++i) {
        const float g = random_grad(rng);
        g32[i] = g;
        g16[i] = c.grad_dtype == DType::f16 ? md::f16_bits_rne(g) : md::bf16_bits_rne(g);
      }
      Rule r = c.rule;
      r.adam.step = step;
      r.sgd.first_step = step == 1;
      const float mult = step == 3 ? 1.0f : 0.5f + rng.uniform();
      const uint64_t seed = rng.next_u64(), counter = rng.next_u64() >> 8;
      ref_update(r, args_for(c, runs[0], g16, g32, mult, seed, counter));
      for (size_t l = 0; l < levels.size(); ++l) {
        SCOPED_TRACE(std::string("level ") + cpu::isa_name(levels[l]) + ", step " +
                     std::to_string(step));
        State& s = runs[l + 1];
        kernels[static_cast<int>(levels[l])](r, args_for(c, s, g16, g32, mult, seed, counter));
        ASSERT_TRUE(same_bits("master", s.master, runs[0].master));
        ASSERT_TRUE(same_bits("fp32 copy", s.wf, runs[0].wf));
        ASSERT_TRUE(same_bits("16-bit weight", s.w16, runs[0].w16));
        ASSERT_TRUE(same_bits("aux", s.aux, runs[0].aux));
        ASSERT_TRUE(same_bits("state 0", s.s0, runs[0].s0));
        ASSERT_TRUE(same_bits("state 1", s.s1, runs[0].s1));
        ASSERT_TRUE(same_bits("state 2", s.s2, runs[0].s2));
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 10 * 3 * 7);
}

// The branch-free bf16 roundings the kernels use give scalar.h's bits: 2^24 patterns spread
// over all 2^32 (randomised low bits, so that each rounding case comes up), plus the specials.
TEST(UpdateMath, BranchFreeRoundingsMatchScalarH) {
  std::vector<uint32_t> patterns = {0u,          0x80000000u, 0x7f800000u, 0xff800000u,
                                    0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7f7fffffu,
                                    0x7f7f8000u, 0x00000001u, 0x00008000u, 0x3f808000u,
                                    0x3f818000u, 0x3f80ffffu, 0x7fff0000u, 0xff7fffffu};
  Rng rng(7);
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += uint64_t{1} << 8)
    patterns.push_back(static_cast<uint32_t>(u) ^ static_cast<uint32_t>(rng.next_u64() & 0x1ffff));
  for (uint32_t u : patterns) {
    const float f = std::bit_cast<float>(u);
    ASSERT_EQ(md::bf16_rne_bits_nobranch(f), md::bf16_bits_rne(f)) << std::hex << u;
    const uint32_t r = static_cast<uint32_t>(rng.next_u64());
    ASSERT_EQ(md::bf16_stochastic_bits_nobranch(f, r), md::bf16_bits_stochastic(f, r))
        << std::hex << u << " " << r;
  }
}

// The split16 encoding is lossless and its bf16 half is the value rounded half-up.
TEST(UpdateMath, Split16RoundTripsAndHiIsHalfUp) {
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 0x10001u) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(u));
    uint16_t hi, lo;
    md::split16_encode(f, &hi, &lo);
    ASSERT_EQ(std::bit_cast<uint32_t>(md::split16_decode(hi, lo)), static_cast<uint32_t>(u));
    ASSERT_EQ(hi, static_cast<uint16_t>((u + 0x8000u) >> 16));
  }
}

// hist_classify against the rule written out in double: each class, the fp16 flags and the
// binade of |g| · inv_carried.
TEST(UpdateMath, HistogramClassification) {
  using amp::GradHistogram;
  constexpr int kMin = GradHistogram::kMinExp, kMax = GradHistogram::kMaxExp;
  const float inv = 0.25f, to16 = 1024.0f;
  const float specials[] = {0.0f,   -0.0f,           INFINITY,  -INFINITY, NAN,
                            1e-45f, 1e-38f,          1e-13f,    3e-12f,    1.0f,
                            -1.5f,  65504.0f / 1024, 4194304.f, 1e30f,     3e38f};
  std::vector<float> vals(std::begin(specials), std::end(specials));
  Rng rng(3);
  for (int i = 0; i < 200000; ++i)
    vals.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng.next_u64())));
  for (float g : vals) {
    const md::HistClass c = md::hist_classify<kMin, kMax>(g, inv, to16);
    if (std::isnan(g)) {
      ASSERT_EQ(c.kind, md::HistClass::nan);
      continue;
    }
    if (std::isinf(g)) {
      ASSERT_EQ(c.kind, md::HistClass::inf);
      continue;
    }
    if (g == 0.0f) {
      ASSERT_EQ(c.kind, md::HistClass::zero);
      continue;
    }
    ASSERT_EQ(c.kind, md::HistClass::finite) << g;
    const float y = std::fabs(g) * to16;
    EXPECT_EQ(c.fp16_zero, y < 0x1p-24f) << g;
    EXPECT_EQ(c.fp16_subnormal, y < 0x1p-14f) << g;
    EXPECT_EQ(c.fp16_overflow, y > 65504.0f) << g;
    const float u = std::fabs(g) * inv;
    ASSERT_EQ(c.u, u);
    int want;
    if (u == 0.0f || u < std::ldexp(1.0f, kMin))
      want = -1;
    else if (std::isinf(u) || u >= std::ldexp(1.0f, kMax))
      want = kMax - kMin;
    else
      want = std::ilogb(u) - kMin;
    ASSERT_EQ(c.bin, want) << g;
  }
}
