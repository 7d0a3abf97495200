// The task over any model and source: micro-batches, evaluation, checkpointed data state.
#include "train/task.h"

#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mixtrain/data/source.h"
#include "mixtrain/ops.h"

namespace mixtrain::train {

namespace {

std::string u64s(uint64_t v) { return std::to_string(v); }

uint64_t parse_u64(const std::map<std::string, std::string>& m, const std::string& k) {
  auto it = m.find(k);
  if (it == m.end()) throw IOError(fmt::format("checkpoint: task state lacks '{}'", k));
  try {
    size_t used = 0;
    const uint64_t v = std::stoull(it->second, &used);
    if (used == it->second.size()) return v;
  } catch (const std::exception&) {
  }
  throw IOError(fmt::format("checkpoint: task state '{}' is not a number: '{}'", k, it->second));
}

// What a run needs of its source, checked before the model is built: a GPT's position table has
// `context` rows, so a context the text cannot fill would otherwise first cost that memory.
void check_source(const TrainConfig& cfg, const DataSource& data) {
  if (data.target_kind() == TargetKind::next_token) {
    const int64_t n = data.size(Split::train), v = data.size(Split::validation);
    if (cfg.context >= n)
      throw ConfigError(fmt::format(
          "--context {}: {}'s training split has {} tokens; a window needs context + 1 of them",
          cfg.context, data.name(), n));
    if (cfg.context >= v)
      throw ConfigError(fmt::format(
          "--context {}: {}'s validation split has {} tokens; a window needs context + 1 of them",
          cfg.context, data.name(), v));
  } else {
    for (Split s : {Split::train, Split::validation})
      if (data.size(s) < 1)
        throw ConfigError(
            fmt::format("{}: the {} split has no examples", data.name(), split_name(s)));
  }
  // One micro-batch of inputs and targets must fit in memory (before the model's activations,
  // which take many times more): a batch typed with extra digits is refused here, not by the
  // allocator.
  int64_t per_row = 0;
  if (data.target_kind() == TargetKind::next_token) {
    per_row = 2 * 8;  // i64 input and target per position
    if (__builtin_mul_overflow(per_row, cfg.context, &per_row)) per_row = INT64_MAX;
  } else {
    int64_t features = 1;
    for (int64_t d : data.input_shape())
      if (__builtin_mul_overflow(features, d, &features)) features = INT64_MAX / 8;
    per_row =
        features * 4 + (data.target_kind() == TargetKind::classes ? 8 : data.output_size() * 4);
  }
  const int64_t micro = cfg.batch / cfg.grad_accum;
  int64_t bytes = 0;
  const bool overflow = __builtin_mul_overflow(per_row, micro, &bytes);
  const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  if (overflow || static_cast<double>(bytes) > ram)
    throw ConfigError(fmt::format(
        "--batch {}: a micro-batch of {} rows of {} needs {} for its inputs and targets alone, "
        "more than this machine's {:.1f} GiB of memory; lower --batch{}",
        cfg.batch, micro, data.name(),
        overflow ? std::string("more than 2^63 bytes")
                 : fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (1 << 30)),
        ram / (1 << 30), data.target_kind() == TargetKind::next_token ? " or --context" : ""));
}

}  // namespace

Device use_device(const std::string& spec) {
  DeviceSpec d;
  try {
    d = parse_device_spec(spec);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("--device: {}", e.what()));
  }
  if (d.device == Device::cpu) return Device::cpu;
  try {
    select_device(d.device, d.index);
  } catch (const BackendError& e) {
    std::string why = e.what();
    if (why.rfind("cuda: ", 0) == 0) why = why.substr(6);
    throw BackendError(fmt::format("--device {}: {}", spec, why));
  }
  return d.device;
}

Task::Task(Model model, std::shared_ptr<DataSource> data, Loss loss, const TrainConfig& cfg)
    : model_(std::move(model)),
      data_(std::move(data)),
      loss_(loss),
      micro_(cfg.batch / cfg.grad_accum),
      context_(cfg.context),
      data_rng_(cfg.seed ^ kDataStream),
      dropout_rng_(cfg.seed ^ kDropoutStream) {
  if (!model_.module || !model_.forward)
    throw ConfigError("Trainer: the model has no module or no forward function");
  check_source(cfg, *data_);
  // The model is built on the host (its initialisation draws there, so every device starts
  // from the same weights) and moved; each batch is uploaded as it is drawn.
  device_ = use_device(cfg.device);
  if (device_ != Device::cpu) model_.module->to(device_);
  // Examples are drawn in shuffled epochs of micro-batches (the data order's seed is the data
  // stream's, so it does not depend on the model's initialisation).
  if (!tokens()) sampler_.emplace(data_->size(Split::train), micro_, cfg.seed ^ kDataStream);
}

std::vector<std::string> Task::bf16_under_fp8(const std::vector<std::string>& asked) {
  std::vector<std::string> keep;
  for (const std::string& name : asked.empty() ? std::vector<std::string>{"auto"} : asked) {
    if (name == "none" && asked.size() > 1)
      throw ConfigError("--bf16-modules: none (every linear in fp8) cannot go with other names");
    if (name == "auto") {
      for (const std::string& edge : {model_.input, model_.head})
        if (!edge.empty()) keep.push_back(edge);
    } else if (name != "none") {
      keep.push_back(name);
    }
  }
  for (const std::string& name : keep)
    if (!model_.module->find(name)) {
      std::string names;
      for (const auto& n : model_.module->module_names()) names += (names.empty() ? "" : ", ") + n;
      throw ConfigError(
          fmt::format("--bf16-modules: the model has no module '{}' (it has: {})", name, names));
    }
  return keep;
}

int64_t Task::steps_per_epoch(int64_t batch) const {
  if (tokens()) return std::max<int64_t>(1, data_->size(Split::train) / (batch * context_));
  return std::max<int64_t>(1, sampler_->batches_per_epoch() * micro_ / batch);
}

Tensor Task::shard_rows(const Tensor& t) const {
  if (shard_count == 1) return t;
  const int64_t n = t.shape()[0];
  return t.slice(0, n * shard_rank / shard_count, n * (shard_rank + 1) / shard_count).contiguous();
}

Variable Task::train_loss(int64_t rows) {
  Examples b;
  if (tokens()) {
    // Window starts in [0, n - T - 1]: n - T choices, one draw per row in row order.
    const uint64_t choices = static_cast<uint64_t>(data_->size(Split::train) - context_);
    std::vector<int64_t> starts(static_cast<size_t>(rows));
    for (auto& s : starts) s = static_cast<int64_t>(data_rng_.below(choices));
    b = data_->windows(Split::train, starts, context_);
  } else {
    b = data_->rows(Split::train, sampler_->next());
  }
  Variable out = model_.forward(Variable(shard_rows(b.inputs).to(device_)), dropout_rng_);
  if (track_output_max)
    for (float v : out.data().to_vector())
      output_max_abs_ = std::max<double>(output_max_abs_, std::fabs(v));
  return compute_loss(loss_, out, Variable(shard_rows(b.targets).to(device_)));
}

EvalResult Task::evaluate(const amp::Policy& policy, const TrainConfig& cfg) {
  NoGradGuard no_grad;
  amp::PolicyScope scope(policy);
  model_.module->eval();
  double loss_sum = 0;
  int64_t correct = 0, n = 0;
  const bool classes = data_->target_kind() == TargetKind::classes;
  if (tokens()) {
    // Non-overlapping windows from the split's start: window k covers [k*T, k*T + T + 1).
    const int64_t total = (data_->size(Split::validation) - 1) / context_;
    n = std::min<int64_t>(total, cfg.eval_batches * cfg.batch);
    for (int64_t i = 0; i < n; i += cfg.batch) {
      const int64_t count = std::min(cfg.batch, n - i);
      std::vector<int64_t> starts(static_cast<size_t>(count));
      for (int64_t k = 0; k < count; ++k) starts[k] = (i + k) * context_;
      Examples b = data_->windows(Split::validation, starts, context_);
      Variable out = model_.forward(Variable(b.inputs.to(device_)), dropout_rng_);
      loss_sum += static_cast<double>(
                      compute_loss(loss_, out, Variable(b.targets.to(device_))).data().item()) *
                  count;
    }
  } else {
    // 256 rows at a time: with 1000 the evaluation's fp32 rows and (on CPUs without 16-bit
    // GEMMs) widened copies made the run's peak (fp16 default job: peak tensors 73 -> 66 MiB).
    n = data_->size(Split::validation);
    const int64_t chunk = 256;
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t e = std::min(n, i + chunk);
      idx.resize(static_cast<size_t>(e - i));
      for (int64_t r = i; r < e; ++r) idx[r - i] = r;
      Examples b = data_->rows(Split::validation, idx);
      Variable out = model_.forward(Variable(b.inputs.to(device_)), dropout_rng_);
      loss_sum += static_cast<double>(
                      compute_loss(loss_, out, Variable(b.targets.to(device_))).data().item()) *
                  (e - i);
      if (!classes) continue;
      const std::vector<float> l = out.data().to_vector();
      const int64_t* y = b.targets.data<int64_t>();
      const int64_t k = out.data().shape().back();
      for (int64_t r = 0; r < e - i; ++r) {
        int64_t best = 0;
        for (int64_t c = 1; c < k; ++c)
          if (l[r * k + c] > l[r * k + best]) best = c;
        correct += best == y[r];
      }
    }
  }
  model_.module->train();
  return {loss_sum / n, classes ? static_cast<double>(correct) / n : -1.0};
}

std::map<std::string, std::string> Task::state() const {
  std::map<std::string, std::string> m = {{"dropout.rng.seed", u64s(dropout_rng_.seed)},
                                          {"dropout.rng.counter", u64s(dropout_rng_.counter)}};
  if (tokens()) {
    m["data.rng.seed"] = u64s(data_rng_.seed);
    m["data.rng.counter"] = u64s(data_rng_.counter);
  } else {
    m.merge(sampler_->state().to_metadata("data."));
  }
  return m;
}

void Task::restore(const std::map<std::string, std::string>& m) {
  // Checkpoints of examples runs from before the dropout stream was saved have none: nothing
  // drew from it then.
  if (tokens() || m.count("dropout.rng.seed"))
    dropout_rng_ = Rng(parse_u64(m, "dropout.rng.seed"), parse_u64(m, "dropout.rng.counter"));
  if (tokens())
    data_rng_ = Rng(parse_u64(m, "data.rng.seed"), parse_u64(m, "data.rng.counter"));
  else
    sampler_->restore(EpochSampler::State::from_metadata(m, "data."));
}

std::unique_ptr<Task> make_task(const TrainConfig& cfg, const ModelFactory& model,
                                std::shared_ptr<DataSource> data) {
  check_source(cfg, *data);
  const Loss loss = resolve_loss(cfg.loss, data->target_kind());
  Rng init(cfg.seed ^ kInitStream);
  return std::make_unique<Task>(model(cfg, *data, init), std::move(data), loss, cfg);
}

std::unique_ptr<Task> make_task(const TrainConfig& cfg) {
  const ModelEntry& m = find_model(cfg.model);
  DataOptions o;
  o.vocab = cfg.vocab;
  return make_task(cfg, m.make, open_data(cfg.data.empty() ? m.default_data : cfg.data, o));
}

}  // namespace mixtrain::train
