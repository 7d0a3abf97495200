// Choosing where a run computes: --device cpu|cuda[:N] (parse_device_spec, select_device),
// --precision auto's rule per device (amp::auto_policy, with made-up GPUs and CPUs), moving a
// module between devices, and the CLI's answer when the GPU it is asked for is not there (the
// case on every machine without one, and in every build without MIXTRAIN_CUDA).
#include <gtest/gtest.h>

#include <unistd.h>

#include <fmt/format.h>

#include <filesystem>
#include <string>

#include "cli_run.h"
#include "mixtrain/amp/policy.h"
#include "mixtrain/nn/models.h"
#include "mixtrain/random.h"
#include "mixtrain/tensor.h"

namespace fs = std::filesystem;
using namespace mixtrain;

namespace {

bool has_gpu() { return device_available(Device::cuda); }

amp::AutoTarget gpu(int cc, const char* name = "Test GPU") {
  amp::AutoTarget t;
  t.cuda = true;
  t.compute_capability = cc;
  t.gpu_name = name;
  return t;
}

}  // namespace

TEST(DeviceSpec, ParsesCpuCudaAndCudaN) {
  EXPECT_EQ(parse_device_spec("cpu").device, Device::cpu);
  const DeviceSpec c = parse_device_spec("cuda");
  EXPECT_EQ(c.device, Device::cuda);
  EXPECT_EQ(c.index, -1);
  const DeviceSpec c3 = parse_device_spec("cuda:3");
  EXPECT_EQ(c3.device, Device::cuda);
  EXPECT_EQ(c3.index, 3);
  EXPECT_EQ(device_spec_str(c3), "cuda:3");
  EXPECT_EQ(device_spec_str(c), "cuda");
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "cuda1", "CPU", "", "cuda:1:2"})
    EXPECT_THROW(parse_device_spec(bad), ConfigError) << bad;
}

TEST(DeviceSpec, SelectingTheCpuSelectsNothing) {
  EXPECT_EQ(select_device(Device::cpu), -1);
  synchronize(Device::cpu);  // nothing queued, nothing to wait for
}

TEST(DeviceSpec, SelectingAMissingGpuSaysWhy) {
  if (has_gpu()) GTEST_SKIP() << "this machine has a GPU";
  try {
    select_device(Device::cuda, 0);
    FAIL() << "select_device(cuda) succeeded without a GPU";
  } catch (const BackendError& e) {
    const std::string m = e.what();
    EXPECT_TRUE(m.find("no CUDA backend") != std::string::npos ||
                m.find("CUDA device") != std::string::npos)
        << m;
  }
  EXPECT_EQ(cuda_compute_capability(), 0);
}

TEST(AutoPrecision, GpusFromAmpereTakeBf16) {
  for (int cc : {80, 86, 89, 90, 100}) {
    std::string why;
    const amp::Policy p = amp::auto_policy(gpu(cc, "NVIDIA H100"), &why);
    EXPECT_EQ(p.name, "bf16") << cc;
    EXPECT_EQ(p.compute, DType::bf16);
    EXPECT_EQ(p.scaling, amp::LossScaling::none);
    EXPECT_NE(why.find("bf16"), std::string::npos) << why;
    EXPECT_NE(why.find("NVIDIA H100"), std::string::npos) << why;
    EXPECT_NE(why.find(fmt::format("{}.{}", cc / 10, cc % 10)), std::string::npos) << why;
    EXPECT_EQ(why.find('\n'), std::string::npos) << "one line: " << why;
  }
}

TEST(AutoPrecision, VoltaAndTuringTakeFp16WithDynamicScaling) {
  for (int cc : {70, 72, 75}) {
    std::string why;
    const amp::Policy p = amp::auto_policy(gpu(cc), &why);
    EXPECT_EQ(p.name, "fp16") << cc;
    EXPECT_EQ(p.compute, DType::f16);
    EXPECT_EQ(p.scaling, amp::LossScaling::dynamic);
    EXPECT_NE(why.find("dynamic loss scaling"), std::string::npos) << why;
    EXPECT_NE(why.find("no"), std::string::npos) << why;
  }
}

TEST(AutoPrecision, GpusWithoutTensorCoresStayFp32) {
  std::string why;
  const amp::Policy p = amp::auto_policy(gpu(61), &why);
  EXPECT_EQ(p.name, "fp32");
  EXPECT_NE(why.find("tensor cores"), std::string::npos) << why;
}

TEST(AutoPrecision, TheCpuRuleIsUnchanged) {
  amp::AutoTarget native;
  native.cpu_native_bf16 = true;
  EXPECT_EQ(amp::auto_policy(native).name, "bf16");
  amp::AutoTarget avx2;
  EXPECT_EQ(amp::auto_policy(avx2).name, "fp16");
  // This machine's CPU: auto for the cpu device is what Policy::automatic() always chose.
  std::string a, b;
  EXPECT_EQ(amp::Policy::automatic(Device::cpu, &a).name, amp::Policy::automatic(&b).name);
  EXPECT_EQ(a, b);
  EXPECT_EQ(amp::Policy::parse("auto", Device::cpu, &a).name, amp::Policy::parse("auto").name);
}

TEST(ModuleTo, TheCpuKeepsEveryTensorWhereItIs) {
  Rng rng(1);
  nn::GPTConfig c;
  c.layers = 1;
  c.width = 16;
  c.heads = 2;
  c.context = 8;
  nn::GPT gpt(c, rng);
  gpt.set_compute_dtype(DType::bf16);
  std::vector<const void*> before;
  for (nn::Parameter* p : gpt.parameters()) before.push_back(p->weight.data().raw_data());
  gpt.to(Device::cpu);
  size_t i = 0;
  for (nn::Parameter* p : gpt.parameters()) {
    EXPECT_EQ(p->device(), Device::cpu);
    EXPECT_EQ(p->weight.data().raw_data(), before[i++]) << p->name;  // not copied
    EXPECT_EQ(p->compute_dtype(), DType::bf16);
    EXPECT_TRUE(p->weight.requires_grad());
  }
}

// Without a GPU (or a CUDA build), each command that takes --device says which flag and why,
// and exits 1 (a runtime error: the command line was well formed) before touching the disk.
TEST(CliDevice, CudaWithoutAGpuIsAClearError) {
  if (has_gpu()) GTEST_SKIP() << "this machine has a GPU";
  const fs::path out = fs::temp_directory_path() / ("mixtrain_device_" + std::to_string(getpid()));
  fs::remove_all(out);
  const std::string data = std::string(" --data text:") + MIXTRAIN_SOURCE_DIR +
                           "/tests/data/jargon_sample.txt --layers 1 --width 32 --heads 2 "
                           "--context 16 --batch 4 --steps 1 --quiet --out " +
                           out.string();
  for (const std::string args :
       {"train --model gpt --device cuda" + data, "train --model gpt --device cuda:1" + data,
        "compare --model gpt --precisions fp32 --device cuda" + data,
        "doctor --model gpt --doctor-steps 1 --device cuda" + data,
        std::string("bench step --model gpt --device cuda --repeats 1 --warmup 0")}) {
    const auto r = mixtrain::testing::run_cli(args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("--device cuda"), std::string::npos) << args << "\n" << r.out;
    EXPECT_TRUE(r.out.find("no CUDA backend") != std::string::npos ||
                r.out.find("CUDA device") != std::string::npos)
        << args << "\n"
        << r.out;
  }
  EXPECT_FALSE(fs::exists(out / "config.json"));
  fs::remove_all(out);
}

TEST(CliDevice, AnUnknownDeviceIsABadFlag) {
  const auto r = mixtrain::testing::run_cli("train --device tpu --steps 1 --quiet");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("--device"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tpu"), std::string::npos) << r.out;
}
