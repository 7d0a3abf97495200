// Number formats: known values and edge cases of every conversion, NaN/round-trip rules for
// every 8- and 16-bit pattern, stochastic rounding (exact counts over the random bits), the
// generic convert() for every dtype pair, and every SIMD path against the scalar one.
#include <gtest/gtest.h>
#include <xmmintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/convert.h"
#include "mixtrain/cpu.h"
#include "mixtrain/dtype.h"
#include "mixtrain/error.h"
#include "mixtrain/random.h"

using namespace mixtrain;

namespace {

float F(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t U(float f) { return std::bit_cast<uint32_t>(f); }

bool is_nan16(uint16_t b, int mbits) {  // bf16: 7, fp16: 10
  const uint32_t e = ((b & 0x7fff) >> mbits), m = b & ((1u << mbits) - 1);
  return e == (0x7fffu >> mbits) && m != 0;
}

// fp32 inputs on and around every rounding decision: each finite code of the target, each
// midpoint between neighbours, one fp32 ulp either side of it, and special values.
std::vector<float> boundary_inputs(bool fp16_grid) {
  std::vector<float> v;
  for (uint32_t c = 0; c < 0x7c00u; ++c) {
    const float a = fp16_grid ? static_cast<float>(fp16::from_bits(static_cast<uint16_t>(c)))
                              : F(c << 17);  // bf16 grid sample: every other code
    const float b = fp16_grid ? static_cast<float>(fp16::from_bits(static_cast<uint16_t>(c + 1)))
                              : F((c << 17) + 0x10000);
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);  // exact in fp32
    for (float x : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
  for (uint32_t u : {0x00000001u, 0x00400000u, 0x007fffffu, 0x00008000u, 0x00018000u, 0x00800000u,
                     0x7f7fffffu, 0x7f7f8000u, 0x7f7f7fffu, 0x7f800000u, 0x7f800001u, 0x7fa00000u,
                     0x7fc00000u, 0x7fffffffu, 0x7fc02000u, 0x477ff000u, 0x477fefffu})
    for (uint32_t s : {0u, 0x80000000u}) v.push_back(F(u | s));
  return v;
}

// A large mixed set: boundaries of both grids plus 1M uniformly random bit patterns.
std::vector<float> test_inputs() {
  std::vector<float> v = boundary_inputs(true);
  const std::vector<float> b = boundary_inputs(false);
  v.insert(v.end(), b.begin(), b.end());
  Rng rng(42);
  for (int i = 0; i < (1 << 20); ++i) v.push_back(F(rng.next_u32()));
  return v;
}

// mixtrain::convert with the dispatch capped at `level` (every level this CPU runs is tested).
void convert_at(cpu::Isa level, const void* src, DType sd, void* dst, DType dd, size_t n) {
  const cpu::IsaCap cap(level);
  ASSERT_EQ(cpu::isa(), level);
  convert(src, sd, dst, dd, n);
}

std::vector<cpu::Isa> supported_levels() {
  std::vector<cpu::Isa> out;
  for (auto l : cpu::supported_isas()) out.push_back(l);
  return out;
}

}  // namespace

TEST(Bf16, KnownValuesTiesOverflowSubnormalsNaN) {
  EXPECT_EQ(bf16(1.0f).bits(), 0x3f80);
  EXPECT_EQ(bf16(-2.5f).bits(), 0xc020);
  EXPECT_EQ(bf16(F(0x3f808000)).bits(), 0x3f80);  // 1 + 2^-8: tie, to even (down)
  EXPECT_EQ(bf16(F(0x3f818000)).bits(), 0x3f82);  // tie, to even (up)
  EXPECT_EQ(bf16(F(0x3f808001)).bits(), 0x3f81);  // just above the tie
  EXPECT_EQ(bf16(-0.0f).bits(), 0x8000);
  EXPECT_EQ(bf16(F(0x7f7f7fff)).bits(), 0x7f7f);  // largest bf16 (3.39e38)
  EXPECT_EQ(bf16(F(0x7f7f8000)).bits(), 0x7f80);  // tie at the top: to even = Inf
  EXPECT_EQ(bf16(std::numeric_limits<float>::max()).bits(), 0x7f80);
  EXPECT_EQ(bf16(-std::numeric_limits<float>::infinity()).bits(), 0xff80);
  // fp32 subnormals are converted exactly (the hardware instruction would flush them).
  EXPECT_EQ(bf16(F(0x00400000)).bits(), 0x0040);
  EXPECT_EQ(bf16(F(0x00008000)).bits(), 0x0000);  // half the smallest bf16 subnormal: tie
  EXPECT_EQ(bf16(F(0x00018000)).bits(), 0x0002);
  EXPECT_EQ(bf16(F(0x807fffff)).bits(), 0x8080);  // rounds up to the smallest normal
  // NaN: quiet, same sign, top payload bits.
  EXPECT_EQ(bf16(F(0x7f800001)).bits(), 0x7fc0);
  EXPECT_EQ(bf16(F(0xffa12345)).bits(), 0xffe1);
  EXPECT_EQ(U(static_cast<float>(bf16::from_bits(0x7f81))), 0x7f810000u);  // exact shift
  EXPECT_EQ(static_cast<float>(bf16::from_bits(0x0001)), std::ldexp(1.0f, -133));
}

TEST(Fp16, KnownValuesTiesOverflowSubnormalsNaN) {
  EXPECT_EQ(fp16(1.0f).bits(), 0x3c00);
  EXPECT_EQ(fp16(65504.0f).bits(), 0x7bff);
  EXPECT_EQ(fp16(F(0x477fefff)).bits(), 0x7bff);  // just below 65520
  EXPECT_EQ(fp16(65520.0f).bits(), 0x7c00);       // halfway to 2^16: to even = Inf
  EXPECT_EQ(fp16(-1e6f).bits(), 0xfc00);
  EXPECT_EQ(fp16(std::ldexp(1.0f, -24)).bits(), 0x0001);
  EXPECT_EQ(fp16(std::ldexp(1.0f, -25)).bits(), 0x0000);  // tie, to even
  EXPECT_EQ(fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)).bits(), 0x0001);
  EXPECT_EQ(fp16(std::ldexp(3.0f, -25)).bits(), 0x0002);      // tie, to even (up)
  EXPECT_EQ(fp16(std::ldexp(-1023.5f, -24)).bits(), 0x8400);  // subnormal -> smallest normal
  EXPECT_EQ(fp16(F(0x00400000)).bits(), 0x0000);              // fp32 subnormal: +0
  EXPECT_EQ(fp16(F(0x80400000)).bits(), 0x8000);
  EXPECT_EQ(fp16(F(0x7f800001)).bits(), 0x7e00);
  EXPECT_EQ(fp16(F(0xffc02000)).bits(), 0xfe01);
  EXPECT_EQ(static_cast<float>(fp16::from_bits(0x0001)), std::ldexp(1.0f, -24));
  EXPECT_EQ(static_cast<float>(fp16::from_bits(0x7bff)), 65504.0f);
  EXPECT_EQ(U(static_cast<float>(fp16::from_bits(0x7c01))), 0x7fc02000u);  // quieted
}

TEST(Fp8, E4m3FnAndE5m2Ranges) {
  EXPECT_EQ(fp8_e4m3(448.0f).bits(), 0x7e);
  EXPECT_EQ(fp8_e4m3(464.0f).bits(), 0x7e);  // tie between 448 and 480 (0x7f is NaN): even
  EXPECT_EQ(fp8_e4m3(465.0f).bits(), 0x7f);  // overflow -> NaN (OCP "fn": no Inf)
  EXPECT_EQ(fp8_e4m3(std::numeric_limits<float>::infinity()).bits(), 0x7f);
  EXPECT_EQ(fp8_e4m3(-1e9f).bits(), 0xff);
  EXPECT_EQ(fp8_e4m3::saturate(1e9f).bits(), 0x7e);
  EXPECT_EQ(fp8_e4m3::saturate(-std::numeric_limits<float>::infinity()).bits(), 0xfe);
  EXPECT_EQ(fp8_e4m3::saturate(F(0x7fc00000)).bits(), 0x7f);  // NaN stays NaN
  EXPECT_EQ(fp8_e4m3(240.0f).bits(), 0x77);
  EXPECT_EQ(fp8_e4m3(std::ldexp(1.0f, -9)).bits(), 0x01);   // smallest subnormal
  EXPECT_EQ(fp8_e4m3(std::ldexp(1.0f, -10)).bits(), 0x00);  // tie, to even
  EXPECT_EQ(fp8_e4m3(std::ldexp(7.5f, -9)).bits(), 0x08);   // subnormal -> smallest normal
  EXPECT_EQ(static_cast<float>(fp8_e4m3::from_bits(0x7e)), 448.0f);
  EXPECT_EQ(static_cast<float>(fp8_e4m3::from_bits(0x78)), 256.0f);  // exp 15 is finite
  EXPECT_TRUE(std::isnan(static_cast<float>(fp8_e4m3::from_bits(0xff))));

  EXPECT_EQ(fp8_e5m2(57344.0f).bits(), 0x7b);
  EXPECT_EQ(fp8_e5m2(61439.0f).bits(), 0x7b);
  EXPECT_EQ(fp8_e5m2(61440.0f).bits(), 0x7c);  // tie to even = Inf
  EXPECT_EQ(fp8_e5m2::saturate(1e30f).bits(), 0x7b);
  EXPECT_EQ(fp8_e5m2::saturate(-std::numeric_limits<float>::infinity()).bits(), 0xfb);
  EXPECT_EQ(fp8_e5m2(std::ldexp(1.0f, -16)).bits(), 0x01);
  EXPECT_EQ(fp8_e5m2(F(0x7f800001)).bits(), 0x7e);
  EXPECT_EQ(static_cast<float>(fp8_e5m2::from_bits(0x7c)), std::numeric_limits<float>::infinity());
}

// Decoding checked against the textbook formula (-1)^s * 2^(e-bias) * (1 + m/2^M), and every
// pattern must come back unchanged, NaNs as the same NaN with the quiet bit set.
template <class T, int E, int M, bool kHasInf>
void check_all_patterns() {
  constexpr int kBits = 1 + E + M;
  constexpr int kBias = (1 << (E - 1)) - 1;
  for (uint32_t b = 0; b < (1u << kBits); ++b) {
    const T t = T::from_bits(static_cast<decltype(T().bits())>(b));
    const float f = static_cast<float>(t);
    const uint32_t s = b >> (E + M), e = (b >> M) & ((1u << E) - 1), m = b & ((1u << M) - 1);
    const bool nan = kHasInf ? (e == (1u << E) - 1 && m != 0)
                             : ((b & ((1u << (kBits - 1)) - 1)) == (1u << (kBits - 1)) - 1);
    if (nan) {
      ASSERT_TRUE(std::isnan(f)) << b;
      ASSERT_EQ(std::signbit(f), s != 0) << b;
      const uint32_t quiet = kHasInf ? 1u << (M - 1) : 0;
      ASSERT_EQ(T(f).bits(), b | quiet) << b;
      continue;
    }
    double want;
    if (kHasInf && e == (1u << E) - 1)
      want = HUGE_VAL;
    else if (e == 0)
      want = std::ldexp(static_cast<double>(m), 1 - kBias - M);
    else
      want = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -M), static_cast<int>(e) - kBias);
    if (s) want = -want;
    ASSERT_EQ(static_cast<double>(f), want) << b;
    ASSERT_EQ(std::signbit(f), s != 0) << b;
    ASSERT_EQ(T(f).bits(), b) << b;
  }
}

TEST(Dtype, EveryBitPatternDecodesAndRoundTrips) {
  check_all_patterns<bf16, 8, 7, true>();
  check_all_patterns<fp16, 5, 10, true>();
  check_all_patterns<fp8_e5m2, 5, 2, true>();
  check_all_patterns<fp8_e4m3, 4, 3, false>();
}

// Stochastic rounding depends on the random bits only through the low 16 (bf16) or 13 (fp16
// normal) or 14 (fp16, |f| in [2^-15, 2^-14)) bits, so counting over all their values gives
// the exact probability of rounding up: it must equal the fraction dropped.
TEST(StochasticRounding, ExactProbabilitiesOverAllRandomBits) {
  auto count_up = [](auto round, float f, uint32_t n_random, uint16_t lo_bits) {
    uint32_t up = 0;
    for (uint32_t r = 0; r < n_random; ++r) {
      const uint16_t b = round(f, r).bits();
      if (b != lo_bits) ++up;
    }
    return up;
  };
  auto rb = [](float f, uint32_t r) { return bf16::round_stochastic(f, r); };
  auto rh = [](float f, uint32_t r) { return fp16::round_stochastic(f, r); };
  // bf16: 1 + 2^-9 is a quarter of the way from 1 to 1 + 2^-7.
  EXPECT_EQ(count_up(rb, 1.0f + std::ldexp(1.0f, -9), 65536, 0x3f80), 16384u);
  EXPECT_EQ(count_up(rb, -(1.0f + std::ldexp(1.0f, -9)), 65536, 0xbf80), 16384u);
  EXPECT_EQ(count_up(rb, F(0x3f80ffff), 65536, 0x3f80), 65535u);
  EXPECT_EQ(count_up(rb, F(0x00000003), 65536, 0x0000), 3u);      // fp32 subnormal
  EXPECT_EQ(count_up(rb, F(0x7f7f8000), 65536, 0x7f7f), 32768u);  // half-way to "2^128" = Inf
  EXPECT_EQ(count_up(rb, 1.0f, 65536, 0x3f80), 0u);               // exact values never move
  // fp16 normal: 1 + 2^-12 is a quarter of the gap 2^-10.
  EXPECT_EQ(count_up(rh, 1.0f + std::ldexp(1.0f, -12), 8192, 0x3c00), 2048u);
  EXPECT_EQ(count_up(rh, -3.0f * std::ldexp(1.0f, -12) - 1.0f, 8192, 0xbc00), 6144u);
  EXPECT_EQ(count_up(rh, 65520.0f, 8192, 0x7bff), 4096u);  // half-way from 65504 to "65536"
  EXPECT_EQ(count_up(rh, 65504.0f, 8192, 0x7bff), 0u);
  // fp16 subnormal in [2^-15, 2^-14): 2^-24 * (600 + 0.3125) -> 600 or 601 steps, up with
  // probability 0.3125; its 14 low fp32 bits are the fraction, so 2^14 draws cover it.
  EXPECT_EQ(count_up(rh, std::ldexp(9605.0f, -28), 16384, 0x0258), 5120u);
  EXPECT_EQ(count_up(rh, -std::ldexp(9605.0f, -28), 16384, 0x8258), 5120u);
  // For a tiny value (|f| < 2^-32 steps cannot be counted) check the mean: 2^-30 is 2^-6 of
  // the smallest fp16 step, so about 1/64 of draws round up.
  Rng rng(7);
  int up = 0;
  for (int i = 0; i < 65536; ++i)
    up += fp16::round_stochastic(std::ldexp(1.0f, -30), rng.next_u32()).bits();
  EXPECT_NEAR(up / 65536.0, 1.0 / 64, 0.003);  // sd 0.0005
  // Inf and NaN pass through.
  EXPECT_EQ(fp16::round_stochastic(F(0xff800000), 123).bits(), 0xfc00);
  EXPECT_EQ(bf16::round_stochastic(F(0x7fa00000), 123).bits(), 0x7fe0);
  EXPECT_EQ(fp16::round_stochastic(1e10f, 0).bits(), 0x7c00);
}

TEST(StochasticRounding, BulkIsCounterBasedAndSplitInvariant) {
  const size_t n = (size_t{1} << 19) + 37;  // large enough for the OpenMP split
  std::vector<float> x(n);
  Rng g(3);
  for (auto& v : x) v = g.normal() * 100.0f;
  for (DType dt : {DType::bf16, DType::f16}) {
    std::vector<uint16_t> all(n), parts(n);
    convert_stochastic(x.data(), all.data(), dt, n, 99, 1000);
    const size_t cut = 12345;
    convert_stochastic(x.data(), parts.data(), dt, cut, 99, 1000);
    convert_stochastic(x.data() + cut, parts.data() + cut, dt, n - cut, 99, 1000 + cut);
    EXPECT_EQ(all, parts) << dtype_name(dt);
    size_t changed = 0, matches = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t r = static_cast<uint32_t>(random_bits(99, 1000 + i) >> 32);
      const uint16_t want = dt == DType::bf16 ? bf16::round_stochastic(x[i], r).bits()
                                              : fp16::round_stochastic(x[i], r).bits();
      matches += all[i] == want;
      changed += want != (dt == DType::bf16 ? bf16(x[i]).bits() : fp16(x[i]).bits());
    }
    EXPECT_EQ(matches, n) << dtype_name(dt);
    EXPECT_GT(changed, n / 10) << dtype_name(dt);  // it is not just RNE
    // Unbiased: the mean of the rounded values tracks the fp32 mean far better than an ulp.
    std::vector<float> back(n);
    convert(all.data(), dt, back.data(), DType::f32, n);
    double err = 0;
    for (size_t i = 0; i < n; ++i) err += static_cast<double>(back[i]) - x[i];
    EXPECT_LT(std::fabs(err / n), 0.01) << dtype_name(dt);  // bf16 ulp at 100 is 0.5
  }
  std::vector<uint8_t> out(4);
  EXPECT_THROW(convert_stochastic(x.data(), out.data(), DType::e4m3, 4, 1), DTypeError);
}

// Single rounding from f64 and integers: a value just above a bf16 tie must round up, which
// going through fp32 first (to the tie, then to even) would get wrong.
TEST(Convert, F64AndIntegersRoundOnce) {
  const double d[] = {1.0 + 0x1p-8 + 0x1p-40,
                      -(1.0 + 0x1p-8 + 0x1p-40),
                      1e300,
                      0x1p-140,
                      65520.0 - 0x1p-30,
                      std::nan("")};
  uint16_t b[6], h[6];
  convert(d, DType::f64, b, DType::bf16, 6);
  convert(d, DType::f64, h, DType::f16, 6);
  EXPECT_EQ(b[0], 0x3f81);
  EXPECT_EQ(b[1], 0xbf81);
  EXPECT_EQ(b[2], 0x7f80);
  EXPECT_EQ(b[3], 0x0000);  // 2^-140 < half of bf16's smallest subnormal 2^-133
  EXPECT_EQ(h[4], 0x7bff);  // below 65520: not Inf (fp32 would round it to 65520 first)
  EXPECT_TRUE(is_nan16(b[5], 7));
  EXPECT_TRUE(is_nan16(h[5], 10));
  const int32_t i32[] = {(1 << 24) + (1 << 16) + 1, -((1 << 24) + (1 << 16) + 1)};
  convert(i32, DType::i32, b, DType::bf16, 2);
  EXPECT_EQ(b[0], 0x4b81);  // 2^24 * (1 + 2^-7)
  EXPECT_EQ(b[1], 0xcb81);
  const int64_t i64[] = {(int64_t{1} << 60) + (int64_t{1} << 52) + 1,
                         std::numeric_limits<int64_t>::min()};
  convert(i64, DType::i64, b, DType::bf16, 2);
  EXPECT_EQ(b[0], 0x5d81);
  EXPECT_EQ(b[1], 0xdf00);  // -2^63
  uint8_t e4[1];
  const double over = 464.0 + 0x1p-20;  // just past the 448/480 tie: 480 is NaN in e4m3
  convert(&over, DType::f64, e4, DType::e4m3, 1);
  EXPECT_EQ(e4[0], 0x7f);
}

TEST(Convert, FloatToIntegerTruncatesAndSaturates) {
  const float f[] = {-2.7f, 2.7f, 1e20f, -1e20f, std::nanf(""), 300.0f, -1.0f};
  int32_t i[7];
  int64_t l[7];
  uint8_t u[7];
  convert(f, DType::f32, i, DType::i32, 7);
  convert(f, DType::f32, l, DType::i64, 7);
  convert(f, DType::f32, u, DType::u8, 7);
  EXPECT_EQ(std::vector<int32_t>(i, i + 7),
            (std::vector<int32_t>{-2, 2, INT32_MAX, INT32_MIN, 0, 300, -1}));
  EXPECT_EQ(l[2], INT64_MAX);
  EXPECT_EQ(l[3], INT64_MIN);
  EXPECT_EQ(std::vector<uint8_t>(u, u + 7), (std::vector<uint8_t>{0, 2, 255, 0, 0, 255, 0}));
  const uint16_t hb[] = {bf16(-3.5f).bits(), 0x7fc0};
  convert(hb, DType::bf16, i, DType::i32, 2);
  EXPECT_EQ(i[0], -3);
  EXPECT_EQ(i[1], 0);
}

TEST(Convert, EveryPairMatchesElementwiseAndLargeArraysMatchSerial) {
  const std::vector<float> x = {0.0f, -1.5f, 3.14159f, 1e-6f, -70000.0f, 448.0f, 1e-30f, 12.0f};
  const DType all[] = {DType::f32,  DType::f64, DType::bf16, DType::f16, DType::e4m3,
                       DType::e5m2, DType::i32, DType::i64,  DType::u8};
  for (DType a : all)
    for (DType b : all) {
      std::vector<uint8_t> src(x.size() * dtype_size(a)), dst(x.size() * dtype_size(b));
      convert(x.data(), DType::f32, src.data(), a, x.size());
      convert(src.data(), a, dst.data(), b, x.size());
      std::vector<float> back(x.size());
      convert(dst.data(), b, back.data(), DType::f32, x.size());
      // Converting one element at a time gives the same bits as the bulk call.
      for (size_t k = 0; k < x.size(); ++k) {
        std::vector<uint8_t> one(dtype_size(b));
        convert(src.data() + k * dtype_size(a), a, one.data(), b, 1);
        EXPECT_EQ(std::memcmp(one.data(), dst.data() + k * dtype_size(b), dtype_size(b)), 0)
            << dtype_name(a) << " -> " << dtype_name(b) << " at " << k;
      }
      if (a == b) EXPECT_EQ(src, dst);
    }
  // Above the OpenMP threshold every path still gives the single-thread scalar bits.
  const std::vector<float> in = test_inputs();
  for (DType dt : {DType::bf16, DType::f16, DType::e4m3, DType::e5m2}) {
    std::vector<uint8_t> par(in.size() * dtype_size(dt)), ser(par.size());
    convert(in.data(), DType::f32, par.data(), dt, in.size());
    for (size_t k = 0; k < in.size(); ++k) {
      const uint16_t v = dt == DType::bf16   ? bf16(in[k]).bits()
                         : dt == DType::f16  ? fp16(in[k]).bits()
                         : dt == DType::e4m3 ? fp8_e4m3(in[k]).bits()
                                             : fp8_e5m2(in[k]).bits();
      std::memcpy(ser.data() + k * dtype_size(dt), &v, dtype_size(dt));
    }
    EXPECT_EQ(par, ser) << dtype_name(dt);
  }
  EXPECT_THROW(parse_dtype("float128"), ConfigError);
}

TEST(Simd, LevelIsReportedAndCapped) {
  const std::string name = simd_level();
  EXPECT_EQ(name, cpu::isa_name(cpu::isa()));
  EXPECT_LE(cpu::isa(), cpu::detected_isa());
  EXPECT_TRUE(cpu::isa_supported(cpu::detected_isa()));
  const CpuFeatures& f = cpu_features();
  if (f.avx512_bf16 && f.avx512bw && f.avx512vl && f.avx512dq && f.avx2 && f.fma && f.f16c)
    EXPECT_EQ(cpu::detected_isa(), cpu::Isa::avx512bf16);
  // MIXTRAIN_ISA caps the level (run e.g. `MIXTRAIN_ISA=avx2 dtype_test` to check).
  if (const char* env = std::getenv("MIXTRAIN_ISA"); env != nullptr && *env != '\0')
    EXPECT_EQ(cpu::isa(), std::min(cpu::parse_isa(env, "MIXTRAIN_ISA"), cpu::detected_isa()));
  std::printf("cpu: %s; detected %s, active %s\n", f.brand.c_str(),
              cpu::isa_name(cpu::detected_isa()), simd_level());
  // IsaCap lowers the level while alive (innermost wins, never above what runs here), and
  // restores it after.
  const cpu::Isa before = cpu::isa();
  {
    const cpu::IsaCap cap(cpu::Isa::scalar);
    EXPECT_STREQ(simd_level(), "scalar");
    const cpu::IsaCap raise(cpu::Isa::avx512bf16);
    EXPECT_EQ(cpu::isa(), cpu::Isa::scalar);
  }
  EXPECT_EQ(cpu::isa(), before);
  EXPECT_THROW(cpu::parse_isa("avx1024", "MIXTRAIN_ISA"), ConfigError);
}

// Each path against the scalar one: every 16-bit pattern up to fp32, and the boundary and
// random set down to 16 bits at every length 0..70 and misalignment (tails, masks).
TEST(Simd, EveryPathMatchesScalar) {
  std::vector<uint16_t> all16(65536);
  for (uint32_t i = 0; i < 65536; ++i) all16[i] = static_cast<uint16_t>(i);
  const std::vector<float> in = test_inputs();
  for (DType h : {DType::bf16, DType::f16}) {
    std::vector<float> up_ref(65536), up(65536);
    convert_at(cpu::Isa::scalar, all16.data(), h, up_ref.data(), DType::f32, 65536);
    std::vector<uint16_t> down_ref(in.size()), down(in.size());
    convert_at(cpu::Isa::scalar, in.data(), DType::f32, down_ref.data(), h, in.size());
    for (size_t k = 0; k < in.size(); ++k)
      ASSERT_EQ(down_ref[k], h == DType::bf16 ? bf16(in[k]).bits() : fp16(in[k]).bits());
    for (cpu::Isa l : supported_levels()) {
      const char* ln = cpu::isa_name(l);
      convert_at(l, all16.data(), h, up.data(), DType::f32, 65536);
      EXPECT_EQ(std::memcmp(up.data(), up_ref.data(), 65536 * 4), 0) << ln << " " << dtype_name(h);
      convert_at(l, in.data(), DType::f32, down.data(), h, in.size());
      EXPECT_EQ(down, down_ref) << ln << " " << dtype_name(h);
      for (size_t off = 0; off < 3; ++off)
        for (size_t n = 0; n <= 70; ++n) {
          std::vector<uint16_t> d(n + 8, 0xdead);
          convert_at(l, in.data() + 1000 + off, DType::f32, d.data() + off, h, n);
          for (size_t k = 0; k < n; ++k)
            ASSERT_EQ(d[off + k], down_ref[1000 + off + k]) << ln << " n=" << n;
          for (size_t k = n + off; k < d.size(); ++k) ASSERT_EQ(d[k], 0xdead) << ln << " n=" << n;
          std::vector<float> f(n + 8, 7.0f);
          convert_at(l, all16.data() + 31000 + off, h, f.data() + off, DType::f32, n);
          for (size_t k = 0; k < n; ++k)
            ASSERT_EQ(U(f[off + k]), U(up_ref[31000 + off + k])) << ln << " n=" << n;
          for (size_t k = n + off; k < f.size(); ++k) ASSERT_EQ(f[k], 7.0f) << ln << " n=" << n;
        }
    }
  }
}

// The row converter (attention's packing) is the active level's kernel: the bits of convert()
// for every pair and length, writing nothing past n; equal dtypes copy; other pairs are refused.
TEST(Simd, RowConverterMatchesConvert) {
  std::vector<uint16_t> all16(65536);
  for (uint32_t i = 0; i < 65536; ++i) all16[i] = static_cast<uint16_t>(i);
  const std::vector<float> in = test_inputs();
  for (DType h : {DType::bf16, DType::f16}) {
    const cpu::RowConverter down(DType::f32, h), up(h, DType::f32);
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{64}, size_t{70}, in.size()}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(h) << " n " << n);
      std::vector<uint16_t> d(n + 4, 0xdead), d_ref(n);
      down(in.data(), d.data(), n);
      convert(in.data(), DType::f32, d_ref.data(), h, n);
      EXPECT_TRUE(std::equal(d_ref.begin(), d_ref.end(), d.begin()));
      for (size_t k = n; k < d.size(); ++k) ASSERT_EQ(d[k], 0xdead);
      const size_t m = std::min<size_t>(n, 65536);
      std::vector<float> f(m + 4, 7.0f), f_ref(m);
      up(all16.data(), f.data(), m);
      convert(all16.data(), h, f_ref.data(), DType::f32, m);
      EXPECT_TRUE(std::equal(f_ref.begin(), f_ref.end(), f.begin(),
                             [](float x, float y) { return std::memcmp(&x, &y, 4) == 0; }));
      for (size_t k = m; k < f.size(); ++k) ASSERT_EQ(f[k], 7.0f);
    }
  }
  std::vector<float> copy(5, 0.0f);
  cpu::RowConverter(DType::f32, DType::f32)(in.data(), copy.data(), 5);
  EXPECT_TRUE(std::equal(copy.begin(), copy.end(), in.begin()));
  EXPECT_THROW(cpu::RowConverter(DType::f32, DType::i64), DTypeError);
  EXPECT_THROW(cpu::RowConverter(DType::bf16, DType::f16), DTypeError);
}

// The rounding is decided by the code or the instruction's immediate, never by MXCSR: the
// same bits come out under flush-to-zero, denormals-are-zero and round-toward-zero.
TEST(Simd, IndependentOfMxcsr) {
  std::vector<uint16_t> all16(65536);
  for (uint32_t i = 0; i < 65536; ++i) all16[i] = static_cast<uint16_t>(i);
  const std::vector<float> in = boundary_inputs(true);
  for (cpu::Isa l : supported_levels())
    for (DType h : {DType::bf16, DType::f16}) {
      std::vector<uint16_t> d0(in.size()), d1(in.size());
      std::vector<float> u0(65536), u1(65536);
      convert_at(l, in.data(), DType::f32, d0.data(), h, in.size());
      convert_at(l, all16.data(), h, u0.data(), DType::f32, 65536);
      const unsigned saved = _mm_getcsr();
      _mm_setcsr(saved | 0x8040u | _MM_ROUND_TOWARD_ZERO);  // FTZ | DAZ | RZ
      convert_at(l, in.data(), DType::f32, d1.data(), h, in.size());
      convert_at(l, all16.data(), h, u1.data(), DType::f32, 65536);
      _mm_setcsr(saved);
      EXPECT_EQ(d0, d1) << cpu::isa_name(l) << " " << dtype_name(h);
      EXPECT_EQ(std::memcmp(u0.data(), u1.data(), 65536 * 4), 0)
          << cpu::isa_name(l) << " " << dtype_name(h);
    }
}
