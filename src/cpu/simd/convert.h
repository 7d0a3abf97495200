// Bulk fp32 <-> bf16/fp16 conversion kernels, one per ISA, picked once at start.
#pragma once

#include <cstddef>

#include "mixtrain/dtype.h"

namespace mixtrain::simd {

/// Converts with the best kernel this CPU has if (src, dst) is fp32<->bf16 or fp32<->fp16;
/// returns false (doing nothing) for other pairs. Bit-identical to the scalar conversions.
bool convert_fast(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

}  // namespace mixtrain::simd
