// Models: an MLP classifier and a byte-level GPT (pre-LN transformer).
#pragma once

#include <memory>
#include <vector>

#include "mixtrain/nn/layers.h"

namespace mixtrain::nn {

/// Linear layers with GELU or ReLU between them: sizes {784, 512, 512, 10}.
class MLP : public Module {
 public:
  MLP(const std::vector<int64_t>& sizes, bool gelu, Rng& rng);
  std::string type() const override { return "MLP"; }
  /// x [B, in] -> logits [B, out]
  Variable forward(const Variable& x) const;
  std::vector<Linear*> layers;
  bool gelu;
};

struct GPTConfig {
  int64_t vocab = 256;  ///< byte-level
  int64_t layers = 6;
  int64_t width = 384;    ///< C
  int64_t heads = 6;      ///< H; head size D = C / H
  int64_t context = 256;  ///< T max
  float dropout = 0.0f;
};

/// Causal self-attention: qkv projection, per-head causal SDPA, output projection.
class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const GPTConfig& cfg, Rng& rng);
  std::string type() const override { return "CausalSelfAttention"; }
  /// x [B, T, C] -> [B, T, C]
  Variable forward(const Variable& x) const;
  Linear& qkv;
  Linear& proj;
  int64_t heads;
};

/// Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x)) with a 4C GELU MLP.
class Block : public Module {
 public:
  Block(const GPTConfig& cfg, Rng& rng);
  std::string type() const override { return "Block"; }
  /// Recomputed in backward when set_checkpoint(true) (nn/checkpoint.h).
  Variable forward(const Variable& x, Rng& dropout_rng) const;
  LayerNorm& ln1;
  CausalSelfAttention& attn;
  LayerNorm& ln2;
  Linear& fc;
  Linear& fc_proj;
  float dropout;
  /// The MLP's GELU output (4C, its largest activation) is not kept but computed again in
  /// backward (Linear::forward_gelu): one GELU more per step for 4C·T·B values less held.
  bool recompute_gelu = false;

 private:
  Variable forward_body(const Variable& x, Rng& dropout_rng) const;
};

/// GPT language model. GPT-2 initialisation: normal(0, 0.02), residual projections scaled by
/// 1/sqrt(2·layers).
class GPT : public Module {
 public:
  GPT(const GPTConfig& cfg, Rng& rng);
  std::string type() const override { return "GPT"; }
  /// ids [B, T] (i64) -> logits [B, T, V]
  Variable forward(const Variable& ids, Rng& dropout_rng) const;
  /// Activation checkpointing of the blocks: every = 0 none, 1 every block, N blocks 0, N,
  /// 2N, ... (nn::parse_activation_checkpointing reads the CLI's none|gelu|blocks|every:N).
  void set_checkpoint_every(int64_t every);
  /// Every block's MLP computes its GELU again in backward instead of keeping it
  /// (Block::recompute_gelu; the CLI's --checkpoint-activations gelu).
  void set_recompute_gelu(bool on);
  GPTConfig cfg;
  Embedding& tok;
  Embedding& pos;
  std::vector<Block*> blocks;
  LayerNorm& ln_f;
  Linear& head;
};

}  // namespace mixtrain::nn
