// Neural-network ops on Variables: embedding, layer norm, softmax, log-softmax,
// cross-entropy, causal attention. Included by ops.h. Fused kernels with fp32 internals.
//
// Example (one GPT step, shapes B batch, T time, C width, V vocab, H heads, D head size):
//   Variable h = embedding(ids, tok);                       // ids [B, T] i64 -> [B, T, C]
//   Variable y = layer_norm(h, ln_w, ln_b);                 // fp32 statistics
//   Variable a = scaled_dot_product_attention(q, k, v);     // [B, H, T, D], causal
//   Variable loss = cross_entropy(logits, targets);         // logits [B, T, V] -> fp32 []
#pragma once

#include <optional>

#include "mixtrain/autograd.h"

namespace mixtrain {

/// Table lookup: ids (i32 or i64, any shape [...]) into table [V, C] -> [..., C] in the table's
/// dtype (category same). The table's gradient is scatter-added in fp32 (and handed back in
/// fp32 when the table is a leaf: many small additions into one row must not each round).
/// Throws ShapeError naming the id and V for an id outside [0, V).
Variable embedding(const Variable& ids, const Variable& table);

/// Layer norm over the last dim C: (x - mean) / sqrt(var + eps) * weight + bias, weight and
/// bias [C]. Statistics in fp32 (saved for backward); output in x's dtype (category stats32).
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias,
                    float eps = 1e-5f);

/// Softmax along `axis` (negative counts from the end): max-subtracted, fp32 internals, output
/// in the input's dtype (category stats32).
Variable softmax(const Variable& x, int64_t axis = -1);
/// log(softmax(x)) along `axis`, computed as x - max - log(sum(exp(x - max))) in fp32.
Variable log_softmax(const Variable& x, int64_t axis = -1);

/// Mean negative log-likelihood of `targets` under softmax(logits): logits [..., V] (any
/// compute dtype, read as fp32), targets [...] i32/i64 -> fp32 scalar [] (category fp32).
/// Rows whose target is `ignore_index` do not count; if every row is ignored the loss is 0 and
/// the gradient zero. The logits' gradient comes back in the logits' dtype. Throws ShapeError
/// for a target outside [0, V) that is not ignore_index.
Variable cross_entropy(const Variable& logits, const Variable& targets,
                       int64_t ignore_index = -100);

/// Mean squared error, mean((pred - target)²) over every element, computed in fp32 whatever
/// the inputs' dtypes (category fp32: a 16-bit square and sum would round each term) -> fp32
/// scalar []. pred and target have the same shape (no broadcasting: a [B] against [B, 1] is an
/// error, not a [B, B] loss); the gradient reaches pred in pred's dtype.
Variable mse_loss(const Variable& pred, const Variable& target);
/// Mean absolute error, mean(|pred - target|), as mse_loss.
Variable l1_loss(const Variable& pred, const Variable& target);

/// softmax(q·kᵀ·scale + mask)·v per (batch, head): q [B, H, Tq, D], k and v [B, H, Tk, D] ->
/// [B, H, Tq, D] (category lower: inputs in the compute dtype). fp32 scores and softmax; one
/// row of scores at a time per thread, only the per-row logsumexp saved, scores recomputed in
/// backward (flash-attention style). `causal` masks key j > query i (needs Tq == Tk). `scale`
/// defaults to 1/sqrt(D).
Variable scaled_dot_product_attention(const Variable& q, const Variable& k, const Variable& v,
                                      bool causal = true,
                                      std::optional<float> scale = std::nullopt);

/// Causal (or not) self-attention straight from a packed projection: qkv [B, T, 3·C] holding
/// q | k | v, each C = heads·D with heads contiguous (nanoGPT's c_attn layout) -> [B, T, C]
/// with the heads merged. The same kernels as scaled_dot_product_attention read the heads where
/// they lie and write the output and the [B, T, 3·C] gradient in place: no head-major copies,
/// no split or merge on the tape. scale = 1/sqrt(D).
Variable attention_qkv(const Variable& qkv, int64_t heads, bool causal = true);

}  // namespace mixtrain
