// Where a storage's bytes come from (memory.cpp): per device, the step plan and the cache of
// freed buffers over the device's raw memory (Backend::memory()); and the step plan's layout
// function, which tests check on their own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "mixtrain/dtype.h"
#include "mixtrain/tensor.h"

namespace mixtrain::memory {

/// 64-byte-aligned bytes of `device` for a storage of `nbytes` of `dtype`, counted by the
/// device's tracker.
void* allocate(size_t nbytes, DType dtype, Device device);
/// Gives back what allocate returned for the same `nbytes`, `dtype` and `device`.
void deallocate(void* p, size_t nbytes, DType dtype, Device device);

/// One buffer of a recorded step: allocated at event `start`, freed at event `end`.
struct Interval {
  int64_t start = 0, end = 0;
  size_t size = 0;
};
/// Byte offsets for the intervals such that two alive at the same time never overlap; returns
/// the arena size they need. Largest first, each into the smallest gap that holds it among the
/// ones already placed that it meets in time (the offline heuristic of static memory planners:
/// on a training step's buffers it reaches the peak of live bytes, see DESIGN.md).
size_t place_intervals(const std::vector<Interval>& intervals, std::vector<size_t>& offsets);

/// Whether StepMemoryScope plans at all (on by default). For A/B measurements and tests;
/// switching releases the plan and the cache as release_cached_memory() does.
void set_step_plans_enabled(bool on);

}  // namespace mixtrain::memory
