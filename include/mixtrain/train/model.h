// What the Trainer trains: a Model (a module's parameters and its forward), scored by a Loss
// against a DataSource's targets, and the registry of named models the CLI's --model picks
// from ("mlp", "gpt", and any a program registers).
//
//   auto net = std::make_shared<nn::Sequential>();
//   net->add<nn::Linear>(8, 32, true, rng);
//   net->add<nn::ReLU>();
//   net->add<nn::Linear>(32, 1, true, rng);
//   train::Trainer t(cfg, train::Model::of(net), open_data("npy:x.npy,y.npy"));
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixtrain/autograd.h"
#include "mixtrain/data/source.h"
#include "mixtrain/nn/module.h"
#include "mixtrain/random.h"
#include "mixtrain/train/config.h"

namespace mixtrain::train {

/// How outputs are scored against targets; every loss reduces in fp32 whatever the compute
/// dtype (a bf16 sum of squares keeps 8 bits).
enum class Loss : uint8_t {
  cross_entropy,  ///< logits [..., K] against class indices (i64)
  mse,            ///< mean of (out - target)^2 over every element
  l1,             ///< mean of |out - target|
};
/// "cross-entropy", "mse", "l1".
const char* loss_name(Loss l);
/// The --loss value for a source: "auto" is cross-entropy for classes and tokens, MSE for
/// values; ConfigError for an unknown name or a loss that does not fit the targets (MSE on
/// class indices, cross-entropy on values).
Loss resolve_loss(const std::string& name, TargetKind targets);
/// The loss's value (an fp32 scalar Variable, on the tape).
Variable compute_loss(Loss l, const Variable& outputs, const Variable& targets);

/// A module (its parameters, named) and how it maps a batch's inputs to outputs. inputs: f32
/// [B, ...] for examples, i64 [B, T] for tokens; dropout: the run's dropout stream (saved in
/// checkpoints, so a resumed run draws the masks an uninterrupted one would).
struct Model {
  std::shared_ptr<nn::Module> module;
  std::function<Variable(const Variable& inputs, Rng& dropout)> forward;
  /// The model's edges, by dotted name, if it has them: `input`, the linear that reads the
  /// raw inputs (pixels carry 8 significant bits, E4M3 keeps 4), and `head`, the one that
  /// produces the outputs (a classifier, kept in higher precision by Transformer Engine's
  /// users). `--precision fp8` keeps both in bf16 unless --bf16-modules says otherwise.
  std::string input;
  std::string head;

  /// A Model of any module with `forward(x)` or `forward(x, rng)` (const or not).
  template <class M>
  static Model of(std::shared_ptr<M> m) {
    Model out;
    M* p = m.get();
    if constexpr (requires(Variable x, Rng r) { p->forward(x, r); })
      out.forward = [p](const Variable& x, Rng& r) { return p->forward(x, r); };
    else
      out.forward = [p](const Variable& x, Rng&) { return p->forward(x); };
    out.module = std::move(m);
    return out;
  }
};

/// Builds a model for a run: sizes from the data (input shape, classes or vocabulary) and the
/// config, weights drawn from `init` (seeded from cfg.seed, so the run is reproducible).
using ModelFactory =
    std::function<Model(const TrainConfig& cfg, const DataSource& data, Rng& init)>;

struct ModelEntry {
  std::string name;
  std::string description;   ///< one line, for --help
  std::string default_data;  ///< the --data used when none is given
  /// What data it trains on, checked from the spec before any file is read (the factory
  /// checks the opened source again).
  enum class Takes : uint8_t { examples, tokens, any } takes = Takes::any;
  ModelFactory make;
};

/// Adds (or replaces) a named model; Trainer(cfg) and the CLI's --model find it by name.
void register_model(ModelEntry entry);
/// The entry for a name; ConfigError naming the registered models otherwise.
const ModelEntry& find_model(const std::string& name);
/// Every registered model, the built-ins ("mlp", "gpt") first.
std::vector<ModelEntry> registered_models();

}  // namespace mixtrain::train
