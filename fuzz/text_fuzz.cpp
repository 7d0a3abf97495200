// libFuzzer target: ByteTextData::from_bytes, then sample() and windows() with fuzzed batch,
// context, window range and validation fraction. Bad sizes must end in ConfigError; accepted
// batches are checked against the bytes they were cut from.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "mixtrain/data/text.h"
#include "mixtrain/error.h"

using namespace mixtrain;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

// Mostly small sizes (where valid batches are), sometimes any int64 (where overflow hides).
int64_t size_param(FuzzedDataProvider& fdp, int64_t small_hi) {
  return fdp.ConsumeBool() ? fdp.ConsumeIntegral<int64_t>()
                           : fdp.ConsumeIntegralInRange<int64_t>(-2, small_hi);
}

// Row r of a batch must be split[start, start + T + 1) for some start; returns that start or -1.
void check_batch(const TextBatch& b, std::string_view split, int64_t rows, int64_t t,
                 int64_t fixed_start /* -1: any */) {
  check(b.inputs.shape() == (Shape{rows, t}) && b.targets.shape() == (Shape{rows, t}));
  const int64_t* in = b.inputs.data<int64_t>();
  const int64_t* tg = b.targets.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    std::string window;
    for (int64_t i = 0; i < t; ++i) {
      check(in[r * t + i] >= 0 && in[r * t + i] < 256);
      window += static_cast<char>(in[r * t + i]);
      if (i + 1 < t) check(tg[r * t + i] == in[r * t + i + 1]);
    }
    window += static_cast<char>(tg[r * t + t - 1]);
    if (fixed_start >= 0) {
      check(split.substr(static_cast<size_t>(fixed_start + r * t), window.size()) == window);
    } else {
      check(split.find(window) != std::string_view::npos);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  double fraction;
  switch (fdp.ConsumeIntegralInRange<int>(0, 7)) {
    case 0:
      fraction = std::numeric_limits<double>::quiet_NaN();
      break;
    case 1:
      fraction = -0.25;
      break;
    case 2:
      fraction = 1.0;
      break;
    case 3:
      fraction = 0.0;
      break;
    default:
      fraction = fdp.ConsumeProbability<double>();
      break;  // [0, 1]
  }
  // Batch rows are allocated as asked (B * T * 16 bytes), so B stays modest; T is bounded by
  // the split length in valid calls, and any value must be refused cleanly otherwise.
  const int64_t batch = fdp.ConsumeIntegralInRange<int64_t>(-2, 64);
  const int64_t context = size_param(fdp, 300);
  const int64_t first = size_param(fdp, 64);
  const int64_t count = size_param(fdp, 64);
  Rng rng(fdp.ConsumeIntegral<uint64_t>());
  std::string text = fdp.ConsumeRemainingBytesAsString();

  ByteTextData d;
  try {
    d = ByteTextData::from_bytes(text, "fuzz", fraction);
  } catch (const ConfigError&) {
    check(!(fraction >= 0.0 && fraction < 1.0));
    return 0;
  } catch (const IOError&) {
    check(text.empty());
    return 0;
  }
  check(d.size(TextSplit::train) + d.size(TextSplit::validation) ==
        static_cast<int64_t>(text.size()));
  check(std::string(d.bytes(TextSplit::train)) + std::string(d.bytes(TextSplit::validation)) ==
        text);
  for (TextSplit split : {TextSplit::train, TextSplit::validation}) {
    const std::string_view src = d.bytes(split);
    const int64_t n = d.size(split);
    const int64_t windows = d.num_windows(split, context);
    check(windows >= 0);
    if (windows > 0) check(context >= 1 && windows * context + 1 <= n);
    try {
      const TextBatch b = d.sample(split, batch, context, rng);
      check(batch >= 1 && context >= 1 && context < n);
      check_batch(b, src, batch, context, -1);
    } catch (const ConfigError&) {
      check(batch < 1 || context < 1 || context >= n);
    }
    try {
      const TextBatch b = d.windows(split, first, count, context);
      check(count >= 1 && first >= 0 && count <= windows - first);
      check_batch(b, src, count, context, first * context);
    } catch (const ConfigError&) {
      check(count < 1 || first < 0 || context < 1 || count > windows - first);
    }
  }
  return 0;
}
