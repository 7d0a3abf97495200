// Differentiable ops on Variables. Each op consults the active precision policy
// (amp/policy.h) through its category, computes with fp32 internals, and records its backward
// (which sits beside the forward in src/ops/). Shapes use B, T, C, V, H, D (see tensor.h).
//
// Example:
//   Variable h = gelu(linear(x, w1, b1));   // x [B, in], w1 [hidden, in] (torch layout)
//   Variable loss = mean(linear(h, w2, b2));
//   loss.backward();
//
// Gradients flow in the dtype of the tensor they belong to, except that a GEMM's gradient for
// a leaf (or for the output of a cast) stays fp32: the fp32 master never sees a bf16-rounded
// weight gradient. Every op throws ShapeError / DTypeError naming itself, the shapes and dtypes.
#pragma once

#include <vector>

#include "mixtrain/autograd.h"
#include "mixtrain/random.h"

namespace mixtrain {

// ---- dtype ----

/// x converted to `dtype` (RNE); the backward converts the gradient back to x's dtype. A cast
/// to x's own dtype returns x itself (free, no tape node).
Variable cast(const Variable& x, DType dtype);

// ---- GEMM (category lower: inputs cast to the policy's compute dtype, fp32 accumulation) ----

/// a [M, K] · b [K, N] -> [M, N]; batched a [Bt, M, K] · b [Bt, K, N] (or a shared 2-d b
/// [K, N]) -> [Bt, M, N].
Variable matmul(const Variable& a, const Variable& b);
/// y = x·wᵀ + b: x [..., in], w [out, in] (torch layout), bias [out] (optional: pass an
/// undefined Variable) -> [..., out].
Variable linear(const Variable& x, const Variable& w, const Variable& bias = Variable());
/// linear(gelu(x), w, bias) that keeps x, not gelu(x), for backward and computes GELU again
/// there (same bits as the two ops): a transformer MLP's largest activation not held.
Variable gelu_linear(const Variable& x, const Variable& w, const Variable& bias = Variable());

// ---- elementwise (binary ops: numpy broadcasting, category promote) ----

Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
/// x + s and x · s in x's dtype (category same).
Variable add(const Variable& x, float s);
Variable mul(const Variable& x, float s);
/// x + b with b [C] broadcast over the last dim C of x (category promote).
Variable bias_add(const Variable& x, const Variable& b);

/// Category same: output in x's dtype, computed in fp32.
Variable relu(const Variable& x);
/// GELU, tanh approximation (torch's approximate='tanh'):
/// 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))).
Variable gelu(const Variable& x);
Variable tanh(const Variable& x);
/// |x|; the gradient is sign(x) (0 at x = 0, as torch).
Variable abs(const Variable& x);
/// Category fp32 (as PyTorch autocast): computed and returned in fp32.
Variable exp(const Variable& x);
Variable log(const Variable& x);

/// Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1-p).
/// The mask is random_bits(rng.seed, c + i) for the n counters c.. reserved from `rng`, so a
/// recompute from the same rng state draws the same mask (and the backward recomputes it
/// instead of storing it). p = 0 or !training returns x itself. Throws ConfigError unless
/// 0 <= p < 1.
Variable dropout(const Variable& x, float p, bool training, Rng& rng);

// ---- reductions (category fp32: fp32 accumulation, blocked/pairwise; fp32 output) ----

/// Sum over `axes` (negative axes count from the end; empty axes: every axis).
Variable sum(const Variable& x, const std::vector<int64_t>& axes, bool keepdim = false);
Variable mean(const Variable& x, const std::vector<int64_t>& axes, bool keepdim = false);
/// Full reductions to an fp32 scalar (shape []).
Variable sum(const Variable& x);
Variable mean(const Variable& x);

// ---- shape (category same; views where the layout allows) ----

/// One extent may be -1. A view of contiguous x; a copy otherwise.
Variable reshape(const Variable& x, const Shape& shape);
/// A strided view with dims d0 and d1 swapped.
Variable transpose(const Variable& x, int64_t d0, int64_t d1);
/// Elements [start, end) along dim (negative indices count from the end); a view.
Variable slice(const Variable& x, int64_t dim, int64_t start, int64_t end);
/// Joins along dim; every other extent must match. Mixed dtypes promote.
Variable concat(const std::vector<Variable>& xs, int64_t dim);

}  // namespace mixtrain

#include "mixtrain/ops_nn.h"
