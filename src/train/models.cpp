// The model registry, its two built-ins (the MLP and the GPT, sized from the data), and the
// losses a run can score with.
#include <fmt/format.h>
#include <algorithm>
#include <mutex>

#include "mixtrain/error.h"
#include "mixtrain/nn/checkpoint.h"
#include "mixtrain/nn/models.h"
#include "mixtrain/ops.h"
#include "mixtrain/train/model.h"

namespace mixtrain::train {

const char* loss_name(Loss l) {
  switch (l) {
    case Loss::cross_entropy:
      return "cross-entropy";
    case Loss::mse:
      return "mse";
    case Loss::l1:
      return "l1";
  }
  return "?";
}

Loss resolve_loss(const std::string& name, TargetKind targets) {
  const bool classes = targets != TargetKind::values;
  if (name == "auto") return classes ? Loss::cross_entropy : Loss::mse;
  Loss l;
  if (name == "cross-entropy")
    l = Loss::cross_entropy;
  else if (name == "mse")
    l = Loss::mse;
  else if (name == "l1")
    l = Loss::l1;
  else
    throw ConfigError(
        fmt::format("--loss: unknown loss '{}' (auto, cross-entropy, mse or l1)", name));
  if (classes && l != Loss::cross_entropy)
    throw ConfigError(fmt::format(
        "--loss {}: the data's targets are {} (integer indices), which take cross-entropy", name,
        target_kind_name(targets)));
  if (!classes && l == Loss::cross_entropy)
    throw ConfigError(
        "--loss cross-entropy: the data's targets are float values; use mse or l1 (or integer "
        "targets for classes)");
  return l;
}

Variable compute_loss(Loss l, const Variable& outputs, const Variable& targets) {
  switch (l) {
    case Loss::cross_entropy:
      return cross_entropy(outputs, targets);
    case Loss::mse:
      return mse_loss(outputs, targets);
    case Loss::l1:
      return l1_loss(outputs, targets);
  }
  throw ConfigError("unknown loss");
}

namespace {

void require(bool ok, const std::string& model, const DataSource& data, const char* wants) {
  if (!ok)
    throw ConfigError(fmt::format("--model {}: --data {} holds {}; the {} model trains on {}",
                                  model, data.name(), target_kind_name(data.target_kind()), model,
                                  wants));
}

Model make_mlp(const TrainConfig& cfg, const DataSource& data, Rng& init) {
  require(data.target_kind() != TargetKind::next_token, "mlp", data,
          "examples (fashion-mnist, npy:, csv:)");
  if (nn::parse_activation_checkpointing(cfg.checkpoint_activations).any())
    throw ConfigError("--checkpoint-activations: only the gpt model has blocks to checkpoint");
  int64_t in = 1;
  for (int64_t d : data.input_shape()) in *= d;
  std::vector<int64_t> sizes{in};
  sizes.insert(sizes.end(), cfg.hidden.begin(), cfg.hidden.end());
  sizes.push_back(data.output_size());
  Model m = Model::of(std::make_shared<nn::MLP>(sizes, /*gelu=*/false, init));
  m.input = "fc0";                                 // reads the features
  m.head = fmt::format("fc{}", sizes.size() - 2);  // the last layer: the classifier
  return m;
}

Model make_gpt(const TrainConfig& cfg, const DataSource& data, Rng& init) {
  require(data.target_kind() == TargetKind::next_token, "gpt", data,
          "a token stream (text:, tokens:)");
  nn::GPTConfig g;
  g.vocab = data.output_size();
  g.layers = cfg.layers;
  g.width = cfg.width;
  g.heads = cfg.heads;
  g.context = cfg.context;
  g.dropout = static_cast<float>(cfg.dropout);
  auto gpt = std::make_shared<nn::GPT>(g, init);
  const nn::ActivationCheckpointing ac =
      nn::parse_activation_checkpointing(cfg.checkpoint_activations);
  gpt->set_checkpoint_every(ac.every);
  gpt->set_recompute_gelu(ac.gelu);
  Model m = Model::of(gpt);
  m.head = "head";
  return m;
}

struct Registry {
  std::mutex mu;
  std::vector<ModelEntry> entries;
  Registry() {
    entries.push_back({"mlp", "an MLP (ReLU between Linear layers; --hidden) sized from the data",
                       "fashion-mnist", ModelEntry::Takes::examples, &make_mlp});
    entries.push_back({"gpt",
                       "a GPT language model (pre-LN; --layers --width --heads --context) over "
                       "the data's vocabulary",
                       "text:/usr/share/doc/jargon-text/jargon.txt.gz", ModelEntry::Takes::tokens,
                       &make_gpt});
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_model(ModelEntry entry) {
  if (entry.name.empty() || !entry.make)
    throw ConfigError("register_model: a model needs a name and a factory");
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  for (ModelEntry& e : r.entries)
    if (e.name == entry.name) {
      e = std::move(entry);
      return;
    }
  r.entries.push_back(std::move(entry));
}

const ModelEntry& find_model(const std::string& name) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  std::string names;
  for (const ModelEntry& e : r.entries) {
    if (e.name == name) return e;
    names += (names.empty() ? "" : ", ") + e.name;
  }
  throw ConfigError(fmt::format("--model: unknown model '{}' (registered: {})", name, names));
}

std::vector<ModelEntry> registered_models() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  return r.entries;
}

}  // namespace mixtrain::train
