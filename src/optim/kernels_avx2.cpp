// The fused optimizer update pass compiled for AVX2 + FMA + F16C (see kernels_impl.h).
#define MT_ISA_LEVEL 1
#define MT_ISA_ENTRY run_update_avx2
#include "optim/kernels_impl.h"
