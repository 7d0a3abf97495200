// The two tasks: an MLP on Fashion-MNIST and a byte-level GPT on a text file.
#include "train/task.h"

#include <fmt/format.h>
#include <cmath>

#include "mixtrain/data/classification.h"
#include "mixtrain/data/fashion_mnist.h"
#include "mixtrain/data/text.h"
#include "mixtrain/nn/checkpoint.h"
#include "mixtrain/nn/models.h"
#include "mixtrain/ops.h"

namespace mixtrain::train {

namespace {

// Distinct streams from one seed: model init, data order, dropout.
constexpr uint64_t kInitStream = 0x1000, kDataStream = 0x2000, kDropoutStream = 0x3000;

std::string u64s(uint64_t v) { return std::to_string(v); }
uint64_t parse_u64(const std::map<std::string, std::string>& m, const std::string& k) {
  auto it = m.find(k);
  if (it == m.end()) throw IOError(fmt::format("checkpoint: task state lacks '{}'", k));
  return std::stoull(it->second);
}

class MlpTask : public Task {
 public:
  MlpTask(const TrainConfig& cfg, const amp::Policy& policy)
      : data_(load_fashion_mnist({})),
        init_rng_(cfg.seed ^ kInitStream),
        model_(sizes(cfg), /*gelu=*/false, init_rng_),
        micro_(cfg.batch / cfg.grad_accum),
        iter_(data_.train, micro_, cfg.seed ^ kDataStream) {
    model_.set_compute_dtype(policy.compute);
  }
  static std::vector<int64_t> sizes(const TrainConfig& cfg) {
    std::vector<int64_t> s{784};
    s.insert(s.end(), cfg.hidden.begin(), cfg.hidden.end());
    s.push_back(10);
    return s;
  }
  nn::Module& module() override { return model_; }
  int64_t steps_per_epoch(int64_t batch) const override {
    return std::max<int64_t>(1, iter_.batches_per_epoch() * micro_ / batch);
  }
  Variable train_loss(int64_t rows) override {
    Batch b = iter_.next();
    Variable logits = model_.forward(Variable(shard_rows(b.features)));
    observe_output(logits);
    return cross_entropy(logits, Variable(shard_rows(b.labels)));
  }
  EvalResult evaluate(const amp::Policy& policy, const TrainConfig&) override {
    NoGradGuard no_grad;
    amp::PolicyScope scope(policy);
    model_.eval();
    const ClassificationData& test = data_.test;
    // 256 rows at a time: with 1000 the evaluation's fp32 rows and (on CPUs without 16-bit
    // GEMMs) widened copies made the run's peak (fp16 default job: peak tensors 73 -> 66 MiB).
    const int64_t n = test.size(), chunk = 256;
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t e = std::min(n, i + chunk);
      const Tensor labels = test.labels.slice(0, i, e).contiguous();
      Variable logits = model_.forward(Variable(test.rows(i, e)));
      loss_sum +=
          static_cast<double>(cross_entropy(logits, Variable(labels)).data().item()) * (e - i);
      const std::vector<float> l = logits.data().to_vector();
      const int64_t* y = labels.data<int64_t>();
      const int64_t k = logits.size(1);
      for (int64_t r = 0; r < e - i; ++r) {
        int64_t best = 0;
        for (int64_t c = 1; c < k; ++c)
          if (l[r * k + c] > l[r * k + best]) best = c;
        correct += best == y[r];
      }
    }
    model_.train();
    return {loss_sum / n, static_cast<double>(correct) / n};
  }
  int64_t items_per_sample() const override { return 1; }
  const char* items_name() const override { return "samples"; }
  bool eval_each_epoch() const override { return true; }
  std::map<std::string, std::string> state() const override { return iter_.state().to_metadata(); }
  void restore(const std::map<std::string, std::string>& m) override {
    iter_.restore(BatchIterator::State::from_metadata(m));
  }

 private:
  FashionMnist data_;
  Rng init_rng_;
  nn::MLP model_;
  int64_t micro_;
  BatchIterator iter_;
};

class GptTask : public Task {
 public:
  GptTask(const TrainConfig& cfg, const amp::Policy& policy)
      : data_(ByteTextData::from_spec(cfg.data)),
        init_rng_(cfg.seed ^ kInitStream),
        model_(gpt_config(cfg, data_), init_rng_),
        context_(cfg.context),
        data_rng_(cfg.seed ^ kDataStream),
        dropout_rng_(cfg.seed ^ kDropoutStream) {
    model_.set_compute_dtype(policy.compute);
    const nn::ActivationCheckpointing ac =
        nn::parse_activation_checkpointing(cfg.checkpoint_activations);
    model_.set_checkpoint_every(ac.every);
    model_.set_recompute_gelu(ac.gelu);
  }
  // Checked before the model is built: its position table has `context` rows, so a context
  // the text cannot fill would otherwise first cost that memory (or the OOM killer's visit).
  static nn::GPTConfig gpt_config(const TrainConfig& cfg, const ByteTextData& data) {
    const int64_t n = data.size(TextSplit::train);
    if (cfg.context >= n)
      throw ConfigError(fmt::format(
          "--context {}: {}'s training split has {} bytes; a window needs context + 1 of them",
          cfg.context, data.name(), n));
    nn::GPTConfig g;
    g.layers = cfg.layers;
    g.width = cfg.width;
    g.heads = cfg.heads;
    g.context = cfg.context;
    g.dropout = static_cast<float>(cfg.dropout);
    return g;
  }
  nn::Module& module() override { return model_; }
  int64_t steps_per_epoch(int64_t batch) const override {
    return std::max<int64_t>(1, data_.size(TextSplit::train) / (batch * context_));
  }
  Variable train_loss(int64_t rows) override {
    TextBatch b = data_.sample(TextSplit::train, rows, context_, data_rng_);
    Variable logits = model_.forward(Variable(shard_rows(b.inputs)), dropout_rng_);
    observe_output(logits);
    return cross_entropy(logits, Variable(shard_rows(b.targets)));
  }
  EvalResult evaluate(const amp::Policy& policy, const TrainConfig& cfg) override {
    NoGradGuard no_grad;
    amp::PolicyScope scope(policy);
    model_.eval();
    const int64_t windows = std::min<int64_t>(data_.num_windows(TextSplit::validation, context_),
                                              cfg.eval_batches * cfg.batch);
    if (windows <= 0)
      throw ConfigError(
          fmt::format("{}: the validation split is shorter than one window of {} bytes",
                      data_.name(), context_ + 1));
    double loss_sum = 0;
    for (int64_t i = 0; i < windows; i += cfg.batch) {
      const int64_t count = std::min(cfg.batch, windows - i);
      TextBatch b = data_.windows(TextSplit::validation, i, count, context_);
      Variable logits = model_.forward(Variable(b.inputs), dropout_rng_);
      loss_sum +=
          static_cast<double>(cross_entropy(logits, Variable(b.targets)).data().item()) * count;
    }
    model_.train();
    return {loss_sum / windows, -1.0};
  }
  int64_t items_per_sample() const override { return context_; }
  const char* items_name() const override { return "tokens"; }
  std::map<std::string, std::string> state() const override {
    return {{"data.rng.seed", u64s(data_rng_.seed)},
            {"data.rng.counter", u64s(data_rng_.counter)},
            {"dropout.rng.seed", u64s(dropout_rng_.seed)},
            {"dropout.rng.counter", u64s(dropout_rng_.counter)}};
  }
  void restore(const std::map<std::string, std::string>& m) override {
    data_rng_ = Rng(parse_u64(m, "data.rng.seed"), parse_u64(m, "data.rng.counter"));
    dropout_rng_ = Rng(parse_u64(m, "dropout.rng.seed"), parse_u64(m, "dropout.rng.counter"));
  }

 private:
  ByteTextData data_;
  Rng init_rng_;
  nn::GPT model_;
  int64_t context_;
  Rng data_rng_, dropout_rng_;
};

}  // namespace

void Task::observe_output(const Variable& out) {
  if (!track_output_max) return;
  for (float v : out.data().to_vector())
    output_max_abs_ = std::max<double>(output_max_abs_, std::fabs(v));
}

Tensor Task::shard_rows(const Tensor& t) const {
  if (shard_count == 1) return t;
  const int64_t n = t.shape()[0];
  return t.slice(0, n * shard_rank / shard_count, n * (shard_rank + 1) / shard_count).contiguous();
}

std::unique_ptr<Task> make_task(const TrainConfig& cfg, const amp::Policy& policy) {
  if (cfg.model == "mlp") return std::make_unique<MlpTask>(cfg, policy);
  return std::make_unique<GptTask>(cfg, policy);
}

}  // namespace mixtrain::train
