// The CUDA backend's element-wise kernels: fill and the strided converting copy (kernels.h).
// Conversions are the host's own functions (mixtrain/detail/scalar.h, shared by both backends
// and checked exhaustively by the CPU tests), so a tensor converted on the device has the
// host's bits.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "mixtrain/detail/map_math.h"
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

// MapOp's values (backend/backend.h; backend.cpp checks the correspondence).
enum Op : int {
  kAdd,
  kSub,
  kMul,
  kDiv,
  kNeg,
  kAddScalar,
  kMulScalar,
  kRelu,
  kTanh,
  kAbs,
  kExp,
  kLog,
  kGelu,
  kReluGrad,
  kTanhGrad,
  kAbsGrad,
  kExpGrad,
  kLogGrad,
  kGeluGrad,
  kDivGradB
};

__device__ float apply(int op, float a, float b, float c, float s) {
  switch (op) {
    case kAdd:
      return a + b;
    case kSub:
      return a - b;
    case kMul:
      return a * b;
    case kDiv:
      return a / b;
    case kNeg:
      return -a;
    case kAddScalar:
      return a + s;
    case kMulScalar:
      return a * s;
    case kRelu:
      return detail::relu(a);
    case kTanh:
      return detail::tanh_f32(a);
    case kAbs:
      return fabsf(a);
    case kExp:
      return detail::exp_f32(a);
    case kLog:
      return detail::log_f32(a);
    case kGelu:
      return detail::gelu(a);
    case kReluGrad:
      return detail::relu_grad(a, b);
    case kTanhGrad:
      return detail::tanh_grad(a, b);
    case kAbsGrad:
      return detail::abs_grad(a, b);
    case kExpGrad:
      return a * b;
    case kLogGrad:
      return detail::log_grad(a, b);
    case kGeluGrad:
      return detail::gelu_grad(a, b);
    default:
      return detail::div_grad_b(a, b, c);
  }
}

struct MapArgs {
  View in[3];
  int n_ins;
};

// One thread per element; a uniform switch (every thread runs the same op), so no divergence.
__global__ void map_kernel(int op, MapArgs args, float s, View out, int64_t n) {
  const int os = element_size(out.dtype);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[3] = {0.0f, 0.0f, 0.0f};
    for (int k = 0; k < args.n_ins; ++k) {
      const View& in = args.in[k];
      v[k] = load_f32(static_cast<const char*>(in.data) + offset_of(in, i) * element_size(in.dtype),
                      in.dtype);
    }
    store_f32(static_cast<char*>(out.data) + offset_of(out, i) * os, out.dtype,
              apply(op, v[0], v[1], v[2], s));
  }
}

__global__ void add_into_kernel(View dst, View src, int64_t n) {
  const int ds = element_size(dst.dtype), ss = element_size(src.dtype);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    char* d = static_cast<char*>(dst.data) + offset_of(dst, i) * ds;
    const float a = load_f32(d, dst.dtype);
    const float b =
        load_f32(static_cast<const char*>(src.data) + offset_of(src, i) * ss, src.dtype);
    store_f32(d, dst.dtype, a + b);
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
  fill_kernel<<<blocks_for(n), 256, 0, stream()>>>(dst, n, pattern, bytes);
  return static_cast<int>(cudaGetLastError());
}

int launch_copy(const View& src, const View& dst) {
  if (src.dtype != dst.dtype && !(is_float16_or_32(src.dtype) && is_float16_or_32(dst.dtype)))
    return -1;
  const int64_t n = numel(dst);
  if (n == 0) return 0;
  copy_kernel<<<blocks_for(n), 256, 0, stream()>>>(src, dst, n);
  return static_cast<int>(cudaGetLastError());
}

int launch_map(int op, const View* ins, int n_ins, float s, const View& out) {
  if (n_ins < 0 || n_ins > 3 || !is_float16_or_32(out.dtype)) return -1;
  MapArgs args{};
  args.n_ins = n_ins;
  for (int k = 0; k < n_ins; ++k) {
    if (!is_float16_or_32(ins[k].dtype)) return -1;
    args.in[k] = ins[k];
  }
  const int64_t n = numel(out);
  if (n == 0) return 0;
  map_kernel<<<blocks_for(n), 256, 0, stream()>>>(op, args, s, out, n);
  return static_cast<int>(cudaGetLastError());
}

int launch_add_into(const View& dst, const View& src) {
  if (!is_float16_or_32(dst.dtype) || !is_float16_or_32(src.dtype)) return -1;
  const int64_t n = numel(dst);
  if (n == 0) return 0;
  add_into_kernel<<<blocks_for(n), 256, 0, stream()>>>(dst, src, n);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace mixtrain::cuda
