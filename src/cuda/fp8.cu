// fp8 quantization on the GPU (fp8.h): grid-stride element kernels over the per-element math
// of mixtrain/detail/fp8_math.h, the amax as an integer max of float bits (order-independent,
// so the result does not depend on the launch). Compiled, not yet run on a GPU.
#include <cuda_runtime.h>

#include "cuda/device_common.cuh"
#include "cuda/fp8.h"
#include "cuda/runtime.h"
#include "mixtrain/detail/fp8_math.h"

namespace mixtrain::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kE4m3 = 4, kE5m2 = 5;  // mixtrain::DType's values

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

__device__ uint32_t abs_bits(float v) { return detail::f32_bits(v) & 0x7fffffffu; }

// The block's largest bits into *out (one atomic per block).
__device__ void block_max_into(uint32_t mine, uint32_t* out) {
  __shared__ uint32_t warp_max[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t other = __shfl_down_sync(0xffffffffu, mine, o);
    mine = other > mine ? other : mine;
  }
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t m = 0;
    for (int w = 0; w < kThreads / 32; ++w) m = warp_max[w] > m ? warp_max[w] : m;
    atomicMax(out, m);
  }
}

__global__ void amax_kernel(const void* x, int dt, int64_t n, uint32_t* out) {
  uint32_t mine = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t a = abs_bits(dev::load(x, dt, i));
    mine = a > mine ? a : mine;
  }
  block_max_into(mine, out);
}

__device__ float round_to(float v, bool e5m2) {
  return e5m2 ? detail::fp8_round<true>(v, true) : detail::fp8_round<false>(v, true);
}

__global__ void quantize_kernel(const void* x, int dt, int64_t n, float scale, bool e5m2, void* q,
                                int q_dt) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float r = round_to(dev::load(x, dt, i) * scale, e5m2);
    if (q_dt == kE4m3)  // r is on the grid: the cast is exact
      static_cast<uint8_t*>(q)[i] =
          static_cast<uint8_t>(detail::encode_small_float<4, 3, false>(r, true));
    else if (q_dt == kE5m2)
      static_cast<uint8_t*>(q)[i] =
          static_cast<uint8_t>(detail::encode_small_float<5, 2, true>(r, true));
    else
      dev::store(q, q_dt, i, r);
  }
}

// One thread per block of 32 along a row.
__global__ void mx_kernel(const void* x, int dt, int64_t R, int64_t K, bool e5m2, uint16_t* q,
                          uint8_t* scales, uint32_t* amax_out) {
  const int64_t nb = (K + 31) / 32, total = R * nb;
  const float fmax = e5m2 ? 57344.0f : 448.0f;
  uint32_t mine = 0;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / nb, b = t % nb;
    const int64_t begin = r * K + b * 32, len = K - b * 32 < 32 ? K - b * 32 : 32;
    uint32_t bmax = 0;
    for (int64_t i = 0; i < len; ++i) {
      const uint32_t a = abs_bits(dev::load(x, dt, begin + i));
      bmax = a > bmax ? a : bmax;
    }
    mine = bmax > mine ? bmax : mine;
    const uint8_t code = detail::e8m0_ceil_code(detail::f32_from_bits(bmax), fmax);
    scales[t] = code;
    const float down = detail::e8m0_inverse(code), up = detail::e8m0_decode(code);
    for (int64_t i = 0; i < len; ++i)
      q[begin + i] = detail::bf16_bits_rne(round_to(dev::load(x, dt, begin + i) * down, e5m2) * up);
  }
  block_max_into(mine, amax_out);
}

}  // namespace

int launch_amax(const void* x, int dt, int64_t n, uint32_t* amax_bits) {
  cudaError_t e = cudaMemsetAsync(amax_bits, 0, sizeof(uint32_t), stream());
  if (e != cudaSuccess || n == 0) return static_cast<int>(e);
  amax_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(x, dt, n, amax_bits);
  return static_cast<int>(cudaGetLastError());
}

int launch_fp8_quantize(const void* x, int dt, int64_t n, float scale, bool e5m2, void* q,
                        int q_dt) {
  if (n == 0) return 0;
  quantize_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(x, dt, n, scale, e5m2, q, q_dt);
  return static_cast<int>(cudaGetLastError());
}

int launch_mx_quantize(const void* x, int dt, int64_t R, int64_t K, bool e5m2, uint16_t* q,
                       uint8_t* scales, uint32_t* amax_bits) {
  cudaError_t e = cudaMemsetAsync(amax_bits, 0, sizeof(uint32_t), stream());
  const int64_t total = R * ((K + 31) / 32);
  if (e != cudaSuccess || total == 0) return static_cast<int>(e);
  mx_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(x, dt, R, K, e5m2, q, scales, amax_bits);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace mixtrain::cuda
