// The CPU's instruction-set levels and the one run-time dispatch every CPU kernel goes through.
// A kernel family with builds per level is a struct of function pointers (a "table"), defined
// by a `*.isa.cpp` source that CMake compiles once per level its first line names, and picked
// at each call by IsaTable::get() for the level in use. Tests and benchmarks lower the level
// with IsaCap (or the MIXTRAIN_ISA environment variable) to run every build on one machine.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace mixtrain::cpu {

/// The levels, each a superset of the one before:
///   scalar      baseline x86-64 (SSE2)
///   avx2        + AVX2, FMA, F16C (Haswell, Zen 1)
///   avx512      + AVX-512 F, BW, VL, DQ (Skylake-SP, Zen 4)
///   avx512bf16  + AVX512_BF16: vdpbf16ps, vcvtne2ps2bf16 (Cooper Lake, Sapphire Rapids, Zen 4)
enum class Isa : uint8_t { scalar, avx2, avx512, avx512bf16 };
inline constexpr int kIsaCount = 4;

/// "scalar", "avx2", "avx512", "avx512bf16" (the names MIXTRAIN_ISA takes).
const char* isa_name(Isa isa);
/// The level of a name above; throws ConfigError naming `what` (the variable or flag) otherwise.
Isa parse_isa(std::string_view name, const char* what);
/// Whether this CPU (and its OS) runs `isa`'s code.
bool isa_supported(Isa isa);
/// The best level this CPU runs.
Isa detected_isa();
/// Every level this CPU runs, lowest first.
std::vector<Isa> supported_isas();
/// The level kernels dispatch to now: detected_isa(), capped by MIXTRAIN_ISA (read at the first
/// call; a bad value throws ConfigError) and by the innermost live IsaCap.
Isa isa();

/// Lowers the dispatch level to at most `cap` while alive (never raises it), for the whole
/// process: tests run every build of every kernel with it. Create it between kernel calls, not
/// while other threads run kernels.
class IsaCap {
 public:
  explicit IsaCap(Isa cap);
  ~IsaCap();
  IsaCap(const IsaCap&) = delete;
  IsaCap& operator=(const IsaCap&) = delete;

 private:
  Isa prev_;
};

/// One kernel family's builds by level. `make` fills a level without a build of its own with
/// the next lower level's, so a table lists only the levels a family is built for; a level
/// below every build stays null (the family has no kernel there: its caller takes another path).
template <class K>
class IsaTable {
 public:
  constexpr explicit IsaTable(std::array<const K*, kIsaCount> builds) : at_(builds) {
    for (int i = 1; i < kIsaCount; ++i)
      if (!at_[i]) at_[i] = at_[i - 1];
  }
  /// The build for the level in use (null: none at or below it).
  const K* get() const { return at_[static_cast<int>(isa())]; }
  /// The build for `level` regardless of the level in use.
  const K* at(Isa level) const { return at_[static_cast<int>(level)]; }

 private:
  std::array<const K*, kIsaCount> at_;
};

}  // namespace mixtrain::cpu
