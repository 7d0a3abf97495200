// Fashion-MNIST loader: four IDX files -> u8 pixels [N, 784] (fp32 in [0, 1] per batch, optionally
// standardised) and i64 labels, with an optional validation split from the end of the training
// files.
#include "mixtrain/data/fashion_mnist.h"

#include <fmt/format.h>
#include <cmath>

#include "mixtrain/data/idx.h"
#include "mixtrain/error.h"

namespace mixtrain {

ClassificationData images_to_classification(const Tensor& images, const Tensor& labels) {
  images.check_dtype(DType::u8, "images_to_classification images");
  labels.check_dtype(DType::u8, "images_to_classification labels");
  if (images.dim() < 2 || labels.dim() != 1 || images.size(0) != labels.size(0))
    throw ShapeError(fmt::format("images_to_classification: images {} and labels {} do not pair up",
                                 shape_str(images.shape()), shape_str(labels.shape())));
  const int64_t n = images.size(0);
  const int64_t f = n ? images.numel() / n : 0;
  ClassificationData d;
  d.features = images.contiguous().reshape({n, f});  // the pixels as they are: decoded per batch
  d.labels = Tensor::empty({n}, DType::i64);
  const Tensor lab = labels.contiguous();
  const uint8_t* lb = lab.data<uint8_t>();
  int64_t* ol = d.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) ol[i] = lb[i];
  return d;
}

namespace {

ClassificationData load_pair(const std::string& dir, const std::string& stem, int64_t expect_n) {
  const std::string ipath = fmt::format("{}/{}-images-idx3-ubyte.gz", dir, stem);
  const std::string lpath = fmt::format("{}/{}-labels-idx1-ubyte.gz", dir, stem);
  const Tensor images = read_idx_images(ipath);
  const Tensor labels = read_idx_labels(lpath);
  if (images.size(1) != 28 || images.size(2) != 28)
    throw IOError(fmt::format("fashion-mnist {}: images are {}x{}, expected 28x28", ipath,
                              images.size(1), images.size(2)));
  if (images.size(0) != labels.size(0))
    throw IOError(fmt::format("fashion-mnist: {} holds {} images but {} holds {} labels", ipath,
                              images.size(0), lpath, labels.size(0)));
  if (images.size(0) != expect_n)
    throw IOError(
        fmt::format("fashion-mnist {}: {} images, expected {}", ipath, images.size(0), expect_n));
  const uint8_t* lb = labels.data<uint8_t>();
  for (int64_t i = 0; i < labels.size(0); ++i)
    if (lb[i] > 9)
      throw IOError(fmt::format("fashion-mnist {}: label {} at index {} is not a class 0..9", lpath,
                                int{lb[i]}, i));
  return images_to_classification(images, labels);
}

}  // namespace

FashionMnist load_fashion_mnist(const FashionMnistOptions& opt) {
  if (opt.validation < 0 || opt.validation >= 60000)
    throw ConfigError(
        fmt::format("fashion-mnist: validation size {} outside [0, 60000)", opt.validation));
  FashionMnist out;
  ClassificationData all = load_pair(opt.dir, "train", 60000);
  out.test = load_pair(opt.dir, "t10k", 10000);
  if (opt.validation > 0) {
    // The files are already in random order, so the last examples are a fair sample.
    out.train = all.slice(0, 60000 - opt.validation);
    out.validation = all.slice(60000 - opt.validation, 60000);
  } else {
    out.train = std::move(all);
  }
  // Statistics of the decoded pixels (v / 255 in fp32, as rows() gives them) in double: 47M
  // sums in fp32 would lose several digits.
  float decoded[256];
  for (int v = 0; v < 256; ++v) decoded[v] = static_cast<float>(v) / 255.0f;
  const Tensor px = out.train.features.contiguous();
  const uint8_t* p = px.data<uint8_t>();
  const int64_t n = px.numel();
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = decoded[p[i]];
    sum += x;
    sq += static_cast<double>(x) * x;
  }
  const double mean = sum / static_cast<double>(n);
  out.mean = static_cast<float>(mean);
  out.std =
      static_cast<float>(std::sqrt(std::max(sq / static_cast<double>(n) - mean * mean, 1e-12)));
  if (opt.normalize) {
    const ClassificationData::Standardize st{out.mean, 1.0f / out.std};
    out.train.standardize = out.validation.standardize = out.test.standardize = st;
  }
  return out;
}

}  // namespace mixtrain
