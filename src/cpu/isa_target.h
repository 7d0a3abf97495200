// Included first by every *.isa.cpp: the level this build of the file is for (kIsa) and the
// attributes its functions carry. CMake builds each *.isa.cpp once per level on its first line
// (CMakeLists.txt, "per-ISA kernels"), defining MT_ISA as the level's index. The library itself
// is compiled for baseline x86-64; only functions carrying MT_TARGET (or MT_INLINE, MT_FLATTEN)
// use the level's instructions, so no inline library code is emitted with them and picked by the
// linker for a caller on an older CPU. Helpers a build shares must have internal linkage
// (an anonymous namespace): two levels' copies of one external inline function would be one.
#pragma once

#include "cpu/isa.h"

#ifndef MT_ISA
#error "*.isa.cpp files are built through CMake's per-ISA rule, which defines MT_ISA"
#endif

namespace mixtrain::cpu {
inline constexpr Isa kIsa = static_cast<Isa>(MT_ISA);
}  // namespace mixtrain::cpu

// The levels' feature lists (cpu/isa.h says which CPUs have them).
#if MT_ISA == 3
#define MT_TARGET_LIST target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
#elif MT_ISA == 2
#define MT_TARGET_LIST target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#elif MT_ISA == 1
#define MT_TARGET_LIST target("avx2,fma,f16c")
#elif MT_ISA == 0
#define MT_TARGET_LIST
#else
#error "MT_ISA out of range"
#endif

/// A function compiled for this build's level.
#define MT_TARGET __attribute__((MT_TARGET_LIST))
/// A helper inlined into its callers, compiled for this level.
#define MT_INLINE __attribute__((always_inline, MT_TARGET_LIST)) inline
/// A function compiled for this level with every call inside it inlined (so shared inline
/// helpers without the attribute, such as the row reductions, get this level's code too).
#define MT_FLATTEN __attribute__((flatten, MT_TARGET_LIST))

#if !defined(__clang__)
// GCC 12 reports its own _mm512_undefined_*() placeholders inside the AVX-512 intrinsics as
// "may be used uninitialized" once inlined (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
