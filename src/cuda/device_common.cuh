// Device helpers the CUDA backend's nn kernels share (nn_kernels.cu, attention.cu): element
// addressing and fp32 loads and stores by dtype (the host's conversions, mixtrain/detail/
// scalar.h), index loads, and warp and block reductions in a fixed order (the result depends on
// the block size, which the launchers choose from the shape alone, never on timing). Included
// by .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "mixtrain/detail/scalar.h"

namespace mixtrain::cuda::dev {

// mixtrain::DType's values (dtype.h): f32, f64, bf16, f16, e4m3, e5m2, i32, i64, u8.
constexpr int kF32 = 0, kF64 = 1, kBf16 = 2, kF16 = 3, kI32 = 6, kI64 = 7;

__host__ __device__ inline int element_size(int dt) {
  switch (dt) {
    case kF64:
    case kI64:
      return 8;
    case kF32:
    case kI32:
      return 4;
    case kBf16:
    case kF16:
      return 2;
    default:
      return 1;
  }
}

/// The element offset of linear index i in a view (row-major over its shape).
__device__ inline int64_t offset_of(const View& v, int64_t i) {
  int64_t off = 0;
  for (int k = v.rank - 1; k >= 0; --k) {
    const int64_t e = v.shape[k];
    off += (i % e) * v.strides[k];
    i /= e;
  }
  return off;
}

/// Element `i` (an element offset) of a float buffer of dtype dt, as fp32 (exact for bf16 and
/// f16; f64 rounds once).
__device__ inline float load(const void* base, int dt, int64_t i) {
  switch (dt) {
    case kBf16:
      return detail::bf16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case kF16:
      return detail::f16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case kF64:
      return static_cast<float>(static_cast<const double*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

/// Element `i` of a float buffer of dtype dt set to v, rounded once (RNE) into dt.
__device__ inline void store(void* base, int dt, int64_t i, float v) {
  switch (dt) {
    case kBf16:
      static_cast<uint16_t*>(base)[i] = detail::bf16_bits_rne(v);
      break;
    case kF16:
      static_cast<uint16_t*>(base)[i] = detail::f16_bits_rne(v);
      break;
    case kF64:
      static_cast<double*>(base)[i] = v;
      break;
    default:
      static_cast<float*>(base)[i] = v;
  }
}

/// Element `i` of an i32 or i64 index buffer.
__device__ inline int64_t load_index(const void* base, int dt, int64_t i) {
  return dt == kI64 ? static_cast<const int64_t*>(base)[i]
                    : static_cast<int64_t>(static_cast<const int32_t*>(base)[i]);
}

/// Sum and max over a warp by an xor butterfly: every lane ends with the same bits (each step
/// adds the same two values on both lanes of a pair, and fp32 addition is commutative).
__device__ inline float warp_sum(float v) {
  for (int o = 16; o >= 1; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline double warp_sum(double v) {
  for (int o = 16; o >= 1; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o >= 1; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// The block's sum (or max) of v, returned to every thread: warps by warp_sum, then the warp
/// results in warp order by the first warp. blockDim.x a multiple of 32 (at most 1024);
/// `scratch` 32 entries of shared memory, free again when this returns.
template <class T>
__device__ inline T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? scratch[lane] : T(0);
    w = warp_sum(w);
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  const T r = scratch[0];
  __syncthreads();
  return r;
}
__device__ inline float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? scratch[lane] : -INFINITY;
    w = warp_max(w);
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  const float r = scratch[0];
  __syncthreads();
  return r;
}

/// Threads for a block that reduces a row of n elements: a multiple of 32 from 32 to 256,
/// chosen from n alone (so the summation order depends on the shape only).
inline int row_threads(int64_t n) { return n <= 32 ? 32 : n <= 64 ? 64 : n <= 128 ? 128 : 256; }

/// Blocks for a grid-stride loop over n items with `threads` per block: at most 65535.
inline unsigned grid_for(int64_t n, int threads = 256) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

}  // namespace mixtrain::cuda::dev
