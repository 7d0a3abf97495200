// ClassificationData slicing and decoding, images_to_classification (an IDX set's images and
// labels as one), and shuffled_indices (EpochSampler's shuffle).
#include "mixtrain/data/classification.h"

#include <fmt/format.h>

#include <array>
#include <vector>

#include "mixtrain/error.h"

namespace mixtrain {

ClassificationData ClassificationData::slice(int64_t start, int64_t end) const {
  if (start < 0 || end < start || end > size())
    throw ShapeError(fmt::format("ClassificationData::slice: [{}, {}) out of range for {} examples",
                                 start, end, size()));
  return {features.slice(0, start, end).clone(), labels.slice(0, start, end).clone(), standardize};
}

Tensor ClassificationData::rows(int64_t start, int64_t end) const {
  if (start < 0 || end < start || end > size())
    throw ShapeError(fmt::format("ClassificationData::rows: [{}, {}) out of range for {} examples",
                                 start, end, size()));
  std::vector<int64_t> idx(static_cast<size_t>(end - start));
  for (int64_t i = start; i < end; ++i) idx[i - start] = i;
  return gather(idx.data(), end - start);
}

Tensor ClassificationData::gather(const int64_t* idx, int64_t n) const {
  const DType dt = features.dtype();
  if (dt != DType::u8 && dt != DType::f32 && dt != DType::bf16 && dt != DType::f16)
    throw DTypeError(fmt::format(
        "ClassificationData: features {} must be u8 (decoded as v / 255) or f32, bf16, f16",
        features.str()));
  const Tensor src = features.contiguous();
  const int64_t f = num_features();
  Tensor out = Tensor::empty({n, f}, DType::f32);
  float* o = out.data<float>();
  const char* base = static_cast<const char*>(src.raw_data());
  const size_t row_bytes = static_cast<size_t>(f) * src.element_size();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = idx[i];
    if (k < 0 || k >= size())
      throw ShapeError(
          fmt::format("ClassificationData::gather: example {} out of range for {}", k, size()));
    float* r = o + i * f;
    const char* in = base + k * static_cast<int64_t>(row_bytes);
    if (dt == DType::u8) {
      static const auto kU8 = [] {  // v / 255 for every v, computed once
        std::array<float, 256> t{};
        for (int v = 0; v < 256; ++v) t[v] = static_cast<float>(v) / 255.0f;
        return t;
      }();
      const auto* px = reinterpret_cast<const uint8_t*>(in);
      for (int64_t j = 0; j < f; ++j) r[j] = kU8[px[j]];
    } else {
      convert(in, dt, r, DType::f32, static_cast<size_t>(f));
    }
    if (standardize) {
      const float mean = standardize->mean, inv = standardize->inv_std;
      for (int64_t j = 0; j < f; ++j) r[j] = (r[j] - mean) * inv;
    }
  }
  return out;
}

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

std::vector<int64_t> shuffled_indices(int64_t n, Rng& rng) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  // Fisher-Yates from the back: i swaps with a uniform j in [0, i]. below() takes a modulus of
  // 64 random bits; its bias (< n / 2^64) is far below anything measurable here.
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(idx[i], idx[j]);
  }
  return idx;
}

}  // namespace mixtrain
