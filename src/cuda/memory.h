// The CUDA backend's raw device memory (DeviceMemory, backend/backend.h) under the library's
// step planner and buffer cache (core/memory.cpp). Host-side header, no CUDA types.
#pragma once

#include <cstdint>

#include "backend/backend.h"

namespace mixtrain::cuda {

/// The process's device memory: stream-ordered allocations on cuda::stream() from a memory
/// pool of the current device that keeps what is freed (see memory.cpp). Made on first use,
/// never destroyed (storages may die during static teardown).
DeviceMemory& device_memory();

/// Bytes the pool holds from the driver (in use by tensors, in the core's cache, or kept
/// free for reuse); 0 before the first allocation or without a pool.
int64_t pool_reserved_bytes();

}  // namespace mixtrain::cuda
