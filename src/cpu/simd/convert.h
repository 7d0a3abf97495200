// Bulk fp32 <-> bf16/fp16 conversion kernels, one per ISA, picked once at start, plus the
// internal hooks the tests use to run one specific ISA path against the scalar one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mixtrain/dtype.h"

namespace mixtrain::simd {

/// The kernel families, in increasing order of capability. Each level needs:
///   avx2:       AVX2 + F16C (every AVX2 CPU has F16C)
///   avx512:     AVX-512 F + BW + VL (Skylake-SP and later, Zen 4)
///   avx512bf16: avx512 + AVX512_BF16 (vcvtne2ps2bf16; Cooper Lake, Sapphire Rapids, Zen 4)
enum class Level : int { scalar = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

/// "scalar", "avx2", "avx512" or "avx512bf16" (the names MIXTRAIN_ISA takes).
const char* level_name(Level level);
/// The best level this CPU supports (ignores MIXTRAIN_ISA).
Level detected_level();
/// The level convert() uses: detected_level() capped by the environment variable
/// MIXTRAIN_ISA (read once). Throws ConfigError naming the variable for an unknown value.
Level active_level();
/// True when this CPU can run `level`'s kernels.
bool level_supported(Level level);

/// Converts with the active level if (src, dst) is fp32<->bf16 or fp32<->fp16; returns false
/// (doing nothing) for other pairs. Bit-identical to the scalar conversions. Large n is split
/// over OpenMP threads (element-wise, so the bits do not depend on the split).
bool convert_fast(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

/// One dtype pair's kernel at the active level, called directly on the calling thread: for
/// loops over many short rows (attention packs rows of 64 values), where convert()'s dispatch
/// per call costs more than converting the row. fp32 <-> bf16/fp16, or a copy when the dtypes
/// are equal; other pairs throw DTypeError. Bit-identical to convert().
class RowConverter {
 public:
  RowConverter(DType src, DType dst);
  void operator()(const void* src, void* dst, size_t n) const {
    if (narrow_)
      narrow_(static_cast<const float*>(src), static_cast<uint16_t*>(dst), n);
    else if (widen_)
      widen_(static_cast<const uint16_t*>(src), static_cast<float*>(dst), n);
    else if (n > 0)  // memcpy's pointers must not be null even for no bytes
      std::memcpy(dst, src, n * copy_size_);
  }

 private:
  void (*narrow_)(const float*, uint16_t*, size_t) = nullptr;
  void (*widen_)(const uint16_t*, float*, size_t) = nullptr;
  size_t copy_size_ = 0;
};

/// For tests and benchmarks: converts with exactly `level`'s kernel on the calling thread.
/// Returns false for pairs other than fp32<->bf16/fp16; throws BackendError if this CPU
/// lacks `level`.
bool convert_with(Level level, const void* src, DType src_dtype, void* dst, DType dst_dtype,
                  size_t n);

/// Calls fn(begin, end) over [0, n) split across OpenMP threads when n is large enough to pay
/// for the fork (otherwise once, on the calling thread). Used by every bulk conversion.
void parallel_ranges(size_t n, void (*fn)(size_t begin, size_t end, void* ctx), void* ctx);

}  // namespace mixtrain::simd
