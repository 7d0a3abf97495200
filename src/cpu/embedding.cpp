// Embedding on the CPU: row gather forward, deterministic fp32 scatter-add backward.
#include <algorithm>
#include <vector>

#include "cpu/backend.h"
#include "cpu/rows.h"

namespace mixtrain::cpu {

namespace {
/// Below this many elements a kernel runs on one thread (a parallel region costs ~µs).
constexpr int64_t kParallelMin = 1 << 14;
}  // namespace

void CpuBackend::embedding(const Tensor& id, const Tensor& tab, const Tensor& out) {
  const int64_t C = tab.size(1), N = id.numel();
  // Row copies converted straight from the table's dtype into out's (no full-table cast).
  const DType tdt = tab.dtype(), dt = out.dtype();
  const size_t tes = dtype_size(tdt), oes = dtype_size(dt);
  const char* tp = static_cast<const char*>(tab.raw_data());
  char* op = static_cast<char*>(out.raw_data());
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n)
    convert(tp + index_at(id, n) * C * tes, tdt, op + n * C * oes, dt, static_cast<size_t>(C));
}

void CpuBackend::embedding_backward(const Tensor& id, const Tensor& g, const Tensor& dtab) {
  const int64_t N = id.numel(), C = dtab.size(1);
  fill(dtab, 0.0f);
  float* dp = dtab.data<float>();
  const DType gdt = g.dtype();
  const size_t ges = dtype_size(gdt);
  const char* gp = static_cast<const char*>(g.raw_data());
  // Parallel over column blocks: every thread walks all ids in order and owns its columns, so
  // there are no races and the summation order (hence the result) is the same for any thread
  // count. fp32 accumulation: a frequent id (a space, a padding token) gets thousands of
  // additions that would each round in bf16.
  constexpr int64_t kCols = 64;
  const int64_t nblk = (C + kCols - 1) / kCols;
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t c0 = b * kCols, w = std::min(kCols, C - c0);
    alignas(64) float buf[kCols];
    for (int64_t n = 0; n < N; ++n) {
      convert(gp + (n * C + c0) * ges, gdt, buf, DType::f32, static_cast<size_t>(w));
      float* row = dp + index_at(id, n) * C + c0;
      for (int64_t j = 0; j < w; ++j) row[j] += buf[j];
    }
  }
}

}  // namespace mixtrain::cpu
