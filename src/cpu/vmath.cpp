// The vector math's level table (the kernels are vmath.isa.cpp).
#include "cpu/vmath.h"

namespace mixtrain::cpu {

const VmathKernels& vmath() {
  static const IsaTable<VmathKernels> table({&vmath_kernels<Isa::scalar>(),
                                             &vmath_kernels<Isa::avx2>(),
                                             &vmath_kernels<Isa::avx512>(), nullptr});
  return *table.get();
}

}  // namespace mixtrain::cpu
