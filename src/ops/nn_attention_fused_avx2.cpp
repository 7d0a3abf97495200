// The fused attention kernels built for AVX2 + FMA (fp32 FMA tiles, 16-bit inputs widened).
#define MT_ATT_LEVEL 1
#define MT_ATT_ENTRY(name) attention_##name##_avx2
#include "ops/nn_attention_fused_impl.h"
