// The fused optimizer update pass per level (optimizer.isa.cpp), behind
// CpuBackend::optimizer_update and the typed kernels of optim/kernels.h.
#pragma once

#include <cstdint>

#include "cpu/isa.h"
#include "mixtrain/dtype.h"
#include "mixtrain/optim/kernels.h"

namespace mixtrain::cpu {

/// One fused pass over elements [0, a.n) of one tensor, on the calling thread.
using UpdateKernel = void (*)(const optim::detail::Rule& rule, const optim::detail::UpdateArgs& a);
template <Isa>
const UpdateKernel& update_kernel();  // built for scalar, avx2, avx512
/// The kernel of the level in use.
const UpdateKernel& update_kernel();

/// Elements per block: the block's temporaries (4 x 2 KiB) stay in L1 between the two passes.
constexpr int64_t kUpdateBlock = 512;

/// Throws DTypeError naming the role ("gradient", "weight copy") and the dtype. Out of line,
/// so the kernels carry no formatting code.
[[noreturn]] void bad_update_dtype(const char* role, DType dt);

/// The arguments for elements [b, b + len) of `a`. Plain pointer arithmetic, no target
/// attribute: inlined into each level's kernel.
inline optim::detail::UpdateArgs sub_args(const optim::detail::UpdateArgs& a, int64_t b,
                                          int64_t len) {
  optim::detail::UpdateArgs s = a;
  const size_t wsz = a.mode == optim::MasterMode::fp32 ? dtype_size(a.weight_dtype) : 2;
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

}  // namespace mixtrain::cpu
