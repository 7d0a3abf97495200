// CPU feature detection with cpuid, checked against the register state the OS saves (xgetbv):
// an AVX-512 bit in cpuid means nothing if the kernel does not save zmm registers.
#include <cpuid.h>
#include <cstdlib>
#include <cstring>
#include <string>

#include "mixtrain/cpu.h"

namespace mixtrain {

namespace {

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  __get_cpuid(1, &a, &b, &c, &d);
  const bool osxsave = c & (1u << 27);
  const bool has_fma = c & (1u << 12), has_f16c = c & (1u << 29), has_avx = c & (1u << 28);
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;          // xmm, ymm
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;     // + opmask, zmm_hi256, hi16_zmm
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;  // tilecfg, tiledata
  f.fma = has_fma && os_avx;
  f.f16c = has_f16c && has_avx && os_avx;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b & (1u << 5)) && os_avx;
    f.avx512f = (b & (1u << 16)) && os_avx512;
    f.avx512dq = (b & (1u << 17)) && os_avx512;
    f.avx512bw = (b & (1u << 30)) && os_avx512;
    f.avx512vl = (b & (1u << 31)) && os_avx512;
    f.avx512_fp16 = (d & (1u << 23)) && os_avx512;
    f.amx_bf16 = (d & (1u << 22)) && os_amx;
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = (a & (1u << 5)) && os_avx512;
  }
  char brand[49] = {};
  if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002 + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
  }
  f.brand = brand;
  while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

}  // namespace mixtrain
