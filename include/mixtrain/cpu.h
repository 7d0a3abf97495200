// What this CPU can do, detected once at start (cpuid + OS register-state check).
#pragma once

#include <string>

namespace mixtrain {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false;  ///< vdpbf16ps, vcvtne2ps2bf16: bf16 dot products at 2x fp32
  bool avx512_fp16 = false;  ///< native fp16 arithmetic (Sapphire Rapids and later)
  bool amx_bf16 = false;
  std::string brand;
  /// Native 16-bit matrix arithmetic: bf16 (avx512_bf16 or amx_bf16) and fp16 (avx512_fp16).
  bool native_bf16() const { return avx512_bf16 || amx_bf16; }
  bool native_fp16() const { return avx512_fp16; }
};

/// The features of this CPU (cached after the first call).
const CpuFeatures& cpu_features();

/// The instruction-set level every CPU kernel dispatches to: "avx512bf16", "avx512", "avx2" or
/// "scalar". The environment variable MIXTRAIN_ISA caps it (for tests and for comparing paths).
const char* simd_level();

}  // namespace mixtrain
