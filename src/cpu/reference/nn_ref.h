// Scalar reference implementations of the neural-network ops (the oracle every backend's kernels
// are tested against, tests/test_backend_ops.cpp): plain loops over fp32 arrays, no SIMD, no
// threads.
// Sums accumulate in double so that the oracle's own error is far below the fast path's.
// Layouts are row-major; letters as in tensor.h (N rows, C/V row length, B H T D attention).
#pragma once

#include <cstdint>
#include <vector>

namespace mixtrain::ref {

/// out[n, :] = table[ids[n], :] for n < N; table [V, C].
void embedding(const std::vector<int64_t>& ids, const float* table, int64_t V, int64_t C,
               float* out);
/// dtable[V, C] = sum over n with ids[n] == v of dout[n, :] (dtable zeroed here).
void embedding_backward(const std::vector<int64_t>& ids, const float* dout, int64_t V, int64_t C,
                        float* dtable);

/// Layer norm of N rows of length C; mean and rstd (1/sqrt(var + eps)) out per row.
void layer_norm(const float* x, const float* w, const float* b, int64_t N, int64_t C, float eps,
                float* y, float* mean, float* rstd);
/// Gradients of layer norm (dx [N, C], dw [C], db [C]) from dy, recomputing the statistics.
void layer_norm_backward(const float* x, const float* w, const float* dy, int64_t N, int64_t C,
                         float eps, float* dx, float* dw, float* db);

/// Softmax / log-softmax of N contiguous rows of length C.
void softmax(const float* x, int64_t N, int64_t C, float* y);
void log_softmax(const float* x, int64_t N, int64_t C, float* y);
/// dx from dy and the forward output y: softmax y*(dy - sum(dy*y)); log-softmax
/// dy - exp(y)*sum(dy).
void softmax_backward(const float* y, const float* dy, int64_t N, int64_t C, float* dx);
void log_softmax_backward(const float* y, const float* dy, int64_t N, int64_t C, float* dx);

/// Mean NLL over rows whose target is not ignore_index (0 if none); dlogits (optional, may be
/// null) is the gradient of that mean times `gscale`.
float cross_entropy(const float* logits, const std::vector<int64_t>& targets, int64_t N, int64_t V,
                    int64_t ignore_index, float gscale = 1.0f, float* dlogits = nullptr);

/// Attention over [B, H, T?, D] arrays, materialising the whole score matrix (the oracle).
void attention(const float* q, const float* k, const float* v, int64_t B, int64_t H, int64_t Tq,
               int64_t Tk, int64_t D, bool causal, float scale, float* out);
void attention_backward(const float* q, const float* k, const float* v, const float* dout,
                        int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal,
                        float scale, float* dq, float* dk, float* dv);

}  // namespace mixtrain::ref
