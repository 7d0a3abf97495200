// Where tensor storage comes from, per device, over the device's raw memory (DeviceMemory,
// backend/backend.h). Under 64 KiB: the device's small allocator. From 64 KiB: the step plan's
// arena inside a StepMemoryScope that replays a recorded step, else the cache of freed buffers,
// else fresh pages. Each device has its own tracker, plan, arena and cache.
#include "core/memory.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "backend/backend.h"
#include "core/sanitizers.h"
#include "mixtrain/tensor.h"

namespace mixtrain {

namespace {

constexpr int kNumDTypes = sizeof(MemoryStats::current_by_dtype) / sizeof(int64_t);
constexpr int kNumDevices = 2;  // Device::cpu, Device::cuda

struct Tracker {
  std::atomic<int64_t> current{0}, peak{0};
  std::atomic<int64_t> current_dt[kNumDTypes] = {}, peak_dt[kNumDTypes] = {};
};
Tracker& tracker(Device d) {
  static Tracker t[kNumDevices];
  return t[static_cast<int>(d)];
}

void atomic_max(std::atomic<int64_t>& a, int64_t v) {
  int64_t prev = a.load(std::memory_order_relaxed);
  while (prev < v && !a.compare_exchange_weak(prev, v, std::memory_order_relaxed)) {
  }
}

void track(Tracker& t, DType dt, int64_t delta) {
  const int i = static_cast<int>(dt);
  const int64_t now = t.current.fetch_add(delta, std::memory_order_relaxed) + delta;
  const int64_t now_dt = t.current_dt[i].fetch_add(delta, std::memory_order_relaxed) + delta;
  if (delta > 0) {
    atomic_max(t.peak, now);
    atomic_max(t.peak_dt[i], now_dt);
  }
}

// Buffers from 64 KiB are whole pages of their own (DeviceMemory::map: on the CPU an mmap), so
// one given back leaves the RSS at once; smaller ones are the device's small allocations.
// (From 1 MiB, as at first, the 64 KiB - 1 MiB buffers a step also frees — widened weights,
// norms' statistics, small activations — stayed in glibc's heap and held 6-11 MiB more RSS at
// GPT batch 32.)
constexpr size_t kBigMin = size_t{1} << 16, kBigRound = size_t{1} << 12;

size_t block_size(size_t nbytes) {
  if (nbytes < kBigMin) return nbytes == 0 ? 64 : ((nbytes + 63) / 64) * 64;
  return ((nbytes + kBigRound - 1) / kBigRound) * kBigRound;
}

// One mapping that a step plan lays its buffers out in; `busy` holds the live ones (offset ->
// size), so a buffer is only handed out where nothing live lies, whatever the step does.
struct Arena {
  DeviceMemory& mem;
  char* base = nullptr;
  size_t size = 0;
  std::map<size_t, size_t> busy;

  Arena(DeviceMemory& m, size_t n) : mem(m), size(n) {
    base = static_cast<char*>(mem.map_arena(n));
    if (!base) throw Error(fmt::format("out of memory mapping a {}-byte arena", n));
    mem.poison(base, size, true);
  }
  ~Arena() {
    mem.poison(base, size, false);
    mem.unmap_arena(base, size);
  }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  bool holds(const void* p) const {
    const char* c = static_cast<const char*>(p);
    return c >= base && c < base + size;
  }
  bool is_free(size_t off, size_t n) const {
    auto it = busy.lower_bound(off);
    if (it != busy.end() && it->first < off + n) return false;
    return it == busy.begin() || std::prev(it)->first + std::prev(it)->second <= off;
  }
  void* take(size_t off, size_t n) {
    busy.emplace(off, n);
    mem.poison(base + off, n, false);
    return base + off;
  }
  // The pages no live buffer touches go back to the device (on the CPU MADV_DONTNEED: the
  // mapping stays, a later touch gets a zeroed page).
  void release_free_pages() {
    auto release = [&](size_t lo, size_t hi) {
      if (hi > lo) mem.discard(base + lo, hi - lo);
    };
    size_t at = 0;
    for (const auto& [off, n] : busy) {
      release(at, off);
      at = std::max(at, off + n);
    }
    release(at, size);
  }
  void give_back(const void* p) {
    const size_t off = static_cast<size_t>(static_cast<const char*>(p) - base);
    auto it = busy.find(off);
    if (it == busy.end()) {  // two storages were given the same bytes: memory.cpp is broken
      std::fprintf(stderr, "mixtrain: arena buffer at offset %zu freed twice\n", off);
      std::abort();
    }
    mem.poison(base + off, it->second, true);
    busy.erase(it);
  }
};

// A recorded buffer's place in the step's sequence of big allocations: where the plan puts it,
// or kOutlived for one that was still alive when the recorded step ended (optimizer state made
// on the first update, a kept output): those come from the cache.
constexpr size_t kOutlived = ~size_t{0};
struct Slot {
  size_t size = 0;
  size_t offset = kOutlived;
};

// How far a replayed step's allocation may be from its recorded place in the sequence (an
// extra buffer, say the diagnostics of every Nth step, or one missing).
constexpr size_t kLookahead = 16;
// A plan that leaves more than 1/kMissFraction of its arena's bytes to the cache in a step no
// longer fits the loop: the next step records again, at most kMaxRecordings times per release.
constexpr size_t kMissFraction = 8;
constexpr int kMaxRecordings = 3;

struct Allocator {
  DeviceMemory& mem;
  Tracker& tracker;
  std::mutex mu;

  Allocator(DeviceMemory& m, Tracker& t) : mem(m), tracker(t) {}

  // Freed buffers by exact size: a loop outside any plan (evaluation, a custom loop) asks for
  // the same sizes again, and fresh pages cost a fault and a kernel zeroing per 4 KiB.
  std::unordered_map<size_t, std::vector<void*>> cache;
  size_t cached = 0;

  bool plans_enabled = true;
  int depth = 0;  // nested scopes count once
  std::thread::id owner;
  enum class State { unplanned, recording, planned, off } state = State::unplanned;
  int recordings = 0;

  // recording
  std::vector<memory::Interval> recorded;
  std::unordered_map<void*, size_t> open;  // a recorded buffer still alive -> its index
  int64_t clock = 0;

  // replaying
  std::unique_ptr<Arena> arena;
  std::vector<std::unique_ptr<Arena>> retired;  // a dropped plan's, while buffers live in it
  std::vector<Slot> slots;
  size_t cursor = 0;
  size_t missed = 0, last_missed = 0;

  bool in_owned_step() const { return depth > 0 && std::this_thread::get_id() == owner; }

  size_t cache_budget() const {
    // What the cache may keep: the live peak less the arena, so arena plus cache stay within
    // the bytes the loop has needed at once.
    const int64_t peak = tracker.peak.load(std::memory_order_relaxed);
    const int64_t a = arena ? static_cast<int64_t>(arena->size) : 0;
    return peak > a ? static_cast<size_t>(peak - a) : 0;
  }

  void* fresh_block(size_t size) { return size < kBigMin ? mem.alloc_small(size) : mem.map(size); }
  void release_block(void* p, size_t size) {
    if (size < kBigMin)
      mem.free_small(p, size);
    else
      mem.unmap(p, size);
  }

  void drop_cache() {
    for (auto& [size, blocks] : cache)
      for (void* p : blocks) release_block(p, size);
    cache.clear();
    cached = 0;
  }

  void retire_arena() {
    if (arena && !arena->busy.empty()) retired.push_back(std::move(arena));
    arena.reset();
    slots.clear();
  }

  void reset_plan() {
    retire_arena();
    state = State::unplanned;
    recordings = 0;
  }

  void* take_from_plan(size_t size) {
    const size_t end = std::min(slots.size(), cursor + kLookahead);
    for (size_t j = cursor; j < end; ++j) {
      const Slot& s = slots[j];
      if (s.size != size) continue;
      if (s.offset == kOutlived) {  // it outlived the recorded step: the cache's, as then
        cursor = j + 1;
        return nullptr;
      }
      if (!arena->is_free(s.offset, size)) continue;
      cursor = j + 1;
      return arena->take(s.offset, size);
    }
    missed += size;
    return nullptr;
  }

  void finish_recording() {
    std::vector<memory::Interval> planned;
    std::vector<size_t> index;
    for (size_t i = 0; i < recorded.size(); ++i)
      if (recorded[i].end >= 0) {
        planned.push_back(recorded[i]);
        index.push_back(i);
      }
    std::vector<size_t> offsets;
    const size_t need = memory::place_intervals(planned, offsets);
    slots.assign(recorded.size(), Slot{});
    for (size_t i = 0; i < recorded.size(); ++i) slots[i].size = recorded[i].size;
    for (size_t k = 0; k < planned.size(); ++k) slots[index[k]].offset = offsets[k];
    if (need > 0) arena = std::make_unique<Arena>(mem, need);
    recorded.clear();
    open.clear();
    state = State::planned;
  }

  void end_replay() {
    last_missed = missed;
    if (missed > 0 && (!arena || missed * kMissFraction > arena->size)) {
      retire_arena();
      state = recordings >= kMaxRecordings ? State::off : State::unplanned;
    }
  }
};

// One per device, made at its first allocation (the CPU's at once); never destroyed: storages
// may die during static teardown.
std::atomic<Allocator*> g_allocators[kNumDevices];
std::mutex g_make_mu;

Allocator& allocator(Device d) {
  std::atomic<Allocator*>& slot = g_allocators[static_cast<int>(d)];
  if (Allocator* a = slot.load(std::memory_order_acquire)) return *a;
  std::lock_guard<std::mutex> lock(g_make_mu);
  if (Allocator* a = slot.load(std::memory_order_relaxed)) return *a;
  auto* a = new Allocator(backend_for(d).memory(), tracker(d));  // throws for a missing backend
  slot.store(a, std::memory_order_release);
  return *a;
}

// The allocators made so far (a step plans on every device it allocates on).
template <class F>
void for_each_allocator(F&& f) {
  for (auto& slot : g_allocators)
    if (Allocator* a = slot.load(std::memory_order_acquire)) f(*a);
}

}  // namespace

namespace memory {

void* allocate(size_t nbytes, DType dtype, Device device) {
  const size_t size = block_size(nbytes);
  void* p = nullptr;
  auto& a = allocator(device);
  if (size >= kBigMin) {
    std::lock_guard<std::mutex> lock(a.mu);
    const bool owned = a.in_owned_step();
    if (owned && a.state == Allocator::State::planned && a.arena) p = a.take_from_plan(size);
    if (!p && a.state != Allocator::State::recording) {
      auto it = a.cache.find(size);
      if (it != a.cache.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        a.cached -= size;
      }
    }
    if (!p) p = a.fresh_block(size);
    if (p && owned && a.state == Allocator::State::recording) {
      a.open.emplace(p, a.recorded.size());
      a.recorded.push_back({a.clock++, -1, size});
    }
  } else {
    p = a.fresh_block(size);
  }
  if (!p)
    throw Error(
        fmt::format("out of memory allocating {} bytes on {}", nbytes, device_name(device)));
  track(a.tracker, dtype, static_cast<int64_t>(nbytes));
  return p;
}

void deallocate(void* p, size_t nbytes, DType dtype, Device device) {
  auto& a = allocator(device);
  track(a.tracker, dtype, -static_cast<int64_t>(nbytes));
  if (!p) return;
  const size_t size = block_size(nbytes);
  if (size < kBigMin) return a.release_block(p, size);
  std::lock_guard<std::mutex> lock(a.mu);
  if (a.arena && a.arena->holds(p)) return a.arena->give_back(p);
  for (auto it = a.retired.begin(); it != a.retired.end(); ++it)
    if ((*it)->holds(p)) {
      (*it)->give_back(p);
      if ((*it)->busy.empty()) a.retired.erase(it);
      return;
    }
  if (a.state == Allocator::State::recording) {
    // The recorded step keeps nothing: its peak RSS is its live bytes, not the cache's.
    if (auto it = a.open.find(p); it != a.open.end()) {
      a.recorded[it->second].end = a.clock++;
      a.open.erase(it);
    }
    return a.release_block(p, size);
  }
  // Off under AddressSanitizer: a kept buffer would hide a use after free.
  if (!kAddressSanitizer && a.cached + size <= a.cache_budget()) {
    a.cache[size].push_back(p);
    a.cached += size;
    return;
  }
  a.release_block(p, size);
}

size_t place_intervals(const std::vector<Interval>& intervals, std::vector<size_t>& offsets) {
  const size_t n = intervals.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return intervals[x].size != intervals[y].size ? intervals[x].size > intervals[y].size
                                                  : intervals[x].start < intervals[y].start;
  });
  offsets.assign(n, 0);
  std::vector<size_t> placed;
  std::vector<std::pair<size_t, size_t>> taken;  // [offset, end) of placed ones met in time
  size_t arena = 0;
  for (size_t i : order) {
    const Interval& v = intervals[i];
    taken.clear();
    for (size_t j : placed) {
      const Interval& w = intervals[j];
      if (w.start < v.end && v.start < w.end) taken.emplace_back(offsets[j], offsets[j] + w.size);
    }
    std::sort(taken.begin(), taken.end());
    size_t at = 0, best = kOutlived, best_gap = kOutlived;
    for (const auto& [lo, hi] : taken) {
      if (lo > at && lo - at >= v.size && lo - at < best_gap) {
        best = at;
        best_gap = lo - at;
      }
      at = std::max(at, hi);
    }
    offsets[i] = best != kOutlived ? best : at;
    arena = std::max(arena, offsets[i] + v.size);
    placed.push_back(i);
  }
  return arena;
}

void set_step_plans_enabled(bool on) {
  allocator(Device::cpu);  // exists, so it takes the setting
  for_each_allocator([&](Allocator& a) {
    std::lock_guard<std::mutex> lock(a.mu);
    a.reset_plan();
    a.drop_cache();
    a.plans_enabled = on;
  });
}

}  // namespace memory

namespace {

// A scope's start and end on one device's allocator; false if another thread's scope owns it.
bool begin_step(Allocator& a) {
  std::lock_guard<std::mutex> lock(a.mu);
  // One loop plans: a scope on another thread while one is open is inert (its buffers come
  // from the cache), nested ones on the same thread count once.
  if (a.depth > 0 && a.owner != std::this_thread::get_id()) return false;
  if (a.depth++ > 0) return true;
  a.owner = std::this_thread::get_id();
  if (!a.plans_enabled) return true;
  if (a.state == Allocator::State::unplanned) {
    a.drop_cache();  // its buffers would stay in the RSS while the recorded step makes its own
    a.state = Allocator::State::recording;
    a.clock = 0;
    ++a.recordings;
  } else if (a.state == Allocator::State::planned) {
    a.cursor = 0;
    a.missed = 0;
  }
  return true;
}

void end_step(Allocator& a) {
  std::lock_guard<std::mutex> lock(a.mu);
  if (--a.depth > 0) return;
  if (a.state == Allocator::State::recording)
    a.finish_recording();
  else if (a.state == Allocator::State::planned)
    a.end_replay();
}

}  // namespace

StepMemoryScope::StepMemoryScope() {
  allocator(Device::cpu);
  for (int d = 0; d < kNumDevices; ++d)
    if (Allocator* a = g_allocators[d].load(std::memory_order_acquire)) active_[d] = begin_step(*a);
}

StepMemoryScope::~StepMemoryScope() {
  for (int d = 0; d < kNumDevices; ++d)
    if (active_[d]) end_step(*g_allocators[d].load(std::memory_order_acquire));
}

void release_cached_memory() {
  for_each_allocator([](Allocator& a) {
    std::lock_guard<std::mutex> lock(a.mu);
    a.drop_cache();
    if (a.depth == 0) a.reset_plan();
    a.mem.release_cached();
  });
}

void trim_idle_memory() {
  for_each_allocator([](Allocator& a) {
    std::lock_guard<std::mutex> lock(a.mu);
    if (a.depth > 0) return;  // a step is running: its arena is not idle
    a.drop_cache();
    if (a.arena) a.arena->release_free_pages();
  });
}

MemoryStats memory_stats(Device device) {
  auto& t = tracker(device);
  MemoryStats s;
  if (Allocator* a_ptr = g_allocators[static_cast<int>(device)].load(std::memory_order_acquire)) {
    auto& a = *a_ptr;
    std::lock_guard<std::mutex> lock(a.mu);
    s.cached_bytes = static_cast<int64_t>(a.cached);
    s.arena_bytes = a.arena ? static_cast<int64_t>(a.arena->size) : 0;
    for (const auto& r : a.retired) s.arena_bytes += static_cast<int64_t>(r->size);
    s.step_missed_bytes = static_cast<int64_t>(a.last_missed);
  }
  s.current_bytes = t.current.load();
  s.peak_bytes = t.peak.load();
  for (int i = 0; i < kNumDTypes; ++i) {
    s.current_by_dtype[i] = t.current_dt[i].load();
    s.peak_by_dtype[i] = t.peak_dt[i].load();
  }
  return s;
}

void reset_peak_memory() {
  for (int d = 0; d < kNumDevices; ++d) {
    auto& t = tracker(static_cast<Device>(d));
    t.peak.store(t.current.load());
    for (int i = 0; i < kNumDTypes; ++i) t.peak_dt[i].store(t.current_dt[i].load());
  }
}

}  // namespace mixtrain
