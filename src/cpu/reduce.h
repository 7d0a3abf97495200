// The per-level column-sum kernel behind CpuBackend::sum (reduce.isa.cpp).
#pragma once

#include <cstdint>

#include "cpu/isa.h"
#include "mixtrain/dtype.h"

namespace mixtrain::cpu {

/// acc[0, n) += the sum over rows [r0, r1) of row r's n values at x + r·ld (elements of dt),
/// row by row in fp32 (so every level gives the same bits).
using AddRows = void (*)(const void* x, DType dt, int64_t ld, int64_t n, int64_t r0, int64_t r1,
                         float* acc);
template <Isa>
const AddRows& add_rows_kernel();  // built for scalar, avx2, avx512
/// The kernel of the level in use.
const AddRows& add_rows();

}  // namespace mixtrain::cpu
