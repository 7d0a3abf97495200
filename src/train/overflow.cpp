// fp16 forward-overflow diagnosis (see overflow.h).
#include "train/overflow.h"

#include <fmt/format.h>

#include <cmath>
#include <unordered_set>
#include <vector>

namespace mixtrain::train {

namespace {

struct Scan {
  int64_t inf = 0, nan = 0, n = 0;
  double max_finite = 0;
  bool finite() const { return inf == 0 && nan == 0; }
};

Scan scan(const Tensor& t) {
  Scan s;
  if (!t.defined() || !is_floating(t.dtype())) return s;
  for (float v : t.to_vector()) {  // error path only: a copy is fine
    ++s.n;
    if (std::isnan(v))
      ++s.nan;
    else if (std::isinf(v))
      ++s.inf;
    else
      s.max_finite = std::max<double>(s.max_finite, std::fabs(v));
  }
  return s;
}

}  // namespace

std::string find_fp16_forward_overflow(
    const Variable& loss, const std::map<const VariableImpl*, std::string>& param_names) {
  if (!loss.defined()) return "";
  // Every op output on the tape, producers before consumers (post-order DFS, iterative: a deep
  // model's tape would overflow the call stack). The trainer runs fp16 forwards under a
  // KeepActivationsGuard, so every output still holds its data.
  std::vector<const VariableImpl*> order;
  std::unordered_set<const VariableImpl*> seen;
  std::vector<std::pair<const VariableImpl*, size_t>> stack{{loss.impl(), 0}};
  seen.insert(loss.impl());
  while (!stack.empty()) {
    auto& [v, next] = stack.back();
    const auto& fn = v->grad_fn;
    if (fn && next < fn->inputs.size()) {
      const VariableImpl* in = fn->inputs[next++].get();
      if (in && seen.insert(in).second) stack.emplace_back(in, 0);
      continue;
    }
    order.push_back(v);
    stack.pop_back();
  }
  for (const VariableImpl* v : order) {
    if (!v->grad_fn || !v->data.defined() || v->data.dtype() != DType::f16) continue;
    const Scan out = scan(v->data);
    if (out.inf == 0) continue;  // overflow shows as +-Inf in an fp16 output
    bool inputs_finite = true;
    double in_max = 0;
    std::vector<std::string> params;
    for (const auto& in : v->grad_fn->inputs) {
      if (!in || !in->data.defined()) continue;
      const Scan s = scan(in->data);
      inputs_finite = inputs_finite && s.finite();
      in_max = std::max(in_max, s.max_finite);
      auto it = param_names.find(in.get());
      if (it != param_names.end()) params.push_back(it->second);
    }
    if (!inputs_finite) continue;  // not the origin: it inherited a non-finite input
    std::string reads;
    for (const auto& p : params) reads += (reads.empty() ? "" : ", ") + p;
    return fmt::format(
        "op '{}'{} produced an fp16 output {} with {} of {} values beyond fp16's maximum 65504 "
        "(largest finite |x| {:.4g}; its inputs, all finite, reach |x| {:.4g})",
        v->grad_fn->op, reads.empty() ? "" : " (reading " + reads + ")", shape_str(v->data.shape()),
        out.inf, out.n, out.max_finite, in_max);
  }
  return "";
}

}  // namespace mixtrain::train
