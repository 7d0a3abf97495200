// Fashion-MNIST: 28x28 grey images of 10 clothing classes, from the gzip IDX files of Debian's
// dataset-fashion-mnist package, as u8 features [N, 784] (decoded to fp32 per batch:
// ClassificationData) and i64 labels [N].
#pragma once

#include <array>
#include <string>

#include "mixtrain/data/classification.h"

namespace mixtrain {

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
inline constexpr std::array<const char*, 10> kFashionMnistClasses = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

struct FashionMnistOptions {
  std::string dir = kFashionMnistDir;
  /// Examples held out from the end of the training files as a validation split (0: none).
  int64_t validation = 0;
  /// Subtract the training split's pixel mean and divide by its std (after scaling to [0, 1]);
  /// the same constants are applied to validation and test.
  bool normalize = false;
};

struct FashionMnist {
  ClassificationData train;       ///< 60000 - validation examples
  ClassificationData validation;  ///< empty unless options.validation > 0
  ClassificationData test;        ///< 10000 examples
  float mean = 0.0f;              ///< of the training split's pixels in [0, 1]
  float std = 1.0f;
};

/// Loads the four files under options.dir (train-images-idx3-ubyte.gz, train-labels-...,
/// t10k-...): checks 28x28 images, matching counts and labels in 0..9. Throws IOError naming
/// the file and the fault, ConfigError for a bad validation size.
FashionMnist load_fashion_mnist(const FashionMnistOptions& options = {});

/// u8 images [N, H, W] and u8 labels [N] -> u8 features [N, H*W] (rows() gives them as fp32 in
/// [0, 1]) and i64 labels [N].
ClassificationData images_to_classification(const Tensor& images_u8, const Tensor& labels_u8);

}  // namespace mixtrain
