// The CUDA backend's element-wise kernels: fill and the strided converting copy (kernels.h).
// Conversions are the host's own functions (mixtrain/detail/scalar.h, shared by both backends
// and checked exhaustively by the CPU tests), so a tensor converted on the device has the
// host's bits.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "mixtrain/detail/scalar.h"

namespace mixtrain::cuda {

namespace {

// mixtrain::DType's values (dtype.h): f32, f64, bf16, f16, e4m3, e5m2, i32, i64, u8.
constexpr int kF32 = 0, kBf16 = 2, kF16 = 3;

__host__ __device__ int element_size(int dt) {
  switch (dt) {
    case 1:
    case 7:
      return 8;
    case 0:
    case 6:
      return 4;
    case 2:
    case 3:
      return 2;
    default:
      return 1;
  }
}

// The element offset of linear index i in a view (row-major over its shape).
__device__ int64_t offset_of(const View& v, int64_t i) {
  int64_t off = 0;
  for (int k = v.rank - 1; k >= 0; --k) {
    const int64_t e = v.shape[k];
    off += (i % e) * v.strides[k];
    i /= e;
  }
  return off;
}

__device__ float load_f32(const char* p, int dt) {
  switch (dt) {
    case kBf16:
      return detail::bf16_bits_to_f32(*reinterpret_cast<const uint16_t*>(p));
    case kF16:
      return detail::f16_bits_to_f32(*reinterpret_cast<const uint16_t*>(p));
    default:
      return *reinterpret_cast<const float*>(p);
  }
}

__device__ void store_f32(char* p, int dt, float v) {
  switch (dt) {
    case kBf16:
      *reinterpret_cast<uint16_t*>(p) = detail::bf16_bits_rne(v);
      break;
    case kF16:
      *reinterpret_cast<uint16_t*>(p) = detail::f16_bits_rne(v);
      break;
    default:
      *reinterpret_cast<float*>(p) = v;
  }
}

__device__ void store_bits(char* p, uint64_t bits, int bytes) {
  switch (bytes) {
    case 8:
      *reinterpret_cast<uint64_t*>(p) = bits;
      break;
    case 4:
      *reinterpret_cast<uint32_t*>(p) = static_cast<uint32_t>(bits);
      break;
    case 2:
      *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(bits);
      break;
    default:
      *reinterpret_cast<uint8_t*>(p) = static_cast<uint8_t>(bits);
  }
}

__device__ uint64_t load_bits(const char* p, int bytes) {
  switch (bytes) {
    case 8:
      return *reinterpret_cast<const uint64_t*>(p);
    case 4:
      return *reinterpret_cast<const uint32_t*>(p);
    case 2:
      return *reinterpret_cast<const uint16_t*>(p);
    default:
      return *reinterpret_cast<const uint8_t*>(p);
  }
}

__global__ void fill_kernel(View dst, int64_t n, uint64_t pattern, int bytes) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    store_bits(static_cast<char*>(dst.data) + offset_of(dst, i) * bytes, pattern, bytes);
}

__global__ void copy_kernel(View src, View dst, int64_t n) {
  const int ss = element_size(src.dtype), ds = element_size(dst.dtype);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const char* s = static_cast<const char*>(src.data) + offset_of(src, i) * ss;
    char* d = static_cast<char*>(dst.data) + offset_of(dst, i) * ds;
    if (src.dtype == dst.dtype)
      store_bits(d, load_bits(s, ss), ds);
    else
      store_f32(d, dst.dtype, load_f32(s, src.dtype));
  }
}

int64_t numel(const View& v) {
  int64_t n = 1;
  for (int k = 0; k < v.rank; ++k) n *= v.shape[k];
  return n;
}

// A grid-stride launch: enough blocks to fill the device, at most 65535.
unsigned blocks_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

bool is_float16_or_32(int dt) { return dt == kF32 || dt == kBf16 || dt == kF16; }

}  // namespace

int launch_fill(const View& dst, uint64_t pattern, int bytes) {
  const int64_t n = numel(dst);
  if (n == 0) return 0;
  fill_kernel<<<blocks_for(n), 256>>>(dst, n, pattern, bytes);
  return static_cast<int>(cudaGetLastError());
}

int launch_copy(const View& src, const View& dst) {
  if (src.dtype != dst.dtype && !(is_float16_or_32(src.dtype) && is_float16_or_32(dst.dtype)))
    return -1;
  const int64_t n = numel(dst);
  if (n == 0) return 0;
  copy_kernel<<<blocks_for(n), 256>>>(src, dst, n);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace mixtrain::cuda
