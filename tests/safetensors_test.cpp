// safetensors: round trips of every dtype, interchange with Python's safetensors package, every
// class of malformed file, checksums, and atomic replacement under write failures (RLIMIT_FSIZE,
// a full tmpfs).
#include "mixtrain/io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mixtrain/io/atomic_file.h"

namespace fs = std::filesystem;
using namespace mixtrain;
using ::testing::HasSubstr;

namespace {

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mixtrain_st_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }
  // Every entry in the directory (to catch leftover temp files).
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
};

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A raw safetensors file: length prefix, header text as given, data bytes.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

// Expects IOError whose message contains every fragment.
void expect_load_error(const std::string& bytes, std::vector<std::string> fragments) {
  try {
    load_safetensors_from_memory(bytes, "bad.safetensors");
    ADD_FAILURE() << "no error; expected one mentioning " << fragments[0];
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr("bad.safetensors"));
    for (const auto& f : fragments) EXPECT_THAT(e.what(), HasSubstr(f));
  }
}

// Bytes of a tensor (contiguous).
std::string bytes_of(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.nbytes());
}

// A tensor of the given dtype whose bytes follow a fixed pattern (every bit pattern is a valid
// value for a byte-level round trip, NaN payloads included).
Tensor patterned(DType dt, const Shape& shape, uint8_t salt) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(i * 37 + salt);
  return t;
}

bool python_has_safetensors() {
  return std::system("/usr/bin/python3 -c 'import safetensors.torch, torch' >/dev/null 2>&1") == 0;
}

int run_python(const TempDir& dir, const std::string& script, const std::string& args) {
  const std::string py = dir.file("check.py");
  write_all(py, script);
  return std::system(("/usr/bin/python3 " + py + " " + args).c_str());
}

const DType kAllDTypes[] = {DType::f32,  DType::f64, DType::bf16, DType::f16, DType::e4m3,
                            DType::e5m2, DType::i32, DType::i64,  DType::u8};

}  // namespace

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> ts;
  uint8_t salt = 1;
  for (DType dt : kAllDTypes)
    ts.emplace_back(std::string("t_") + dtype_name(dt), patterned(dt, {3, 5}, salt++));
  ts.emplace_back("scalar", Tensor::from_vector({2.5f}, {}, DType::f32));
  ts.emplace_back("empty", Tensor::empty({0, 4}, DType::bf16));
  // A transposed view: the writer must store its values in logical (row-major) order.
  Tensor base = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  ts.emplace_back("transposed", base.transpose(0, 1));
  const std::map<std::string, std::string> meta = {{"step", "42"}, {"format", "pt"}};
  const std::string path = dir.file("all.safetensors");
  save_safetensors(path, ts, meta);

  // Data starts 8-byte aligned.
  const std::string raw = read_all(path);
  uint64_t hl = 0;
  std::memcpy(&hl, raw.data(), 8);
  EXPECT_EQ(hl % 8, 0u);

  SafetensorsFile f = load_safetensors(path);
  EXPECT_TRUE(f.checksummed());
  EXPECT_EQ(f.metadata(), meta);  // checksums are not user metadata
  ASSERT_EQ(f.size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(f.names()[i], ts[i].first);  // order kept
  for (const auto& [name, t] : ts) {
    const Tensor& g = f.get(name);
    EXPECT_EQ(g.dtype(), t.dtype()) << name;
    EXPECT_EQ(g.shape(), t.shape()) << name;
    EXPECT_EQ(bytes_of(g), bytes_of(t)) << name;
  }
  EXPECT_EQ(f.get("transposed").to_vector(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  EXPECT_EQ(f.require("t_bf16", DType::bf16, {3, 5}).numel(), 15);
  // Only the directory's final file remains.
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"all.safetensors"});
}

TEST(Safetensors, LookupAndRequireNameTheFault) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_safetensors(path, {{"w", Tensor::zeros({2, 3}, DType::bf16)}});
  SafetensorsFile f = load_safetensors(path);
  try {
    f.get("bias");
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr("'bias'"));
    EXPECT_THAT(e.what(), HasSubstr("w"));  // lists what is there
  }
  try {
    f.require("w", DType::f32, {2, 3});
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr("'w' is BF16 [2, 3] but F32 [2, 3] was expected"));
  }
  try {
    f.require("w", DType::bf16, {3, 2});
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr("BF16 [2, 3] but BF16 [3, 2]"));
  }
}

TEST(Safetensors, SaveRejectsBadInput) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  Tensor t = Tensor::zeros({2}, DType::f32);
  EXPECT_THROW(save_safetensors(path, {{"a", t}, {"a", t}}), IOError);
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", t}}), IOError);
  EXPECT_THROW(save_safetensors(path, {{"u", Tensor()}}), IOError);
  EXPECT_THROW(save_safetensors(path, {{"a", t}}, {{"mixtrain.crc32.a", "0"}}), IOError);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(dir.entries().empty());
  try {
    save_safetensors(dir.file("no/such/dir/x.safetensors"), {{"a", t}});
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no/such/dir/x.safetensors"));
    EXPECT_THAT(e.what(), HasSubstr("No such file or directory"));
  }
}

TEST(Safetensors, FlippedBitNamesTheTensor) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  save_safetensors(path, {{"first", patterned(DType::f32, {64}, 3)},
                          {"second", patterned(DType::bf16, {64}, 5)}});
  std::string raw = read_all(path);
  // Flip one bit in the last byte: it belongs to "second".
  raw[raw.size() - 1] ^= 0x10;
  write_all(path, raw);
  try {
    load_safetensors(path);
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr("'second' fails its checksum"));
  }
  // A checksum removed for one tensor while the other keeps its own.
  const std::string crc_a = "e8b7be43";  // CRC32 of "a"
  expect_load_error(raw_file(R"({"__metadata__": {"mixtrain.crc32.a": ")" + crc_a + R"("},
                   "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                   "b": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                             "ab"),
                    {"'b' has no checksum while others do"});
  expect_load_error(raw_file(R"({"__metadata__": {"mixtrain.crc32.a": "xyz"},
                   "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}})",
                             "a"),
                    {"not 8 hex digits"});
}

TEST(Safetensors, MalformedFilesGiveClearErrors) {
  const std::string eight(8, 'x');
  const std::string f32x2 = R"("t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  // Sanity: the well-formed base loads.
  EXPECT_EQ(load_safetensors_from_memory(raw_file("{" + f32x2 + "}", eight)).size(), 1u);

  expect_load_error(std::string(5, '\0'), {"5 bytes, too short"});
  {  // header length runs past the end of the file
    std::string b = raw_file("{}", "");
    b[0] = 100;
    expect_load_error(b, {"header length 100 runs past the end of the file (10 bytes)"});
  }
  {  // absurd header length in a tiny file: rejected without allocating it
    std::string b = raw_file("{}", "");
    b[7] = 0x7f;
    expect_load_error(b, {"exceeds the bound of 100000000 bytes"});
  }
  expect_load_error(raw_file("{\"t\": ", ""), {"not valid JSON"});
  expect_load_error(raw_file("[1, 2]", ""), {"JSON array, not an object"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}})", "ab"),
      {"tensor 't'", "unknown dtype 'BOOL'"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", eight),
      {"tensor 't'", "negative extent"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", eight),
      {"non-integer extent"});
  expect_load_error(
      raw_file(
          R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})",
          eight),
      {"tensor 't'", "overflows"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "F64", "shape": [2305843009213693952], "data_offsets": [0, 8]}})",
               eight),
      {"overflows 64-bit byte counts"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", eight),
      {"tensor 't'", "[0, 16] run past the end of the data (8 bytes)"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", eight),
      {"end before they begin"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", eight),
      {"not two non-negative integers"});
  expect_load_error(
      raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", eight),
      {"hold 4 bytes but F32 [2] needs 8"});
  expect_load_error(raw_file(R"({"t": {"dtype": "F32", "shape": [2]}})", eight), {"lacks"});
  expect_load_error(raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                             eight),
                    {"overlap"});
  expect_load_error(raw_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                 "b": {"dtype": "U8", "shape": [2], "data_offsets": [6, 8]}})",
                             eight),
                    {"tensor 'b'", "leave a gap after byte 4"});
  expect_load_error(raw_file("{" + f32x2 + "}", eight + "zz"), {"2 trailing bytes"});
  expect_load_error(raw_file("{" + f32x2 + "," + f32x2 + "}", eight), {"names 't' twice"});
  expect_load_error(raw_file(R"({"__metadata__": {"k": 3}})", ""),
                    {"'k' is a number, not a string"});
  expect_load_error(raw_file(R"({"__metadata__": {"mixtrain.crc32.zz": "00000000"}})", ""),
                    {"tensor the file does not have"});
  expect_load_error(raw_file(std::string(40, '[') + std::string(40, ']'), ""), {"nests deeper"});
}

TEST(Safetensors, ZeroElementShapeWithUnrepresentableStrides) {
  // Found by review and confirmed with fuzz/safetensors_fuzz: a zero extent makes numel 0, so the
  // byte-count checks pass, but the strides of [0, 2^62, 2^62] are 2^124: this used to reach
  // signed overflow (UB) in Tensor::empty. It must be an IOError like any other bad shape.
  expect_load_error(raw_file(R"({"t": {"dtype": "F32", "shape": [0, 4611686018427387904,
                                   4611686018427387904], "data_offsets": [0, 0]}})",
                             ""),
                    {"tensor 't'", "overflows 64-bit strides"});
  // Zero extents beside modest ones stay valid.
  const SafetensorsFile f = load_safetensors_from_memory(raw_file(
      R"({"t": {"dtype": "F32", "shape": [0, 1048576, 1048576], "data_offsets": [0, 0]}})", ""));
  EXPECT_EQ(f.get("t").numel(), 0);
}

TEST(Safetensors, FileErrorsNameThePath) {
  TempDir dir;
  const std::string path = dir.file("trunc.safetensors");
  save_safetensors(path, {{"w", patterned(DType::f32, {16}, 9)}});
  std::string raw = read_all(path);
  write_all(path, raw.substr(0, raw.size() - 3));  // truncated data
  try {
    load_safetensors(path);
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr("run past the end of the data"));
  }
  try {
    load_safetensors(dir.file("missing.safetensors"));
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr("missing.safetensors"));
    EXPECT_THAT(e.what(), HasSubstr("No such file"));
  }
  EXPECT_THROW(load_safetensors(dir.path()), IOError);  // a directory
}

TEST(Safetensors, PythonFilesLoad) {
  if (!python_has_safetensors()) GTEST_SKIP() << "/usr/bin/python3 lacks safetensors or torch";
  TempDir dir;
  const std::string out = dir.file("py.safetensors");
  // Values i * 0.5 - 3 (exact in every float dtype here) and i - 7 for the integer dtypes.
  const char* script = R"(import sys, torch
from safetensors.torch import save_file
def f(dt, shape):
    n = 1
    for s in shape: n *= s
    v = torch.arange(n, dtype=torch.float64) * 0.5 - 3
    return v.to(dt).reshape(shape)
def i(dt, shape):
    n = 1
    for s in shape: n *= s
    return (torch.arange(n, dtype=torch.int64) - 7).to(dt).reshape(shape) if dt != torch.uint8 else torch.arange(n, dtype=torch.uint8).reshape(shape)
t = {"f32": f(torch.float32, [2, 3]), "f64": f(torch.float64, [4]), "f16": f(torch.float16, [3, 1, 2]),
     "bf16": f(torch.bfloat16, [5]), "i32": i(torch.int32, [2, 2]), "i64": i(torch.int64, [3]),
     "u8": i(torch.uint8, [9]), "scalar": torch.tensor(1.25)}
save_file(t, sys.argv[1], metadata={"origin": "python"})
)";
  ASSERT_EQ(run_python(dir, script, out), 0);
  SafetensorsFile f = load_safetensors(out);
  EXPECT_FALSE(f.checksummed());
  EXPECT_EQ(f.metadata().at("origin"), "python");
  auto fvals = [](int64_t n) {
    std::vector<float> v;
    for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<float>(i) * 0.5f - 3.0f);
    return v;
  };
  EXPECT_EQ(f.require("f32", DType::f32, {2, 3}).to_vector(), fvals(6));
  EXPECT_EQ(f.require("f64", DType::f64, {4}).to_vector(), fvals(4));
  EXPECT_EQ(f.require("f16", DType::f16, {3, 1, 2}).to_vector(), fvals(6));
  EXPECT_EQ(f.require("bf16", DType::bf16, {5}).to_vector(), fvals(5));
  EXPECT_EQ(f.require("scalar", DType::f32, {}).item(), 1.25f);
  const Tensor& i32 = f.require("i32", DType::i32, {2, 2});
  for (int k = 0; k < 4; ++k) EXPECT_EQ(i32.data<int32_t>()[k], k - 7);
  const Tensor& i64 = f.require("i64", DType::i64, {3});
  for (int k = 0; k < 3; ++k) EXPECT_EQ(i64.data<int64_t>()[k], k - 7);
  const Tensor& u8 = f.require("u8", DType::u8, {9});
  for (int k = 0; k < 9; ++k) EXPECT_EQ(u8.data<uint8_t>()[k], k);
}

TEST(Safetensors, OurFilesLoadInPython) {
  if (!python_has_safetensors()) GTEST_SKIP() << "/usr/bin/python3 lacks safetensors or torch";
  TempDir dir;
  const std::string path = dir.file("ours.safetensors");
  std::vector<float> v;
  for (int i = 0; i < 12; ++i) v.push_back(static_cast<float>(i) * 0.25f - 1.0f);
  Tensor i64 = Tensor::empty({3}, DType::i64);
  for (int k = 0; k < 3; ++k) i64.data<int64_t>()[k] = (int64_t{1} << 40) + k;
  Tensor u8 = Tensor::empty({2}, DType::u8);
  u8.data<uint8_t>()[0] = 7;
  u8.data<uint8_t>()[1] = 255;
  save_safetensors(path,
                   {{"w.f32", Tensor::from_vector(v, {3, 4}, DType::f32)},
                    {"w.bf16", Tensor::from_vector(v, {12}, DType::bf16)},
                    {"w.f16", Tensor::from_vector(v, {4, 3}, DType::f16)},
                    {"w.f64", Tensor::from_vector(v, {2, 6}, DType::f64)},
                    {"idx", i64},
                    {"bytes", u8}},
                   {{"note", "from mixtrain"}});
  // torch 1.13 has no float8 types, so the fp8 dtypes are covered by the round trip only.
  const char* script = R"(import sys, torch
from safetensors import safe_open
from safetensors.torch import load_file
t = load_file(sys.argv[1])
ref = torch.arange(12, dtype=torch.float64) * 0.25 - 1
assert t["w.f32"].dtype == torch.float32 and list(t["w.f32"].shape) == [3, 4]
assert torch.equal(t["w.f32"].flatten().double(), ref)
assert t["w.bf16"].dtype == torch.bfloat16 and torch.equal(t["w.bf16"].double(), ref)
assert t["w.f16"].dtype == torch.float16 and torch.equal(t["w.f16"].flatten().double(), ref)
assert t["w.f64"].dtype == torch.float64 and torch.equal(t["w.f64"].flatten(), ref)
assert t["idx"].tolist() == [2**40, 2**40 + 1, 2**40 + 2]
assert t["bytes"].tolist() == [7, 255]
with safe_open(sys.argv[1], framework="pt") as f:
    m = f.metadata()
assert m["note"] == "from mixtrain", m
assert all(("mixtrain.crc32." + k) in m for k in t), m
print("python: ok")
)";
  EXPECT_EQ(run_python(dir, script, path), 0);
}

// Restores RLIMIT_FSIZE and SIGXFSZ on scope exit.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &old_);
    old_handler_ = signal(SIGXFSZ, SIG_IGN);  // so write() fails with EFBIG instead of killing us
    rlimit r = old_;
    r.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &r);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old_);
    signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit old_;
  sighandler_t old_handler_;
};

TEST(Safetensors, FailedWriteLeavesOldFileAndNoTemp) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, {{"w", patterned(DType::f32, {8}, 1)}}, {{"version", "old"}});
  const std::string before = read_all(path);
  {
    // The write fails part way through the data: the file-size limit stops it at 4 KiB.
    FileSizeLimit limit(4096);
    try {
      save_safetensors(path, {{"w", patterned(DType::f32, {64 * 1024}, 2)}}, {{"version", "new"}});
      FAIL() << "write past RLIMIT_FSIZE succeeded";
    } catch (const IOError& e) {
      EXPECT_THAT(e.what(), HasSubstr(path));
      EXPECT_THAT(e.what(), HasSubstr(std::strerror(EFBIG)));
    }
  }
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(load_safetensors(path).metadata().at("version"), "old");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  // An AtomicFile dropped without commit leaves nothing either.
  {
    AtomicFile f(dir.file("other.bin"));
    f.write("abc", 3);
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
}

TEST(Safetensors, FullDiskLeavesOldFile) {
  // A 64 KiB tmpfs in a private mount namespace (gone when the test process exits). Needs
  // root or CAP_SYS_ADMIN; skipped otherwise.
  if (::unshare(CLONE_NEWNS) != 0) GTEST_SKIP() << "unshare(CLONE_NEWNS): " << std::strerror(errno);
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    GTEST_SKIP() << "make mounts private: " << std::strerror(errno);
  TempDir dir;
  if (::mount("tmpfs", dir.path().c_str(), "tmpfs", 0, "size=64k") != 0)
    GTEST_SKIP() << "mount tmpfs: " << std::strerror(errno);
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, {{"w", patterned(DType::bf16, {1024}, 1)}});
  const std::string before = read_all(path);
  try {
    save_safetensors(path, {{"w", patterned(DType::f32, {64 * 1024}, 2)}});  // 256 KiB
    FAIL() << "a 256 KiB file fit in a 64 KiB tmpfs";
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr(std::strerror(ENOSPC)));
  }
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(load_safetensors(path).get("w").numel(), 1024);
  ::umount2(dir.path().c_str(), MNT_DETACH);
}
