// libFuzzer target: the IDX image and label readers over arbitrary bytes (gzip or plain).
// Malformed input must end in IOError; anything else is a crash.
#include <cstdint>
#include <cstdlib>

#include "mixtrain/data/idx.h"
#include "mixtrain/error.h"

using namespace mixtrain;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

void try_read(const uint8_t* data, size_t size, bool images) {
  Tensor t;
  try {
    t = images ? read_idx_images_from_memory(data, size, "fuzz")
               : read_idx_labels_from_memory(data, size, "fuzz");
  } catch (const IOError&) {
    return;
  }
  // Accepted: u8 with the documented rank and bounds, every byte readable.
  check(t.dtype() == DType::u8);
  check(t.dim() == (images ? 3 : 1));
  for (int64_t d = 0; d < t.dim(); ++d)
    check(t.shape()[d] >= 1 && t.shape()[d] <= (d == 0 ? 10'000'000 : 4096));
  const auto* p = t.data<uint8_t>();
  volatile uint8_t sink = p[0] ^ p[t.numel() - 1];
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The magic differs, so at most one of the two accepts a given input.
  try_read(data, size, true);
  try_read(data, size, false);
  return 0;
}
