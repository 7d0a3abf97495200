// Benchmark helpers of bench.h: GEMM GFLOP/s through mixtrain and through oneDNN directly,
// memcpy and convert bandwidth; each the median of timed repeats after a warm-up.
#include "mixtrain/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

#include <fmt/format.h>

#include "mixtrain/gemm.h"
#include "mixtrain/tensor.h"

namespace mixtrain {

namespace {

// Seconds per call of f: two warm-up calls (primitive creation, page faults, caches), then
// repeats of `iters` calls each, iters sized so a repeat takes about a tenth of min_seconds;
// at least 5 repeats and until min_seconds have passed. Returns the median seconds per call.
template <class F>
double median_seconds_per_call(F&& f, double min_seconds) {
  using clock = std::chrono::steady_clock;
  f();
  const auto t0 = clock::now();
  f();
  const double one = std::max(1e-9, std::chrono::duration<double>(clock::now() - t0).count());
  const int64_t iters =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(min_seconds / 10.0 / one)));
  std::vector<double> per_call;
  const auto start = clock::now();
  while (per_call.size() < 5 ||
         (std::chrono::duration<double>(clock::now() - start).count() < min_seconds &&
          per_call.size() < 1000)) {
    const auto r0 = clock::now();
    for (int64_t i = 0; i < iters; ++i) f();
    per_call.push_back(std::chrono::duration<double>(clock::now() - r0).count() / iters);
  }
  std::nth_element(per_call.begin(), per_call.begin() + per_call.size() / 2, per_call.end());
  return per_call[per_call.size() / 2];
}

void check_gemm_dtype(DType dt, const char* fn) {
  if (dt != DType::f32 && dt != DType::bf16 && dt != DType::f16)
    throw DTypeError(
        fmt::format("{}: dtype {} is not a GEMM dtype (f32, bf16, f16)", fn, dtype_name(dt)));
}

void check_n(int64_t n, const char* fn) {
  if (n <= 0) throw ConfigError(fmt::format("{}: matrix size n = {} must be positive", fn, n));
}

// Values in [-1, 1) with a short period: no denormals, no overflow, cheap to make.
std::vector<float> test_values(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(static_cast<int>(i * 7919 % 255)) / 128 - 1;
  return v;
}

}  // namespace

double gemm_gflops(DType dtype, int64_t n, double min_seconds) {
  check_gemm_dtype(dtype, "gemm_gflops");
  check_n(n, "gemm_gflops");
  const std::vector<float> v = test_values(static_cast<size_t>(n * n));
  const Tensor a = Tensor::from_vector(v, {n, n}, dtype);
  const Tensor b = Tensor::from_vector(v, {n, n}, dtype);
  Tensor c = Tensor::zeros({n, n}, dtype);
  const double s = median_seconds_per_call([&] { gemm(a, false, b, false, c); }, min_seconds);
  return 2.0 * static_cast<double>(n) * n * n / s * 1e-9;
}

double onednn_gemm_gflops(DType dtype, int64_t n, double min_seconds) {
  check_gemm_dtype(dtype, "onednn_gemm_gflops");
  check_n(n, "onednn_gemm_gflops");
  using dt = dnnl::memory::data_type;
  const dt d = dtype == DType::f32 ? dt::f32 : dtype == DType::bf16 ? dt::bf16 : dt::f16;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const dnnl::memory::desc md({n, n}, d, dnnl::memory::format_tag::ab);
  dnnl::matmul prim;
  try {
    prim = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(md, md, md), eng));
  } catch (const dnnl::error&) {
    return std::numeric_limits<double>::quiet_NaN();  // no matmul for this dtype here
  }
  dnnl::memory ma(md, eng), mb(md, eng), mc(md, eng);
  const std::vector<float> v = test_values(static_cast<size_t>(n * n));
  convert(v.data(), DType::f32, ma.get_data_handle(), dtype, v.size());
  convert(v.data(), DType::f32, mb.get_data_handle(), dtype, v.size());
  const std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
  const double s = median_seconds_per_call(
      [&] {
        prim.execute(strm, args);
        strm.wait();
      },
      min_seconds);
  return 2.0 * static_cast<double>(n) * n * n / s * 1e-9;
}

double memcpy_gbps(size_t bytes, double min_seconds) {
  if (bytes == 0) throw ConfigError("memcpy_gbps: bytes must be positive");
  // Tensors: 64-byte aligned, and the memory tracker sees them.
  const Tensor src = Tensor::full({static_cast<int64_t>(bytes)}, 1.0f, DType::u8);
  const Tensor dst = Tensor::zeros({static_cast<int64_t>(bytes)}, DType::u8);
  const double s = median_seconds_per_call(
      [&] { std::memcpy(dst.raw_data(), src.raw_data(), bytes); }, min_seconds);
  return 2.0 * static_cast<double>(bytes) / s * 1e-9;
}

double convert_gbps(DType from, DType to, size_t n, double min_seconds) {
  if (n == 0) throw ConfigError("convert_gbps: n must be positive");
  const int64_t ni = static_cast<int64_t>(n);
  const Tensor src = Tensor::from_vector(test_values(n), {ni}, from);
  const Tensor dst = Tensor::zeros({ni}, to);
  const double s = median_seconds_per_call(
      [&] { convert(src.raw_data(), from, dst.raw_data(), to, n); }, min_seconds);
  return static_cast<double>(n) * (dtype_size(from) + dtype_size(to)) / s * 1e-9;
}

}  // namespace mixtrain
