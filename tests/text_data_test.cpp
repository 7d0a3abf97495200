// Byte-level text data (split, seeded random windows, evaluation windows, errors) on the
// committed Jargon File sample and the installed corpus, and the classification BatchIterator
// (deterministic shuffles, epochs, resume from saved state).
#include "mixtrain/data/text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "mixtrain/data/classification.h"
#include "mixtrain/io/safetensors.h"

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

// ---- BatchIterator ----

namespace {

// n examples with 3 features each; feature 0 and the label both encode the example index.
ClassificationData toy(int64_t n) {
  ClassificationData d{Tensor::empty({n, 3}, DType::f32), Tensor::empty({n}, DType::i64)};
  for (int64_t i = 0; i < n; ++i) {
    d.features.data<float>()[i * 3] = static_cast<float>(i);
    d.features.data<float>()[i * 3 + 1] = 0.5f;
    d.features.data<float>()[i * 3 + 2] = -1.0f;
    d.labels.data<int64_t>()[i] = i;
  }
  return d;
}

std::vector<int64_t> labels_of(const Batch& b) {
  return std::vector<int64_t>(b.labels.data<int64_t>(),
                              b.labels.data<int64_t>() + b.labels.numel());
}

}  // namespace

TEST(BatchIterator, EpochsArePermutationsAndDiffer) {
  const ClassificationData d = toy(10);
  BatchIterator it(d, 4, 99);
  EXPECT_EQ(it.batches_per_epoch(), 3);
  std::vector<std::vector<int64_t>> epochs(2);
  for (int e = 0; e < 2; ++e) {
    for (int k = 0; k < 3; ++k) {
      const Batch b = it.next();
      EXPECT_EQ(b.epoch, e);
      EXPECT_EQ(b.index, k);
      EXPECT_EQ(b.features.shape(), (Shape{k < 2 ? 4 : 2, 3}));
      for (int64_t r = 0; r < b.labels.numel(); ++r)  // features travel with their labels
        EXPECT_EQ(b.features.data<float>()[r * 3], static_cast<float>(b.labels.data<int64_t>()[r]));
      for (int64_t l : labels_of(b)) epochs[e].push_back(l);
    }
  }
  for (const auto& ep : epochs) {
    EXPECT_EQ(std::set<int64_t>(ep.begin(), ep.end()).size(), 10u) << "each example once";
  }
  EXPECT_NE(epochs[0], epochs[1]) << "reshuffled each epoch";
  std::vector<int64_t> identity(10);
  for (int i = 0; i < 10; ++i) identity[i] = i;
  EXPECT_NE(epochs[0], identity);
  // Same seed, same order; another seed, another.
  BatchIterator again(d, 4, 99), other(d, 4, 100);
  EXPECT_EQ(labels_of(again.next()),
            std::vector<int64_t>(epochs[0].begin(), epochs[0].begin() + 4));
  EXPECT_NE(other.order(), again.order());
}

TEST(BatchIterator, ResumeGivesTheSameStream) {
  const ClassificationData d = toy(23);
  BatchIterator full(d, 5, 3);
  std::vector<std::vector<int64_t>> expect;
  for (int i = 0; i < 20; ++i) expect.push_back(labels_of(full.next()));

  // Stop after 7 batches (in epoch 1), save the state through safetensors metadata, resume.
  BatchIterator first(d, 5, 3);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(labels_of(first.next()), expect[i]);
  const auto meta = first.state().to_metadata();
  const auto path =
      (fs::temp_directory_path() / ("mixtrain_it_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
  save_safetensors(path, {{"dummy", Tensor::zeros({1}, DType::f32)}}, meta);
  const auto loaded = BatchIterator::State::from_metadata(load_safetensors(path).metadata());
  fs::remove(path);
  EXPECT_EQ(loaded, first.state());
  EXPECT_EQ(loaded.epoch, 1);

  BatchIterator second(d, 5, 12345);  // a different seed: restore() must replace it
  second.restore(loaded);
  for (int i = 7; i < 20; ++i) EXPECT_EQ(labels_of(second.next()), expect[i]) << i;

  BatchIterator::State bad = loaded;
  bad.position = 24;
  EXPECT_THROW(second.restore(bad), ConfigError);
  EXPECT_THROW(BatchIterator::State::from_metadata({{"data.epoch", "1"}}), ConfigError);
  auto broken = meta;
  broken["data.position"] = "-3";
  EXPECT_THROW(BatchIterator::State::from_metadata(broken), ConfigError);
}

TEST(BatchIterator, DropLastAndNoShuffle) {
  const ClassificationData d = toy(10);
  BatchIterator it(d, 4, 1, {.shuffle = false, .drop_last = true});
  EXPECT_EQ(it.batches_per_epoch(), 2);
  EXPECT_EQ(labels_of(it.next()), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(labels_of(it.next()), (std::vector<int64_t>{4, 5, 6, 7}));
  const Batch b = it.next();  // examples 8, 9 are dropped: a new epoch starts
  EXPECT_EQ(b.epoch, 1);
  EXPECT_EQ(labels_of(b), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_THROW(BatchIterator(d, 0, 1), ConfigError);
  EXPECT_THROW(BatchIterator(d, 11, 1, {.shuffle = true, .drop_last = true}), ConfigError);
  EXPECT_THROW(BatchIterator(ClassificationData{}, 4, 1), ConfigError);
}

TEST(BatchIterator, DecodesU8AndFloatFeaturesToFp32) {
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
  BatchIterator it(d, 4, 1, {.shuffle = false, .drop_last = false});
  Batch b = it.next();
  expect_rows(b.features, {0, 1, 2, 3}, false);
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

  ClassificationData ints{Tensor::zeros({2, 3}, DType::i64), Tensor::zeros({2}, DType::i64), {}};
  try {
    ints.rows(0, 2);
    FAIL() << "i64 features must be refused";
  } catch (const DTypeError& e) {
    EXPECT_NE(std::string(e.what()).find("i64"), std::string::npos) << e.what();
  }
}
