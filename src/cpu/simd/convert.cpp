// Placeholder routing: no SIMD kernels yet (scalar fallback in core/dtype.cpp).
#include "cpu/simd/convert.h"
#include "mixtrain/cpu.h"

namespace mixtrain {
const char* simd_level() { return "scalar"; }
namespace simd {
bool convert_fast(const void*, DType, void*, DType, size_t) { return false; }
}  // namespace simd
}  // namespace mixtrain
