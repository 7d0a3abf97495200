// Internal to the optimizer kernels: the per-ISA entry points of the fused update pass
// (kernels_scalar.cpp, kernels_avx2.cpp, kernels_avx512.cpp, all from the template in
// kernels_impl.h) and what they share. Call them only through detail::run_update
// (kernels.cpp), which checks the CPU first.
#pragma once

#include <cstdint>

#include "mixtrain/dtype.h"
#include "mixtrain/optim/kernels.h"

namespace mixtrain::optim::detail {

/// Elements per block: the block's temporaries (4 x 2 KiB) stay in L1 between the two passes.
constexpr int64_t kUpdateBlock = 512;

void run_update_scalar(const Rule& r, const UpdateArgs& a);  ///< baseline x86-64 (SSE2)
void run_update_avx2(const Rule& r, const UpdateArgs& a);    ///< AVX2 + FMA + F16C
void run_update_avx512(const Rule& r, const UpdateArgs& a);  ///< AVX-512 F/BW/VL/DQ

/// Throws DTypeError naming the role ("gradient", "weight copy") and the dtype. Out of line,
/// so the kernels carry no formatting code.
[[noreturn]] void bad_update_dtype(const char* role, DType dt);

/// The arguments for elements [b, b + len) of `a`. Plain pointer arithmetic, no target
/// attribute: inlined into each ISA's kernel.
inline UpdateArgs sub_args(const UpdateArgs& a, int64_t b, int64_t len) {
  UpdateArgs s = a;
  const size_t wsz = a.mode == MasterMode::fp32 ? dtype_size(a.weight_dtype) : 2;
  if (a.master) s.master += b;
  if (a.weight) s.weight = static_cast<char*>(a.weight) + b * static_cast<int64_t>(wsz);
  if (a.aux) s.aux += b;
  if (a.s0) s.s0 += b;
  if (a.s1) s.s1 += b;
  if (a.s2) s.s2 += b;
  s.grad = static_cast<const char*>(a.grad) + b * static_cast<int64_t>(dtype_size(a.grad_dtype));
  s.counter += static_cast<uint64_t>(b);
  s.n = len;
  return s;
}

}  // namespace mixtrain::optim::detail
