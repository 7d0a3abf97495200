// The embedding's backward on the GPU (nn_kernels.h launch_embedding_backward): the scatter-sum
// of g's rows into the table's rows, each table element the sum of its terms in id order, as
// the CPU's (cpu/embedding.cpp), with no atomics:
//   1. the positions 0..N-1 sorted by id with CUB's radix sort, which is stable, so each id's
//      positions stay in increasing order;
//   2. each table row's range in the sorted list, by a binary search per row;
//   3. one thread per table element (v, c) adds g[pos, c] over its row's range in order, from
//      0.0f, in fp32, and writes the sum (rows no id names get 0: the table is written whole).
// A frequent id (padding, a space) makes its row's threads walk a long range; the other rows
// cost one read of the offsets. Apart from CUB's own kernels, in a file of its own so that
// editing the other nn kernels does not recompile the sort.
//
// Compiled for every architecture the build names but not yet run on a GPU:
// tests/test_backend_ops.cpp checks it against the reference where one is present.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <cstdint>

#include "cuda/device_common.cuh"
#include "cuda/nn_kernels.h"
#include "cuda/runtime.h"

namespace mixtrain::cuda {

using namespace dev;

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The scratch buffer's parts: keys in and out, positions in and out (N each, u32), the row
// offsets (V + 1, u32), then CUB's temporary storage.
struct Parts {
  uint32_t *keys_in, *keys_out, *pos_in, *pos_out, *offsets;
  void* cub;
  size_t cub_bytes;
};

int key_bits(int64_t V) {
  int b = 1;
  while (b < 32 && (int64_t{1} << b) < V) ++b;
  return b;
}

size_t cub_bytes(int64_t N, int64_t V) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<uint32_t>(N), 0, key_bits(V), stream());
  return bytes;
}

size_t fixed_bytes(int64_t N, int64_t V) {
  return 4 * align_up(static_cast<size_t>(N) * 4) + align_up(static_cast<size_t>(V + 1) * 4);
}

Parts parts(void* scratch, int64_t N, int64_t V, size_t total) {
  char* p = static_cast<char*>(scratch);
  const size_t n4 = align_up(static_cast<size_t>(N) * 4);
  Parts s{};
  s.keys_in = reinterpret_cast<uint32_t*>(p);
  s.keys_out = reinterpret_cast<uint32_t*>(p + n4);
  s.pos_in = reinterpret_cast<uint32_t*>(p + 2 * n4);
  s.pos_out = reinterpret_cast<uint32_t*>(p + 3 * n4);
  s.offsets = reinterpret_cast<uint32_t*>(p + 4 * n4);
  const size_t fixed = fixed_bytes(N, V);
  s.cub = p + fixed;
  s.cub_bytes = total - fixed;
  return s;
}

bool fits(int64_t N, int64_t V) { return N < (int64_t{1} << 32) - 1 && V < (int64_t{1} << 31); }

__global__ void keys_kernel(const void* ids, int idt, int64_t N, uint32_t* keys, uint32_t* pos) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[i] = static_cast<uint32_t>(load_index(ids, idt, i));
    pos[i] = static_cast<uint32_t>(i);
  }
}

// offsets[v] = the first sorted position whose key is >= v, for v in [0, V].
__global__ void offsets_kernel(const uint32_t* keys, int64_t N, int64_t V, uint32_t* offsets) {
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v <= V;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = N;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<int64_t>(keys[mid]) < v)
        lo = mid + 1;
      else
        hi = mid;
    }
    offsets[v] = static_cast<uint32_t>(lo);
  }
}

// dtable[v, c] = Σ g[pos, c] over row v's positions in increasing order (fp32, from 0).
__global__ void gather_sum_kernel(const void* g, int gdt, int64_t V, int64_t C, const uint32_t* pos,
                                  const uint32_t* offsets, float* dtable) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < V * C;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = t / C, c = t % C;
    const uint32_t j1 = offsets[v + 1];
    float s = 0.0f;
    for (uint32_t j = offsets[v]; j < j1; ++j)
      s += load(g, gdt, static_cast<int64_t>(pos[j]) * C + c);
    dtable[t] = s;
  }
}

}  // namespace

size_t embedding_backward_scratch_bytes(int64_t N, int64_t V) {
  if (!fits(N, V) || N == 0) return 0;
  return fixed_bytes(N, V) + align_up(cub_bytes(N, V));
}

int launch_embedding_backward(const void* ids, int idt, int64_t N, const void* g, int gdt,
                              int64_t V, int64_t C, float* dtable, void* scratch,
                              size_t scratch_bytes) {
  if ((idt != kI32 && idt != kI64) || !fits(N, V)) return -1;
  if (V * C == 0) return 0;
  if (N == 0) {
    const cudaError_t e = cudaMemsetAsync(dtable, 0, static_cast<size_t>(V * C) * 4, stream());
    return static_cast<int>(e);
  }
  Parts s = parts(scratch, N, V, scratch_bytes);
  keys_kernel<<<grid_for(N), 256, 0, stream()>>>(ids, idt, N, s.keys_in, s.pos_in);
  int e = static_cast<int>(cudaGetLastError());
  if (e) return e;
  e = static_cast<int>(
      cub::DeviceRadixSort::SortPairs(s.cub, s.cub_bytes, static_cast<const uint32_t*>(s.keys_in),
                                      s.keys_out, static_cast<const uint32_t*>(s.pos_in), s.pos_out,
                                      static_cast<uint32_t>(N), 0, key_bits(V), stream()));
  if (e) return e;
  offsets_kernel<<<grid_for(V + 1), 256, 0, stream()>>>(s.keys_out, N, V, s.offsets);
  e = static_cast<int>(cudaGetLastError());
  if (e) return e;
  gather_sum_kernel<<<grid_for(V * C), 256, 0, stream()>>>(g, gdt, V, C, s.pos_out, s.offsets,
                                                           dtable);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace mixtrain::cuda
