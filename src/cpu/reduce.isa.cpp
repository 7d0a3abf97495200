// isa: scalar avx2 avx512
// The column-sum kernel of CpuBackend::sum (cpu/reduce.h), one build per level.
#include "cpu/isa_target.h"

#include <immintrin.h>

#include <bit>
#include <cstdint>

#include "cpu/reduce.h"
#include "cpu/rows.h"

namespace mixtrain::cpu {
namespace {

#if MT_ISA >= 1
// The fp16 rows' first n / 8 · 8 columns by F16C (the vector builds only); returns how many.
MT_INLINE int64_t add_rows_f16c(const uint16_t* x, int64_t ld, int64_t n, int64_t r0, int64_t r1,
                                float* acc) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* v = x + r * ld;
    for (int64_t j = 0; j < n8; j += 8) {
      const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + j)));
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), w));
    }
  }
  return n8;
}
#endif

// acc[0, n) = sum over rows [r0, r1) of row r's n values at x + r·ld, row by row, 16-bit
// codes widened in-lane (bf16: a shift; fp16: F16C in the vector builds, the bulk converter per
// row in the scalar one).
MT_FLATTEN void add_rows(const void* x, DType dt, int64_t ld, int64_t n, int64_t r0, int64_t r1,
                         float* __restrict acc) {
  if (dt == DType::f32) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict v = static_cast<const float*>(x) + r * ld;
      for (int64_t j = 0; j < n; ++j) acc[j] += v[j];
    }
    return;
  }
  if (dt == DType::bf16) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint16_t* __restrict v = static_cast<const uint16_t*>(x) + r * ld;
      for (int64_t j = 0; j < n; ++j)
        acc[j] += std::bit_cast<float>(static_cast<uint32_t>(v[j]) << 16);
    }
    return;
  }
  int64_t j0 = 0;
#if MT_ISA >= 1
  j0 = add_rows_f16c(static_cast<const uint16_t*>(x), ld, n, r0, r1, acc);
#endif
  if (j0 == n) return;
  alignas(64) float buf[kTile];
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict v = load_f32(at(x, dt, r * ld + j0), dt, n - j0, buf);
    for (int64_t j = j0; j < n; ++j) acc[j] += v[j - j0];
  }
}

}  // namespace

template <>
const AddRows& add_rows_kernel<kIsa>() {
  static constexpr AddRows k = add_rows;
  return k;
}

}  // namespace mixtrain::cpu
