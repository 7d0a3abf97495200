// embedding: row gather forward, deterministic fp32 scatter-add backward.
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops_nn.h"
#include "ops/nn_common.h"

namespace mixtrain {

using namespace nn_detail;

Variable embedding(const Variable& ids, const Variable& table) {
  constexpr const char* kOp = "embedding";
  check_defined(ids, kOp, "ids");
  check_defined(table, kOp, "table");
  check_index(ids.data(), kOp, "ids");
  check_float(table.data(), kOp, "table");
  if (table.dim() != 2)
    throw ShapeError(fmt::format("{}: table {} must be 2-d [V, C]", kOp, table.data().str()));
  const DType dt = amp::op_dtype(kOp, amp::OpCategory::same, {table.dtype()});
  const Tensor id = ids.data().contiguous();
  const Tensor tab = table.data().contiguous();
  const int64_t V = tab.size(0), C = tab.size(1), N = id.numel();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t i = index_at(id, n);
    if (i < 0 || i >= V)
      throw ShapeError(
          fmt::format("{}: id {} at position {} of ids {} is out of range for a "
                      "table of V = {} rows ({})",
                      kOp, i, n, id.str(), V, tab.str()));
  }
  Shape out_shape = id.shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, dt);
  // Row copies converted straight from the table's dtype into dt (no full-table cast).
  const DType tdt = tab.dtype();
  const size_t tes = dtype_size(tdt), oes = dtype_size(dt);
  const char* tp = static_cast<const char*>(tab.raw_data());
  char* op = static_cast<char*>(out.raw_data());
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n)
    convert(tp + index_at(id, n) * C * tes, tdt, op + n * C * oes, dt, static_cast<size_t>(C));

  const DType table_dt = table.dtype();
  const bool f32_ok = f32_grad_ok(table);
  return make_op_result(out, {ids, table}, kOp, [id, V, C, table_dt, f32_ok](const Tensor& g_in) {
    const Tensor g = g_in.contiguous();
    const int64_t N = id.numel();
    Tensor dtab = Tensor::zeros({V, C}, DType::f32);
    float* dp = dtab.data<float>();
    const DType gdt = g.dtype();
    const size_t ges = dtype_size(gdt);
    const char* gp = static_cast<const char*>(g.raw_data());
    // Parallel over column blocks: every thread walks all ids in order and owns its columns,
    // so there are no races and the summation order (hence the result) is the same for any
    // thread count. fp32 accumulation: a frequent id (a space, a padding token) gets thousands
    // of additions that would each round in bf16.
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
    return std::vector<Tensor>{Tensor(), grad_for(dtab, table_dt, f32_ok)};
  });
}

}  // namespace mixtrain
