// Every one of the 2^32 fp32 bit patterns, converted to bf16 and fp16 by the scalar code and by
// every SIMD path this CPU has, against an independent reference computed here.
//
// The reference rounds in double arithmetic, differently from dtype.h's integer add-and-shift:
// the value is scaled by a power of two so the target's last place becomes the units digit,
// rounded to an integer with the classic (y + 2^52) - 2^52 (RNE in double, exact for
// y < 2^51), and the code is rebuilt from that integer per exponent. Overflow is decided on
// the rounded value with unbounded exponent (IEEE 754's rule). NaN follows the documented
// rule of dtype.h (quiet, same sign, top payload bits), which the SIMD paths must also meet.
// The avx2 and avx512 fp16 paths are the F16C instruction vcvtps2ph, so for fp16 the hardware
// is checked against the reference too (and the scalar code through it).
// Runs the 65536 blocks of 2^16 patterns on OpenMP threads: ~10 s on 2 cores.
//
// MIXTRAIN_EXHAUSTIVE_STRIDE=k (scripts/sanitize.sh sets 17) checks every k-th block only:
// under a sanitizer the full sweep takes minutes, and what the sanitizers look for (an
// out-of-bounds access or undefined behaviour on some path) does not need every pattern.
// A block is 2^16 patterns sharing the top 16 bits (sign, exponent, 7 leading mantissa bits)
// and holds every rounding case of both targets; a stride below 128 still reaches every sign
// and exponent (Inf and NaN included), and an odd stride varies the leading mantissa bits.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/convert.h"
#include "mixtrain/dtype.h"

using namespace mixtrain;

namespace {

constexpr size_t kBlock = size_t{1} << 16;

struct Format {
  int p;              // significant bits, implicit one included
  int emin;           // exponent of the smallest normal
  int bias;           // exponent bias
  double max_finite;  // largest finite value
  uint16_t inf;       // code of +Inf
};
constexpr Format kBf16{8, -126, 127, 0x1.fep127, 0x7f80};
constexpr Format kFp16{11, -14, 15, 65504.0, 0x7c00};

// Reference codes for the 2^16 patterns (hi << 16) | lo, which share sign and exponent field.
void reference_block(const Format& f, uint32_t hi, const float* src, uint16_t* out) {
  const uint32_t sign16 = (hi >> 15) << 15;
  const int exp_field = static_cast<int>((hi >> 7) & 0xff);
  if (exp_field == 0xff) {  // Inf and NaN
    for (size_t lo = 0; lo < kBlock; ++lo) {
      uint32_t u;
      std::memcpy(&u, &src[lo], 4);
      const uint32_t man = u & 0x7fffff;
      const int drop = 24 - f.p;  // fp32 payload bits that do not fit
      out[lo] = static_cast<uint16_t>(
          man == 0 ? sign16 | f.inf : sign16 | f.inf | (1u << (f.p - 2)) | (man >> drop));
    }
    return;
  }
  // fp32 subnormals (field 0) behave as exponent -127 here: below every emin, so the target
  // step is fixed at 2^(emin - p + 1) either way.
  const int e = exp_field == 0 ? -127 : exp_field - 127;
  const int q = std::max(e, f.emin) - (f.p - 1);  // exponent of the target's last place
  const double scale = std::ldexp(1.0, -q), unscale = std::ldexp(1.0, q);
  const double top = std::ldexp(1.0, f.p), implicit = std::ldexp(1.0, f.p - 1);
  const uint32_t exp_code = static_cast<uint32_t>(e + f.bias) << (f.p - 1);
  for (size_t lo = 0; lo < kBlock; ++lo) {
    const double y = std::fabs(static_cast<double>(src[lo])) * scale;  // exact
    const double r = (y + 0x1p52) - 0x1p52;                            // RNE to an integer
    uint32_t code;
    if (r * unscale > f.max_finite)
      code = f.inf;
    else if (e < f.emin)  // target subnormal (r == 2^(p-1) is the smallest normal's code)
      code = static_cast<uint32_t>(r);
    else if (r == top)  // rounded up to the next power of two
      code = exp_code + (1u << (f.p - 1));
    else
      code = exp_code + static_cast<uint32_t>(r - implicit);
    out[lo] = static_cast<uint16_t>(sign16 | code);
  }
}

struct Tally {
  std::atomic<uint64_t> mismatches{0};
  std::atomic<uint32_t> first{0};  // first mismatching fp32 pattern seen (any thread)
  void add(const float* src, const uint16_t* want, const uint16_t* got) {
    if (std::memcmp(want, got, kBlock * 2) == 0) return;
    uint64_t bad = 0;
    for (size_t i = 0; i < kBlock; ++i) {
      if (want[i] == got[i]) continue;
      if (bad++ == 0) {
        uint32_t u;
        std::memcpy(&u, &src[i], 4);
        first.store(u);
      }
    }
    mismatches += bad;
  }
};

}  // namespace

TEST(DtypeExhaustive, EveryFp32PatternToBf16AndFp16MatchesReferenceOnEveryPath) {
  std::vector<cpu::Isa> levels;
  for (auto l : {cpu::Isa::avx2, cpu::Isa::avx512, cpu::Isa::avx512bf16})
    if (cpu::isa_supported(l)) levels.push_back(l);
  // tallies[0] scalar, [1 + k] levels[k]; per format.
  Tally bf[4], hf[4];
  int64_t stride = 1;
  if (const char* env = std::getenv("MIXTRAIN_EXHAUSTIVE_STRIDE")) stride = std::stoll(env);
  ASSERT_TRUE(stride >= 1 && stride < 128) << "MIXTRAIN_EXHAUSTIVE_STRIDE must be in [1, 127]";
  if (stride > 1) {
    const int64_t blocks = (65536 + stride - 1) / stride;
    std::printf(
        "MIXTRAIN_EXHAUSTIVE_STRIDE=%lld: every %lld-th block, %lld of 65536 blocks (%lld "
        "patterns)\n",
        static_cast<long long>(stride), static_cast<long long>(stride),
        static_cast<long long>(blocks), static_cast<long long>(blocks) * 65536);
  }
  std::atomic<int64_t> blocks_done{0};

#pragma omp parallel
  {
    std::vector<float> src(kBlock);
    std::vector<uint16_t> ref_b(kBlock), ref_h(kBlock), got(kBlock);
#pragma omp for schedule(dynamic, 16)
    for (int64_t hi = 0; hi < 65536; ++hi) {
      if (hi % stride != 0) continue;
      blocks_done.fetch_add(1, std::memory_order_relaxed);
      for (size_t lo = 0; lo < kBlock; ++lo) {
        const uint32_t u = (static_cast<uint32_t>(hi) << 16) | static_cast<uint32_t>(lo);
        std::memcpy(&src[lo], &u, 4);
      }
      reference_block(kBf16, static_cast<uint32_t>(hi), src.data(), ref_b.data());
      reference_block(kFp16, static_cast<uint32_t>(hi), src.data(), ref_h.data());
      for (size_t i = 0; i < kBlock; ++i) got[i] = bf16(src[i]).bits();
      bf[0].add(src.data(), ref_b.data(), got.data());
      for (size_t i = 0; i < kBlock; ++i) got[i] = fp16(src[i]).bits();
      hf[0].add(src.data(), ref_h.data(), got.data());
      for (size_t k = 0; k < levels.size(); ++k) {
        const cpu::ConvertKernels& kl = cpu::convert_kernels_at(levels[k]);
        kl.f32_to_bf16(src.data(), got.data(), kBlock);
        bf[1 + k].add(src.data(), ref_b.data(), got.data());
        kl.f32_to_f16(src.data(), got.data(), kBlock);
        hf[1 + k].add(src.data(), ref_h.data(), got.data());
      }
    }
  }
  EXPECT_EQ(blocks_done.load(), (65536 + stride - 1) / stride);
  for (size_t k = 0; k <= levels.size(); ++k) {
    const char* name = k == 0 ? "scalar" : cpu::isa_name(levels[k - 1]);
    EXPECT_EQ(bf[k].mismatches.load(), 0u)
        << name << " fp32->bf16, e.g. input 0x" << std::hex << bf[k].first.load();
    EXPECT_EQ(hf[k].mismatches.load(), 0u)
        << name << " fp32->fp16, e.g. input 0x" << std::hex << hf[k].first.load();
  }
}
