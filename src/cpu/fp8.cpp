// fp8 quantization on the CPU (Backend::amax, fp8_quantize, mx_quantize): tiles of kTile values
// loaded as fp32 through the bulk conversion, rounded with the per-element math the CUDA
// kernels share (detail/fp8_math.h), stored through it again. Tiles are split across threads;
// every result is per element or a max, so the bits do not depend on the thread count.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "cpu/backend.h"
#include "cpu/rows.h"
#include "mixtrain/detail/fp8_math.h"

namespace mixtrain::cpu {

namespace {

void check_float(const Tensor& t, const char* op, const char* what) {
  if (!t.is_contiguous() ||
      !(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f16))
    throw DTypeError(
        fmt::format("{}: {} {} must be a contiguous f32, bf16 or f16 tensor", op, what, t.str()));
}

// Rounds n fp32 values in place onto fmt's grid after multiplying by `scale`.
template <bool kE5M2>
void round_tile(float* v, int64_t n, float scale) {
  for (int64_t i = 0; i < n; ++i) v[i] = detail::fp8_round<kE5M2>(v[i] * scale, true);
}

void round_tile(float* v, int64_t n, float scale, DType fmt) {
  if (fmt == DType::e5m2)
    round_tile<true>(v, n, scale);
  else
    round_tile<false>(v, n, scale);
}

// max |v| over n values; NaN when one is NaN.
float tile_amax(const float* v, int64_t n) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(v[i]);
    nan |= a != a;
    m = a > m ? a : m;
  }
  return nan ? std::nanf("") : m;
}

float combine_amax(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::nanf("");
  return std::max(a, b);
}

}  // namespace

float CpuBackend::amax(const Tensor& x) {
  check_float(x, "amax", "x");
  const int64_t n = x.numel(), tiles = (n + kTile - 1) / kTile;
  float result = 0.0f;
#pragma omp parallel if (tiles > 8)
  {
    float buf[kTile];
    float mine = 0.0f;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t b = t * kTile, len = std::min(kTile, n - b);
      mine = combine_amax(
          mine, tile_amax(load_f32(at(x.raw_data(), x.dtype(), b), x.dtype(), len, buf), len));
    }
#pragma omp critical
    result = combine_amax(result, mine);
  }
  return result;
}

void CpuBackend::fp8_quantize(const Tensor& x, float scale, DType fmt, const Tensor& q) {
  check_float(x, "fp8_quantize", "x");
  if (fmt != DType::e4m3 && fmt != DType::e5m2)
    throw DTypeError(fmt::format("fp8_quantize: {} is not an fp8 format", dtype_name(fmt)));
  if (!q.is_contiguous() || q.shape() != x.shape() ||
      !(q.dtype() == DType::bf16 || q.dtype() == fmt))
    throw ShapeError(fmt::format("fp8_quantize: q {} must be contiguous bf16 or {} of x's shape {}",
                                 q.str(), dtype_name(fmt), x.str()));
  const int64_t n = x.numel(), tiles = (n + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (tiles > 8)
  for (int64_t t = 0; t < tiles; ++t) {
    float buf[kTile];
    const int64_t b = t * kTile, len = std::min(kTile, n - b);
    convert(at(x.raw_data(), x.dtype(), b), x.dtype(), buf, DType::f32, static_cast<size_t>(len));
    round_tile(buf, len, scale, fmt);
    // Every rounded value is on fmt's grid, so this conversion is exact (bf16 or fmt itself).
    store_row(buf, len, at(q.raw_data(), q.dtype(), b), q.dtype());
  }
}

float CpuBackend::mx_quantize(const Tensor& x, DType fmt, const Tensor& q, const Tensor& scales) {
  constexpr int64_t kBlock = 32;
  check_float(x, "mx_quantize", "x");
  if (fmt != DType::e4m3 && fmt != DType::e5m2)
    throw DTypeError(fmt::format("mx_quantize: {} is not an fp8 format", dtype_name(fmt)));
  if (x.dim() != 2) throw ShapeError(fmt::format("mx_quantize: x {} must be 2-d [R, K]", x.str()));
  const int64_t R = x.size(0), K = x.size(1), nb = (K + kBlock - 1) / kBlock;
  if (!q.is_contiguous() || q.shape() != x.shape() || q.dtype() != DType::bf16)
    throw ShapeError(
        fmt::format("mx_quantize: q {} must be contiguous bf16 of x's shape {}", q.str(), x.str()));
  if (!scales.is_contiguous() || scales.dtype() != DType::u8 || scales.shape() != Shape{R, nb})
    throw ShapeError(
        fmt::format("mx_quantize: scales {} must be contiguous u8 [{}, {}]", scales.str(), R, nb));
  const float fmax = fmt == DType::e5m2 ? 57344.0f : 448.0f;
  uint8_t* sc = scales.data<uint8_t>();
  float result = 0.0f;
#pragma omp parallel if (R * K > 8 * kTile)
  {
    std::vector<float> row(static_cast<size_t>(K));
    float mine = 0.0f;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      convert(at(x.raw_data(), x.dtype(), r * K), x.dtype(), row.data(), DType::f32,
              static_cast<size_t>(K));
      for (int64_t blk = 0; blk < nb; ++blk) {
        float* v = row.data() + blk * kBlock;
        const int64_t len = std::min(kBlock, K - blk * kBlock);
        const float bmax = tile_amax(v, len);
        mine = combine_amax(mine, bmax);
        const uint8_t code = detail::e8m0_ceil_code(bmax, fmax);
        sc[r * nb + blk] = code;
        // Both factors are powers of two: scaling down, rounding and scaling back leaves the
        // fp8 value times the block scale, exactly (in fp32, then in bf16).
        const float down = detail::e8m0_inverse(code), up = detail::e8m0_decode(code);
        round_tile(v, len, down, fmt);
        for (int64_t i = 0; i < len; ++i) v[i] *= up;
      }
      store_row(row.data(), K, at(q.raw_data(), DType::bf16, r * K), DType::bf16);
    }
#pragma omp critical
    result = combine_amax(result, mine);
  }
  return result;
}

}  // namespace mixtrain::cpu
