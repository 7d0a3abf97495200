// TensorBoard event files: the CRC32C and protobuf bytes against hand-computed ones, a written
// file's records framed right, and `mixtrain train` / `compare` runs read back by TensorBoard's
// own EventAccumulator (tests/tensorboard_read.py), the values checked against metrics.jsonl
// and diagnostics.jsonl.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_run.h"
#include "io/protobuf.h"
#include "mixtrain/io/tensorboard.h"
#include "train/range_view.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace mixtrain;

namespace {

std::string tmp(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("mixtrain_tb_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  return p.string();
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

uint64_t le(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int k = 0; k < bytes; ++k) v |= uint64_t(static_cast<unsigned char>(s[at + k])) << (8 * k);
  return v;
}

std::string hex(const std::string& s) {
  std::string h;
  for (unsigned char c : s) h += fmt::format("{:02x}", c);
  return h;
}

// The event files' records: each frame's length and both CRCs checked.
std::vector<std::string> records(const std::string& file) {
  const std::string b = read(file);
  std::vector<std::string> out;
  size_t at = 0;
  while (at < b.size()) {
    EXPECT_LE(at + 12, b.size()) << "truncated header";
    const uint64_t n = le(b, at, 8);
    EXPECT_EQ(le(b, at + 8, 4), io::masked_crc32c(b.data() + at, 8)) << "length CRC";
    EXPECT_LE(at + 12 + n + 4, b.size()) << "truncated record";
    const std::string data = b.substr(at + 12, n);
    EXPECT_EQ(le(b, at + 12 + n, 4), io::masked_crc32c(data.data(), data.size())) << "data CRC";
    out.push_back(data);
    at += 12 + n + 4;
  }
  return out;
}

const std::string kTiny = std::string("--model gpt --data text:") + MIXTRAIN_SOURCE_DIR +
                          "/tests/data/jargon_sample.txt --layers 2 --width 32 --heads 2 "
                          "--context 32 --batch 8 --eval-batches 2 --quiet ";

bool have_tensorboard() {
  return access("/usr/bin/python3", X_OK) == 0 &&
         std::system("/usr/bin/python3 -c 'import tensorboard' 2>/dev/null") == 0;
}

// TensorBoard's EventAccumulator over `dir`, as JSON (tests/tensorboard_read.py).
json read_with_tensorboard(const std::string& dir) {
  const std::string cmd = std::string("/usr/bin/python3 ") + MIXTRAIN_SOURCE_DIR +
                          "/tests/tensorboard_read.py " + dir + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  EXPECT_EQ(st, 0) << out;
  // The JSON is the last line (TensorBoard may log warnings before it).
  while (!out.empty() && out.back() == '\n') out.pop_back();
  const auto nl = out.rfind('\n');
  if (st != 0) return {};
  return json::parse(nl == std::string::npos ? out : out.substr(nl + 1));
}

std::vector<json> jsonl(const std::string& path) {
  std::vector<json> v;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) v.push_back(json::parse(line));
  return v;
}

}  // namespace

TEST(Tensorboard, Crc32cMatchesTheCheckVector) {
  const char* s = "123456789";
  EXPECT_EQ(io::crc32c(s, 9), 0xE3069283u);
  EXPECT_EQ(io::crc32c("", 0), 0u);
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(io::masked_crc32c(s, 9), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(Tensorboard, ProtobufFieldsEncodeAsHandComputed) {
  io::ProtoWriter w;
  w.varint_field(2, 300);  // tag 0x10, 300 = 0xac 0x02
  EXPECT_EQ(hex(w.bytes()), "10ac02");
  io::ProtoWriter neg;
  neg.varint_field(2, static_cast<uint64_t>(int64_t{-1}));  // ten bytes, as int64 -1 is
  EXPECT_EQ(hex(neg.bytes()), "10ffffffffffffffffff01");
  io::ProtoWriter d;
  d.double_field(1, 1.0);  // tag 0x09, 0x3ff0000000000000 little-endian
  EXPECT_EQ(hex(d.bytes()), "09000000000000f03f");
  io::ProtoWriter f;
  f.float_field(2, 1.5f);  // tag 0x15, 0x3fc00000 little-endian
  EXPECT_EQ(hex(f.bytes()), "150000c03f");
  io::ProtoWriter s;
  s.bytes_field(1, "loss");
  EXPECT_EQ(hex(s.bytes()), "0a046c6f7373");
  io::ProtoWriter p;
  p.packed_doubles(6, {1.0, -2.0});  // tag 0x32, 16 bytes
  EXPECT_EQ(hex(p.bytes()), "3210000000000000f03f00000000000000c0");
  io::ProtoWriter e;
  e.packed_doubles(7, {});
  EXPECT_EQ(hex(e.bytes()), "3a00");
}

TEST(Tensorboard, RecordIsFramedWithLengthAndMaskedCrcs) {
  const std::string r = io::tfrecord("abc");
  ASSERT_EQ(r.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(le(r, 0, 8), 3u);
  EXPECT_EQ(le(r, 8, 4), io::masked_crc32c(r.data(), 8));
  EXPECT_EQ(r.substr(12, 3), "abc");
  EXPECT_EQ(le(r, 15, 4), io::masked_crc32c("abc", 3));
}

TEST(Tensorboard, WrittenFileParsesBack) {
  const std::string dir = tmp("writer");
  std::string path;
  {
    io::EventWriter w(dir);
    path = w.path();
    w.scalar("loss", 7, 2.5);
    io::Histogram h;
    h.min = -3;
    h.max = 1;
    h.num = 2;
    h.bucket_limit = {-2.75, 1.25};
    h.bucket = {1, 1};
    w.histogram("grad/w", 7, h, "desc");
    w.flush();
  }
  EXPECT_NE(fs::path(path).filename().string().find("events.out.tfevents."), std::string::npos);
  const auto recs = records(path);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_NE(recs[0].find("brain.Event:2"), std::string::npos);
  // The scalar event: step 7 (field 2), a summary (field 5) holding tag "loss" and 2.5f.
  EXPECT_NE(recs[1].find(std::string("\x10\x07", 2)), std::string::npos);
  io::ProtoWriter v;
  v.bytes_field(1, "loss");
  v.float_field(2, 2.5f);
  io::ProtoWriter sum;
  sum.bytes_field(1, v.bytes());
  EXPECT_NE(recs[1].find(sum.bytes()), std::string::npos) << hex(recs[1]);
  EXPECT_NE(recs[2].find("desc"), std::string::npos);
  // A second writer in the same folder and second makes a new file, never appends.
  io::EventWriter again(dir);
  EXPECT_NE(again.path(), path);
  EXPECT_EQ(records(path).size(), 3u);
  fs::remove_all(dir);
}

TEST(Tensorboard, RangeViewCountsFlushAndOverflowPerFormat) {
  // The values carry the scale 2^10, so each is held as 2^10 times its unscaled value:
  // 2^-26 (fp16 and both fp8 flush it), 2^-20 (fp16 holds it, e4m3 and e5m2 flush it),
  // 2^-2 (all hold it), 2^16 (above fp16's 65504, e4m3's 448 and e5m2's 57344), and an Inf.
  const std::vector<float> v = {0.0f,
                                std::ldexp(1.0f, -26),
                                std::ldexp(1.0f, -20),
                                std::ldexp(1.0f, -2),
                                std::ldexp(1.0f, 16),
                                INFINITY};
  const train::RangeView r = train::range_view(v, 1024.0);
  EXPECT_EQ(r.numel, 6);
  EXPECT_EQ(r.zero, 1);
  EXPECT_EQ(r.nonfinite, 1);
  EXPECT_EQ(r.log2.num, 4);
  EXPECT_DOUBLE_EQ(r.log2.min, -36);  // unscaled
  EXPECT_DOUBLE_EQ(r.log2.max, 6);
  EXPECT_DOUBLE_EQ(r.log2.sum, -36 - 30 - 12 + 6);
  double buckets = 0;
  for (double b : r.log2.bucket) buckets += b;
  EXPECT_EQ(buckets, 4);
  const auto& f = train::format_ranges();
  ASSERT_EQ(f.size(), 4u);
  EXPECT_STREQ(f[0].name, "fp16");
  EXPECT_DOUBLE_EQ(r.underflow[0], 1.0 / 6);
  EXPECT_DOUBLE_EQ(r.overflow[0], 2.0 / 6);
  EXPECT_STREQ(f[1].name, "bf16");
  EXPECT_DOUBLE_EQ(r.underflow[1], 0.0);
  EXPECT_DOUBLE_EQ(r.overflow[1], 1.0 / 6);  // only the Inf
  EXPECT_STREQ(f[2].name, "e4m3");
  EXPECT_DOUBLE_EQ(r.underflow[2], 2.0 / 6);
  EXPECT_DOUBLE_EQ(r.overflow[2], 2.0 / 6);
  EXPECT_STREQ(f[3].name, "e5m2");
  EXPECT_DOUBLE_EQ(r.underflow[3], 2.0 / 6);
  EXPECT_DOUBLE_EQ(r.overflow[3], 2.0 / 6);
  const std::string d = train::range_description(r, "Gradient of w", 1024.0);
  // fp16's limits moved down by log2(scale) = 10 onto the unscaled axis.
  EXPECT_NE(d.find("| fp16 | 2^-34.0 | 2^-24.0 | 65504"), std::string::npos) << d;
  EXPECT_NE(d.find("| e4m3 | 2^-19.0 | 2^-16.0 | 448"), std::string::npos) << d;
  EXPECT_NE(d.find("zeros left out: 1"), std::string::npos) << d;
}

// A tiny GPT run read back by TensorBoard itself: every scalar at every logged step with
// metrics.jsonl's value, and the gradient and update histograms at each diagnose step, the
// gradient's count equal to the parameter's nonzero gradients (diagnostics.jsonl's zero share).
TEST(Tensorboard, TrainRunReadsBackInTensorBoard) {
  const std::string out = tmp("train");
  const auto r = mixtrain::testing::run_cli(
      "train " + kTiny +
      "--precision fp16 --steps 6 --log-every 2 --eval-every 3 --diagnose-every 2 --out " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  ASSERT_TRUE(fs::is_directory(out + "/tensorboard"));
  if (!have_tensorboard())
    GTEST_SKIP() << "the tensorboard Python package is not installed for /usr/bin/python3 "
                    "(scripts/setup.sh installs it): the event files were not read back";
  const json tb = read_with_tensorboard(out + "/tensorboard");
  ASSERT_TRUE(tb.contains("scalars")) << tb.dump();
  const auto metrics = jsonl(out + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 4u);  // steps 2, 3 (evaluated), 4, 6
  const auto& sc = tb["scalars"];
  auto check = [&](const char* tag, const char* key) {
    ASSERT_TRUE(sc.contains(tag)) << tag << " missing: " << sc.dump();
    std::vector<std::pair<int64_t, double>> want;
    for (const json& m : metrics)
      if (m.contains(key) && m[key].is_number()) want.emplace_back(m["step"], m[key]);
    ASSERT_EQ(sc[tag].size(), want.size()) << tag;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(sc[tag][i][0].get<int64_t>(), want[i].first) << tag;
      // simple_value is a float
      EXPECT_NEAR(sc[tag][i][1].get<double>(), want[i].second,
                  1e-6 * std::max(1.0, std::fabs(want[i].second)))
          << tag << " at step " << want[i].first;
    }
  };
  check("loss", "loss");
  check("val_loss", "val_loss");
  check("lr", "lr");
  check("loss_scale", "loss_scale");
  check("skipped_steps", "skipped_total");
  check("grad_norm", "grad_norm");
  check("throughput/tokens_per_s", "throughput");
  EXPECT_EQ(sc["val_loss"].size(), 2u);  // steps 3 and 6

  // Histograms: the diagnostics' tensors, at steps 2, 4, 6.
  const auto diags = jsonl(out + "/diagnostics.jsonl");
  ASSERT_EQ(diags.size(), 3u);
  const auto& hist = tb["histograms"];
  int checked = 0;
  for (const json& t : diags[0]["tensors"]) {
    const std::string name = t["name"], gtag = "grad/" + name, utag = "update/" + name;
    ASSERT_TRUE(hist.contains(gtag)) << gtag << " missing: " << hist.dump();
    ASSERT_TRUE(hist.contains(utag)) << utag;
    ASSERT_EQ(hist[gtag].size(), 3u);
    ASSERT_EQ(hist[utag].size(), 3u);
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_EQ(hist[gtag][k][0].get<int64_t>(), 2 * int64_t(k + 1));
      EXPECT_EQ(hist[utag][k][0].get<int64_t>(), 2 * int64_t(k + 1));
    }
    // numel from the description ("N nonzero finite values of M"), zeros from diagnostics.
    const std::string d = tb["descriptions"][gtag];
    const auto of = d.find(" values of ");
    ASSERT_NE(of, std::string::npos) << d;
    const double numel = std::stod(d.substr(of + 11));
    const double nonzero = numel - std::round(t["zero"].get<double>() * numel);
    EXPECT_EQ(hist[gtag][0][1].get<double>(), nonzero) << gtag;
    EXPECT_GT(hist[gtag][0][1].get<double>(), 0) << gtag;
    EXPECT_NE(d.find("fp16"), std::string::npos);
    EXPECT_NE(d.find("e5m2"), std::string::npos);
    EXPECT_NE(d.find("loss scale 2^"), std::string::npos) << "fp16 gradients carry the scale";
    for (const char* fmt : {"fp16", "e4m3", "e5m2"})
      for (const char* kind : {"underflow", "overflow"}) {
        const std::string tag = std::string("range/") + fmt + "_" + kind + "/" + name;
        ASSERT_TRUE(sc.contains(tag)) << tag;
        EXPECT_EQ(sc[tag].size(), 3u) << tag;
      }
    // fp16's flush share agrees with the diagnostics' own count at the same scale.
    EXPECT_NEAR(sc["range/fp16_underflow/" + name][0][1].get<double>(),
                t["fp16_flush"].get<double>(), 1e-6)
        << name;
    ++checked;
  }
  EXPECT_GT(checked, 3);
  fs::remove_all(out);
}

// --tensorboard false writes no event files.
TEST(Tensorboard, FlagTurnsTheFilesOff) {
  const std::string out = tmp("off");
  const auto r =
      mixtrain::testing::run_cli("train " + kTiny + "--steps 2 --tensorboard false --out " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(fs::exists(out + "/metrics.jsonl"));
  EXPECT_FALSE(fs::exists(out + "/tensorboard"));
  fs::remove_all(out);
}

// compare: one sub-folder per precision under OUT/tensorboard, so TensorBoard overlays them.
TEST(Tensorboard, CompareWritesOneFolderPerPrecision) {
  const std::string out = tmp("compare");
  const auto r = mixtrain::testing::run_cli("compare " + kTiny +
                                            "--precisions fp32,bf16 --steps 2 --log-every 1 "
                                            "--out " +
                                            out);
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* p : {"fp32", "bf16"})
    ASSERT_TRUE(fs::is_directory(out + "/tensorboard/" + p)) << p;
  if (!have_tensorboard())
    GTEST_SKIP() << "the tensorboard Python package is not installed for /usr/bin/python3";
  for (const char* p : {"fp32", "bf16"}) {
    const json tb = read_with_tensorboard(out + "/tensorboard/" + p);
    const auto metrics = jsonl(out + "/" + p + "/metrics.jsonl");
    ASSERT_EQ(metrics.size(), 2u);
    ASSERT_TRUE(tb["scalars"].contains("loss")) << p;
    ASSERT_EQ(tb["scalars"]["loss"].size(), 2u) << p;
    for (size_t i = 0; i < 2; ++i)
      EXPECT_NEAR(tb["scalars"]["loss"][i][1].get<double>(), metrics[i]["loss"].get<double>(), 1e-5)
          << p;
  }
  fs::remove_all(out);
}

// Killed after step 5 (checkpoint at 3) and resumed: the resumed process adds a second file,
// and TensorBoard (which drops a file's later steps when a newer file restarts below them)
// shows one loss per step, equal to the final metrics.jsonl.
TEST(Tensorboard, ResumedRunAddsAFileTensorBoardMerges) {
  const std::string out = tmp("resume");
  const auto k = mixtrain::testing::run_cli(
      "train " + kTiny + "--steps 6 --log-every 1 --checkpoint-every 3 --stop-after 5 --out " +
      out);
  ASSERT_EQ(k.status, 3) << k.out;
  const auto r = mixtrain::testing::run_cli("train --quiet --resume " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  int files = 0;
  for (const auto& e : fs::directory_iterator(out + "/tensorboard"))
    files += e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_EQ(files, 2);
  if (!have_tensorboard())
    GTEST_SKIP() << "the tensorboard Python package is not installed for /usr/bin/python3";
  const json tb = read_with_tensorboard(out + "/tensorboard");
  const auto metrics = jsonl(out + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 6u);
  ASSERT_TRUE(tb["scalars"].contains("loss"));
  const auto& loss = tb["scalars"]["loss"];
  ASSERT_EQ(loss.size(), 6u) << loss.dump();
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(loss[i][0].get<int64_t>(), metrics[i]["step"].get<int64_t>());
    EXPECT_NEAR(loss[i][1].get<double>(), metrics[i]["loss"].get<double>(), 1e-5);
  }
  fs::remove_all(out);
}
