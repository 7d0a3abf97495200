// The CUDA backend's multi-tensor passes (multi_tensor.h): the fused optimizer update, the
// gradient scan, the gradient histograms and split16's encoding. A pass over a list of tensors
// is one launch: its per-tensor descriptors go to the device as one table, and each block
// takes one (tensor, chunk of kChunk elements), found by a binary search over the tensors'
// first chunk indices.
//
// The per-element math is the CPU's (mixtrain/detail/update_math.h, grad_math.h); this file is
// compiled with -fmad=false (CMakeLists.txt) so that a*b+c is two roundings as on the host,
// and with IEEE division and square root (no fast math), so an update gives the CPU kernels'
// bits. These kernels have not yet run on a GPU; tests/test_backend_ops.cpp checks them
// against the CPU where one is present.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "cuda/multi_tensor.h"
#include "cuda/runtime.h"
#include "mixtrain/detail/grad_math.h"
#include "mixtrain/detail/scalar.h"
#include "mixtrain/detail/update_math.h"

namespace mixtrain::cuda {

namespace {

// mixtrain::DType's values (dtype.h): bf16 2, f16 3 (anything else here is f32).
constexpr int kBf16 = 2, kF16 = 3;
constexpr int64_t kChunk = 4096;  // elements per block
constexpr int kThreads = 256;

// A device buffer that grows (freeing and reallocating: cudaFree waits for the device, which
// is rare once it has reached the step's size) and is reused by every call, in stream order.
struct DeviceBuffer {
  void* p = nullptr;
  size_t size = 0;
  cudaError_t reserve(size_t bytes) {
    if (bytes <= size) return cudaSuccess;
    if (p) cudaFree(p);
    p = nullptr;
    size = 0;
    const size_t want = std::max<size_t>(bytes, 4096) * 2;
    const cudaError_t e = cudaMalloc(&p, want);
    if (e == cudaSuccess) size = want;
    return e;
  }
};

// The tables and scratch of the passes, used under one lock (the host staging vectors too).
struct Scratch {
  std::mutex mu;
  DeviceBuffer table, partials, result;
  std::vector<unsigned char> host;
};
Scratch& scratch() {
  static Scratch* s = new Scratch;  // never destroyed: the backend lives until exit
  return *s;
}

// The first chunk index of every tensor, and the total in the last entry.
std::vector<int64_t> first_chunks(const int64_t* sizes, int count, size_t stride_bytes) {
  std::vector<int64_t> first(static_cast<size_t>(count) + 1, 0);
  const auto* p = reinterpret_cast<const unsigned char*>(sizes);
  for (int t = 0; t < count; ++t) {
    int64_t n;
    std::memcpy(&n, p + static_cast<size_t>(t) * stride_bytes, sizeof(n));
    first[static_cast<size_t>(t) + 1] = first[static_cast<size_t>(t)] + (n + kChunk - 1) / kChunk;
  }
  return first;
}

// Uploads [descriptors | first chunks] as one table (a pageable host buffer: cudaMemcpyAsync
// copies it to staging before returning, so the host may reuse it at once).
template <class T>
cudaError_t upload_table(Scratch& s, const T* items, int count, const std::vector<int64_t>& first,
                         const T** d_items, const int64_t** d_first) {
  const size_t a = sizeof(T) * static_cast<size_t>(count);
  const size_t a_pad = (a + 15) / 16 * 16;
  const size_t b = sizeof(int64_t) * first.size();
  s.host.resize(a_pad + b);
  std::memcpy(s.host.data(), items, a);
  std::memcpy(s.host.data() + a_pad, first.data(), b);
  cudaError_t e = s.table.reserve(a_pad + b);
  if (e != cudaSuccess) return e;
  e = cudaMemcpyAsync(s.table.p, s.host.data(), a_pad + b, cudaMemcpyHostToDevice, stream());
  *d_items = static_cast<const T*>(s.table.p);
  *d_first = reinterpret_cast<const int64_t*>(static_cast<const unsigned char*>(s.table.p) + a_pad);
  return e;
}

// The tensor a block's chunk belongs to: the last t with first[t] <= chunk.
__device__ int tensor_of(const int64_t* first, int count, int64_t chunk) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first[mid] <= chunk)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__device__ float load_grad(const void* g, int dtype, int64_t i) {
  switch (dtype) {
    case kBf16:
      return detail::bf16_bits_to_f32(static_cast<const uint16_t*>(g)[i]);
    case kF16:
      return detail::f16_bits_to_f32(static_cast<const uint16_t*>(g)[i]);
    default:
      return static_cast<const float*>(g)[i];
  }
}

// ---- the fused update ---------------------------------------------------------------------

template <class R, detail::Home H>
__device__ void update_range(const R& rule, const MtUpdate& a, int64_t begin, int64_t end) {
  auto* w16 = static_cast<uint16_t*>(a.weight);
  auto* wf = static_cast<float*>(a.weight);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const uint32_t rnd =
        H == detail::Home::stochastic ? detail::update_random(a.seed, a.counter, i) : 0u;
    detail::update_element<R, H>(rule, a.master, w16, wf, a.aux, a.s0, a.s1, a.s2, i,
                                 load_grad(a.grad, a.grad_dtype, i), a.grad_mult, rnd);
  }
}

template <class R>
__global__ void __launch_bounds__(kThreads)
    update_kernel(R rule, const MtUpdate* tensors, const int64_t* first, int count) {
  const int64_t chunk = blockIdx.x;
  const int t = tensor_of(first, count, chunk);
  const MtUpdate a = tensors[t];
  const int64_t begin = (chunk - first[t]) * kChunk;
  const int64_t end = begin + kChunk < a.n ? begin + kChunk : a.n;
  using detail::Home;
  switch (static_cast<Home>(a.home)) {  // uniform across the block
    case Home::f32:
      return update_range<R, Home::f32>(rule, a, begin, end);
    case Home::f32_copy_bf16:
      return update_range<R, Home::f32_copy_bf16>(rule, a, begin, end);
    case Home::f32_copy_f32:
      return update_range<R, Home::f32_copy_f32>(rule, a, begin, end);
    case Home::f32_copy_f16:
      return update_range<R, Home::f32_copy_f16>(rule, a, begin, end);
    case Home::stochastic:
      return update_range<R, Home::stochastic>(rule, a, begin, end);
    case Home::kahan:
      return update_range<R, Home::kahan>(rule, a, begin, end);
    case Home::split16:
      return update_range<R, Home::split16>(rule, a, begin, end);
  }
}

template <class R>
cudaError_t launch_rule(const R& rule, const MtUpdate* tensors, const int64_t* first, int count,
                        int64_t chunks) {
  update_kernel<R>
      <<<static_cast<unsigned>(chunks), kThreads, 0, stream()>>>(rule, tensors, first, count);
  return cudaGetLastError();
}

// ---- block reductions (fixed trees: the bits depend on the block size only) -----------------

__device__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
__device__ int warp_or(int v) {
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
__device__ unsigned long long warp_min(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_down_sync(0xffffffffu, v, o);
    v = w < v ? w : v;
  }
  return v;
}

// Lane 0 of warp 0 gets the block's sum, its flags (OR) and the smallest key; blockDim.x is
// kThreads.
__device__ void block_reduce(double& sum, int& flags, unsigned long long& key) {
  __shared__ double s_sum[kThreads / 32];
  __shared__ int s_flags[kThreads / 32];
  __shared__ unsigned long long s_key[kThreads / 32];
  sum = warp_sum(sum);
  flags = warp_or(flags);
  key = warp_min(key);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    s_sum[warp] = sum;
    s_flags[warp] = flags;
    s_key[warp] = key;
  }
  __syncthreads();
  if (warp == 0) {
    constexpr int kWarps = kThreads / 32;
    sum = lane < kWarps ? s_sum[lane] : 0.0;
    flags = lane < kWarps ? s_flags[lane] : 0;
    key = lane < kWarps ? s_key[lane] : ~0ull;
    sum = warp_sum(sum);
    flags = warp_or(flags);
    key = warp_min(key);
  }
}

// ---- the gradient scan --------------------------------------------------------------------

struct Partial {
  double sumsq;
  unsigned long long bad;  // 2 * (first bad element in the chunk) + (it is NaN); ~0: none
  int flags;               // 1: an Inf, 2: a NaN
  int pad;
};

constexpr int kFlagInf = 1, kFlagNan = 2;

__global__ void __launch_bounds__(kThreads)
    scan_kernel(const MtGrad* grads, const int64_t* first, int count, Partial* partials) {
  const int64_t chunk = blockIdx.x;
  const int t = tensor_of(first, count, chunk);
  const MtGrad g = grads[t];
  const int64_t begin = (chunk - first[t]) * kChunk;
  const int64_t end = begin + kChunk < g.n ? begin + kChunk : g.n;
  double sum = 0.0;
  int flags = 0;
  unsigned long long bad = ~0ull;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float x = load_grad(g.data, g.dtype, i);
    if (isfinite(x)) {
      sum += static_cast<double>(x) * x;
    } else {
      const bool nan = isnan(x);
      flags |= nan ? kFlagNan : kFlagInf;
      const unsigned long long k = 2ull * static_cast<unsigned long long>(i) + (nan ? 1u : 0u);
      bad = k < bad ? k : bad;
    }
  }
  block_reduce(sum, flags, bad);
  if (threadIdx.x == 0) partials[chunk] = Partial{sum, bad, flags, 0};
}

struct ScanOut {
  double sumsq;
  unsigned long long first_chunk;  // the first chunk holding an Inf/NaN; ~0: none
  int flags;
  int first_nan;
};

// One block: thread j sums partials j, j + kThreads, ... in order, then the block's tree.
__global__ void __launch_bounds__(kThreads)
    scan_reduce_kernel(const Partial* partials, int64_t chunks, ScanOut* out) {
  double sum = 0.0;
  int flags = 0;
  unsigned long long first = ~0ull;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    const Partial p = partials[c];
    sum += p.sumsq;
    flags |= p.flags;
    if (p.flags && static_cast<unsigned long long>(c) < first)
      first = static_cast<unsigned long long>(c);
  }
  block_reduce(sum, flags, first);
  if (threadIdx.x == 0) {
    ScanOut o;
    o.sumsq = sum;
    o.flags = flags;
    o.first_chunk = first;
    o.first_nan = first != ~0ull ? static_cast<int>(partials[first].bad & 1ull) : 0;
    *out = o;
  }
}

// ---- the histograms -----------------------------------------------------------------------

// Per tensor on the device: the counters, the largest magnitude's bits (a non-negative float
// orders as its bits) and the first bad element as the bitwise NOT of its key (so that
// atomicMax finds the smallest key and a zeroed entry means none).
struct DevHist {
  unsigned long long counts[MtHist::kCounters];
  unsigned long long not_bad;
  unsigned int max_bits;
  unsigned int pad;
};

__global__ void __launch_bounds__(kThreads)
    hist_kernel(const MtGrad* grads, const int64_t* first, int count, float inv_carried,
                float to_fp16, DevHist* out) {
  __shared__ unsigned int s_counts[MtHist::kCounters];
  __shared__ unsigned int s_max;
  __shared__ unsigned long long s_not_bad;
  for (int k = threadIdx.x; k < MtHist::kCounters; k += blockDim.x) s_counts[k] = 0;
  if (threadIdx.x == 0) {
    s_max = 0;
    s_not_bad = 0;
  }
  __syncthreads();
  const int64_t chunk = blockIdx.x;
  const int t = tensor_of(first, count, chunk);
  const MtGrad g = grads[t];
  const int64_t begin = (chunk - first[t]) * kChunk;
  const int64_t end = begin + kChunk < g.n ? begin + kChunk : g.n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const detail::HistClass c = detail::hist_classify<kHistMinExp, kHistMaxExp>(
        load_grad(g.data, g.dtype, i), inv_carried, to_fp16);
    switch (c.kind) {
      case detail::HistClass::nan:
      case detail::HistClass::inf: {
        const bool nan = c.kind == detail::HistClass::nan;
        atomicAdd(&s_counts[nan ? MtHist::nan : MtHist::inf], 1u);
        if (!nan) atomicAdd(&s_counts[MtHist::fp16_overflow], 1u);
        atomicMax(&s_not_bad, ~(2ull * static_cast<unsigned long long>(i) + (nan ? 1u : 0u)));
        break;
      }
      case detail::HistClass::zero:
        atomicAdd(&s_counts[MtHist::zero], 1u);
        break;
      case detail::HistClass::finite:
        if (c.fp16_zero) atomicAdd(&s_counts[MtHist::fp16_zero], 1u);
        if (c.fp16_subnormal) atomicAdd(&s_counts[MtHist::fp16_subnormal], 1u);
        if (c.fp16_overflow) atomicAdd(&s_counts[MtHist::fp16_overflow], 1u);
        // The CPU's max(max_abs, u) from 0: only positive (non-NaN) u can raise it.
        if (c.u > 0.0f) atomicMax(&s_max, __float_as_uint(c.u));
        atomicAdd(&s_counts[c.bin < 0            ? MtHist::below
                            : c.bin >= kHistBins ? MtHist::above
                                                 : MtHist::bins + c.bin],
                  1u);
        break;
    }
  }
  __syncthreads();
  DevHist& h = out[t];
  for (int k = threadIdx.x; k < MtHist::kCounters; k += blockDim.x)
    if (s_counts[k]) atomicAdd(&h.counts[k], static_cast<unsigned long long>(s_counts[k]));
  if (threadIdx.x == 0) {
    if (s_max) atomicMax(&h.max_bits, s_max);
    if (s_not_bad) atomicMax(&h.not_bad, s_not_bad);
  }
}

// ---- split16 ------------------------------------------------------------------------------

__global__ void split_kernel(const float* master, uint16_t* hi, uint16_t* lo, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    detail::split16_encode(master[i], hi + i, lo + i);
}

__global__ void join_kernel(const uint16_t* hi, const uint16_t* lo, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = detail::split16_decode(hi[i], lo[i]);
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

// Grids are one block per chunk: at most 2^31 - 1 of them (8.8e12 elements).
constexpr int64_t kMaxChunks = (int64_t{1} << 31) - 1;

}  // namespace

int launch_update(const MtRule& rule, const MtUpdate* tensors, int count) {
  if (count <= 0) return 0;
  const auto first = first_chunks(&tensors[0].n, count, sizeof(MtUpdate));
  const int64_t chunks = first.back();
  if (chunks == 0) return 0;
  if (chunks > kMaxChunks) return static_cast<int>(cudaErrorInvalidValue);
  Scratch& s = scratch();
  std::lock_guard<std::mutex> lock(s.mu);
  const MtUpdate* d_t = nullptr;
  const int64_t* d_first = nullptr;
  cudaError_t e = upload_table(s, tensors, count, first, &d_t, &d_first);
  if (e != cudaSuccess) return static_cast<int>(e);
  using namespace detail;
  switch (rule.variant) {
    case MtRule::adamw:
      e = launch_rule(AdamRule<true>(rule.adam), d_t, d_first, count, chunks);
      break;
    case MtRule::adam_l2:
      e = launch_rule(AdamRule<false>(rule.adam), d_t, d_first, count, chunks);
      break;
    case MtRule::sgd_plain:
      e = launch_rule(SgdRule<false, false>(rule.sgd), d_t, d_first, count, chunks);
      break;
    case MtRule::sgd_momentum:
      e = launch_rule(SgdRule<true, false>(rule.sgd), d_t, d_first, count, chunks);
      break;
    case MtRule::sgd_nesterov:
      e = launch_rule(SgdRule<true, true>(rule.sgd), d_t, d_first, count, chunks);
      break;
    case MtRule::rms_plain:
      e = launch_rule(RmsRule<false, false>(rule.rms), d_t, d_first, count, chunks);
      break;
    case MtRule::rms_momentum:
      e = launch_rule(RmsRule<false, true>(rule.rms), d_t, d_first, count, chunks);
      break;
    case MtRule::rms_centered:
      e = launch_rule(RmsRule<true, false>(rule.rms), d_t, d_first, count, chunks);
      break;
    case MtRule::rms_centered_momentum:
      e = launch_rule(RmsRule<true, true>(rule.rms), d_t, d_first, count, chunks);
      break;
  }
  return static_cast<int>(e);
}

int scan_grads(const MtGrad* grads, int count, MtScan* out) {
  *out = MtScan{};
  if (count <= 0) return 0;
  const auto first = first_chunks(&grads[0].n, count, sizeof(MtGrad));
  const int64_t chunks = first.back();
  if (chunks == 0) return 0;
  if (chunks > kMaxChunks) return static_cast<int>(cudaErrorInvalidValue);
  Scratch& s = scratch();
  std::lock_guard<std::mutex> lock(s.mu);
  const MtGrad* d_g = nullptr;
  const int64_t* d_first = nullptr;
  cudaError_t e = upload_table(s, grads, count, first, &d_g, &d_first);
  if (e == cudaSuccess) e = s.partials.reserve(sizeof(Partial) * static_cast<size_t>(chunks));
  if (e == cudaSuccess) e = s.result.reserve(sizeof(ScanOut));
  if (e != cudaSuccess) return static_cast<int>(e);
  auto* partials = static_cast<Partial*>(s.partials.p);
  auto* d_out = static_cast<ScanOut*>(s.result.p);
  scan_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream()>>>(d_g, d_first, count,
                                                                        partials);
  if ((e = cudaGetLastError()) != cudaSuccess) return static_cast<int>(e);
  scan_reduce_kernel<<<1, kThreads, 0, stream()>>>(partials, chunks, d_out);
  if ((e = cudaGetLastError()) != cudaSuccess) return static_cast<int>(e);
  ScanOut o{};
  e = cudaMemcpyAsync(&o, d_out, sizeof(o), cudaMemcpyDeviceToHost, stream());
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream());
  if (e != cudaSuccess) return static_cast<int>(e);
  out->sumsq = o.sumsq;
  out->found_inf = o.flags & kFlagInf;
  out->found_nan = o.flags & kFlagNan;
  if (o.first_chunk != ~0ull) {
    // The tensor of that chunk (chunks are in list order).
    const auto it =
        std::upper_bound(first.begin(), first.end(), static_cast<int64_t>(o.first_chunk));
    out->first_bad = static_cast<int64_t>(it - first.begin()) - 1;
    out->first_bad_nan = o.first_nan != 0;
  }
  return 0;
}

int grad_histograms(const MtGrad* grads, int count, float inv_carried, float to_fp16, MtHist* out) {
  for (int t = 0; t < count; ++t) out[t] = MtHist{};
  if (count <= 0) return 0;
  const auto first = first_chunks(&grads[0].n, count, sizeof(MtGrad));
  const int64_t chunks = first.back();
  if (chunks == 0) return 0;
  if (chunks > kMaxChunks) return static_cast<int>(cudaErrorInvalidValue);
  Scratch& s = scratch();
  std::lock_guard<std::mutex> lock(s.mu);
  const MtGrad* d_g = nullptr;
  const int64_t* d_first = nullptr;
  cudaError_t e = upload_table(s, grads, count, first, &d_g, &d_first);
  const size_t bytes = sizeof(DevHist) * static_cast<size_t>(count);
  if (e == cudaSuccess) e = s.result.reserve(bytes);
  if (e == cudaSuccess) e = cudaMemsetAsync(s.result.p, 0, bytes, stream());
  if (e != cudaSuccess) return static_cast<int>(e);
  auto* d_h = static_cast<DevHist*>(s.result.p);
  hist_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream()>>>(d_g, d_first, count,
                                                                        inv_carried, to_fp16, d_h);
  if ((e = cudaGetLastError()) != cudaSuccess) return static_cast<int>(e);
  std::vector<DevHist> h(static_cast<size_t>(count));
  e = cudaMemcpyAsync(h.data(), d_h, bytes, cudaMemcpyDeviceToHost, stream());
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream());
  if (e != cudaSuccess) return static_cast<int>(e);
  for (int t = 0; t < count; ++t) {
    const DevHist& d = h[static_cast<size_t>(t)];
    MtHist& o = out[t];
    for (int k = 0; k < MtHist::kCounters; ++k) o.counts[k] = d.counts[k];
    std::memcpy(&o.max_abs, &d.max_bits, sizeof(float));
    if (d.not_bad) {
      const unsigned long long key = ~d.not_bad;
      o.first_bad = static_cast<int64_t>(key >> 1);
      o.first_bad_nan = key & 1ull;
    }
  }
  return 0;
}

int launch_split16_split(const float* master, uint16_t* hi, uint16_t* lo, int64_t n) {
  if (n <= 0) return 0;
  split_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(master, hi, lo, n);
  return static_cast<int>(cudaGetLastError());
}

int launch_split16_join(const uint16_t* hi, const uint16_t* lo, float* out, int64_t n) {
  if (n <= 0) return 0;
  join_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(hi, lo, out, n);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace mixtrain::cuda
