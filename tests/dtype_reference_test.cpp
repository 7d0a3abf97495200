// mixtrain's conversions against libraries no one here wrote: numpy's float16 and ml_dtypes'
// bfloat16, float8_e4m3fn and float8_e5m2. Writes the inputs and our results to a temp dir
// and runs tests/python/dtype_reference.py on them with /usr/bin/python3; skipped when python3,
// numpy or ml_dtypes are missing. NaNs are compared as "NaN of the same sign" (see the script).
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "mixtrain/dtype.h"
#include "mixtrain/random.h"

using namespace mixtrain;
namespace fs = std::filesystem;

namespace {

template <class V>
void write(const fs::path& p, const std::vector<V>& v) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()),
          static_cast<std::streamsize>(v.size() * sizeof(V)));
  ASSERT_TRUE(f.good()) << "writing " << p;
}

// Each code's value, the midpoints to its neighbour and one fp32 ulp either side: every
// rounding decision of the format, both signs.
template <class T>
void add_grid(std::vector<float>& v, uint32_t n_codes) {
  for (uint32_t c = 0; c + 1 < n_codes / 2; ++c) {
    const float a = static_cast<float>(T::from_bits(static_cast<decltype(T().bits())>(c)));
    const float b = static_cast<float>(T::from_bits(static_cast<decltype(T().bits())>(c + 1)));
    if (!std::isfinite(a) || !std::isfinite(b)) continue;
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    for (float x : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
}

}  // namespace

TEST(DtypeReference, MatchesNumpyAndMlDtypes) {
  const char* python = "/usr/bin/python3";
  const fs::path script = fs::path(MIXTRAIN_SOURCE_DIR) / "tests/python/dtype_reference.py";
  if (!fs::exists(python)) GTEST_SKIP() << python << " not found";
  ASSERT_TRUE(fs::exists(script)) << script;

  std::vector<float> in;
  add_grid<bf16>(in, 1u << 16);
  add_grid<fp16>(in, 1u << 16);
  add_grid<fp8_e4m3>(in, 256);
  add_grid<fp8_e5m2>(in, 256);
  for (uint32_t u : {0x7f800000u, 0xff800000u, 0x7f800001u, 0xffc00000u, 0x7fa00000u, 0x00000001u,
                     0x80400000u, 0x007fffffu, 0x7f7fffffu})
    in.push_back(std::bit_cast<float>(u));
  Rng rng(2024);
  for (int i = 0; i < 300000; ++i) in.push_back(std::bit_cast<float>(rng.next_u32()));
  // Values of the sizes training sees: normals scaled from 2^-30 to 2^20.
  for (int i = 0; i < 300000; ++i)
    in.push_back(std::ldexp(rng.normal(), static_cast<int>(rng.below(51)) - 30));

  const fs::path dir =
      fs::temp_directory_path() / ("mixtrain_dtype_ref_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write(dir / "in_f32.bin", in);
  auto encode_all = [&](auto t0, const char* name) {
    using T = decltype(t0);
    using B = decltype(T().bits());
    std::vector<B> enc(in.size());
    for (size_t i = 0; i < in.size(); ++i) enc[i] = T(in[i]).bits();
    write(dir / (std::string("enc_") + name + ".bin"), enc);
    std::vector<float> dec(size_t{1} << (8 * sizeof(B)));
    for (size_t i = 0; i < dec.size(); ++i)
      dec[i] = static_cast<float>(T::from_bits(static_cast<B>(i)));
    write(dir / (std::string("dec_") + name + ".bin"), dec);
  };
  encode_all(bf16{}, "bf16");
  encode_all(fp16{}, "f16");
  encode_all(fp8_e4m3{}, "e4m3");
  encode_all(fp8_e5m2{}, "e5m2");

  const fs::path log = dir / "log.txt";
  const std::string cmd = std::string(python) + " " + script.string() + " " + dir.string() + " > " +
                          log.string() + " 2>&1";
  const int status = std::system(cmd.c_str());
  std::stringstream out;
  out << std::ifstream(log).rdbuf();
  fs::remove_all(dir);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 77) GTEST_SKIP() << out.str();
  EXPECT_EQ(code, 0) << out.str();
  std::printf("%s", out.str().c_str());
}
