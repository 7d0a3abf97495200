// IDX readers and an IDX set through open_data("fashion-mnist:DIR"): the real Debian files, and
// corrupt or truncated samples generated here (gzipped with zlib) that must fail with messages
// naming the file and fault.
#include "mixtrain/data/idx.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "mixtrain/data/classification.h"
#include "mixtrain/data/source.h"

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
  const std::string dir = kFashionMnistDir;
  const Tensor labels = read_idx_labels(dir + "/t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(labels.shape(), (Shape{10000}));
  const uint8_t first_test[] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(labels.data<uint8_t>()[i], first_test[i]) << i;

  // The training files as open_data("fashion-mnist") holds them: images_to_classification.
  const ClassificationData train =
      images_to_classification(read_idx_images(dir + "/train-images-idx3-ubyte.gz"),
                               read_idx_labels(dir + "/train-labels-idx1-ubyte.gz"));
  ASSERT_EQ(train.size(), 60000);
  // The pixels are kept as u8 (47 MB for the 60000 images, not 188 MB in fp32).
  EXPECT_EQ(train.features.shape(), (Shape{60000, 784}));
  EXPECT_EQ(train.features.dtype(), DType::u8);
  EXPECT_FALSE(train.standardize.has_value());
  EXPECT_EQ(train.labels.dtype(), DType::i64);
  const int64_t first_train[] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(train.labels.data<int64_t>()[i], first_train[i]) << i;
  // Labels 55000.. (the tail a held-out split would take) are 0 8 0 6 5.
  const int64_t tail[] = {0, 8, 0, 6, 5};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(train.labels.data<int64_t>()[55000 + i], tail[i]) << i;
  // Decoded pixels in [0, 1], both ends reached; the first image's pixel sum (299.0078 from
  // numpy); each the u8 value divided by 255 in fp32, as ToTensor().
  const Tensor all = train.rows(0, train.size());
  ASSERT_EQ(all.dtype(), DType::f32);
  ASSERT_EQ(all.shape(), (Shape{60000, 784}));
  const float* px = all.data<float>();
  const uint8_t* raw = train.features.data<uint8_t>();
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
  // By index (as a DataSource's rows() takes them): rows 7 and 3, in that order.
  const int64_t pick[] = {7, 3};
  const Tensor two = train.gather(pick, 2);
  for (int64_t j = 0; j < 784; ++j) {
    ASSERT_EQ(two.data<float>()[j], px[7 * 784 + j]);
    ASSERT_EQ(two.data<float>()[784 + j], px[3 * 784 + j]);
  }
  const int64_t bad[] = {60000};
  EXPECT_THROW(train.gather(bad, 1), ShapeError);
  EXPECT_THROW(train.rows(10, 5), ShapeError);
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

TEST(Idx, FashionMnistSpecRefusesMalformedSets) {
  // open_data("fashion-mnist:DIR") over four files written here: each fault names its file.
  TempDir dir;
  const std::string spec = "fashion-mnist:" + dir.path();
  const std::string train_images = dir.file("train-images-idx3-ubyte.gz"),
                    train_labels = dir.file("train-labels-idx1-ubyte.gz"),
                    test_images = dir.file("t10k-images-idx3-ubyte.gz"),
                    test_labels = dir.file("t10k-labels-idx1-ubyte.gz");
  auto write_set = [&] {
    write_gz(train_images, idx_bytes(kIdxImagesMagic, {3, 28, 28}, 3 * 784));
    write_gz(train_labels, idx_bytes(kIdxLabelsMagic, {3}, 3));
    write_gz(test_images, idx_bytes(kIdxImagesMagic, {2, 28, 28}, 2 * 784));
    write_gz(test_labels, idx_bytes(kIdxLabelsMagic, {2}, 2));
  };
  auto expect_refused = [&](const std::string& path, const std::vector<std::string>& fragments) {
    for (const auto& f : fragments) expect_io_error([&] { open_data(spec); }, path, f);
    write_set();  // whole again for the next case
  };
  write_set();
  const auto d = open_data(spec);
  EXPECT_EQ(d->size(Split::train), 3);
  EXPECT_EQ(d->size(Split::validation), 2);
  EXPECT_EQ(d->input_shape(), Shape{784});

  // Counts that do not match: the images' and the labels' files and counts.
  write_gz(train_labels, idx_bytes(kIdxLabelsMagic, {4}, 4));
  expect_refused(train_labels, {"holds 4 labels", train_images, "holds 3 images"});
  write_gz(test_labels, idx_bytes(kIdxLabelsMagic, {1}, 1));
  expect_refused(test_labels, {"holds 1 labels", test_images, "holds 2 images"});
  // A bad magic: a label file where the images should be, an image file for labels.
  write_gz(train_images, idx_bytes(kIdxLabelsMagic, {3}, 3));
  expect_refused(train_images, {"magic 0x00000801, expected 0x00000803"});
  write_gz(test_labels, idx_bytes(kIdxImagesMagic, {2, 28, 28}, 2 * 784));
  expect_refused(test_labels, {"expected 0x00000801 (labels"});
  // Truncated data.
  write_gz(test_images, idx_bytes(kIdxImagesMagic, {2, 28, 28}, 1000));
  expect_refused(
      test_images,
      {"truncated: shape [2, 28, 28] needs 1568 data bytes but the file ends after 1000"});
  // t10k images of another size than the training images: both files and shapes.
  write_gz(test_images, idx_bytes(kIdxImagesMagic, {2, 14, 14}, 2 * 196));
  expect_refused(test_images, {train_images, "[28, 28]", "[14, 14]"});
  // A missing file: the directory and the names looked for.
  fs::remove(train_labels);
  expect_refused(dir.path(), {"neither train-labels-idx1-ubyte.gz nor train-labels-idx1-ubyte"});
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
