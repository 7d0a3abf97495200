// open_data() and its sources: .npy, token files, text, CSV and IDX sets written here in C++
// (and, where numpy is installed, by numpy itself) and read back, every refused input with what
// its message must name; the installed Fashion-MNIST against its IDX files read directly;
// ClassificationData's decoding; EpochSampler against a reference copy of the old order, its
// epochs and batches, and across a saved state.
#include "mixtrain/data/source.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "data/formats.h"
#include "data_files.h"
#include "mixtrain/data/classification.h"
#include "mixtrain/data/idx.h"
#include "mixtrain/data/text.h"
#include "mixtrain/error.h"
#include "mixtrain/io/safetensors.h"

namespace fs = std::filesystem;
using namespace mixtrain;
using namespace mixtrain::test;
using ::testing::AllOf;
using ::testing::HasSubstr;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mixtrain_data_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

template <class E>
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one naming " << ::testing::PrintToString(parts);
  } catch (const E& e) {
    for (const auto& p : parts) EXPECT_THAT(e.what(), HasSubstr(p));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

std::vector<float> floats(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}
std::vector<int64_t> ints(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data<int64_t>(), c.data<int64_t>() + c.numel());
}
bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()) == 0;
}

}  // namespace

// ---- npy ----

TEST(NpySource, Float32FeaturesWithInt64Labels) {
  TempDir dir;
  const int64_t n = 10;
  std::vector<float> x(n * 6);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i) - 3.0f;
  std::vector<int64_t> y(n);
  for (int64_t i = 0; i < n; ++i) y[i] = i % 3;
  write_file(dir.file("x.npy"), npy("<f4", {n, 2, 3}, bytes_of(x)));
  write_file(dir.file("y.npy"), npy("<i8", {n}, bytes_of(y)));
  const std::string spec = "npy:" + dir.file("x.npy") + "," + dir.file("y.npy");
  const auto d = open_data(spec);
  EXPECT_EQ(d->name(), spec);
  EXPECT_EQ(d->target_kind(), TargetKind::classes);
  EXPECT_EQ(d->output_size(), 3);
  EXPECT_EQ(d->input_shape(), (Shape{2, 3}));
  EXPECT_EQ(d->size(Split::train), 9);  // the last 10% held out
  EXPECT_EQ(d->size(Split::validation), 1);
  EXPECT_TRUE(d->warnings().empty());
  const std::vector<int64_t> idx{0, 4, 8};
  const Examples b = d->rows(Split::train, idx);
  ASSERT_EQ(b.inputs.shape(), (Shape{3, 2, 3}));
  ASSERT_EQ(b.inputs.dtype(), DType::f32);
  ASSERT_EQ(b.targets.shape(), (Shape{3}));
  ASSERT_EQ(b.targets.dtype(), DType::i64);
  const std::vector<float> got = floats(b.inputs);
  for (size_t r = 0; r < idx.size(); ++r) {
    for (int j = 0; j < 6; ++j) EXPECT_EQ(got[r * 6 + j], x[idx[r] * 6 + j]);
    EXPECT_EQ(ints(b.targets)[r], y[idx[r]]);
  }
  const Examples v = d->rows(Split::validation, std::vector<int64_t>{0});
  EXPECT_EQ(floats(v.inputs), std::vector<float>(x.end() - 6, x.end()));
  EXPECT_EQ(ints(v.targets), std::vector<int64_t>{y[9]});
}

TEST(NpySource, Uint8FeaturesDecodeAsFp32AndIntegerLabelsOfEveryWidth) {
  TempDir dir;
  const int64_t n = 5, f = 4;
  std::vector<uint8_t> x(n * f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint8_t>(i * 13 + 1);
  x[3] = 255;
  x[5] = 0;
  write_file(dir.file("x.npy"), npy("|u1", {n, f}, bytes_of(x), /*major=*/2));
  const std::vector<int64_t> labels{4, 0, 2, 1, 3};
  auto convert = [&](auto zero) {
    std::vector<decltype(zero)> v;
    for (int64_t l : labels) v.push_back(static_cast<decltype(zero)>(l));
    return bytes_of(v);
  };
  const std::vector<std::pair<std::string, std::string>> kinds = {
      {"<i4", convert(int32_t{})},  {"|u1", convert(uint8_t{})}, {"<i2", convert(int16_t{})},
      {"<u2", convert(uint16_t{})}, {"<i8", convert(int64_t{})}, {"|i1", convert(int8_t{})},
      {"<u4", convert(uint32_t{})}, {"<u8", convert(uint64_t{})}};
  for (const auto& [descr, data] : kinds) {
    SCOPED_TRACE(descr);
    write_file(dir.file("y.npy"), npy(descr, {n}, data));
    const auto d = open_data("npy:" + dir.file("x.npy") + "," + dir.file("y.npy"),
                             {.validation_fraction = 0.0});
    EXPECT_EQ(d->target_kind(), TargetKind::classes);
    EXPECT_EQ(d->output_size(), 5);
    EXPECT_EQ(d->input_shape(), (Shape{f}));
    EXPECT_EQ(d->size(Split::train), n);
    EXPECT_EQ(d->size(Split::validation), 0);
    const std::vector<int64_t> all{0, 1, 2, 3, 4};
    const Examples b = d->rows(Split::train, all);
    EXPECT_EQ(ints(b.targets), labels);
    const std::vector<float> got = floats(b.inputs);
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_EQ(got[i], static_cast<float>(x[i]) / 255.0f) << i;  // v / 255, as gather
  }
}

TEST(NpySource, FloatTargetsAreValues) {
  TempDir dir;
  const int64_t n = 20;
  std::vector<float> x(n * 3, 0.5f), y1(n);
  std::vector<double> y2(n * 2);
  for (int64_t i = 0; i < n; ++i) {
    y1[i] = 0.1f * static_cast<float>(i);
    y2[i * 2] = 1.0 / 3.0 + static_cast<double>(i);
    y2[i * 2 + 1] = -static_cast<double>(i);
  }
  write_file(dir.file("x.npy"), npy("<f4", {n, 3}, bytes_of(x)));
  write_file(dir.file("y1.npy"), npy("<f4", {n}, bytes_of(y1)));
  write_file(dir.file("y2.npy"), npy("<f8", {n, 2}, bytes_of(y2), /*major=*/3));

  const auto d1 = open_data("npy:" + dir.file("x.npy") + "," + dir.file("y1.npy"));
  EXPECT_EQ(d1->target_kind(), TargetKind::values);
  EXPECT_EQ(d1->output_size(), 1);
  EXPECT_EQ(d1->size(Split::train), 18);
  const Examples b1 = d1->rows(Split::validation, std::vector<int64_t>{1, 0});
  ASSERT_EQ(b1.targets.shape(), (Shape{2, 1}));
  EXPECT_EQ(floats(b1.targets), (std::vector<float>{y1[19], y1[18]}));

  const auto d2 = open_data("npy:" + dir.file("x.npy") + "," + dir.file("y2.npy"));
  EXPECT_EQ(d2->target_kind(), TargetKind::values);
  EXPECT_EQ(d2->output_size(), 2);
  const Examples b2 = d2->rows(Split::train, std::vector<int64_t>{7});
  ASSERT_EQ(b2.targets.shape(), (Shape{1, 2}));
  EXPECT_EQ(floats(b2.targets),
            (std::vector<float>{static_cast<float>(y2[14]), static_cast<float>(y2[15])}));
}

TEST(NpySource, OneRowKeepsItForTraining) {
  TempDir dir;
  write_file(dir.file("x.npy"), npy("<f4", {1, 2}, bytes_of(std::vector<float>{1, 2})));
  write_file(dir.file("y.npy"), npy("<i8", {1}, bytes_of(std::vector<int64_t>{0})));
  const auto d =
      open_data("npy:" + dir.file("x.npy") + "," + dir.file("y.npy"), {.validation_fraction = 0.5});
  EXPECT_EQ(d->size(Split::train), 1);
  EXPECT_EQ(d->size(Split::validation), 0);
  EXPECT_EQ(d->output_size(), 1);
  // A 1-d features array is one feature per example.
  write_file(dir.file("x1.npy"), npy("<f4", {1}, bytes_of(std::vector<float>{7})));
  const auto d1 = open_data("npy:" + dir.file("x1.npy") + "," + dir.file("y.npy"));
  EXPECT_EQ(d1->input_shape(), (Shape{1}));
  EXPECT_EQ(floats(d1->rows(Split::train, std::vector<int64_t>{0}).inputs), std::vector<float>{7});
}

TEST(NpySource, RefusesWhatItCannotRead) {
  TempDir dir;
  const std::string x = dir.file("x.npy"), y = dir.file("y.npy");
  const std::vector<float> xs(8, 1.0f);
  const std::vector<int64_t> ys{0, 1, 2, 3};
  auto open = [&] { open_data("npy:" + x + "," + y); };
  auto good = [&] {
    write_file(x, npy("<f4", {4, 2}, bytes_of(xs)));
    write_file(y, npy("<i8", {4}, bytes_of(ys)));
  };

  good();
  write_file(x, "PK\x03\x04 this is a zip file");
  expect_error<IOError>(open, {x, "offset 0", "magic"});
  write_file(x, "");
  expect_error<IOError>(open, {x, "offset 0"});

  good();
  write_file(x, npy("<f4", {4, 2}, bytes_of(xs), 1, /*fortran=*/true));
  expect_error<IOError>(open, {x, "fortran_order"});

  for (const std::string& descr : {"<c8", ">f4", "|O", "<f8", "<i4"}) {
    good();
    write_file(x, npy(descr, {4, 2}, std::string(4 * 2 * 8, '\0')));
    expect_error<IOError>(open, {x, "'" + descr + "'", "not supported"});
  }
  for (const std::string& descr : {"<c8", ">i8", "|O", "<M8"}) {
    good();
    write_file(y, npy(descr, {4}, std::string(4 * 8, '\0')));
    expect_error<IOError>(open, {y, "'" + descr + "'", "not supported"});
  }
  good();  // a structured dtype's descr is a list
  write_file(x, npy("[('a', '<f4')]", {4, 2}, bytes_of(xs)));
  expect_error<IOError>(open, {x, "[('a', '<f4')]", "not supported"});

  good();
  write_file(y, npy("<i8", {3}, bytes_of(std::vector<int64_t>{0, 1, 2})));
  expect_error<IOError>(open, {x, y, "[4, 2]", "[3]"});

  good();  // truncated: 7 of 8 floats
  write_file(x, npy("<f4", {4, 2}, bytes_of(xs).substr(0, 28)));
  expect_error<IOError>(open, {x, "truncated", "32 bytes", "holds 28"});
  good();
  write_file(x, npy("<f4", {4, 2}, bytes_of(xs) + "xx"));
  expect_error<IOError>(open, {x, "trailing", "holds 34"});
  good();  // a header length past the end
  write_file(x, npy("<f4", {4, 2}, "").substr(0, 40));
  expect_error<IOError>(open, {x, "offset 8", "runs past the end"});

  good();
  write_file(y, npy("<i4", {4}, bytes_of(std::vector<int32_t>{0, 1, -7, 3})));
  expect_error<IOError>(open, {y, "index 2", "-7", "negative"});
  write_file(y, npy("<i8", {4}, bytes_of(std::vector<int64_t>{0, 1, 5, -9000000000})));
  expect_error<IOError>(open, {y, "index 3", "-9000000000"});

  good();
  {
    std::string s = npy("<f4", {4, 2}, bytes_of(xs));
    s[6] = 4;
    write_file(x, s);
    expect_error<IOError>(open, {x, "offset 6", "version 4.0"});
  }
  good();
  write_file(y, npy("<i8", {4, 1}, bytes_of(ys)));
  expect_error<IOError>(open, {y, "[4, 1]", "[N]"});
  good();
  write_file(y, npy("<f4", {4}, bytes_of(std::vector<float>{0, 1, NAN, 2})));
  expect_error<IOError>(open, {y, "target 0 of example 2", "nan"});
  good();
  write_file(x, npy("<f4", {0, 2}, ""));
  expect_error<IOError>(open, {x, "[0, 2]", "N >= 1"});

  good();
  expect_error<IOError>([&] { open_data("npy:" + dir.file("none.npy") + "," + y); },
                        {dir.file("none.npy"), "cannot open"});
  expect_error<IOError>([&] { open_data("npy:," + y); }, {"empty file name"});
  expect_error<ConfigError>([&] { open_data("npy:" + x); }, {"npy:FEATURES.npy,TARGETS.npy"});
}

TEST(NpySource, HeaderParserNamesOffsets) {
  // Dicts as numpy has written them over the years: a trailing comma, Python 2's 3L, "
  // quotes, keys in another order.
  const std::string body(12, '\0');
  for (const std::string& dict : {"{'descr': '<f4', 'fortran_order': False, 'shape': (3L,), }",
                                  "{\"shape\": (3,), \"descr\": \"<f4\", \"fortran_order\": False}",
                                  "{'descr':'<f4','fortran_order':False,'shape':(3,)}"}) {
    std::string h = std::string("\x93NUMPY\x01\x00", 8);
    const std::string d = dict + "\n";
    h += static_cast<char>(d.size());
    h += '\0';
    h += d + body;
    const data::NpyHeader p = data::parse_npy_header(h, "mem", h.size());
    EXPECT_EQ(p.descr, "<f4") << dict;
    EXPECT_EQ(p.shape, (Shape{3})) << dict;
    EXPECT_EQ(p.data_bytes, 12u);
    EXPECT_EQ(p.data_offset, 10 + d.size());
  }
  std::string h = std::string("\x93NUMPY\x01\x00", 8);
  const std::string d = "{'descr': '<f4', 'shape': (3,) }\n";
  h += static_cast<char>(d.size());
  h += '\0';
  h += d;
  expect_error<IOError>([&] { data::parse_npy_header(h, "mem", h.size()); },
                        {"mem", "'fortran_order'"});
  h[10 + 15] = '?';  // the ',' after the descr
  expect_error<IOError>([&] { data::parse_npy_header(h, "mem", h.size()); }, {"mem", "offset 25"});
}

// ---- tokens ----

TEST(TokenSource, LlmcAndHeaderlessFilesGiveTheSameTokens) {
  TempDir dir;
  std::vector<uint16_t> tokens(1000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 7919) % 50257);
  write_file(dir.file("a.bin"), llmc(tokens));
  write_file(dir.file("b.bin"), bytes_of(tokens));
  const auto a = open_data("tokens:" + dir.file("a.bin"));
  const auto b = open_data("tokens:" + dir.file("b.bin"));
  uint16_t max = 0;
  for (uint16_t t : tokens) max = std::max(max, t);
  for (const auto& d : {a, b}) {
    EXPECT_EQ(d->target_kind(), TargetKind::next_token);
    EXPECT_EQ(d->size(Split::train), 900);
    EXPECT_EQ(d->size(Split::validation), 100);
    EXPECT_EQ(d->output_size(), max + 1);
    EXPECT_EQ(d->input_shape(), Shape{});
    EXPECT_TRUE(d->warnings().empty()) << d->warnings()[0];
  }
  const std::vector<int64_t> starts{0, 17, 899 - 8};
  const Examples wa = a->windows(Split::train, starts, 8);
  const Examples wb = b->windows(Split::train, starts, 8);
  EXPECT_TRUE(same_bits(wa.inputs, wb.inputs));
  EXPECT_TRUE(same_bits(wa.targets, wb.targets));
  ASSERT_EQ(wa.inputs.shape(), (Shape{3, 8}));
  ASSERT_EQ(wa.inputs.dtype(), DType::i64);
  for (size_t r = 0; r < starts.size(); ++r)
    for (int64_t t = 0; t < 8; ++t) {
      EXPECT_EQ(ints(wa.inputs)[r * 8 + t], tokens[starts[r] + t]);
      EXPECT_EQ(ints(wa.targets)[r * 8 + t], tokens[starts[r] + t + 1]);
    }
  const Examples v = a->windows(Split::validation, std::vector<int64_t>{0}, 99);
  EXPECT_EQ(ints(v.inputs)[0], tokens[900]);
  EXPECT_EQ(ints(v.targets)[98], tokens[999]);
  expect_error<ShapeError>([&] { a->windows(Split::validation, std::vector<int64_t>{1}, 99); },
                           {"validation", "100 tokens"});
}

TEST(TokenSource, ASecondFileIsTheValidationSplit) {
  TempDir dir;
  const std::vector<uint16_t> train{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, val{300, 20, 30};
  write_file(dir.file("train.bin"), llmc(train));
  write_file(dir.file("val.bin"), bytes_of(val));
  const auto d = open_data("tokens:" + dir.file("train.bin") + "," + dir.file("val.bin"));
  EXPECT_EQ(d->size(Split::train), 10);
  EXPECT_EQ(d->size(Split::validation), 3);
  EXPECT_EQ(d->output_size(), 301);
  EXPECT_EQ(ints(d->windows(Split::validation, std::vector<int64_t>{0}, 2).targets),
            (std::vector<int64_t>{20, 30}));
  const auto v =
      open_data("tokens:" + dir.file("train.bin") + "," + dir.file("val.bin"), {.vocab = 50304});
  EXPECT_EQ(v->output_size(), 50304);
}

TEST(TokenSource, RefusesBrokenFiles) {
  TempDir dir;
  const std::string p = dir.file("t.bin");
  const std::vector<uint16_t> tokens{5, 6, 7, 8, 9};
  auto open = [&] { open_data("tokens:" + p); };

  write_file(p, llmc(tokens, /*version=*/2));
  expect_error<IOError>(open, {p, "offset 4", "version 2"});
  write_file(p, llmc(tokens, 1, /*count=*/6));  // 2 bytes short
  expect_error<IOError>(open, {p, "truncated", "1036 bytes", "holds 1034 bytes"});
  write_file(p, llmc(tokens, 1, /*count=*/4));  // 2 bytes too many
  expect_error<IOError>(open, {p, "1032 bytes", "holds 1034 bytes"});
  write_file(p, llmc(tokens).substr(0, 600));
  expect_error<IOError>(open, {p, "600 bytes", "1024-byte header"});
  write_file(p, bytes_of(tokens) + "x");
  expect_error<IOError>(open, {p, "11 bytes", "odd"});
  write_file(p, "");
  expect_error<IOError>(open, {p, "no tokens"});
  write_file(p, llmc({}));
  expect_error<IOError>(open, {p, "no tokens"});

  write_file(p, llmc(tokens));
  expect_error<IOError>([&] { open_data("tokens:" + p, {.vocab = 7}); },
                        {p, "offset 1028", "token 7", "vocabulary of 7"});
  write_file(p, bytes_of(tokens));
  expect_error<IOError>([&] { open_data("tokens:" + p, {.vocab = 9}); },
                        {p, "offset 8", "token 9"});
  EXPECT_EQ(open_data("tokens:" + p, {.vocab = 10})->output_size(), 10);
  expect_error<IOError>([&] { open_data("tokens:" + dir.file("missing.bin")); },
                        {dir.file("missing.bin"), "cannot open"});
  expect_error<IOError>([&] { open_data("tokens:" + dir.path()); },
                        {dir.path(), "not a regular file"});
  expect_error<ConfigError>([&] { open_data("tokens:a,b,c"); }, {"one or two files"});
}

TEST(TokenSource, WarnsWhenTheFileLooksLikeText) {
  TempDir dir;
  std::string text = "It was the best of times, it was the worst of times, it was the age of...\n";
  if (text.size() % 2) text += '\n';  // an even length, or it is refused as odd
  write_file(dir.file("t.txt"), text);
  const auto d = open_data("tokens:" + dir.file("t.txt"));
  ASSERT_EQ(d->warnings().size(), 1u);
  EXPECT_THAT(d->warnings()[0], HasSubstr("text:" + dir.file("t.txt")));
}

// ---- text ----

TEST(TextSource, WindowsEqualByteTextData) {
  TempDir dir;
  std::string text;
  for (int i = 0; text.size() < 5000; ++i) text += "line " + std::to_string(i * i) + " of text\n";
  write_file(dir.file("t.txt"), text);
  const auto d = open_data("text:" + dir.file("t.txt"));
  const ByteTextData ref = ByteTextData::load(dir.file("t.txt"));
  EXPECT_EQ(d->target_kind(), TargetKind::next_token);
  EXPECT_EQ(d->output_size(), 256);
  EXPECT_EQ(d->input_shape(), Shape{});
  EXPECT_TRUE(d->warnings().empty());
  for (const Split s : {Split::train, Split::validation}) {
    const TextSplit ts = s == Split::train ? TextSplit::train : TextSplit::validation;
    EXPECT_EQ(d->size(s), ref.size(ts));
    const int64_t t = 16;
    // The evaluation windows: starts k * T.
    const int64_t count = ref.num_windows(ts, t);
    std::vector<int64_t> starts(static_cast<size_t>(count));
    for (int64_t k = 0; k < count; ++k) starts[k] = k * t;
    const TextBatch want = ref.windows(ts, 0, count, t);
    const Examples got = d->windows(s, starts, t);
    EXPECT_TRUE(same_bits(got.inputs, want.inputs));
    EXPECT_TRUE(same_bits(got.targets, want.targets));
    // The training batches: the same starts sample() draws.
    Rng rng(42), copy(42);
    const TextBatch sampled = ref.sample(ts, 8, t, rng);
    std::vector<int64_t> drawn(8);
    for (auto& st : drawn) st = static_cast<int64_t>(copy.below(ref.size(ts) - t));
    const Examples again = d->windows(s, drawn, t);
    EXPECT_TRUE(same_bits(again.inputs, sampled.inputs));
    EXPECT_TRUE(same_bits(again.targets, sampled.targets));
  }
}

TEST(TextSource, WarnsAboutTokenFiles) {
  TempDir dir;
  std::vector<uint16_t> tokens(500);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i % 65 + 1);
  write_file(dir.file("llmc.bin"), llmc(tokens));
  write_file(dir.file("plain.bin"), bytes_of(tokens));
  const auto a = open_data("text:" + dir.file("llmc.bin"));
  ASSERT_EQ(a->warnings().size(), 1u);
  EXPECT_THAT(a->warnings()[0],
              AllOf(HasSubstr("20240520"), HasSubstr("tokens:" + dir.file("llmc.bin"))));
  const auto b = open_data("text:" + dir.file("plain.bin"));
  ASSERT_EQ(b->warnings().size(), 1u);
  EXPECT_THAT(b->warnings()[0], AllOf(HasSubstr("100% of the bytes at odd offsets are zero"),
                                      HasSubstr("tokens:" + dir.file("plain.bin"))));
  EXPECT_EQ(b->size(Split::train), 900);  // still opened: a warning, not an error
  expect_error<IOError>([&] { open_data("text:"); }, {"empty file name"});
  expect_error<IOError>([&] { open_data("text:" + dir.file("none.txt")); }, {dir.file("none.txt")});
}

// ---- csv ----

TEST(CsvSource, HeaderTargetByNameOrIndexAndKinds) {
  TempDir dir;
  std::string csv = "sepal, petal ,\"kind\",score\n";
  for (int i = 0; i < 20; ++i) csv += fmt::format("{},{}, {} ,{}\r\n", i * 0.5, -i, i % 4, 1.5 * i);
  csv += "\n";  // a blank last line
  write_file(dir.file("a.csv"), csv);

  const auto last = open_data("csv:" + dir.file("a.csv"));  // the last column: score
  EXPECT_EQ(last->target_kind(), TargetKind::values);
  EXPECT_EQ(last->output_size(), 1);
  EXPECT_EQ(last->input_shape(), Shape{3});
  EXPECT_EQ(last->size(Split::train), 18);
  EXPECT_EQ(last->size(Split::validation), 2);
  const Examples b = last->rows(Split::train, std::vector<int64_t>{3});
  EXPECT_EQ(floats(b.inputs), (std::vector<float>{1.5f, -3.0f, 3.0f}));
  EXPECT_EQ(floats(b.targets), std::vector<float>{4.5f});

  for (const std::string& col : {"kind", "2"}) {
    const auto d = open_data("csv:" + dir.file("a.csv") + ",target=" + col);
    EXPECT_EQ(d->target_kind(), TargetKind::classes) << col;
    EXPECT_EQ(d->output_size(), 4);
    const Examples e = d->rows(Split::validation, std::vector<int64_t>{1});  // row 19
    EXPECT_EQ(floats(e.inputs), (std::vector<float>{9.5f, -19.0f, 28.5f}));
    EXPECT_EQ(ints(e.targets), std::vector<int64_t>{3});
  }
  expect_error<ConfigError>([&] { open_data("csv:" + dir.file("a.csv") + ",target=petals"); },
                            {"'petals'", "0 ('sepal')", "1 ('petal')", "3 ('score')"});
  expect_error<ConfigError>([&] { open_data("csv:" + dir.file("a.csv") + ",target=4"); },
                            {"'4'", "3 ('score')"});
  expect_error<ConfigError>([&] { open_data("csv:" + dir.file("a.csv") + ",label=kind"); },
                            {"label=kind"});
}

TEST(CsvSource, WithoutHeader) {
  TempDir dir;
  write_file(dir.file("b.csv"), "1,2,0\n3,4,1\n5,6,1\n+7,-8e0,0\n");
  const auto d = open_data("csv:" + dir.file("b.csv"), {.validation_fraction = 0.25});
  EXPECT_EQ(d->target_kind(), TargetKind::classes);
  EXPECT_EQ(d->output_size(), 2);
  EXPECT_EQ(d->size(Split::train), 3);
  EXPECT_EQ(floats(d->rows(Split::validation, std::vector<int64_t>{0}).inputs),
            (std::vector<float>{7, -8}));
  const auto first = open_data("csv:" + dir.file("b.csv") + ",target=0");
  EXPECT_EQ(first->output_size(), 8);  // 1, 3, 5, 7: classes up to 7
  EXPECT_EQ(ints(first->rows(Split::train, std::vector<int64_t>{1}).targets),
            std::vector<int64_t>{3});
  expect_error<ConfigError>([&] { open_data("csv:" + dir.file("b.csv") + ",target=x"); },
                            {"'x'", "0, 1, 2", "no header"});
}

TEST(CsvSource, RefusesBadRows) {
  TempDir dir;
  const std::string p = dir.file("c.csv");
  write_file(p, "a,b,y\n1,2,0\n1,oops,1\n");
  expect_error<IOError>([&] { open_data("csv:" + p); }, {p, "line 3", "column 1 ('b')", "'oops'"});
  write_file(p, "1,2,0\n\n1,2\n");
  expect_error<IOError>([&] { open_data("csv:" + p); }, {p, "line 3", "2 fields", "line 1 has 3"});
  write_file(p, "1,2,0\n1,nan,1\n");
  expect_error<IOError>([&] { open_data("csv:" + p); }, {p, "line 2", "column 1", "'nan'"});
  write_file(p, "a,b,y\n");
  expect_error<IOError>([&] { open_data("csv:" + p); }, {p, "no data rows"});
  write_file(p, "y\n1\n");
  expect_error<IOError>([&] { open_data("csv:" + p); }, {p, "1 column"});
  expect_error<IOError>([&] { open_data("csv:" + dir.file("none.csv")); },
                        {dir.file("none.csv"), "cannot open"});
}

// ---- IDX sets ----

namespace {

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = ::gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(::gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ::gzclose(f);
}

}  // namespace

TEST(IdxSetSource, PlainAndGzipFilesOfAnotherShape) {
  TempDir dir;
  const int h = 3, w = 4;
  auto images = [&](int n, int salt) {
    std::string s = be32(0x803) + be32(n) + be32(h) + be32(w);
    for (int i = 0; i < n * h * w; ++i) s += static_cast<char>((i * 7 + salt) % 256);
    return s;
  };
  auto labels = [&](int n, int classes) {
    std::string s = be32(0x801) + be32(n);
    for (int i = 0; i < n; ++i) s += static_cast<char>(i % classes);
    return s;
  };
  write_gz(dir.file("train-images-idx3-ubyte.gz"), images(20, 1));
  write_file(dir.file("train-labels-idx1-ubyte"), labels(20, 5));  // plain, no .gz
  write_file(dir.file("t10k-images-idx3-ubyte"), images(6, 2));
  write_gz(dir.file("t10k-labels-idx1-ubyte.gz"), labels(6, 3));
  const auto d = open_data("fashion-mnist:" + dir.path());
  EXPECT_EQ(d->target_kind(), TargetKind::classes);
  EXPECT_EQ(d->output_size(), 5);
  EXPECT_EQ(d->input_shape(), Shape{12});
  EXPECT_EQ(d->size(Split::train), 20);
  EXPECT_EQ(d->size(Split::validation), 6);
  const Examples b = d->rows(Split::validation, std::vector<int64_t>{4});
  EXPECT_EQ(ints(b.targets), std::vector<int64_t>{1});
  EXPECT_EQ(floats(b.inputs)[0], static_cast<float>((48 * 7 + 2) % 256) / 255.0f);

  fs::remove(dir.file("t10k-images-idx3-ubyte"));
  expect_error<IOError>([&] { open_data("fashion-mnist:" + dir.path()); },
                        {dir.path(), "t10k-images-idx3-ubyte"});
  expect_error<IOError>([&] { open_data("fashion-mnist:" + dir.file("nowhere")); },
                        {dir.file("nowhere"), "no such directory"});
}

TEST(IdxSetSource, InstalledFashionMnist) {
  const std::string dir = kFashionMnistDir;
  if (!fs::exists(dir + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << dir << " is not installed";
  const auto d = open_data("fashion-mnist");
  EXPECT_EQ(d->target_kind(), TargetKind::classes);
  EXPECT_EQ(d->output_size(), 10);
  EXPECT_EQ(d->input_shape(), Shape{784});
  EXPECT_EQ(d->size(Split::train), 60000);
  EXPECT_EQ(d->size(Split::validation), 10000);
  // Against the IDX files read directly: each row the image's pixels k as k / 255 in fp32 (bit
  // for bit), each target its label.
  auto check = [&](Split split, const std::string& stem, const std::vector<int64_t>& idx) {
    SCOPED_TRACE(stem);
    const Tensor images = read_idx_images(dir + "/" + stem + "-images-idx3-ubyte.gz");
    const Tensor labels = read_idx_labels(dir + "/" + stem + "-labels-idx1-ubyte.gz");
    ASSERT_EQ(images.shape(), (Shape{d->size(split), 28, 28}));
    const Examples b = d->rows(split, idx);
    ASSERT_EQ(b.inputs.shape(), (Shape{static_cast<int64_t>(idx.size()), 784}));
    ASSERT_EQ(b.inputs.dtype(), DType::f32);
    const std::vector<float> px = floats(b.inputs);
    const std::vector<int64_t> targets = ints(b.targets);
    for (size_t i = 0; i < idx.size(); ++i) {
      EXPECT_EQ(targets[i], labels.data<uint8_t>()[idx[i]]) << idx[i];
      const uint8_t* raw = images.data<uint8_t>() + idx[i] * 784;
      for (int64_t j = 0; j < 784; ++j)
        ASSERT_EQ(px[i * 784 + j], static_cast<float>(raw[j]) / 255.0f) << idx[i] << "," << j;
    }
  };
  check(Split::train, "train", {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 59999, 12345, 7, 7, 30000});
  check(Split::validation, "t10k", {9999, 0, 5000});
  const Examples first = d->rows(Split::train, std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  EXPECT_EQ(ints(first.targets), (std::vector<int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  // Every class appears in the validation (t10k) split 1000 times.
  std::vector<int64_t> all(10000);
  for (int64_t i = 0; i < 10000; ++i) all[i] = i;
  std::vector<int> counts(10);
  for (int64_t t : ints(d->rows(Split::validation, all).targets)) ++counts.at(t);
  EXPECT_EQ(counts, std::vector<int>(10, 1000));
}

// ---- the interface's checks ----

TEST(DataSource, RangeAndKindErrors) {
  TempDir dir;
  write_file(dir.file("x.npy"), npy("<f4", {10, 1}, bytes_of(std::vector<float>(10, 1.0f))));
  write_file(dir.file("y.npy"), npy("<i8", {10}, bytes_of(std::vector<int64_t>(10, 0))));
  const std::string spec = "npy:" + dir.file("x.npy") + "," + dir.file("y.npy");
  const auto d = open_data(spec);
  expect_error<ShapeError>(
      [&] {
        d->rows(Split::train, std::vector<int64_t>{0, 9});
      },
      {spec, "index 9", "train", "9 examples"});
  expect_error<ShapeError>([&] { d->rows(Split::validation, std::vector<int64_t>{-1}); },
                           {spec, "index -1", "validation", "1 examples"});
  EXPECT_EQ(d->rows(Split::train, std::vector<int64_t>{}).inputs.shape(), (Shape{0, 1}));
  expect_error<ConfigError>([&] { d->windows(Split::train, std::vector<int64_t>{0}, 2); },
                            {spec, "rows"});

  write_file(dir.file("t.txt"), "0123456789abcdefghij");
  const auto t = open_data("text:" + dir.file("t.txt"));  // 18 train bytes, 2 validation
  expect_error<ConfigError>([&] { t->rows(Split::train, std::vector<int64_t>{0}); },
                            {"text:" + dir.file("t.txt"), "token stream", "windows"});
  EXPECT_EQ(ints(t->windows(Split::train, std::vector<int64_t>{13}, 4).targets).back(), 'h');
  expect_error<ShapeError>([&] { t->windows(Split::train, std::vector<int64_t>{14}, 4); },
                           {"window 0", "[14, 14 + 4 + 1)", "train", "18 tokens"});
  expect_error<ShapeError>([&] { t->windows(Split::validation, std::vector<int64_t>{0}, 2); },
                           {"validation", "2 tokens"});
  expect_error<ShapeError>([&] { t->windows(Split::train, std::vector<int64_t>{-1}, 2); }, {"-1"});
  expect_error<ConfigError>([&] { t->windows(Split::train, std::vector<int64_t>{0}, 0); },
                            {"context"});
}

TEST(DataSource, SpecErrors) {
  expect_error<ConfigError>(
      [] { open_data("parquet:x.parquet"); },
      {"parquet:x.parquet", "fashion-mnist[:DIR]", "text:PATH", "tokens:TRAIN[,VAL]",
       "npy:FEATURES.npy,TARGETS.npy", "csv:PATH[,target=COLUMN]"});
  expect_error<ConfigError>([] { open_data("text"); }, {"text:PATH"});
  expect_error<ConfigError>([] { open_data("text:x", {.validation_fraction = 1.0}); },
                            {"validation fraction 1"});
  expect_error<ConfigError>([] { open_data("tokens:x", {.vocab = -1}); }, {"-1"});
  expect_error<IOError>([] { open_data("fashion-mnist:"); }, {"empty directory"});
  EXPECT_STREQ(split_name(Split::validation), "validation");
  EXPECT_STREQ(target_kind_name(TargetKind::next_token), "next_token");
}

// ---- ClassificationData ----

TEST(ClassificationData, DecodesU8AndFloatFeaturesToFp32) {
  // u8 pixels come out as v / 255 in fp32, then standardised when asked; bf16 features widened.
  const int64_t n = 6, f = 4;
  ClassificationData d{Tensor::empty({n, f}, DType::u8), Tensor::empty({n}, DType::i64)};
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < f; ++j) d.features.data<uint8_t>()[i * f + j] = (i * 51 + j) % 256;
    d.labels.data<int64_t>()[i] = i;
  }
  auto expect_rows = [&](const Tensor& rows, const std::vector<int64_t>& which, bool standard) {
    ASSERT_EQ(rows.dtype(), DType::f32);
    ASSERT_EQ(rows.shape(), (Shape{static_cast<int64_t>(which.size()), f}));
    for (size_t r = 0; r < which.size(); ++r)
      for (int64_t j = 0; j < f; ++j) {
        float want = static_cast<float>(d.features.data<uint8_t>()[which[r] * f + j]) / 255.0f;
        if (standard) want = (want - 0.25f) * 2.0f;
        EXPECT_EQ(rows.data<float>()[r * f + j], want) << r << "," << j;
      }
  };
  expect_rows(d.rows(0, 4), {0, 1, 2, 3}, false);
  expect_rows(d.rows(5, 6), {5}, false);  // 255: exactly 1
  EXPECT_EQ(d.rows(5, 6).data<float>()[0], 1.0f);

  d.standardize = ClassificationData::Standardize{0.25f, 2.0f};
  const ClassificationData tail = d.slice(4, 6);  // keeps u8 storage and the standardisation
  EXPECT_EQ(tail.features.dtype(), DType::u8);
  expect_rows(tail.rows(0, 2), {4, 5}, true);
  const int64_t pick[] = {3, 0};
  expect_rows(d.gather(pick, 2), {3, 0}, true);

  ClassificationData half{d.features.to(DType::f32).to(DType::bf16), d.labels, std::nullopt};
  EXPECT_EQ(half.rows(0, 1).data<float>()[1], half.features.to(DType::f32).data<float>()[1]);

  ClassificationData i64s{Tensor::zeros({2, 3}, DType::i64), Tensor::zeros({2}, DType::i64), {}};
  expect_error<DTypeError>([&] { i64s.rows(0, 2); }, {"i64"});
}

TEST(ClassificationData, ImagesToClassification) {
  // u8 images [N, H, W] and labels [N]: u8 features [N, H*W] kept as they are, labels as i64.
  Tensor images = Tensor::empty({2, 2, 3}, DType::u8);
  for (int i = 0; i < 12; ++i) images.data<uint8_t>()[i] = static_cast<uint8_t>(i * 20);
  Tensor labels = Tensor::empty({2}, DType::u8);
  labels.data<uint8_t>()[0] = 7;
  labels.data<uint8_t>()[1] = 200;
  const ClassificationData d = images_to_classification(images, labels);
  EXPECT_EQ(d.features.shape(), (Shape{2, 6}));
  EXPECT_EQ(d.features.dtype(), DType::u8);
  EXPECT_EQ(ints(d.labels), (std::vector<int64_t>{7, 200}));
  EXPECT_EQ(d.rows(1, 2).data<float>()[5], 220.0f / 255.0f);
  expect_error<ShapeError>([&] { images_to_classification(images, labels.slice(0, 0, 1)); },
                           {"[2, 2, 3]", "[1]"});
  expect_error<DTypeError>(
      [&] {
        images_to_classification(Tensor::zeros({2, 6}, DType::f32), labels);
      },
      {"images"});
}

// ---- EpochSampler ----

namespace {

// The order as BatchIterator (since removed) was first written, before EpochSampler existed:
// each epoch a Fisher-Yates shuffle from a copy of the Rng, which then moves on by n - 1 draws.
std::vector<std::vector<int64_t>> reference_batches(int64_t n, int64_t batch, uint64_t seed,
                                                    int64_t count) {
  std::vector<std::vector<int64_t>> out;
  Rng rng(seed);
  Rng r = rng;
  std::vector<int64_t> order = shuffled_indices(n, r);
  int64_t pos = 0;
  for (int64_t k = 0; k < count; ++k) {
    if (pos >= n) {
      rng.counter += static_cast<uint64_t>(n - 1);
      r = rng;
      order = shuffled_indices(n, r);
      pos = 0;
    }
    const int64_t b = std::min(batch, n - pos);
    out.emplace_back(order.begin() + pos, order.begin() + pos + b);
    pos += b;
  }
  return out;
}

}  // namespace

TEST(EpochSampler, SameOrderAsTheReferenceOverThreeEpochs) {
  for (const auto& [n, batch] : {std::pair<int64_t, int64_t>{23, 5}, {10, 10}, {7, 3}, {1, 4}}) {
    SCOPED_TRACE(fmt::format("n {} batch {}", n, batch));
    const uint64_t seed = 0x2000 ^ 1234;
    EpochSampler s(n, batch, seed);
    ASSERT_EQ(s.batches_per_epoch(), (n + batch - 1) / batch);
    const int64_t count = 3 * s.batches_per_epoch();
    const auto want = reference_batches(n, batch, seed, count);
    for (int64_t k = 0; k < count; ++k) {
      const std::vector<int64_t> got = s.next();
      EXPECT_EQ(got, want[k]) << k;
      // The state after batch k of epoch e: epoch e, the examples up to this batch's end used.
      const int64_t index = k % s.batches_per_epoch();
      EXPECT_EQ(s.state().epoch, k / s.batches_per_epoch());
      EXPECT_EQ(s.state().position, std::min(n, (index + 1) * batch));
    }
    EXPECT_EQ(s.state().epoch, 2);
  }
}

TEST(EpochSampler, EpochsArePermutationsAndDiffer) {
  EpochSampler s(10, 4, 99);
  EXPECT_EQ(s.batches_per_epoch(), 3);
  std::vector<std::vector<int64_t>> epochs(2);
  for (int e = 0; e < 2; ++e) {
    for (int k = 0; k < 3; ++k) {
      const std::vector<int64_t> b = s.next();
      EXPECT_EQ(s.state().epoch, e);
      EXPECT_EQ(b.size(), k < 2 ? 4u : 2u) << "the last batch holds what is left";
      epochs[e].insert(epochs[e].end(), b.begin(), b.end());
    }
  }
  for (const auto& ep : epochs)
    EXPECT_EQ(std::set<int64_t>(ep.begin(), ep.end()),
              (std::set<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}))
        << "each example once";
  EXPECT_NE(epochs[0], epochs[1]) << "reshuffled each epoch";
  std::vector<int64_t> identity(10);
  for (int i = 0; i < 10; ++i) identity[i] = i;
  EXPECT_NE(epochs[0], identity);
  // Same seed, same order; another seed, another.
  EpochSampler again(10, 4, 99), other(10, 4, 100);
  EXPECT_EQ(again.next(), std::vector<int64_t>(epochs[0].begin(), epochs[0].begin() + 4));
  EXPECT_EQ(again.order(), epochs[0]);
  EXPECT_NE(other.order(), again.order());
}

TEST(EpochSampler, BatchesOfOpenDataRowsKeepFeaturesWithTargets) {
  // A source whose feature 0 and class both encode the example index: the sampler's indices
  // pick rows and targets together, the last partial batch included.
  TempDir dir;
  const int64_t n = 11;  // 10 train (one held out), batches of 4: 4, 4, 2
  std::vector<float> x(n * 3);
  std::vector<int64_t> y(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i * 3] = static_cast<float>(i);
    x[i * 3 + 1] = 0.5f;
    x[i * 3 + 2] = -1.0f;
    y[i] = i;
  }
  write_file(dir.file("x.npy"), npy("<f4", {n, 3}, bytes_of(x)));
  write_file(dir.file("y.npy"), npy("<i8", {n}, bytes_of(y)));
  const auto d = open_data("npy:" + dir.file("x.npy") + "," + dir.file("y.npy"));
  ASSERT_EQ(d->size(Split::train), 10);
  EpochSampler s(d->size(Split::train), 4, 99);
  std::vector<int64_t> seen;
  for (int k = 0; k < 3; ++k) {
    const std::vector<int64_t> idx = s.next();
    const Examples b = d->rows(Split::train, idx);
    EXPECT_EQ(b.inputs.shape(), (Shape{k < 2 ? 4 : 2, 3}));
    EXPECT_EQ(ints(b.targets), idx);
    const std::vector<float> f = floats(b.inputs);
    for (size_t r = 0; r < idx.size(); ++r) {
      EXPECT_EQ(f[r * 3], static_cast<float>(idx[r]));
      EXPECT_EQ(f[r * 3 + 2], -1.0f);
    }
    seen.insert(seen.end(), idx.begin(), idx.end());
  }
  EXPECT_EQ(seen, s.order());
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 10u);
}

TEST(EpochSampler, ResumesFromASavedState) {
  EpochSampler full(23, 5, 3);
  std::vector<std::vector<int64_t>> expect;
  for (int i = 0; i < 20; ++i) expect.push_back(full.next());

  // Stop after 7 batches (mid epoch 1), save the state through a checkpoint's safetensors
  // metadata, resume.
  EpochSampler first(23, 5, 3);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(first.next(), expect[i]);
  const auto meta = first.state().to_metadata("data.");
  EXPECT_EQ(meta.size(), 4u);
  TempDir dir;
  save_safetensors(dir.file("ckpt.safetensors"), {{"dummy", Tensor::zeros({1}, DType::f32)}}, meta);
  const auto loaded =
      EpochSampler::State::from_metadata(load_safetensors(dir.file("ckpt.safetensors")).metadata());
  EXPECT_EQ(loaded, first.state());
  EXPECT_EQ(loaded.epoch, 1);
  EXPECT_EQ(loaded.position, 10);

  EpochSampler second(23, 5, 999);  // another seed: restore() replaces it
  second.restore(loaded);
  for (int i = 7; i < 20; ++i) EXPECT_EQ(second.next(), expect[i]) << i;

  EpochSampler::State bad = loaded;
  bad.position = 24;
  expect_error<ConfigError>([&] { second.restore(bad); }, {"position 24", "23 examples"});
  expect_error<ConfigError>(
      [] {
        EpochSampler::State::from_metadata({{"data.epoch", "1"}});
      },
      {"data.position"});
  auto broken = meta;
  broken["data.rng_counter"] = "12x";
  expect_error<ConfigError>([&] { EpochSampler::State::from_metadata(broken); },
                            {"data.rng_counter", "12x"});
  broken = meta;
  broken["data.position"] = "-3";
  expect_error<ConfigError>([&] { EpochSampler::State::from_metadata(broken); },
                            {"data.position", "-3"});
  expect_error<ConfigError>([] { EpochSampler(0, 4, 1); }, {"0 examples"});
  expect_error<ConfigError>([] { EpochSampler(4, 0, 1); }, {"batch size 0"});
}

TEST(EpochSampler, DropLastAndNoShuffle) {
  EpochSampler s(10, 4, 1, {.shuffle = false, .drop_last = true});
  EXPECT_EQ(s.batches_per_epoch(), 2);
  EXPECT_EQ(s.next(), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(s.next(), (std::vector<int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(s.next(), (std::vector<int64_t>{0, 1, 2, 3}));  // examples 8, 9 are dropped
  EXPECT_EQ(s.state().epoch, 1);
  expect_error<ConfigError>([] { EpochSampler(3, 4, 1, {.drop_last = true}); }, {"drop_last"});
  expect_error<ConfigError>([] { EpochSampler(10, 11, 1, {.drop_last = true}); }, {"drop_last"});
}

// ---- files numpy wrote ----

TEST(NpySource, ReadsWhatNumpyWrites) {
  const char* python = "/usr/bin/python3";
  if (!fs::exists(python) ||
      std::system(fmt::format("{} -c 'import numpy' >/dev/null 2>&1", python).c_str()) != 0)
    GTEST_SKIP() << "no numpy for " << python;
  TempDir dir;
  const std::string script = fmt::format(R"(
import numpy as np
d = "{}"
n = 12
x = (np.arange(n * 6, dtype=np.float32) * 0.125 - 2).reshape(n, 2, 3)
np.save(d + "/x.npy", x)
np.save(d + "/xu8.npy", (np.arange(n * 5) % 256).astype(np.uint8).reshape(n, 5))
np.save(d + "/y64.npy", np.arange(n) % 4)
np.save(d + "/y16.npy", (np.arange(n) % 3).astype(np.uint16))
np.save(d + "/yf.npy", np.linspace(0, 1, n * 2).reshape(n, 2))
with open(d + "/x2.npy", "wb") as f:
    np.lib.format.write_array(f, x, version=(2, 0))
np.save(d + "/xf.npy", np.asfortranarray(np.ones((n, 2), dtype=np.float32)))
np.save(d + "/yc.npy", np.zeros(n, dtype=np.complex64))
)",
                                         dir.path());
  write_file(dir.file("make.py"), script);
  ASSERT_EQ(std::system(fmt::format("{} {}", python, dir.file("make.py")).c_str()), 0);

  for (const char* xname : {"x.npy", "x2.npy"}) {
    const auto d = open_data("npy:" + dir.file(xname) + "," + dir.file("y64.npy"),
                             {.validation_fraction = 0.25});
    EXPECT_EQ(d->target_kind(), TargetKind::classes);
    EXPECT_EQ(d->output_size(), 4);
    EXPECT_EQ(d->input_shape(), (Shape{2, 3}));
    EXPECT_EQ(d->size(Split::train), 9);
    const Examples b = d->rows(Split::validation, std::vector<int64_t>{2});  // row 11
    std::vector<float> want;
    for (int j = 0; j < 6; ++j) want.push_back(static_cast<float>(66 + j) * 0.125f - 2.0f);
    EXPECT_EQ(floats(b.inputs), want);
    EXPECT_EQ(ints(b.targets), std::vector<int64_t>{3});
  }
  const auto u = open_data("npy:" + dir.file("xu8.npy") + "," + dir.file("y16.npy"));
  EXPECT_EQ(u->output_size(), 3);
  EXPECT_EQ(floats(u->rows(Split::train, std::vector<int64_t>{1}).inputs)[0], 5.0f / 255.0f);
  const auto v = open_data("npy:" + dir.file("x.npy") + "," + dir.file("yf.npy"));
  EXPECT_EQ(v->target_kind(), TargetKind::values);
  EXPECT_EQ(v->output_size(), 2);
  EXPECT_EQ(floats(v->rows(Split::train, std::vector<int64_t>{0}).targets),
            (std::vector<float>{0.0f, static_cast<float>(1.0 / 23)}));
  expect_error<IOError>([&] { open_data("npy:" + dir.file("xf.npy") + "," + dir.file("y64.npy")); },
                        {"fortran_order"});
  expect_error<IOError>([&] { open_data("npy:" + dir.file("x.npy") + "," + dir.file("yc.npy")); },
                        {"'<c8'"});
}
