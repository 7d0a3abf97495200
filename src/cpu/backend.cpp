// The CPU backend's instance, its memory (mmap'ed pages, malloc for small buffers) and what it
// reports about itself.
#include "cpu/backend.h"

#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "core/sanitizers.h"
#include "cpu/isa.h"

#if defined(MIXTRAIN_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace mixtrain::cpu {

namespace {

// Pages of their own (mmap) for big buffers, so one given back leaves the RSS at once. Under
// AddressSanitizer those buffers are malloc's, which it checks; a step plan's arena is always a
// mapping (its free bytes poisoned by hand, its idle pages given back).
class HostMemory final : public DeviceMemory {
 public:
  void* map(size_t bytes) override {
    if (kAddressSanitizer) return std::aligned_alloc(4096, bytes);
    return map_arena(bytes);
  }
  void unmap(void* p, size_t bytes) override {
    if (kAddressSanitizer)
      std::free(p);
    else
      unmap_arena(p, bytes);
  }
  void* map_arena(size_t bytes) override {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  void unmap_arena(void* p, size_t bytes) override { munmap(p, bytes); }
  void* alloc_small(size_t bytes) override { return std::aligned_alloc(64, bytes); }
  void free_small(void* p, size_t) override { std::free(p); }
  void discard(void* p, size_t bytes) override {  // only ever an arena's range: a mapping
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  }
  void poison(void* p, size_t bytes, bool off) override {
#if defined(MIXTRAIN_ASAN)
    if (off)
      ASAN_POISON_MEMORY_REGION(p, bytes);
    else
      ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
    (void)p, (void)bytes, (void)off;
#endif
  }
};

}  // namespace

CpuBackend& cpu_backend() {
  static auto* b = new CpuBackend;  // never destroyed: storages may die during static teardown
  return *b;
}

DeviceMemory& CpuBackend::memory() {
  static auto* m = new HostMemory;
  return *m;
}

std::string CpuBackend::describe() const {
  const GemmBackendInfo g = gemm_backend_info();
  return fmt::format("{}, {} {} {}, {} threads", isa_name(isa()), g.library, g.version, g.isa,
                     omp_get_max_threads());
}

void CpuBackend::upload(const void* host, void* device_dst, size_t bytes) {
  if (bytes) std::memcpy(device_dst, host, bytes);
}

void CpuBackend::download(const void* device_src, void* host, size_t bytes) {
  if (bytes) std::memcpy(host, device_src, bytes);
}

}  // namespace mixtrain::cpu
