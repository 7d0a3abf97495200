// embedding, forward and backward side by side: a row gather (Backend::embedding) and a
// deterministic fp32 scatter-add (Backend::embedding_backward).
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/ops_nn.h"
#include "ops/ops_common.h"

namespace mixtrain {

using namespace ops_detail;

Variable embedding(const Variable& ids, const Variable& table) {
  constexpr const char* kOp = "embedding";
  check_defined(ids, kOp, "ids");
  check_defined(table, kOp, "table");
  check_index(ids.data(), kOp, "ids");
  check_compute_dtype(table.data(), kOp, "table");
  if (table.dim() != 2)
    throw ShapeError(fmt::format("{}: table {} must be 2-d [V, C]", kOp, table.data().str()));
  Backend& be = backend_of(kOp, {&ids.data(), &table.data()});
  const DType dt = amp::op_dtype(kOp, amp::OpCategory::same, {table.dtype()});
  const Tensor id = ids.data().contiguous();
  const Tensor tab = table.data().contiguous();
  const int64_t V = tab.size(0), C = tab.size(1), N = id.numel();
  const IndexScan scan = be.scan_indices(id, V, std::nullopt);
  if (scan.bad_pos >= 0)
    throw ShapeError(
        fmt::format("{}: id {} at position {} of ids {} is out of range for a "
                    "table of V = {} rows ({})",
                    kOp, scan.bad_value, scan.bad_pos, id.str(), V, tab.str()));
  Shape out_shape = id.shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, dt, tab.device());
  be.embedding(id.view({N}), tab, out.view({N, C}));
  const DType table_dt = table.dtype();
  const bool f32_ok = f32_grad_ok_any_leaf(table);
  return make_op_result(
      out, {ids, table}, kOp, [id, V, C, N, table_dt, f32_ok](const Tensor& g_in) {
        const Tensor g = g_in.contiguous();
        Tensor dtab = Tensor::empty({V, C}, DType::f32, g.device());
        backend_for(g.device()).embedding_backward(id.view({N}), g.view({N, C}), dtab);
        return std::vector<Tensor>{Tensor(), grad_for(dtab, table_dt, f32_ok)};
      });
}

}  // namespace mixtrain
