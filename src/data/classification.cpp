// ClassificationData slicing and decoding, shuffled_indices, and the BatchIterator (an
// EpochSampler's order with the rows and labels it picks).
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

namespace {

// BatchIterator's own checks, before its sampler is built: they name the data set's faults.
int64_t checked_size(const ClassificationData& data, int64_t batch_size,
                     const BatchIterator::Options& opt) {
  if (batch_size < 1)
    throw ConfigError(fmt::format("BatchIterator: batch size {} < 1", batch_size));
  if (data.size() < 1) throw ConfigError("BatchIterator: the data set is empty");
  if (data.features.dim() != 2 || data.labels.dim() != 1 ||
      data.features.size(0) != data.labels.size(0))
    throw ShapeError(fmt::format("BatchIterator: features {} and labels {} do not pair up",
                                 shape_str(data.features.shape()), shape_str(data.labels.shape())));
  data.labels.check_dtype(DType::i64, "BatchIterator labels");
  if (opt.drop_last && data.size() < batch_size)
    throw ConfigError(fmt::format(
        "BatchIterator: drop_last with batch size {} but only {} examples: no batch at all",
        batch_size, data.size()));
  return data.size();
}

}  // namespace

BatchIterator::BatchIterator(const ClassificationData& data, int64_t batch_size, uint64_t seed)
    : BatchIterator(data, batch_size, seed, Options{}) {}

BatchIterator::BatchIterator(const ClassificationData& data, int64_t batch_size, uint64_t seed,
                             Options opt)
    : data_(data), sampler_(checked_size(data, batch_size, opt), batch_size, seed, opt) {}

int64_t BatchIterator::batches_per_epoch() const { return sampler_.batches_per_epoch(); }

Batch BatchIterator::next() {
  const std::vector<int64_t> picked = sampler_.next();
  const int64_t b = static_cast<int64_t>(picked.size());
  Batch out;
  out.features = data_.gather(picked.data(), b);
  out.labels = Tensor::empty({b}, DType::i64);
  const Tensor labels = data_.labels.contiguous();
  const int64_t* lab = labels.data<int64_t>();
  int64_t* olab = out.labels.data<int64_t>();
  for (int64_t i = 0; i < b; ++i) olab[i] = lab[picked[i]];
  out.epoch = sampler_.state().epoch;
  out.index = (sampler_.state().position - b) / sampler_.batch();
  return out;
}

void BatchIterator::restore(const State& s) { sampler_.restore(s); }

}  // namespace mixtrain
