// Which instruction-set level this CPU runs, and the level in use (MIXTRAIN_ISA, IsaCap).
#include "cpu/isa.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "mixtrain/cpu.h"
#include "mixtrain/error.h"

namespace mixtrain::cpu {

namespace {

constexpr Isa kLevels[kIsaCount] = {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16};

// The cap of the innermost IsaCap (the top level when none is alive).
std::atomic<int> g_cap{kIsaCount - 1};

// detected_isa() capped by MIXTRAIN_ISA, read once: every kernel of a process runs one level.
Isa env_level() {
  static const Isa level = [] {
    const char* env = std::getenv("MIXTRAIN_ISA");
    if (env == nullptr || *env == '\0') return detected_isa();
    return std::min(detected_isa(), parse_isa(env, "MIXTRAIN_ISA"));
  }();
  return level;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return "scalar";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    case Isa::avx512bf16:
      return "avx512bf16";
  }
  return "?";
}

Isa parse_isa(std::string_view name, const char* what) {
  for (Isa l : kLevels)
    if (name == isa_name(l)) return l;
  throw ConfigError(fmt::format(
      "{}='{}': unknown ISA level (expected scalar, avx2, avx512 or avx512bf16)", what, name));
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  const bool avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  switch (isa) {
    case Isa::scalar:
      return true;
    case Isa::avx2:
      return avx2;
    case Isa::avx512:
      return avx512;
    case Isa::avx512bf16:
      return avx512 && f.avx512_bf16;
  }
  return false;
}

Isa detected_isa() {
  static const Isa best = [] {
    Isa b = Isa::scalar;
    for (Isa l : kLevels)
      if (isa_supported(l)) b = l;
    return b;
  }();
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa l : kLevels)
    if (isa_supported(l)) out.push_back(l);
  return out;
}

Isa isa() { return std::min(env_level(), static_cast<Isa>(g_cap.load(std::memory_order_relaxed))); }

IsaCap::IsaCap(Isa cap) : prev_(static_cast<Isa>(g_cap.load(std::memory_order_relaxed))) {
  g_cap.store(static_cast<int>(std::min(prev_, cap)), std::memory_order_relaxed);
}

IsaCap::~IsaCap() { g_cap.store(static_cast<int>(prev_), std::memory_order_relaxed); }

}  // namespace mixtrain::cpu

namespace mixtrain {
const char* simd_level() { return cpu::isa_name(cpu::isa()); }
}  // namespace mixtrain
