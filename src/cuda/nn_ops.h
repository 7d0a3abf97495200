// The CUDA backend's neural-network and reduction ops at the level of tensors (nn_ops.cpp):
// each takes Backend's arguments (backend/backend.h has the contracts), allocates its scratch
// as device tensors through the library's allocator, and runs the kernels of nn_kernels.h.
// backend.cpp's CudaBackend forwards its methods here.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "backend/backend.h"

namespace mixtrain::cuda {

void dropout(const Tensor& x, uint64_t seed, uint64_t base, float p, float scale, const Tensor& y);
void sum(const Tensor& x, const std::vector<int64_t>& axes, float scale, const Tensor& out);
void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& y);
void softmax_backward(const Tensor& y, const Tensor& g, int64_t axis, bool log, const Tensor& dx);
IndexScan scan_indices(const Tensor& ids, int64_t n, std::optional<int64_t> ignore);
void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore, int64_t count,
                   const Tensor& lse, const Tensor& loss);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore,
                            int64_t count, const Tensor& lse, const Tensor& g,
                            const Tensor& dlogits);
void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, const Tensor& y,
                const Tensor& mean, const Tensor& rstd);
void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& g, const Tensor& mean,
                         const Tensor& rstd, const Tensor& dx, const Tensor& dw, const Tensor& db);
void embedding(const Tensor& ids, const Tensor& table, const Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& g, const Tensor& dtable);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale,
               const Tensor& o, const Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                        const Tensor& lse, bool causal, float scale, const Tensor& dq,
                        const Tensor& dk, const Tensor& dv);

}  // namespace mixtrain::cuda
