// The fused attention kernels built for AVX-512 (bf16 pairs on AVX512-BF16, fp32 FMA tiles).
#define MT_ATT_LEVEL 2
#define MT_ATT_ENTRY(name) attention_##name##_avx512
#include "ops/nn_attention_fused_impl.h"
