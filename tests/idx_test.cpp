// IDX reader and Fashion-MNIST loader: the real Debian files, and corrupt or truncated samples
// generated here (gzipped with zlib) that must fail with messages naming the file and fault.
#include "mixtrain/data/idx.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "mixtrain/data/fashion_mnist.h"

namespace fs = std::filesystem;
using namespace mixtrain;
using ::testing::HasSubstr;

namespace {

bool have_fashion_mnist() {
  return fs::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz") &&
         fs::exists(std::string(kFashionMnistDir) + "/t10k-labels-idx1-ubyte.gz");
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mixtrain_idx_XXXXXX").string();
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

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

std::string idx_bytes(uint32_t magic, std::vector<uint32_t> dims, size_t data_bytes) {
  std::string s = be32(magic);
  for (uint32_t d : dims) s += be32(d);
  for (size_t i = 0; i < data_bytes; ++i) s += static_cast<char>(i % 251);
  return s;
}

void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

void write_plain(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <class F>
void expect_io_error(F&& f, const std::string& path, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "no error; expected " << fragment;
  } catch (const IOError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr(fragment));
  }
}

}  // namespace

TEST(Idx, RealFashionMnistFiles) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const Tensor labels =
      read_idx_labels(std::string(kFashionMnistDir) + "/t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(labels.shape(), (Shape{10000}));
  const uint8_t first_test[] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(labels.data<uint8_t>()[i], first_test[i]) << i;

  FashionMnistOptions opt;
  opt.validation = 5000;
  const FashionMnist d = load_fashion_mnist(opt);
  ASSERT_EQ(d.train.size(), 55000);
  ASSERT_EQ(d.validation.size(), 5000);
  ASSERT_EQ(d.test.size(), 10000);
  // The pixels are kept as u8 (55 MB for the 70000 images, not 220 MB in fp32).
  EXPECT_EQ(d.train.features.shape(), (Shape{55000, 784}));
  EXPECT_EQ(d.train.features.dtype(), DType::u8);
  EXPECT_FALSE(d.train.standardize.has_value());
  EXPECT_EQ(d.train.labels.dtype(), DType::i64);
  const int64_t first_train[] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(d.train.labels.data<int64_t>()[i], first_train[i]) << i;
  // Validation is the tail of the training file (labels 55000.. are 0 8 0 6 5).
  const int64_t first_val[] = {0, 8, 0, 6, 5};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(d.validation.labels.data<int64_t>()[i], first_val[i]) << i;
  EXPECT_EQ(d.test.labels.data<int64_t>()[0], 9);
  // Decoded pixels in [0, 1], both ends reached; the first image's pixel sum (299.0078 from
  // numpy); each the u8 value divided by 255 in fp32, as ToTensor().
  const Tensor all = d.train.rows(0, d.train.size());
  ASSERT_EQ(all.dtype(), DType::f32);
  ASSERT_EQ(all.shape(), (Shape{55000, 784}));
  const float* px = all.data<float>();
  const uint8_t* raw = d.train.features.data<uint8_t>();
  float lo = 1, hi = 0;
  double first = 0;
  for (int64_t i = 0; i < all.numel(); ++i) {
    lo = std::min(lo, px[i]);
    hi = std::max(hi, px[i]);
    if (i < 784) first += px[i];
    ASSERT_EQ(px[i], static_cast<float>(raw[i]) / 255.0f) << i;
  }
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 1.0f);
  EXPECT_NEAR(first, 299.0078431, 1e-3);
  // By index (as the batch iterator takes them): rows 7 and 3, in that order.
  const int64_t pick[] = {7, 3};
  const Tensor two = d.train.gather(pick, 2);
  for (int64_t j = 0; j < 784; ++j) {
    ASSERT_EQ(two.data<float>()[j], px[7 * 784 + j]);
    ASSERT_EQ(two.data<float>()[784 + j], px[3 * 784 + j]);
  }
  const int64_t bad[] = {55000};
  EXPECT_THROW(d.train.gather(bad, 1), ShapeError);
  EXPECT_THROW(d.train.rows(10, 5), ShapeError);
  // Statistics of the 55000 training images, from numpy in float64: mean 0.285817, std 0.352937.
  EXPECT_NEAR(d.mean, 0.285817, 1e-5);
  EXPECT_NEAR(d.std, 0.352937, 1e-5);
  // Every class appears in the test set 1000 times.
  std::vector<int> counts(10);
  for (int64_t i = 0; i < 10000; ++i) ++counts[d.test.labels.data<int64_t>()[i]];
  EXPECT_EQ(counts, std::vector<int>(10, 1000));
}

TEST(Idx, NormalizedFashionMnist) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  FashionMnistOptions opt;
  opt.normalize = true;
  const FashionMnist d = load_fashion_mnist(opt);
  EXPECT_EQ(d.train.size(), 60000);
  EXPECT_EQ(d.validation.size(), 0);
  double sum = 0, sq = 0;
  ASSERT_TRUE(d.train.standardize.has_value());
  const Tensor all = d.train.rows(0, d.train.size());
  const float* p = all.data<float>();
  const uint8_t* raw = d.train.features.data<uint8_t>();
  const float inv = 1.0f / d.std;
  const int64_t n = all.numel();
  for (int64_t i = 0; i < n; ++i) {
    sum += p[i];
    sq += static_cast<double>(p[i]) * p[i];
    // Decoded as the fp32 features once stored were: divided, then standardised.
    ASSERT_EQ(p[i], (static_cast<float>(raw[i]) / 255.0f - d.mean) * inv) << i;
  }
  // Standardised with its own statistics: mean 0, std 1 up to fp32 rounding of 47M values.
  EXPECT_NEAR(sum / n, 0.0, 1e-5);
  EXPECT_NEAR(std::sqrt(sq / n), 1.0, 1e-5);
  EXPECT_NEAR(d.mean, 0.2860406, 1e-5);
  // A black test pixel maps to -mean/std.
  EXPECT_NEAR(d.test.rows(0, 1).data<float>()[0], -d.mean / d.std, 1e-6);
}

TEST(Idx, ValidSamplesGzippedAndPlain) {
  TempDir dir;
  const std::string gz = dir.file("imgs.gz"), plain = dir.file("imgs.idx");
  write_gz(gz, idx_bytes(kIdxImagesMagic, {3, 4, 5}, 60));
  write_plain(plain, idx_bytes(kIdxImagesMagic, {3, 4, 5}, 60));
  for (const auto& p : {gz, plain}) {
    const Tensor t = read_idx_images(p);
    EXPECT_EQ(t.shape(), (Shape{3, 4, 5}));
    EXPECT_EQ(t.data<uint8_t>()[59], 59);
  }
  write_gz(dir.file("labels.gz"), idx_bytes(kIdxLabelsMagic, {7}, 7));
  EXPECT_EQ(read_idx_labels(dir.file("labels.gz")).shape(), (Shape{7}));
}

TEST(Idx, CorruptSamplesGiveClearErrors) {
  TempDir dir;
  auto images_err = [&](const std::string& name, const std::string& bytes,
                        const std::string& frag) {
    const std::string p = dir.file(name);
    write_gz(p, bytes);
    expect_io_error([&] { read_idx_images(p); }, p, frag);
  };
  images_err("labels_as_images.gz", idx_bytes(kIdxLabelsMagic, {4}, 4),
             "magic 0x00000801, expected 0x00000803");
  images_err("float.gz", idx_bytes(0x00000d03, {1, 2, 2}, 16), "magic 0x00000d03");
  images_err("short.gz", std::string("\0\0", 2), "too short for the 4-byte magic");
  images_err("header.gz", be32(kIdxImagesMagic) + be32(2), "header truncated: 8 of 16 bytes");
  images_err("zero.gz", idx_bytes(kIdxImagesMagic, {0, 28, 28}, 0), "dimension 0 is 0");
  images_err("wide.gz", idx_bytes(kIdxImagesMagic, {1, 28, 100000}, 0), "dimension 2 is 100000");
  // A million 28x28 images claimed by a file of a few dozen bytes: refused before allocating.
  images_err("liar.gz", idx_bytes(kIdxImagesMagic, {1000000, 28, 28}, 10),
             "claims 784000000 bytes");
  images_err("truncated.gz", idx_bytes(kIdxImagesMagic, {2, 28, 28}, 1000),
             "truncated: shape [2, 28, 28] needs 1568 data bytes but the file ends after 1000");
  images_err("trailing.gz", idx_bytes(kIdxImagesMagic, {2, 2, 2}, 9), "trailing data after the 8");

  // A gzip stream cut short: zlib reports it.
  {
    const std::string full = dir.file("full.gz"), cut = dir.file("cut.gz");
    write_gz(full, idx_bytes(kIdxImagesMagic, {20, 28, 28}, 20 * 784));
    std::ifstream in(full, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    write_plain(cut, bytes.substr(0, bytes.size() / 2));
    expect_io_error([&] { read_idx_images(cut); }, cut, "gzip");
  }
  // Labels: a 3-d file is not a label file; missing files name the path.
  {
    const std::string p = dir.file("imgs_as_labels.gz");
    write_gz(p, idx_bytes(kIdxImagesMagic, {1, 2, 2}, 4));
    expect_io_error([&] { read_idx_labels(p); }, p, "expected 0x00000801 (labels");
  }
  expect_io_error([&] { read_idx_labels(dir.file("nope.gz")); }, dir.file("nope.gz"),
                  "No such file");
}

TEST(Idx, FashionMnistChecksCountsAndLabels) {
  TempDir dir;
  write_gz(dir.file("train-images-idx3-ubyte.gz"),
           idx_bytes(kIdxImagesMagic, {3, 28, 28}, 3 * 784));
  write_gz(dir.file("train-labels-idx1-ubyte.gz"), idx_bytes(kIdxLabelsMagic, {4}, 4));
  FashionMnistOptions opt;
  opt.dir = dir.path();
  expect_io_error([&] { load_fashion_mnist(opt); }, "train-labels-idx1-ubyte.gz", "holds 4 labels");
  opt.validation = 60000;
  EXPECT_THROW(load_fashion_mnist(opt), ConfigError);
}

TEST(Idx, FromMemoryGzippedAndPlain) {
  // The memory entry points share the file path's zlib reader, so gzip and plain bytes both work
  // and errors name the given name in place of a path.
  TempDir dir;
  const std::string raw = idx_bytes(kIdxImagesMagic, {2, 3, 4}, 24);
  write_gz(dir.file("imgs.gz"), raw);
  std::ifstream in(dir.file("imgs.gz"), std::ios::binary);
  const std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const std::string& bytes : {raw, gz}) {
    const Tensor t = read_idx_images_from_memory(bytes.data(), bytes.size(), "embedded");
    ASSERT_EQ(t.shape(), (Shape{2, 3, 4}));
    EXPECT_EQ(t.data<uint8_t>()[23], 23);
  }
  const std::string labels = idx_bytes(kIdxLabelsMagic, {5}, 5);
  EXPECT_EQ(read_idx_labels_from_memory(labels.data(), labels.size()).shape(), (Shape{5}));
  expect_io_error([&] { read_idx_labels_from_memory(raw.data(), raw.size(), "embedded"); },
                  "embedded", "expected 0x00000801");
  expect_io_error([&] { read_idx_images_from_memory(raw.data(), 10, "cut"); }, "cut",
                  "header truncated");
  expect_io_error([&] { read_idx_images_from_memory(nullptr, 0, "empty"); }, "empty",
                  "too short for the 4-byte magic");
}
