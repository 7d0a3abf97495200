// Sharded checkpoints, the data-parallel side (see data_parallel.h): a rank's pieces under
// checkpoint names, and loading them back. Everything goes through the pieces (shard_pieces_,
// shard_), never through a contiguous flat range, so any ZeRO stage's layout works.
#include <fmt/format.h>

#include "dist/data_parallel.h"
#include "mixtrain/error.h"

namespace mixtrain::dist {

namespace {

// The optimizer tensors of parameter `name`: "optim.<name>.<buf>" (buffer names hold no dot,
// so "optim.a.b.exp_avg" belongs to "a.b", not to "a").
bool state_of(const std::string& tensor, const std::string& name) {
  const std::string prefix = "optim." + name + ".";
  return tensor.size() > prefix.size() && tensor.compare(0, prefix.size(), prefix) == 0 &&
         tensor.find('.', prefix.size()) == std::string::npos;
}

}  // namespace

std::vector<DataParallel::StatePiece> DataParallel::state_pieces(
    const optim::Optimizer& opt) const {
  if (!opt_.zero) throw Error("DataParallel::state_pieces: only with ZeRO");
  const auto state = opt.state_tensors();
  std::vector<StatePiece> out;
  for (size_t s = 0; s < shard_.size(); ++s) {
    StatePiece sp;
    sp.param = shard_[s].name;
    sp.begin = shard_pieces_[s].begin;
    sp.end = shard_pieces_[s].end;
    sp.tensors.push_back("param." + sp.param);
    for (const auto& [n, t] : state)
      if (state_of(n, sp.param)) sp.tensors.push_back(n);
    out.push_back(std::move(sp));
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> DataParallel::shard_state(
    const optim::Optimizer& opt) const {
  if (!opt_.zero) throw Error("DataParallel::shard_state: only with ZeRO");
  const auto state = opt.state_tensors();
  std::vector<std::pair<std::string, Tensor>> out, scalars;
  for (size_t s = 0; s < shard_.size(); ++s) {
    // (fp32 compute: the master is a view of the weight, the same fp32 values.)
    out.emplace_back("param." + shard_[s].name, shard_[s].master.view({-1}));
    for (const auto& [n, t] : state)
      if (state_of(n, shard_[s].name)) out.emplace_back(n, t.view({-1}));
  }
  for (const auto& [n, t] : state)
    if (n == "optim.step" || n == "optim.rng_step") out.emplace_back(n, t);
  return out;
}

void DataParallel::load_shard_state(optim::Optimizer& opt,
                                    const std::vector<std::pair<std::string, Tensor>>& pieces,
                                    const std::map<std::string, Tensor>& full) {
  if (!opt_.zero) throw Error("DataParallel::load_shard_state: only with ZeRO");
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : pieces) by_name[n] = &t;
  auto piece = [&](const std::string& n, int64_t len) -> const Tensor& {
    auto it = by_name.find(n);
    if (it == by_name.end())
      throw IOError(fmt::format("ZeRO load: this rank's tensor '{}' is missing", n));
    const Tensor& t = *it->second;
    if (t.dtype() != DType::f32 || t.numel() != len)
      throw ShapeError(
          fmt::format("ZeRO load: tensor '{}' is {} (expected f32 [{}])", n, t.str(), len));
    return t;
  };
  // Validate everything first: the masters of the pieces, the full masters when the weights
  // are written from them, and (through Optimizer::load_state, which validates before it
  // copies) the moments and counters.
  std::vector<Tensor> masters;
  for (size_t s = 0; s < shard_.size(); ++s)
    masters.push_back(piece("param." + shard_[s].name, shard_[s].master.numel()));
  std::vector<Tensor> weights;
  if (full_weights_resident())
    for (auto* p : params_) {
      auto it = full.find(p->name);
      if (it == full.end())
        throw IOError(fmt::format("ZeRO load: the full master of '{}' is missing", p->name));
      if (it->second.dtype() != DType::f32 || it->second.numel() != p->numel())
        throw ShapeError(fmt::format("ZeRO load: full master of '{}' is {} (expected f32 {})",
                                     p->name, it->second.str(), shape_str(p->weight.shape())));
      weights.push_back(it->second.contiguous().view(p->weight.shape()));
    }
  for (const auto& [n, t] : opt.state_tensors())
    if (t.dtype() == DType::f32) piece(n, t.numel());
  opt.load_state(pieces);
  for (size_t i = 0; i < weights.size(); ++i) params_[i]->weight.data().copy_from(weights[i]);
  for (size_t s = 0; s < shard_.size(); ++s) {
    Tensor w = shard_[s].weight.data();
    const bool shared = shard_[s].master.storage() == w.storage();  // fp32 compute
    if (shared) {
      if (!full_weights_resident()) w.copy_from(masters[s].view(w.shape()));
      continue;
    }
    shard_[s].master.copy_from(masters[s].view(shard_[s].master.shape()));
    if (!full_weights_resident()) w.copy_from(masters[s].view(w.shape()));  // rounded once
  }
}

}  // namespace mixtrain::dist
