// Device memory for the CUDA backend. The library's allocator (core/memory.cpp) plans a
// step's big buffers into one arena, keeps freed big buffers in a cache by size, and asks the
// device for small buffers (< 64 KiB) on every allocation; on the CPU those go to malloc. Here
// every request is stream-ordered on cuda::stream(): cudaMallocFromPoolAsync and cudaFreeAsync
// on a memory pool of our own whose release threshold is unlimited, so
//  - freeing is not a device-wide synchronisation (cudaFree waits for the whole device), and
//    a buffer freed while kernels that read it are queued is reused only by work queued after
//    them on the same stream (all of the backend's work is on that one stream);
//  - what is freed stays reserved in the pool, so the small allocations of every step and the
//    buffers the core's cache lets go are served again without a driver call.
// The pool gives memory back to the driver only when asked (release_cached(), which
// release_cached_memory() reaches) or when an allocation would otherwise fail.
//
// On a GPU without memory-pool support (cudaDevAttrMemoryPoolsSupported = 0: some vGPU and
// old-driver setups) it falls back to cudaMalloc/cudaFree, which synchronise.
//
// Not yet run on a GPU: compiled and linked only (the op harness, tests/test_backend_ops.cpp,
// allocates through it where a GPU is present).
#include "cuda/memory.h"

#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "cuda/runtime.h"

namespace mixtrain::cuda {

namespace {

class CudaMemory final : public DeviceMemory {
 public:
  void* map(size_t bytes) override { return alloc(bytes); }
  void unmap(void* p, size_t) override { release(p); }
  void* alloc_small(size_t bytes) override { return alloc(bytes); }
  void free_small(void* p, size_t) override { release(p); }
  // The pool's free memory back to the driver, once the work queued before is done (a block
  // freed on the stream is free only then).
  void release_cached() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pool_) return;
    check(cudaStreamSynchronize(stream()), "releasing cached device memory");
    check(cudaMemPoolTrimTo(pool_, 0), "releasing cached device memory");
  }

  int64_t reserved() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pool_) return 0;
    uint64_t v = 0;
    if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &v) != cudaSuccess)
      return 0;
    return static_cast<int64_t>(v);
  }

 private:
  // The pool of the device current at the first allocation (select_device runs before any
  // CUDA work, so it is the process's GPU).
  void ensure_pool() {
    std::lock_guard<std::mutex> lock(mu_);
    if (ready_) return;
    int dev = 0;
    check(cudaGetDevice(&dev), "device memory: cudaGetDevice");
    int supported = 0;
    check(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev),
          "device memory: asking for memory-pool support");
    if (supported) {
      cudaMemPoolProps props{};
      props.allocType = cudaMemAllocationTypePinned;
      props.location.type = cudaMemLocationTypeDevice;
      props.location.id = dev;
      check(cudaMemPoolCreate(&pool_, &props), "device memory: creating the memory pool");
      // Keep everything freed: the pool never shrinks at a synchronisation on its own.
      uint64_t threshold = UINT64_MAX;
      check(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold),
            "device memory: setting the pool's release threshold");
    }
    ready_ = true;
  }

  // nullptr when out of memory (the caller names the size); other errors throw.
  void* alloc(size_t bytes) {
    ensure_pool();
    void* p = nullptr;
    cudaError_t e =
        pool_ ? cudaMallocFromPoolAsync(&p, bytes, pool_, stream()) : cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation && pool_) {
      // The pool's free blocks may be too fragmented for this size: give them back to the
      // driver (after the queued work, which may still free some) and try once more.
      (void)cudaGetLastError();
      check(cudaStreamSynchronize(stream()), "device memory: waiting to retry an allocation");
      check(cudaMemPoolTrimTo(pool_, 0), "device memory: trimming the pool");
      e = cudaMallocFromPoolAsync(&p, bytes, pool_, stream());
    }
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // not sticky: clear it, the caller reports the OOM
      return nullptr;
    }
    check(e, fmt::format("device memory: allocating {} bytes", bytes).c_str());
    return p;
  }

  // Called from destructors (a Storage's), so it never throws; at process exit the runtime
  // may already be unloaded, which is not an error worth reporting.
  void release(void* p) {
    if (!p) return;
    const cudaError_t e = pool_ ? cudaFreeAsync(p, stream()) : cudaFree(p);
    if (e != cudaSuccess) (void)cudaGetLastError();
  }

  std::mutex mu_;
  bool ready_ = false;
  cudaMemPool_t pool_ = nullptr;
};

CudaMemory& memory() {
  static auto* m = new CudaMemory;  // never destroyed: storages may die during static teardown
  return *m;
}

}  // namespace

DeviceMemory& device_memory() { return memory(); }

int64_t pool_reserved_bytes() { return memory().reserved(); }

}  // namespace mixtrain::cuda
