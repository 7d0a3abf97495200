// MLP and GPT forward passes.
#include "mixtrain/nn/models.h"

#include <fmt/format.h>
#include <cmath>

#include "mixtrain/nn/checkpoint.h"
#include "mixtrain/ops.h"

namespace mixtrain::nn {

MLP::MLP(const std::vector<int64_t>& sizes, bool gelu_, Rng& rng) : gelu(gelu_) {
  if (sizes.size() < 2) throw ConfigError("MLP: needs at least an input and an output size");
  for (size_t i = 0; i + 1 < sizes.size(); ++i)
    layers.push_back(&register_module(fmt::format("fc{}", i),
                                      std::make_unique<Linear>(sizes[i], sizes[i + 1], true, rng)));
}

Variable MLP::forward(const Variable& x) const {
  ForwardScope scope(*this);
  Variable h = x;
  for (size_t i = 0; i < layers.size(); ++i) {
    h = layers[i]->forward(h);
    if (i + 1 < layers.size()) h = gelu ? mixtrain::gelu(h) : relu(h);
  }
  return h;
}

CausalSelfAttention::CausalSelfAttention(const GPTConfig& cfg, Rng& rng)
    : qkv(register_module("qkv", std::make_unique<Linear>(cfg.width, 3 * cfg.width, true, rng))),
      proj(register_module("proj", std::make_unique<Linear>(cfg.width, cfg.width, true, rng))),
      heads(cfg.heads) {}

Variable CausalSelfAttention::forward(const Variable& x) const {
  ForwardScope scope(*this);
  return proj.forward(attention_qkv(qkv.forward(x), heads, true));
}

Block::Block(const GPTConfig& cfg, Rng& rng)
    : ln1(register_module("ln1", std::make_unique<LayerNorm>(cfg.width))),
      attn(register_module("attn", std::make_unique<CausalSelfAttention>(cfg, rng))),
      ln2(register_module("ln2", std::make_unique<LayerNorm>(cfg.width))),
      fc(register_module("fc", std::make_unique<Linear>(cfg.width, 4 * cfg.width, true, rng))),
      fc_proj(register_module("fc_proj",
                              std::make_unique<Linear>(4 * cfg.width, cfg.width, true, rng))),
      dropout(cfg.dropout) {}

Variable Block::forward(const Variable& x, Rng& drng) const {
  // The scope is here, not in the body, so the checkpoint's own node is recorded under the
  // block's hooks and precision (the recompute runs the body under the policy saved at entry).
  ForwardScope scope(*this);
  return checkpoint(*this, x, drng,
                    [this](const Variable& v, Rng& r) { return forward_body(v, r); });
}

Variable Block::forward_body(const Variable& x, Rng& drng) const {
  Variable h = add(x, mixtrain::dropout(attn.forward(ln1.forward(x)), dropout, training(), drng));
  const Variable u = fc.forward(ln2.forward(h));
  Variable m = recompute_gelu ? fc_proj.forward_gelu(u) : fc_proj.forward(gelu(u));
  return add(h, mixtrain::dropout(m, dropout, training(), drng));
}

GPT::GPT(const GPTConfig& c, Rng& rng)
    : cfg(c),
      tok(register_module("tok", std::make_unique<Embedding>(c.vocab, c.width, 0.02f, rng))),
      pos(register_module("pos", std::make_unique<Embedding>(c.context, c.width, 0.02f, rng))),
      ln_f(register_module("ln_f", std::make_unique<LayerNorm>(c.width))),
      head(register_module("head", std::make_unique<Linear>(c.width, c.vocab, false, rng))) {
  if (c.width % c.heads != 0)
    throw ConfigError(fmt::format("GPT: width {} is not a multiple of heads {}", c.width, c.heads));
  for (int64_t l = 0; l < c.layers; ++l)
    blocks.push_back(
        &register_module(fmt::format("blocks.{}", l), std::make_unique<Block>(c, rng)));
  // GPT-2 init: normal(0, 0.02) everywhere, residual projections 0.02/sqrt(2L).
  const float resid_std = 0.02f / std::sqrt(2.0f * static_cast<float>(c.layers));
  for (Block* b : blocks) {
    b->attn.qkv.init_normal(0.02f, rng);
    b->attn.proj.init_normal(resid_std, rng);
    b->fc.init_normal(0.02f, rng);
    b->fc_proj.init_normal(resid_std, rng);
  }
  head.init_normal(0.02f, rng);
}

void GPT::set_checkpoint_every(int64_t every) {
  if (every < 0)
    throw ConfigError(fmt::format("GPT: checkpoint every {} blocks (must be >= 0)", every));
  for (size_t l = 0; l < blocks.size(); ++l)
    blocks[l]->set_checkpoint(every > 0 && static_cast<int64_t>(l) % every == 0);
}

void GPT::set_recompute_gelu(bool on) {
  for (Block* b : blocks) b->recompute_gelu = on;
}

Variable GPT::forward(const Variable& ids, Rng& drng) const {
  ForwardScope scope(*this);
  const int64_t B = ids.size(0), T = ids.size(1);
  if (T > cfg.context)
    throw ShapeError(fmt::format("GPT: sequence length {} exceeds the context {}", T, cfg.context));
  Tensor pos_ids = Tensor::empty({T}, DType::i64);
  for (int64_t t = 0; t < T; ++t) pos_ids.data<int64_t>()[t] = t;
  pos_ids = pos_ids.to(ids.data().device());  // beside the token ids (a GPU run uploads them)
  Variable x = add(tok.forward(ids), pos.forward(Variable(pos_ids)));  // [B,T,C] + [T,C]
  (void)B;
  for (Block* b : blocks) x = b->forward(x, drng);
  return head.forward(ln_f.forward(x));
}

}  // namespace mixtrain::nn
