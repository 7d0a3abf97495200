// Declarations of the per-ISA conversion kernels (convert_avx2.cpp, convert_avx512.cpp).
// Internal: call them only through convert.cpp, which checks the CPU first.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mixtrain::simd {

/// One ISA's four kernels; n is any count (tails are handled inside).
struct Kernels {
  void (*f32_to_bf16)(const float* src, uint16_t* dst, size_t n);
  void (*bf16_to_f32)(const uint16_t* src, float* dst, size_t n);
  void (*f32_to_f16)(const float* src, uint16_t* dst, size_t n);
  void (*f16_to_f32)(const uint16_t* src, float* dst, size_t n);
};

extern const Kernels kAvx2Kernels;
extern const Kernels kAvx512Kernels;
extern const Kernels kAvx512Bf16Kernels;

}  // namespace mixtrain::simd
