// memory_growth_by_dtype (tensor.h): the tracker's live bytes now against a snapshot, per
// dtype; at the end of a forward pass, the activation bytes the tape keeps for backward.
#include "mixtrain/tensor.h"

namespace mixtrain {

std::map<std::string, int64_t> memory_growth_by_dtype(const MemoryStats& before, Device device) {
  const MemoryStats now = memory_stats(device);
  std::map<std::string, int64_t> out;
  constexpr int kNumDTypes = sizeof(now.current_by_dtype) / sizeof(now.current_by_dtype[0]);
  for (int i = 0; i < kNumDTypes; ++i) {
    const int64_t grown = now.current_by_dtype[i] - before.current_by_dtype[i];
    if (grown > 0) out[dtype_name(static_cast<DType>(i))] = grown;
  }
  return out;
}

}  // namespace mixtrain
