// EpochSampler: shuffled epochs of example indices, resumable from (epoch, position, Rng).
#include <fmt/format.h>

#include "mixtrain/data/classification.h"
#include "mixtrain/data/source.h"
#include "mixtrain/error.h"

namespace mixtrain {

EpochSampler::EpochSampler(int64_t n, int64_t batch, uint64_t seed)
    : EpochSampler(n, batch, seed, Options{}) {}

EpochSampler::EpochSampler(int64_t n, int64_t batch, uint64_t seed, Options opt)
    : n_(n), batch_(batch), opt_(opt) {
  if (n < 1) throw ConfigError(fmt::format("epoch sampler: {} examples, need at least 1", n));
  if (batch < 1) throw ConfigError(fmt::format("epoch sampler: batch size {} < 1", batch));
  if (opt.drop_last && n < batch)
    throw ConfigError(fmt::format(
        "epoch sampler: drop_last with batch size {} but only {} examples: no batch at all", batch,
        n));
  state_.rng = Rng(seed);
  start_epoch();
}

void EpochSampler::start_epoch() {
  if (opt_.shuffle) {
    Rng r = state_.rng;  // the state keeps the Rng as it was before this epoch's draws
    order_ = shuffled_indices(n_, r);
  } else {
    order_.resize(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) order_[i] = i;
  }
}

std::vector<int64_t> EpochSampler::next() {
  const int64_t left = n_ - state_.position;
  if (left <= 0 || (opt_.drop_last && left < batch_)) {
    // Next epoch: its Rng continues where this epoch's shuffle stopped (n - 1 draws).
    if (opt_.shuffle) state_.rng.counter += static_cast<uint64_t>(n_ - 1);
    ++state_.epoch;
    state_.position = 0;
    start_epoch();
  }
  const int64_t b = std::min(batch_, n_ - state_.position);
  const auto first = order_.begin() + state_.position;
  state_.position += b;
  return std::vector<int64_t>(first, first + b);
}

void EpochSampler::restore(const State& s) {
  if (s.epoch < 0 || s.position < 0 || s.position > n_)
    throw ConfigError(
        fmt::format("epoch sampler: cannot restore epoch {} position {}: the split has {} examples",
                    s.epoch, s.position, n_));
  state_ = s;
  start_epoch();
}

std::map<std::string, std::string> EpochSampler::State::to_metadata(
    const std::string& prefix) const {
  return {{prefix + "epoch", std::to_string(epoch)},
          {prefix + "position", std::to_string(position)},
          {prefix + "rng_seed", std::to_string(rng.seed)},
          {prefix + "rng_counter", std::to_string(rng.counter)}};
}

EpochSampler::State EpochSampler::State::from_metadata(const std::map<std::string, std::string>& m,
                                                       const std::string& prefix) {
  auto get = [&](const char* key, uint64_t max) -> uint64_t {
    const auto it = m.find(prefix + key);
    if (it == m.end())
      throw ConfigError(fmt::format("data order state: missing '{}{}'", prefix, key));
    const std::string& v = it->second;
    size_t used = 0;
    uint64_t x = 0;
    try {
      x = std::stoull(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (v.empty() || used != v.size() || v[0] == '-' || x > max)
      throw ConfigError(fmt::format("data order state: '{}{}' = '{}' is not an integer in [0, {}]",
                                    prefix, key, v, max));
    return x;
  };
  constexpr uint64_t kI64 = static_cast<uint64_t>(INT64_MAX), kU64 = UINT64_MAX;
  State s;
  s.epoch = static_cast<int64_t>(get("epoch", kI64));
  s.position = static_cast<int64_t>(get("position", kI64));
  s.rng = Rng(get("rng_seed", kU64), get("rng_counter", kU64));
  return s;
}

}  // namespace mixtrain
