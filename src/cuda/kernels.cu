// The CUDA backend's element-wise kernels: fill and the strided converting copy (kernels.h).
// Conversions round as the host's (dtype.h): bf16 by integer RNE with NaN quieted and its top
// payload kept, fp16 by the same encoder the host uses; so a tensor converted on the device has
// the host's bits.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.h"

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

__device__ float bf16_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

// dtype.h's bf16_bits_rne: RNE on the top half; NaN quieted with its sign and top payload.
__device__ uint16_t f32_to_bf16(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// dtype.h's encode_small_float<5, 10, true> (IEEE binary16, RNE, subnormals exact).
__device__ uint16_t f32_to_f16(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint32_t sign = (u >> 31) ? 0x8000u : 0u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a & 0x7fffffu) >> 13));
  if (a == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
  const int exp32 = static_cast<int>(a >> 23);
  if (exp32 == 0) return static_cast<uint16_t>(sign);
  const int e = exp32 - 127;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const bool subnormal = e < -14;
  const int shift = 13 + (subnormal ? -14 - e : 0);
  if (shift > 24) return static_cast<uint16_t>(sign);
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  const uint32_t code = subnormal ? q : (static_cast<uint32_t>(e + 14) << 10) + q;
  if (code > 0x7bffu) return static_cast<uint16_t>(sign | 0x7c00u);
  return static_cast<uint16_t>(sign | code);
}

__device__ float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t out;
  if (exp == 0x1fu) {
    out = man == 0 ? 0x7f800000u : 0x7fc00000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      out = 0;
    } else {  // subnormal: normalise
      int e = -14;
      uint32_t mm = man;
      while (!(mm & 0x400u)) {
        mm <<= 1;
        --e;
      }
      out = (static_cast<uint32_t>(e + 127) << 23) | ((mm & 0x3ffu) << 13);
    }
  } else {
    out = ((exp - 15 + 127) << 23) | (man << 13);
  }
  return __uint_as_float(out | sign);
}

__device__ float load_f32(const char* p, int dt) {
  switch (dt) {
    case kBf16:
      return bf16_to_f32(*reinterpret_cast<const uint16_t*>(p));
    case kF16:
      return f16_to_f32(*reinterpret_cast<const uint16_t*>(p));
    default:
      return *reinterpret_cast<const float*>(p);
  }
}

__device__ void store_f32(char* p, int dt, float v) {
  switch (dt) {
    case kBf16:
      *reinterpret_cast<uint16_t*>(p) = f32_to_bf16(v);
      break;
    case kF16:
      *reinterpret_cast<uint16_t*>(p) = f32_to_f16(v);
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
