// Every OpenMP-threaded kernel, on inputs above its parallel threshold, run with 1 thread and
// with 4: the results must be bit-identical (the kernels split work by a fixed block size, never
// by the thread count, and sum partials in a fixed order). The rest of the suite mostly runs
// these kernels on inputs below their thresholds, i.e. on one thread; here each runs on a team.
// scripts/tsan.sh runs this file under ThreadSanitizer, which checks the parallel regions for
// data races (the comparison here checks the results).
//
// Thresholds (src/cpu/): element-wise maps and sums 2^15 elements (elementwise.cpp, reduce.cpp),
// nn kernels 2^14 (softmax.cpp, layer_norm.cpp, embedding.cpp, attention.cpp), dtype conversion
// 2^18 (convert.cpp), strided copies 2^18 bytes (copy.cpp), optimizer update, gradient scan and
// diagnostics 2^18 parameters (optimizer.cpp), gradient accumulation 2^16 (elementwise.cpp).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixtrain/amp/diagnostics.h"
#include "mixtrain/nn/parameter.h"
#include "mixtrain/ops.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/random.h"

using namespace mixtrain;

namespace {

constexpr int kTeam = 4;  // more threads than the 2 cores: more interleavings under TSan

Tensor random_tensor(const Shape& shape, DType dt, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = scale * rng.normal();
  return Tensor::from_vector(v, shape, dt);
}

Variable leaf(const Shape& shape, DType dt, uint64_t seed, float scale = 1.0f) {
  return Variable(random_tensor(shape, dt, seed, scale), /*requires_grad=*/true);
}

// sum(y * w) for a fixed random w of y's shape and dtype: a scalar whose gradient seeds y's
// backward with varied values.
Variable weighted_sum(const Variable& y, uint64_t seed) {
  return sum(mul(y, Variable(random_tensor(y.shape(), y.dtype(), seed))));
}

std::string bytes_of(const Tensor& t) {
  if (!t.defined()) return "undefined";
  const Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.nbytes()) + "|" + c.str();
}

// Runs f with 1 thread and with kTeam threads; every tensor it returns must match bit for bit.
void expect_same_on_any_team(const char* what, const std::function<std::vector<Tensor>()>& f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<Tensor> one = f();
  omp_set_num_threads(kTeam);
  const std::vector<Tensor> team = f();
  omp_set_num_threads(saved);
  ASSERT_EQ(one.size(), team.size()) << what;
  for (size_t i = 0; i < one.size(); ++i) {
    ASSERT_TRUE(one[i].defined()) << what << " result " << i;
    EXPECT_TRUE(bytes_of(one[i]) == bytes_of(team[i]))
        << what << ": result " << i << " (" << one[i].str() << ") differs between 1 and " << kTeam
        << " threads";
  }
}

}  // namespace

TEST(Threads, DtypeConversionsAndStridedCopies) {
  const int64_t n = (int64_t{1} << 18) + 77;
  for (DType dt : {DType::bf16, DType::f16}) {
    expect_same_on_any_team("fp32 <-> 16-bit (SIMD path)", [&] {
      const Tensor x = random_tensor({n}, DType::f32, 1, 100.0f);
      const Tensor h = x.to(dt);
      return std::vector<Tensor>{h, h.to(DType::f32)};
    });
    expect_same_on_any_team("f64 -> 16-bit (scalar path)", [&] {
      return std::vector<Tensor>{random_tensor({n}, DType::f64, 2).to(dt)};
    });
  }
  expect_same_on_any_team("strided copies", [&] {
    const Tensor x = random_tensor({1024, 300}, DType::f32, 3);
    const Tensor b = random_tensor({700, 400}, DType::bf16, 4);
    return std::vector<Tensor>{x.transpose(0, 1).contiguous(), x.slice(1, 3, 259).contiguous(),
                               b.slice(0, 1, 699).transpose(0, 1).contiguous()};
  });
}

TEST(Threads, ElementwiseOpsForwardAndBackward) {
  const Shape shape{300, 257};  // 77100 elements
  for (DType dt : {DType::f32, DType::bf16}) {
    expect_same_on_any_team("relu, gelu, tanh, exp, broadcast add/mul, dropout", [&] {
      Variable x = leaf(shape, dt, 10), row = leaf({257}, dt, 11), col = leaf({300, 1}, dt, 12);
      Rng drop(13);
      Variable y = add(mul(relu(x), row), gelu(add(x, col)));
      y = add(add(y, tanh(x)), exp(mul(x, 0.25f)));
      y = dropout(y, 0.25f, /*training=*/true, drop);
      weighted_sum(y, 14).backward();
      return std::vector<Tensor>{y.data(), x.grad(), row.grad(), col.grad()};
    });
  }
}

TEST(Threads, ReductionsSlicesAndConcat) {
  for (DType dt : {DType::f32, DType::bf16}) {
    expect_same_on_any_team("sum and mean over axes", [&] {
      Variable x = leaf({64, 40, 33}, dt, 20);
      Variable a = sum(x, {0}), b = sum(x, {2}), c = mean(x, {0, 2}), d = sum(x, {1}, true);
      Variable loss = add(add(weighted_sum(a, 21), weighted_sum(b, 22)),
                          add(weighted_sum(c, 23), weighted_sum(d, 24)));
      loss.backward();
      return std::vector<Tensor>{a.data(), b.data(), c.data(), d.data(), x.grad()};
    });
    expect_same_on_any_team("slice and concat", [&] {
      Variable x = leaf({400, 256}, dt, 25), y = leaf({400, 100}, dt, 26);
      Variable s = slice(x, 1, 10, 200);
      Variable c = concat({s, y, x}, 1);
      weighted_sum(c, 27).backward();
      return std::vector<Tensor>{c.data(), x.grad(), y.grad()};
    });
  }
}

TEST(Threads, AccumulatedGradients) {
  // x feeds three ops, so its gradient is summed from three contributions (> 2^16 elements).
  expect_same_on_any_team("gradient accumulation", [&] {
    Variable x = leaf({300, 300}, DType::f32, 30);
    Variable y = add(add(mul(x, 2.0f), relu(x)), tanh(x));
    weighted_sum(y, 31).backward();
    return std::vector<Tensor>{x.grad()};
  });
}

TEST(Threads, NnOpsForwardAndBackward) {
  for (DType dt : {DType::f32, DType::bf16}) {
    expect_same_on_any_team("softmax, log_softmax, layer_norm", [&] {
      Variable x = leaf({256, 300}, dt, 40, 3.0f);
      Variable w = leaf({300}, DType::f32, 41), b = leaf({300}, DType::f32, 42);
      Variable s = softmax(x), ls = log_softmax(x, 0), ln = layer_norm(x, w, b);
      add(add(weighted_sum(s, 43), weighted_sum(ls, 44)), weighted_sum(ln, 45)).backward();
      return std::vector<Tensor>{s.data(), ls.data(), ln.data(), x.grad(), w.grad(), b.grad()};
    });
    expect_same_on_any_team("embedding and cross_entropy", [&] {
      // C = 256: four 64-column blocks for the embedding backward's threads.
      Variable table = leaf({500, 256}, dt, 50);
      Rng rng(51);
      Tensor ids = Tensor::empty({64, 32}, DType::i64),
             targets = Tensor::empty({64, 32}, DType::i64);
      for (int64_t i = 0; i < ids.numel(); ++i) {
        ids.data<int64_t>()[i] = static_cast<int64_t>(rng.below(500));
        targets.data<int64_t>()[i] = static_cast<int64_t>(rng.below(256));
      }
      targets.data<int64_t>()[5] = -100;  // an ignored row
      Variable e = embedding(Variable(ids), table);
      Variable loss = cross_entropy(e, Variable(targets));
      loss.backward();
      return std::vector<Tensor>{e.data(), loss.data(), table.grad()};
    });
  }
}

TEST(Threads, AttentionForwardAndBackward) {
  for (DType dt : {DType::f32, DType::bf16}) {
    // [B, H, T, D] = [4, 8, 8, 16]: T·T·D < 4096, the per-head loops; [2, 8, 64, 16]: the GEMMs;
    // [2, 4, 40, 32]: D a multiple of 32, the fused kernels on AVX-512 and AVX2 CPUs.
    for (const Shape& shape : {Shape{4, 8, 8, 16}, Shape{2, 8, 64, 16}, Shape{2, 4, 40, 32}}) {
      for (bool causal : {true, false}) {
        expect_same_on_any_team("scaled_dot_product_attention", [&] {
          Variable q = leaf(shape, dt, 60), k = leaf(shape, dt, 61), v = leaf(shape, dt, 62);
          Variable o = scaled_dot_product_attention(q, k, v, causal);
          weighted_sum(o, 63).backward();
          return std::vector<Tensor>{o.data(), q.grad(), k.grad(), v.grad()};
        });
      }
    }
    expect_same_on_any_team("attention_qkv", [&] {
      Variable qkv = leaf({2, 64, 3 * 64}, dt, 64);
      Variable o = attention_qkv(qkv, /*heads=*/4);
      weighted_sum(o, 65).backward();
      return std::vector<Tensor>{o.data(), qkv.grad()};
    });
  }
}

TEST(Threads, OptimizerStepsGradientStatsAndDiagnostics) {
  // 2^18 + 1000 parameters in two tensors: 9 pieces of 2^15 for the optimizer's threads.
  const Shape shapes[2] = {{512, 500}, {7144}};
  using optim::MasterMode;
  for (MasterMode mode : {MasterMode::fp32, MasterMode::bf16_stochastic, MasterMode::bf16_kahan,
                          MasterMode::split16}) {
    for (const char* kind : {"sgd", "adamw"}) {
      const std::string what = std::string(kind) + " " + optim::master_mode_name(mode);
      expect_same_on_any_team(what.c_str(), [&] {
        const DType compute = mode == MasterMode::fp32 ? DType::f32 : DType::bf16;
        std::vector<std::unique_ptr<nn::Parameter>> ps;
        std::vector<nn::Parameter*> raw;
        for (int i = 0; i < 2; ++i) {
          ps.push_back(std::make_unique<nn::Parameter>(
              fmt::format("p{}", i), random_tensor(shapes[i], DType::f32, 70 + i), compute));
          raw.push_back(ps.back().get());
        }
        optim::CommonOptions common{.master = mode, .seed = 9};
        std::unique_ptr<optim::Optimizer> opt;
        if (std::string(kind) == "sgd")
          opt = std::make_unique<optim::SGD>(
              raw, optim::SgdOptions{.lr = 0.1, .momentum = 0.9, .common = common});
        else
          opt = std::make_unique<optim::AdamW>(
              raw, optim::AdamOptions{.lr = 1e-2, .weight_decay = 0.1, .common = common});
        std::vector<Tensor> out;
        for (int step = 0; step < 3; ++step) {
          for (int i = 0; i < 2; ++i)
            ps[i]->weight.grad() = random_tensor(shapes[i], DType::bf16, 80 + 10 * step + i, 0.1f);
          const double norm = opt->clip_grad_norm(1.0);  // gradient_stats over all pieces
          out.push_back(Tensor::full({}, static_cast<float>(norm), DType::f32));
          opt->step();
        }
        for (int i = 0; i < 2; ++i) {
          out.push_back(ps[i]->weight.data());
          out.push_back(opt->master_value(i));
        }
        // The last gradients' diagnostics (histograms, fractions, recommendation), as text.
        const std::string text = amp::diagnose_gradients(raw, 1.0f).str();
        std::vector<float> chars(text.begin(), text.end());
        out.push_back(Tensor::from_vector(chars, {static_cast<int64_t>(chars.size())}));
        return out;
      });
    }
  }
}
