// The CUDA backend's kernels (kernels.cu), behind plain launchers the host code (backend.cpp)
// calls: element-wise fill, the strided converting copy, the element-wise maps and gradient
// accumulation. Host-side header, no CUDA types.
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
/// out = op(ins[0], ins[1], ins[2]) element by element, read as fp32 and rounded once into
/// out's dtype (f32, bf16, f16). `op` is mixtrain::MapOp's value; the n_ins inputs are views of
/// out's rank and shape (a broadcast dimension has stride 0); `s` is the map's scalar.
int launch_map(int op, const View* ins, int n_ins, float s, const View& out);
/// dst += src element by element (same shape, float dtypes), in fp32, rounded once into dst.
int launch_add_into(const View& dst, const View& src);

}  // namespace mixtrain::cuda
