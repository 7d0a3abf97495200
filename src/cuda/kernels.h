// The CUDA backend's kernels (kernels.cu), behind plain launchers the host code (backend.cpp)
// calls: element-wise fill and the strided, converting copy. Host-side header, no CUDA types.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mixtrain::cuda {

/// A strided view on the device: data, dtype (mixtrain::DType's value), rank <= kMaxRank,
/// extents and element strides.
constexpr int kMaxRank = 8;
struct View {
  void* data = nullptr;
  int dtype = 0;
  int rank = 0;
  int64_t shape[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};
};

/// Every element of dst set to the `bytes`-byte pattern `pattern` (1, 2, 4 or 8 bytes).
/// Returns the launch's cudaError_t as an int (0: success).
int launch_fill(const View& dst, uint64_t pattern, int bytes);
/// dst = src element by element (same shape): same dtypes move bits; f32, bf16 and f16 convert
/// among themselves with one RNE rounding, bit-identical to the host's (dtype.h). Returns the
/// launch's error as an int; -1 for a dtype pair it does not convert.
int launch_copy(const View& src, const View& dst);

}  // namespace mixtrain::cuda
