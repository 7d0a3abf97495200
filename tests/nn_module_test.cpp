// nn::Sequential and the activation modules, and module state files (save_module, load_module).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "mixtrain/io/safetensors.h"
#include "mixtrain/nn/layers.h"
#include "mixtrain/ops.h"

using namespace mixtrain;
namespace fs = std::filesystem;

namespace {

// Modules own their children and parameters, so they are not copied: built in place.
void make_net(nn::Sequential& net, uint64_t seed) {
  Rng rng(seed);
  net.add<nn::Linear>(6, 8, true, rng);
  net.add<nn::GELU>();
  net.add<nn::Linear>(8, 4, true, rng);
  net.add<nn::Tanh>();
  net.add<nn::Linear>(4, 3, false, rng);
  net.add<nn::ReLU>();
}

std::string temp_file(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("mixtrain_nn_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

}  // namespace

TEST(Sequential, RunsItsModulesInOrderAndNamesParametersByPosition) {
  nn::Sequential net;
  make_net(net, 1);
  EXPECT_EQ(net.size(), 6u);
  std::vector<std::string> names;
  for (auto& [n, p] : net.named_parameters()) names.push_back(n);
  EXPECT_EQ(names,
            (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias", "4.weight"}));
  const Variable x(Tensor::from_vector({0.5f, -1, 2, 0.25f, 1, -0.5f, 1, 2, 3, 4, 5, 6}, {2, 6}));
  auto* l0 = dynamic_cast<nn::Linear*>(net.find("0"));
  auto* l2 = dynamic_cast<nn::Linear*>(net.find("2"));
  auto* l4 = dynamic_cast<nn::Linear*>(net.find("4"));
  ASSERT_TRUE(l0 && l2 && l4);
  const Variable want = relu(l4->forward(tanh(l2->forward(gelu(l0->forward(x))))));
  EXPECT_EQ(net.forward(x).data().to_vector(), want.data().to_vector());
}

TEST(Sequential, TrainsUnderAPolicyWithGradientsInFp32) {
  nn::Sequential net;
  make_net(net, 2);
  net.set_compute_dtype(DType::bf16);
  amp::PolicyScope bf16(amp::Policy::bf16());
  Variable loss = mse_loss(net.forward(Variable(Tensor::full({5, 6}, 0.5f, DType::f32))),
                           Variable(Tensor::full({5, 3}, 0.1f, DType::f32)));
  EXPECT_EQ(loss.dtype(), DType::f32);
  loss.backward();
  for (nn::Parameter* p : net.parameters()) {
    ASSERT_TRUE(p->grad().defined()) << p->name;
    EXPECT_EQ(p->grad().dtype(), DType::f32) << p->name;
  }
}

TEST(ModuleState, SaveAndLoadRoundTripAndRefreshTheComputeCopies) {
  nn::Sequential a, b;
  make_net(a, 3);
  make_net(b, 4);
  b.set_compute_dtype(DType::bf16);
  const std::string path = temp_file("net.safetensors");
  nn::save_module(a, path);
  nn::load_module(b, path);
  auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pb[i].second->master.to_vector(), pa[i].second->master.to_vector()) << pa[i].first;
    EXPECT_EQ(pb[i].second->weight.data().to_vector(),
              pa[i].second->master.to(DType::bf16).to_vector())
        << pa[i].first;
  }
  // The file is plain safetensors: fp32 tensors by dotted name.
  const SafetensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.get("2.weight").dtype(), DType::f32);
  EXPECT_EQ(f.get("2.weight").shape(), (Shape{4, 8}));
}

TEST(ModuleState, LoadRefusesAnotherStructureAndChangesNothing) {
  nn::Sequential a;
  make_net(a, 5);
  const std::string path = temp_file("net5.safetensors");
  nn::save_module(a, path);
  Rng rng(6);
  nn::Sequential wider;
  wider.add<nn::Linear>(6, 9, true, rng);
  const auto before = wider.parameters()[0]->master.to_vector();
  try {
    nn::load_module(wider, path);
    FAIL() << "a [9, 6] weight loaded from a [8, 6] tensor";
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("0.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[9, 6]"), std::string::npos) << m;
  }
  EXPECT_EQ(wider.parameters()[0]->master.to_vector(), before);
  nn::Sequential deeper;
  make_net(deeper, 7);
  deeper.add<nn::Linear>(3, 2, true, rng);
  try {
    nn::load_module(deeper, path);
    FAIL() << "a missing tensor accepted";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("6.weight"), std::string::npos) << e.what();
  }
}

// The seam sharded data parallelism stands on: a module's hooks run around its forward (once
// when forwards of one module nest) and before the backward of each op its forward recorded,
// and a parameter's storage can be released and materialized again under the tensors the
// tape saved.
TEST(ModuleHooks, RunAroundForwardAndBeforeTheBackwardOfWhatItRecorded) {
  Rng rng(3);
  nn::Linear fc(4, 3, true, rng);
  std::vector<std::string> events;
  nn::ModuleHooks h;
  h.pre_forward = [&] { events.push_back("pre_forward"); };
  h.post_forward = [&] { events.push_back("post_forward"); };
  h.pre_backward =
      std::make_shared<const std::function<void()>>([&] { events.push_back("pre_backward"); });
  fc.set_hooks(h);
  const Variable x(Tensor::full({2, 4}, 0.5f, DType::f32), true);
  Variable y = fc.forward(x);
  ASSERT_EQ(events, (std::vector<std::string>{"pre_forward", "post_forward"}));
  // An op recorded outside the forward carries no hook.
  Variable loss = sum(mul(y, y));
  events.clear();
  loss.backward();
  // The linear op (one node) ran its hook once before its backward; sum and mul none.
  EXPECT_EQ(events, std::vector<std::string>{"pre_backward"});
  EXPECT_TRUE(fc.weight.grad().defined());
  fc.set_hooks({});
  events.clear();
  (void)fc.forward(x);
  EXPECT_TRUE(events.empty());
}

TEST(ModuleHooks, ReleasedWeightsThrowUntilMaterializedAgain) {
  Rng rng(4);
  nn::Linear fc(4, 3, false, rng);
  const Variable x(Tensor::full({2, 4}, 0.25f, DType::f32), true);
  const std::vector<float> want = fc.forward(x).data().to_vector();
  Variable y = sum(fc.forward(x));  // the tape keeps the weight for the input's gradient
  const std::shared_ptr<Storage> st = fc.weight.weight.data().storage();
  const std::vector<float> w = fc.weight.weight.data().to_vector();
  st->release();
  EXPECT_FALSE(st->resident());
  try {
    (void)fc.forward(x);
    FAIL() << "a released weight was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("storage is released"), std::string::npos) << e.what();
  }
  // Materialized and refilled (as an all-gather does), the same tensors serve forward and
  // the backward recorded before the release.
  st->materialize();
  fc.weight.weight.data().copy_from(Tensor::from_vector(w, fc.weight.weight.shape()));
  EXPECT_EQ(fc.forward(x).data().to_vector(), want);
  y.backward();
  EXPECT_TRUE(x.grad().defined());
}
