// Activation checkpointing (nn/checkpoint.h): gradients bit-identical to the run without it in
// fp32, bf16 and fp16 (with dropout, every:N, fp16 loss scale, compute-dtype gradients and
// accumulation over micro-batches); an overflow inside a recomputed block skips the step the
// same way; the tape keeps fewer activation bytes.
#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "mixtrain/amp/loss_scaler.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/nn/checkpoint.h"
#include "mixtrain/nn/models.h"
#include "mixtrain/ops.h"
#include "mixtrain/optim/optimizer.h"

namespace mixtrain {
namespace {

// A small GPT: a step is a few milliseconds, yet every op of the block is exercised.
nn::GPTConfig small_gpt(float dropout) {
  nn::GPTConfig c;
  c.layers = 4;
  c.width = 32;
  c.heads = 4;
  c.context = 16;
  c.dropout = dropout;
  return c;
}

struct Batch {
  Tensor ids, targets;
};

Batch make_batch(int64_t B, int64_t T, uint64_t seed) {
  Rng r(seed);
  Batch b{Tensor::empty({B, T}, DType::i64), Tensor::empty({B, T}, DType::i64)};
  for (int64_t i = 0; i < B * T; ++i) {
    b.ids.data<int64_t>()[i] = static_cast<int64_t>(r.below(256));
    b.targets.data<int64_t>()[i] = static_cast<int64_t>(r.below(256));
  }
  return b;
}

// Raw bytes of a tensor (contiguous copy), so comparisons are bitwise, NaN included.
std::vector<unsigned char> bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  std::vector<unsigned char> out(c.nbytes());
  std::memcpy(out.data(), c.raw_data(), c.nbytes());
  return out;
}

struct GptRun {
  std::vector<float> losses;
  std::vector<std::pair<std::string, std::vector<unsigned char>>> grads;
  uint64_t dropout_counter = 0;
  std::map<std::string, int64_t> kept;  // tape bytes at the end of the first forward
};

struct RunOptions {
  const char* precision = "fp32";
  float dropout = 0.0f;
  int64_t checkpoint_every = 0;
  bool recompute_gelu = false;
  float scale = 1.0f;
  int micro_batches = 1;
  bool compute_grads = false;  // parameter gradients in the compute dtype
};

// Forward + backward over `micro_batches` micro-batches, gradients accumulated.
GptRun run_gpt(const RunOptions& o) {
  const amp::Policy policy = amp::Policy::parse(o.precision);
  Rng init(7);
  nn::GPT model(small_gpt(o.dropout), init);
  model.set_compute_dtype(policy.compute);
  model.set_checkpoint_every(o.checkpoint_every);
  model.set_recompute_gelu(o.recompute_gelu);
  if (o.compute_grads)
    for (nn::Parameter* p : model.parameters()) p->set_grad_dtype(policy.compute);
  Rng drng(99);
  GptRun run;
  for (int m = 0; m < o.micro_batches; ++m) {
    const Batch b = make_batch(3, 16, 1000 + m);
    const MemoryStats before = memory_stats();
    Variable loss;
    {
      amp::PolicyScope scope(policy);
      loss = cross_entropy(model.forward(Variable(b.ids), drng), Variable(b.targets));
    }
    if (m == 0) run.kept = memory_growth_by_dtype(before);
    run.losses.push_back(loss.data().item());
    loss.backward(o.scale);
  }
  run.dropout_counter = drng.counter;
  for (auto& [name, p] : model.named_parameters()) {
    EXPECT_TRUE(p->grad().defined()) << name;
    if (p->grad().defined()) run.grads.emplace_back(name, bytes_of(p->grad()));
  }
  return run;
}

int64_t total(const std::map<std::string, int64_t>& m) {
  int64_t n = 0;
  for (const auto& [k, v] : m) n += v;
  return n;
}

void expect_identical(const GptRun& a, const GptRun& b, const std::string& what) {
  ASSERT_EQ(a.losses.size(), b.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_EQ(std::memcmp(&a.losses[i], &b.losses[i], sizeof(float)), 0)
        << what << ": loss " << i << " " << a.losses[i] << " vs " << b.losses[i];
  EXPECT_EQ(a.dropout_counter, b.dropout_counter) << what << ": dropout stream position";
  ASSERT_EQ(a.grads.size(), b.grads.size()) << what;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    EXPECT_EQ(a.grads[i].first, b.grads[i].first);
    EXPECT_TRUE(a.grads[i].second == b.grads[i].second)
        << what << ": gradient of " << a.grads[i].first << " differs";
  }
}

struct Case {
  const char* precision;
  float dropout;
  int64_t every;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.precision << " dropout " << c.dropout << " every " << c.every;
}

class CheckpointExact : public ::testing::TestWithParam<Case> {};

TEST_P(CheckpointExact, GradientsBitIdentical) {
  const Case c = GetParam();
  RunOptions o;
  o.precision = c.precision;
  o.dropout = c.dropout;
  // fp16 runs carry a loss scale, as in training.
  o.scale = std::string(c.precision) == "fp16" ? 1024.0f : 1.0f;
  const GptRun plain = run_gpt(o);
  o.checkpoint_every = c.every;
  const GptRun ckpt = run_gpt(o);
  const std::string what = std::string(c.precision) + " dropout " + std::to_string(c.dropout) +
                           " every " + std::to_string(c.every);
  expect_identical(plain, ckpt, what);
  // And it must have kept less: the blocks' intermediates are gone.
  EXPECT_LT(total(ckpt.kept), total(plain.kept)) << what;
}

INSTANTIATE_TEST_SUITE_P(Precisions, CheckpointExact,
                         ::testing::Values(Case{"fp32", 0.0f, 1}, Case{"bf16", 0.0f, 1},
                                           Case{"fp16", 0.0f, 1}, Case{"fp32", 0.1f, 1},
                                           Case{"bf16", 0.1f, 1}, Case{"fp16", 0.1f, 1},
                                           Case{"fp32", 0.1f, 2}, Case{"bf16", 0.1f, 3},
                                           Case{"fp16", 0.0f, 2}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(i.param.precision) +
                                  (i.param.dropout > 0 ? "_dropout" : "") + "_every" +
                                  std::to_string(i.param.every);
                         });

TEST(Checkpoint, ExactWithAccumulationAndComputeDtypeGradients) {
  for (const char* prec : {"bf16", "fp16"}) {
    RunOptions o;
    o.precision = prec;
    o.dropout = 0.1f;
    o.micro_batches = 2;
    o.compute_grads = true;
    o.scale = 256.0f;
    const GptRun plain = run_gpt(o);
    o.checkpoint_every = 1;
    expect_identical(plain, run_gpt(o), std::string(prec) + " two micro-batches, compute grads");
  }
}

// Checkpointed blocks keep their inputs in the compute dtype: the bf16 run keeps about half
// the fp32 run's bytes, and almost all of them bf16 (fp32 only for the loss's internals).
TEST(Checkpoint, KeptBytesShrinkWithCheckpointingAndBf16) {
  RunOptions o;
  o.checkpoint_every = 1;
  o.precision = "fp32";
  const GptRun f32 = run_gpt(o);
  o.precision = "bf16";
  const GptRun b16 = run_gpt(o);
  o.checkpoint_every = 0;
  const GptRun b16_plain = run_gpt(o);
  EXPECT_LT(total(b16.kept), total(f32.kept));
  ASSERT_TRUE(b16.kept.count("bf16"));
  EXPECT_GT(b16.kept.at("bf16"), 0);
  EXPECT_LT(b16.kept.at("bf16"), b16_plain.kept.at("bf16") / 2);
}

// The trainer's step around a GPT whose block 1 overflows fp16: the forward (huge fc weights)
// or only the backward (a loss scale the block's gradients cannot hold).
struct ScaledStep {
  optim::StepResult result;
  amp::LossScalerState scaler;
  float loss = 0;
  std::vector<std::pair<std::string, std::vector<unsigned char>>> masters;
};

ScaledStep overflow_step(int64_t every, float fc_gain, float init_scale) {
  const amp::Policy policy = amp::Policy::fp16();
  Rng init(7);
  nn::GPT model(small_gpt(0.1f), init);
  nn::Parameter& w = model.blocks[1]->fc.weight;
  {
    NoGradGuard ng;
    std::vector<float> v = w.master.to_vector();
    for (float& x : v) x *= fc_gain;
    w.master.copy_from(Tensor::from_vector(v, w.master.shape()));
  }
  model.set_compute_dtype(policy.compute);
  model.set_checkpoint_every(every);
  auto opt = optim::make_optimizer("adamw", model.parameters(), 1e-3, 0.0, 0.0);
  amp::LossScalerOptions so = amp::LossScaler::options_for(policy);
  so.init_scale = init_scale;
  amp::LossScaler scaler(so);
  Rng drng(99);
  const Batch b = make_batch(3, 16, 5);
  ScaledStep s;
  {
    Variable loss;
    {
      amp::PolicyScope scope(policy);
      loss = cross_entropy(model.forward(Variable(b.ids), drng), Variable(b.targets));
    }
    s.loss = loss.data().item();
    loss.backward(scaler.scale());
  }
  scaler.unscale(*opt);
  s.result = scaler.step(*opt);
  scaler.update();
  s.scaler = scaler.state();
  for (auto& [name, p] : model.named_parameters())
    s.masters.emplace_back(name, bytes_of(p->master));
  return s;
}

void expect_same_step(const ScaledStep& a, const ScaledStep& b) {
  EXPECT_EQ(a.result.applied, b.result.applied);
  EXPECT_EQ(a.result.reason, b.result.reason);
  EXPECT_EQ(a.result.bad_param, b.result.bad_param);
  EXPECT_EQ(a.result.str(), b.result.str());
  EXPECT_TRUE(a.scaler == b.scaler);
  EXPECT_EQ(std::memcmp(&a.loss, &b.loss, sizeof(float)), 0);
  ASSERT_EQ(a.masters.size(), b.masters.size());
  for (size_t i = 0; i < a.masters.size(); ++i)
    EXPECT_TRUE(a.masters[i].second == b.masters[i].second) << a.masters[i].first;
}

TEST(Checkpoint, Fp16OverflowInRecomputedForwardSkipsTheSameWay) {
  const ScaledStep plain = overflow_step(0, 3.0e5f, 1024.0f);
  const ScaledStep ckpt = overflow_step(1, 3.0e5f, 1024.0f);
  ASSERT_FALSE(plain.result.applied) << "the injected fc weights must overflow fp16";
  EXPECT_FALSE(std::isfinite(plain.loss));
  expect_same_step(plain, ckpt);
  EXPECT_EQ(ckpt.scaler.skipped_steps, 1);
}

TEST(Checkpoint, Fp16OverflowInRecomputedBackwardSkipsTheSameWay) {
  // A finite forward whose scaled gradients overflow inside the blocks: the loss is finite,
  // the step is skipped, the scale backs off, identically with and without recompute.
  const ScaledStep plain = overflow_step(0, 1.0f, 16777216.0f);
  const ScaledStep ckpt = overflow_step(1, 1.0f, 16777216.0f);
  ASSERT_TRUE(std::isfinite(plain.loss));
  ASSERT_FALSE(plain.result.applied) << "scale 2^24 must overflow the fp16 gradients";
  expect_same_step(plain, ckpt);
  EXPECT_EQ(ckpt.scaler.scale, 8388608.0f);
  // And a clean step still matches (sanity: the comparison can see a difference at all).
  const ScaledStep clean_plain = overflow_step(0, 1.0f, 64.0f);
  const ScaledStep clean_ckpt = overflow_step(2, 1.0f, 64.0f);
  ASSERT_TRUE(clean_plain.result.applied);
  expect_same_step(clean_plain, clean_ckpt);
  EXPECT_FALSE(clean_plain.masters == plain.masters) << "an applied step moves the weights";
}

// The free function on a piece of a model, and the module form in inference.
TEST(Checkpoint, FreeFunctionAndInference) {
  Rng r(3);
  nn::Linear a(8, 16, true, r), b(16, 8, true, r);
  const Tensor xin = Tensor::from_vector(std::vector<float>(4 * 8, 0.25f), {4, 8});
  auto f = [&](const Variable& v) { return b.forward(gelu(a.forward(v))); };
  std::vector<Variable> params = a.parameter_variables();
  for (const Variable& p : b.parameter_variables()) params.push_back(p);
  Variable x1(xin, true), x2(xin, true);
  sum(f(x1), {}).backward();
  std::vector<std::vector<unsigned char>> g1;
  for (nn::Parameter* p : a.parameters()) g1.push_back(bytes_of(p->grad()));
  for (nn::Parameter* p : b.parameters()) g1.push_back(bytes_of(p->grad()));
  for (nn::Parameter* p : a.parameters()) p->zero_grad();
  for (nn::Parameter* p : b.parameters()) p->zero_grad();
  Variable y = nn::checkpoint(f, x2, params);
  ASSERT_TRUE(y.grad_fn());
  EXPECT_EQ(y.grad_fn()->op, "checkpoint");
  EXPECT_TRUE(static_cast<bool>(y.grad_fn()->recompute));
  sum(y, {}).backward();
  std::vector<std::vector<unsigned char>> g2;
  for (nn::Parameter* p : a.parameters()) g2.push_back(bytes_of(p->grad()));
  for (nn::Parameter* p : b.parameters()) g2.push_back(bytes_of(p->grad()));
  EXPECT_TRUE(g1 == g2);
  EXPECT_TRUE(bytes_of(x1.grad()) == bytes_of(x2.grad()));

  // Inference: no tape, so nothing to recompute; the output is the plain forward's.
  Rng init(7);
  nn::GPT model(small_gpt(0.0f), init);
  const Batch bt = make_batch(2, 16, 3);
  Rng d1(1), d2(1);
  NoGradGuard ng;
  const Tensor plain = model.forward(Variable(bt.ids), d1).data();
  model.set_checkpoint_every(1);
  const Variable out = model.forward(Variable(bt.ids), d2);
  EXPECT_FALSE(out.grad_fn());
  EXPECT_TRUE(bytes_of(plain) == bytes_of(out.data()));
}

TEST(Checkpoint, ParseSpec) {
  auto parsed = [](const char* s) {
    const nn::ActivationCheckpointing a = nn::parse_activation_checkpointing(s);
    return std::pair{a.every, a.gelu};
  };
  EXPECT_EQ(parsed("none"), std::pair(int64_t{0}, false));
  EXPECT_EQ(parsed("gelu"), std::pair(int64_t{0}, true));
  EXPECT_EQ(parsed("blocks"), std::pair(int64_t{1}, false));
  EXPECT_EQ(parsed("every:3"), std::pair(int64_t{3}, false));
  EXPECT_FALSE(nn::parse_activation_checkpointing("none").any());
  EXPECT_TRUE(nn::parse_activation_checkpointing("gelu").any());
  for (const char* bad :
       {"", "every:", "every:0", "every:-1", "every:2x", "all", "Blocks", "GELU", "gelu:2"})
    EXPECT_THROW(nn::parse_activation_checkpointing(bad), ConfigError) << bad;
}

// The MLP's GELU computed again in backward (gelu_linear): the same bits as keeping it, in
// every precision, with dropout, accumulation over micro-batches and under block
// checkpointing; and the tape holds exactly one [B, T, 4C] activation less per block.
TEST(Checkpoint, RecomputedGeluIsExactAndKeepsOneActivationLessPerBlock) {
  for (const char* prec : {"fp32", "bf16", "fp16"}) {
    RunOptions o;
    o.precision = prec;
    o.dropout = 0.1f;
    o.micro_batches = 2;
    o.scale = std::string(prec) == "fp16" ? 1024.0f : 1.0f;
    const GptRun plain = run_gpt(o);
    o.recompute_gelu = true;
    const GptRun gelu = run_gpt(o);
    expect_identical(plain, gelu, std::string(prec) + " gelu recomputed");
    const nn::GPTConfig c = small_gpt(0.1f);
    const DType dt = amp::Policy::parse(prec).compute;
    const int64_t per_block = 3 * 16 * 4 * c.width * static_cast<int64_t>(dtype_size(dt));
    EXPECT_EQ(total(plain.kept) - total(gelu.kept), c.layers * per_block) << prec;
    o.checkpoint_every = 2;
    expect_identical(plain, run_gpt(o), std::string(prec) + " gelu and every:2");
  }
}

}  // namespace
}  // namespace mixtrain
