// The fused optimizer update pass compiled for baseline x86-64 (SSE2 only) (see kernels_impl.h).
#define MT_ISA_LEVEL 0
#define MT_ISA_ENTRY run_update_scalar
#include "optim/kernels_impl.h"
