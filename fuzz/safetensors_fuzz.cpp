// libFuzzer target: the safetensors loader over arbitrary bytes. Malformed input must end in
// IOError; anything else escaping (another exception, a sanitizer report) is a crash.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "mixtrain/error.h"
#include "mixtrain/io/safetensors.h"

using namespace mixtrain;

namespace {

// Aborts (a crash to libFuzzer) when a loaded file breaks the loader's own promises.
void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SafetensorsFile f;
  try {
    f = load_safetensors_from_memory(data, size, "fuzz");
  } catch (const IOError&) {
    return 0;
  }
  // Accepted: the tensors tile the data section, so their bytes sum to at most the input size,
  // and each one reads back through get() and require() with its own dtype and shape.
  size_t total = 0;
  check(f.names().size() == f.size());
  for (const std::string& name : f.names()) {
    check(f.contains(name));
    const Tensor& t = f.require(name, f.get(name).dtype(), f.get(name).shape());
    check(t.nbytes() == static_cast<size_t>(t.numel()) * dtype_size(t.dtype()));
    total += t.nbytes();
    check(total <= size);
    // Touch the first and last byte so ASan sees any storage shorter than nbytes().
    if (t.nbytes() > 0) {
      const auto* p = static_cast<const unsigned char*>(t.raw_data());
      volatile unsigned char sink = p[0] ^ p[t.nbytes() - 1];
      (void)sink;
    }
  }
  try {
    f.get("\x01 no such tensor");
    check(false);
  } catch (const IOError&) {
  }
  return 0;
}
