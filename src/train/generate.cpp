// Generation from a GPT run (see generate.h): no KV cache, each token a forward over the
// window of the last `context` tokens (what a model of this size needs; clarity over speed).
#include "mixtrain/train/generate.h"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "mixtrain/amp/policy.h"
#include "mixtrain/io/safetensors.h"
#include "mixtrain/nn/models.h"
#include "mixtrain/ops.h"
#include "mixtrain/train/trainer.h"
#include "train/checkpoint.h"
#include "train/task.h"

namespace mixtrain::train {

namespace {

void check_options(const GenerateOptions& o) {
  if (o.tokens < 1) throw ConfigError(fmt::format("--tokens: must be positive, got {}", o.tokens));
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    throw ConfigError(fmt::format("--temperature: must be >= 0, got {}", o.temperature));
  if (o.top_k < 0) throw ConfigError(fmt::format("--top-k: must be >= 0, got {}", o.top_k));
}

// The next token from the last position's logits: greedy at temperature 0, else a draw from
// softmax(logits / T) over the top k (in double: a bf16 run's logits are already rounded).
int64_t pick(std::vector<float> logits, const GenerateOptions& o, Rng& rng) {
  const int64_t v = static_cast<int64_t>(logits.size());
  std::vector<int64_t> order(static_cast<size_t>(v));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  if (o.temperature == 0) return order[0];
  const int64_t k = o.top_k > 0 ? std::min(o.top_k, v) : v;
  std::vector<double> p(static_cast<size_t>(k));
  const double top = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += p[i] = std::exp((logits[order[i]] - top) / o.temperature);
  double u = static_cast<double>(rng.uniform()) * sum;
  for (int64_t i = 0; i < k; ++i)
    if ((u -= p[i]) < 0) return order[i];
  return order[k - 1];
}

}  // namespace

Generated generate(const std::string& run_dir, const GenerateOptions& o) {
  check_options(o);
  const TrainConfig cfg = load_run_config(run_dir);
  if (cfg.model != "gpt")
    throw ConfigError(fmt::format(
        "generate: {} is a run of the {} model; generation needs a gpt run", run_dir, cfg.model));
  const bool bytes = cfg.data.rfind("text:", 0) == 0;
  std::vector<int64_t> ids = o.prompt_tokens;
  if (bytes) {
    if (!ids.empty())
      throw ConfigError(
          "generate: --prompt-tokens is for token runs; this run reads bytes "
          "(text:), so give --prompt");
    for (unsigned char c : o.prompt) ids.push_back(c);
  } else if (!o.prompt.empty()) {
    throw ConfigError(fmt::format(
        "generate: {} trained on token ids ({}), which mixtrain cannot encode from text; give "
        "--prompt-tokens ID,ID,...",
        run_dir, cfg.data));
  }
  if (ids.empty()) throw ConfigError("generate: the prompt is empty");

  // The newest checkpoint that reads whole; the vocabulary is its token table's rows.
  Generated out;
  out.bytes = bytes;
  std::optional<std::map<std::string, Tensor>> file;
  auto get = [&](const std::string& n) -> const Tensor& {
    auto it = file->find(n);
    if (it == file->end())
      throw IOError(fmt::format("{}: holds no tensor '{}'", out.checkpoint, n));
    return it->second;
  };
  for (const auto& f : list_checkpoints(run_dir)) {
    try {
      out.checkpoint = f.string();
      file.emplace();
      for (auto& [n, t] : read_checkpoint(f, "param.").tensors) (*file)[n] = t;
      const Tensor& tok = get("param.tok.weight");
      if (tok.dim() != 2 || tok.shape()[1] != cfg.width)
        throw IOError(fmt::format("{}: param.tok.weight is {}, not [vocab, {}]", f.string(),
                                  shape_str(tok.shape()), cfg.width));
      break;
    } catch (const Error& e) {
      file.reset();
      out.checkpoint.clear();
      out.warnings.push_back(fmt::format("skipping unreadable checkpoint: {}", e.what()));
    }
  }
  if (!file) throw IOError(fmt::format("generate: {} holds no readable checkpoint", run_dir));
  nn::GPTConfig g;
  g.vocab = get("param.tok.weight").shape()[0];
  g.layers = cfg.layers;
  g.width = cfg.width;
  g.heads = cfg.heads;
  g.context = cfg.context;
  for (int64_t id : ids)
    if (id < 0 || id >= g.vocab)
      throw ConfigError(
          fmt::format("generate: prompt token {} is outside the vocabulary [0, {})", id, g.vocab));
  Rng init(0);
  nn::GPT model(g, init);
  // The checkpoint's weights are fp32 masters, or bf16 ones (master-free and split16 modes).
  for (auto& [name, p] : model.named_parameters()) {
    const Tensor& w = get("param." + name);
    if (w.shape() != p->master.shape() || !is_floating(w.dtype()))
      throw IOError(fmt::format("{}: param.{} is {} {}, not a float {} (config.json: {})",
                                out.checkpoint, name, dtype_name(w.dtype()), shape_str(w.shape()),
                                shape_str(p->master.shape()), run_dir));
    p->master.copy_from(w.to(p->master.dtype()));
  }
  // Runs recorded before auto was resolved into config.json pick for the device they run on.
  const Device device = use_device(o.device);
  const amp::Policy policy = amp::Policy::parse(cfg.precision, device, nullptr);
  model.to(device);
  model.set_compute_dtype(policy.compute);
  for (const std::string& name : cfg.fp32_modules)
    if (nn::Module* m = model.find(name)) m->set_compute_override(DType::f32);
  for (nn::Parameter* p : model.parameters()) p->refresh();
  model.eval();
  out.precision = policy.str();

  NoGradGuard no_grad;
  amp::PolicyScope scope(policy);
  Rng rng(o.seed), dropout(0);
  for (int64_t n = 0; n < o.tokens; ++n) {
    const int64_t t = std::min<int64_t>(static_cast<int64_t>(ids.size()), g.context);
    std::vector<int64_t> window(ids.end() - t, ids.end());
    Tensor x = Tensor::empty({1, t}, DType::i64);
    std::copy(window.begin(), window.end(), x.data<int64_t>());
    const Tensor logits = model.forward(Variable(x.to(device)), dropout).data();
    const Tensor last = logits.slice(1, t - 1, t).contiguous().to(DType::f32);
    const int64_t next = pick(last.to_vector(), o, rng);
    ids.push_back(next);
    out.tokens.push_back(next);
    if (bytes) out.text += static_cast<char>(next);
  }
  return out;
}

}  // namespace mixtrain::train
