// Byte-level text data (split, seeded random windows, evaluation windows, errors) on the
// committed Jargon File sample and the installed corpus.
#include "mixtrain/data/text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

namespace fs = std::filesystem;
using namespace mixtrain;
using ::testing::HasSubstr;

namespace {

const std::string kSample = std::string(MIXTRAIN_SOURCE_DIR) + "/tests/data/jargon_sample.txt";
const char* kCorpus = "/usr/share/doc/jargon-text/jargon.txt.gz";

std::string window_text(const Tensor& t, int64_t row) {
  std::string s;
  for (int64_t i = 0; i < t.size(1); ++i)
    s += static_cast<char>(t.data<int64_t>()[row * t.size(1) + i]);
  return s;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

}  // namespace

TEST(ByteText, SplitAndWindows) {
  const ByteTextData d = ByteTextData::from_spec("text:" + kSample);
  EXPECT_EQ(d.vocab_size(), 256);
  const int64_t n = d.size(TextSplit::train) + d.size(TextSplit::validation);
  EXPECT_EQ(n, 59975);
  EXPECT_EQ(d.size(TextSplit::validation), 5997);  // floor(10%): the last bytes of the file
  EXPECT_EQ(d.bytes(TextSplit::train).substr(0, 9), "   :hack:");

  Rng rng(1234);
  const int64_t B = 8, T = 64;
  const TextBatch b = d.sample(TextSplit::train, B, T, rng);
  EXPECT_EQ(b.inputs.shape(), (Shape{B, T}));
  EXPECT_EQ(b.targets.shape(), (Shape{B, T}));
  EXPECT_EQ(b.inputs.dtype(), DType::i64);
  EXPECT_EQ(rng.counter, 8u);  // one draw per row
  const std::string_view train = d.bytes(TextSplit::train);
  for (int64_t r = 0; r < B; ++r) {
    const std::string in = window_text(b.inputs, r), tg = window_text(b.targets, r);
    EXPECT_EQ(in.substr(1), tg.substr(0, T - 1)) << "targets are inputs shifted by one";
    EXPECT_NE(train.find(in + tg.back()), std::string_view::npos) << "a real window of the text";
  }
  // The validation split's windows come from the validation bytes.
  const TextBatch v = d.sample(TextSplit::validation, 4, T, rng);
  const std::string_view val = d.bytes(TextSplit::validation);
  for (int64_t r = 0; r < 4; ++r)
    EXPECT_NE(val.find(window_text(v.inputs, r)), std::string_view::npos);
}

TEST(ByteText, DeterministicForASeed) {
  const ByteTextData d = ByteTextData::load(kSample);
  Rng a(7), b(7), c(8);
  const TextBatch x = d.sample(TextSplit::train, 16, 32, a);
  const TextBatch y = d.sample(TextSplit::train, 16, 32, b);
  const TextBatch z = d.sample(TextSplit::train, 16, 32, c);
  EXPECT_TRUE(same(x.inputs, y.inputs));
  EXPECT_TRUE(same(x.targets, y.targets));
  EXPECT_FALSE(same(x.inputs, z.inputs));
  // Resuming from a saved Rng gives the next batch of the uninterrupted stream.
  Rng saved = a;
  const TextBatch next = d.sample(TextSplit::train, 16, 32, a);
  const TextBatch resumed = d.sample(TextSplit::train, 16, 32, saved);
  EXPECT_TRUE(same(next.inputs, resumed.inputs));
  EXPECT_FALSE(same(next.inputs, x.inputs));
}

TEST(ByteText, EvaluationWindowsTileTheSplit) {
  const ByteTextData d = ByteTextData::from_bytes("abcdefghij", "mem", 0.0);
  EXPECT_EQ(d.num_windows(TextSplit::train, 3), 3);  // abcd, defg, ghij
  const TextBatch w = d.windows(TextSplit::train, 0, 3, 3);
  EXPECT_EQ(window_text(w.inputs, 0), "abc");
  EXPECT_EQ(window_text(w.targets, 0), "bcd");
  EXPECT_EQ(window_text(w.inputs, 2), "ghi");
  EXPECT_EQ(window_text(w.targets, 2), "hij");
  EXPECT_THROW(d.windows(TextSplit::train, 1, 3, 3), ConfigError);
  EXPECT_EQ(d.size(TextSplit::validation), 0);
}

TEST(ByteText, ErrorsNameTheFileAndTheFault) {
  const ByteTextData d = ByteTextData::from_bytes(std::string(100, 'x'), "tiny.txt");
  Rng rng(1);
  try {
    d.sample(TextSplit::train, 2, 90, rng);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("tiny.txt"));
    EXPECT_THAT(e.what(), HasSubstr("training split has 90 bytes, fewer than context + 1 = 91"));
  }
  try {
    d.sample(TextSplit::validation, 2, 10, rng);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("validation split has 10 bytes, fewer than context + 1 = 11"));
  }
  EXPECT_EQ(rng.counter, 0u);  // failed calls draw nothing
  EXPECT_NO_THROW(d.sample(TextSplit::validation, 2, 9, rng));
  EXPECT_THROW(ByteTextData::from_spec("txt:" + kSample), ConfigError);
  EXPECT_THROW(ByteTextData::from_spec("text:"), ConfigError);
  EXPECT_THROW(ByteTextData::from_bytes("abc", "x", 1.0), ConfigError);
  try {
    ByteTextData::load("/nonexistent/corpus.txt");
    FAIL();
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/corpus.txt"));
    EXPECT_THAT(e.what(), HasSubstr("No such file"));
  }
  const std::string empty = (fs::temp_directory_path() / "mixtrain_empty_text.txt").string();
  std::ofstream(empty).close();
  EXPECT_THROW(ByteTextData::load(empty), IOError);
  fs::remove(empty);
}

TEST(ByteText, ExtremeSizesAreRefusedWithoutOverflow) {
  // Found by fuzz/text_fuzz: context = INT64_MAX made `context + 1` overflow (signed, UB) in
  // check_window and num_windows, and first + count overflowed in windows(). Each must be a
  // ConfigError (or zero windows), and the message must not wrap either.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const ByteTextData d = ByteTextData::from_bytes(std::string(100, 'x'), "tiny.txt", 0.0);
  Rng rng(1);
  EXPECT_EQ(d.num_windows(TextSplit::train, kMax), 0);
  try {
    d.sample(TextSplit::train, 1, kMax, rng);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("fewer than context + 1 = 9223372036854775808"));
  }
  EXPECT_THROW(d.windows(TextSplit::train, 0, 1, kMax), ConfigError);
  ASSERT_EQ(d.num_windows(TextSplit::train, 9), 11);
  EXPECT_THROW(d.windows(TextSplit::train, kMax, kMax, 9), ConfigError);
  EXPECT_THROW(d.windows(TextSplit::train, 5, kMax, 9), ConfigError);
  EXPECT_THROW(d.windows(TextSplit::train, 12, 1, 9), ConfigError);
  EXPECT_EQ(d.windows(TextSplit::train, 10, 1, 9).inputs.shape(), (Shape{1, 9}));
}

TEST(ByteText, GzipFilesReadTransparently) {
  const std::string gz =
      (fs::temp_directory_path() / ("mixtrain_text_" + std::to_string(::getpid()) + ".txt.gz"))
          .string();
  std::ifstream in(kSample, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  gzFile f = gzopen(gz.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
  const ByteTextData d = ByteTextData::load(gz);
  fs::remove(gz);
  EXPECT_EQ(std::string(d.bytes(TextSplit::train)) + std::string(d.bytes(TextSplit::validation)),
            text);
}

TEST(ByteText, InstalledCorpus) {
  if (!fs::exists(kCorpus)) GTEST_SKIP() << kCorpus << " missing: apt-get install jargon-text";
  const ByteTextData d = ByteTextData::from_spec(std::string("text:") + kCorpus);
  const int64_t n = d.size(TextSplit::train) + d.size(TextSplit::validation);
  EXPECT_GT(n, 1'000'000);  // the corpus must be at least 1 MB of text
  // English prose: mostly printable ASCII and many spaces. About 6% of the bytes are UTF-8
  // (curly quotes and the box-drawing characters of a few tables), hence 0.9, not 1.
  int64_t ascii = 0, spaces = 0;
  for (unsigned char c : d.bytes(TextSplit::train)) {
    ascii += (c >= 32 && c < 127) || c == '\n';
    spaces += c == ' ';
  }
  EXPECT_GT(static_cast<double>(ascii) / d.size(TextSplit::train), 0.9);
  EXPECT_GT(static_cast<double>(spaces) / d.size(TextSplit::train), 0.1);
  // The committed sample is a verbatim piece of it.
  std::ifstream in(kSample, std::ios::binary);
  const std::string sample((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(d.bytes(TextSplit::train).find(sample), std::string_view::npos);
}
