// The fused optimizer update pass compiled for AVX-512 F/BW/VL/DQ (see kernels_impl.h).
#define MT_ISA_LEVEL 2
#define MT_ISA_ENTRY run_update_avx512
#include "optim/kernels_impl.h"
