// Data-parallel gradient reduction and ZeRO-1 (see data_parallel.h).
//
// One scheme serves both: the flat gradient (all parameters in order) is cut into one region
// per rank; an alltoallv sends every rank its region in the wire dtype (reduce-scatter) and it
// sums the N copies in fp32, in rank order. Without ZeRO the summed regions go back out in the
// wire dtype (all-gather), so every rank unpacks the same bits. With ZeRO the region is the
// rank's shard: it keeps the fp32 sum, updates its fp32 master and moments, and all-gathers
// the compute-dtype weights. Bytes sent per rank per step: 2 (N-1)/N x (gradient elements x
// wire size) for the all-reduce; (N-1)/N x (gradients x wire + weights x compute size) for
// ZeRO-1 — bf16 on the wire halves the gradient part.
#include "dist/data_parallel.h"

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "mixtrain/dist/comm.h"
#include "mixtrain/error.h"
#include "mixtrain/optim/kernels.h"

namespace mixtrain::dist {

namespace {

constexpr const char* kProxyName = "__zero1_proxy";
constexpr int64_t kChunk = 1 << 16;  // elements per OpenMP work item in the shard update

// Adds the scope's wall time to a counter.
struct Timed {
  double& acc;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  ~Timed() { acc += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
};

float* f32_data(const Tensor& t, const std::string& what) {
  if (t.dtype() != DType::f32 || !t.is_contiguous())
    throw DTypeError(
        fmt::format("data parallel: {} is {} (expected contiguous f32)", what, t.str()));
  return t.data<float>();
}

std::vector<std::string> slot_names(const std::string& kind) {
  if (kind == "adamw" || kind == "adam") return {"exp_avg", "exp_avg_sq", ""};
  if (kind == "sgd") return {"momentum_buffer", "", ""};
  if (kind == "rmsprop") return {"square_avg", "grad_avg", "momentum_buffer"};
  throw ConfigError(fmt::format("--optimizer '{}': expected adamw, adam, sgd or rmsprop", kind));
}

}  // namespace

DataParallel::DataParallel(std::vector<nn::Parameter*> params, DataParallelOptions opt)
    : params_(std::move(params)), opt_(std::move(opt)), rank_(dist::rank()), size_(dist::size()) {
  if (opt_.wire != DType::f32 && opt_.wire != DType::bf16 && opt_.wire != DType::f16)
    throw ConfigError(fmt::format("--allreduce: wire dtype {} (expected f32, bf16 or f16)",
                                  dtype_name(opt_.wire)));
  flat_begin_.push_back(0);
  for (auto* p : params_) flat_begin_.push_back(flat_begin_.back() + p->numel());
  had_grad_.assign(params_.size(), 0);
  const int64_t total = flat_begin_.back();
  for (int j = 0; j <= size_; ++j) shard_lo_.push_back(total * j / size_);
  lo_ = shard_lo_[rank_];
  hi_ = shard_lo_[rank_ + 1];
  if (opt_.zero) {
    master_.resize(hi_ - lo_);
    for (const Piece& pc : pieces_in(lo_, hi_)) {
      const nn::Parameter& p = *params_[pc.param];
      const float* m = f32_data(p.master, fmt::format("parameter '{}' master (--zero 1)", p.name));
      std::copy(m + pc.begin, m + pc.end, master_.data() + (pc.flat - lo_));
    }
    grad_.assign(hi_ - lo_, 0.0f);
  }
  if (size_ > 1) set_run_in_flight(true);
}

DataParallel::~DataParallel() {
  // An exception on its way out keeps the flag: exiting then aborts the whole job.
  if (std::uncaught_exceptions() == 0) set_run_in_flight(false);
}

std::vector<DataParallel::Piece> DataParallel::pieces_in(int64_t a, int64_t b) const {
  std::vector<Piece> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t s = std::max(a, flat_begin_[i]), e = std::min(b, flat_begin_[i + 1]);
    if (s < e) out.push_back({i, s - flat_begin_[i], e - flat_begin_[i], s});
  }
  return out;
}

void DataParallel::pack_grads(int64_t a, int64_t b, float* dst) const {
  for (const Piece& pc : pieces_in(a, b)) {
    float* d = dst + (pc.flat - a);
    const nn::Parameter& p = *params_[pc.param];
    if (!had_grad_[pc.param]) {
      std::fill(d, d + (pc.end - pc.begin), 0.0f);
      continue;
    }
    const Tensor& g = p.grad();
    const char* src = static_cast<const char*>(g.raw_data()) + pc.begin * g.element_size();
    convert(src, g.dtype(), d, DType::f32, static_cast<size_t>(pc.end - pc.begin));
  }
}

// Reduce-scatter then all-gather of flat elements [a, b): see the file comment.
void DataParallel::allreduce_bucket(int64_t a, int64_t b) {
  const int64_t n = b - a, ws = static_cast<int64_t>(dtype_size(opt_.wire));
  std::vector<int64_t> edge(size_ + 1);
  for (int j = 0; j <= size_; ++j) edge[j] = a + n * j / size_;
  std::vector<float> f(n);
  pack_grads(a, b, f.data());
  std::vector<char> wire(n * ws);
  convert(f.data(), DType::f32, wire.data(), opt_.wire, n);
  const int64_t len = edge[rank_ + 1] - edge[rank_];
  std::vector<int64_t> sb(size_), so(size_), rb(size_), ro(size_);
  for (int j = 0; j < size_; ++j) {
    sb[j] = (edge[j + 1] - edge[j]) * ws;
    so[j] = (edge[j] - a) * ws;
    rb[j] = len * ws;
    ro[j] = j * len * ws;
  }
  std::vector<char> recv(size_ * len * ws);
  alltoallv(wire.data(), sb.data(), so.data(), recv.data(), rb.data(), ro.data());
  // fp32 sum on arrival, in rank order (the same order whichever rank owns the region).
  std::vector<float> acc(len), tmp(len);
  for (int i = 0; i < size_; ++i) {
    convert(recv.data() + ro[i], opt_.wire, i == 0 ? acc.data() : tmp.data(), DType::f32, len);
    if (i > 0)
      for (int64_t k = 0; k < len; ++k) acc[k] += tmp[k];
  }
  convert(acc.data(), DType::f32, wire.data() + so[rank_], opt_.wire, len);
  allgatherv_inplace(wire.data(), sb.data(), so.data());
  convert(wire.data(), opt_.wire, f.data(), DType::f32, n);
  for (const Piece& pc : pieces_in(a, b)) {
    if (!had_grad_[pc.param]) continue;
    const Tensor& g = params_[pc.param]->grad();
    char* dst = static_cast<char*>(g.raw_data()) + pc.begin * g.element_size();
    convert(f.data() + (pc.flat - a), DType::f32, dst, g.dtype(), pc.end - pc.begin);
  }
}

void DataParallel::reduce_gradients(float scale) {
  Timed timed{comm_seconds_};
  ++comm_steps_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = params_[i]->grad();
    had_grad_[i] = g.defined();
    if (g.defined() && !g.is_contiguous())
      throw ShapeError(fmt::format("data parallel: gradient of '{}' is not contiguous ({})",
                                   params_[i]->name, g.str()));
  }
  const int64_t total = flat_begin_.back();
  if (!opt_.zero) {
    if (size_ == 1) return;
    const int64_t bucket =
        std::max<int64_t>(size_, opt_.bucket_bytes / static_cast<int64_t>(dtype_size(opt_.wire)));
    for (int64_t a = 0; a < total; a += bucket) allreduce_bucket(a, std::min(total, a + bucket));
    return;
  }
  // ZeRO-1: reduce-scatter into this rank's fp32 shard gradient.
  const int64_t ws = static_cast<int64_t>(dtype_size(opt_.wire)), len = hi_ - lo_;
  std::vector<float> f(total);
  pack_grads(0, total, f.data());
  std::vector<char> wire(total * ws);
  convert(f.data(), DType::f32, wire.data(), opt_.wire, total);
  f = {};
  std::vector<int64_t> sb(size_), so(size_), rb(size_), ro(size_);
  for (int j = 0; j < size_; ++j) {
    sb[j] = (shard_lo_[j + 1] - shard_lo_[j]) * ws;
    so[j] = shard_lo_[j] * ws;
    rb[j] = len * ws;
    ro[j] = j * len * ws;
  }
  std::vector<char> recv(size_ * len * ws);
  alltoallv(wire.data(), sb.data(), so.data(), recv.data(), rb.data(), ro.data());
  std::vector<float> tmp(len);
  for (int i = 0; i < size_; ++i) {
    convert(recv.data() + ro[i], opt_.wire, i == 0 ? grad_.data() : tmp.data(), DType::f32, len);
    if (i > 0)
      for (int64_t k = 0; k < len; ++k) grad_[k] += tmp[k];
  }
  // Global verdict: sum of squares, Inf/NaN, and the first offending element (by flat index,
  // so "first parameter in order" means the same as in a single-process run).
  double sumsq = 0;
  int64_t first_bad = -1;
  bool first_nan = false, any_inf = false, any_nan = false;
  for (const Piece& pc : pieces_in(lo_, hi_)) {
    if (!had_grad_[pc.param]) continue;
    const float* g = grad_.data() + (pc.flat - lo_);
    const int64_t n = pc.end - pc.begin;
    double s = 0;
    for (int64_t k = 0; k < n; ++k) s += static_cast<double>(g[k]) * g[k];
    if (std::isfinite(s)) {
      sumsq += s;
      continue;
    }
    for (int64_t k = 0; k < n; ++k) {
      if (std::isfinite(g[k])) {
        sumsq += static_cast<double>(g[k]) * g[k];
        continue;
      }
      const bool nan = std::isnan(g[k]);
      any_nan |= nan;
      any_inf |= !nan;
      if (first_bad < 0) {
        first_bad = pc.flat + k;
        first_nan = nan;
      }
    }
  }
  // Max-reductions: the first bad element is the smallest index, so reduce its negation.
  int64_t flags[3] = {
      first_bad < 0 ? std::numeric_limits<int64_t>::min() : -(2 * first_bad + first_nan), any_inf,
      any_nan};
  allreduce_max(flags, 3);
  allreduce_sum(&sumsq, 1);
  global_sumsq_ = sumsq;
  global_finite_ = flags[0] == std::numeric_limits<int64_t>::min();
  first_bad_.clear();
  float verdict = 0.0f;
  if (!global_finite_) {
    const int64_t key = -flags[0], idx = key / 2;
    const size_t p = static_cast<size_t>(
        std::upper_bound(flat_begin_.begin(), flat_begin_.end(), idx) - flat_begin_.begin() - 1);
    first_bad_ = params_[p]->name;
    verdict = (key & 1) ? std::numeric_limits<float>::quiet_NaN()
                        : std::numeric_limits<float>::infinity();
    proxy_param_.name = first_bad_;  // the scaler's StepResult names it
  }
  (void)scale;
  proxy_param_.weight.grad() = Tensor::full({1}, verdict, DType::f32);
}

std::unique_ptr<optim::Optimizer> DataParallel::make_proxy_optimizer(double lr,
                                                                     optim::CommonOptions common) {
  if (!opt_.zero) throw Error("DataParallel::make_proxy_optimizer: only with ZeRO-1");
  if (common.master != optim::MasterMode::fp32)
    throw ConfigError(
        fmt::format("--zero 1 shards the fp32 master: --master {} is not supported "
                    "with it (use --master fp32)",
                    optim::master_mode_name(common.master)));
  proxy_param_ = nn::Parameter(kProxyName, Tensor::zeros({1}, DType::f32));
  auto proxy = optim::make_optimizer(opt_.optimizer, {&proxy_param_}, lr, opt_.weight_decay,
                                     opt_.momentum, common);
  proxy_ = proxy.get();
  // The buffers the real optimizer would keep are the ones the proxy keeps.
  const auto names = slot_names(opt_.optimizer);
  state_names_.assign(3, "");
  const std::string prefix = fmt::format("optim.{}.", kProxyName);
  for (const auto& [n, t] : proxy->state_tensors())
    for (int j = 0; j < 3; ++j)
      if (!names[j].empty() && n == prefix + names[j]) {
        state_names_[j] = names[j];
        state_[j].assign(hi_ - lo_, 0.0f);
      }
  return proxy;
}

void DataParallel::zero_step(optim::StepResult& r, float scale, double max_norm) {
  Timed timed{comm_seconds_};
  proxy_param_.name = kProxyName;
  // As the loss scaler: 1/scale computed in double, used as fp32; the norm of grad * inv.
  const float inv = static_cast<float>(1.0 / static_cast<double>(scale));
  const double m = inv;
  const double norm =
      global_finite_ ? std::sqrt(global_sumsq_ * m * m) : std::numeric_limits<double>::quiet_NaN();
  r.grad_norm = norm;
  if (!r.applied) {
    if (!first_bad_.empty()) r.bad_param = first_bad_;
    return;
  }
  float coef = 1.0f;  // torch.nn.utils.clip_grad_norm_, as Optimizer::clip_grad_norm
  if (max_norm > 0 && std::isfinite(norm)) {
    const double c = max_norm / (norm + 1e-6);
    if (c < 1.0) coef = static_cast<float>(c);
  }
  r.clip_coef = coef;
  const float mult = static_cast<float>(static_cast<double>(inv) * coef);

  optim::detail::Rule rule;
  const std::string& k = opt_.optimizer;
  const auto lr = static_cast<float>(proxy_->lr());
  const auto wd = static_cast<float>(opt_.weight_decay);
  if (k == "adamw" || k == "adam") {
    const optim::AdamOptions d;
    rule.kind = optim::detail::Rule::Kind::adam;
    rule.adam = {lr,
                 static_cast<float>(d.beta1),
                 static_cast<float>(d.beta2),
                 static_cast<float>(d.eps),
                 wd,
                 k == "adamw",
                 proxy_->steps()};
  } else if (k == "sgd") {
    const optim::SgdOptions d;
    rule.kind = optim::detail::Rule::Kind::sgd;
    rule.sgd = {lr,
                static_cast<float>(opt_.momentum),
                static_cast<float>(d.dampening),
                wd,
                d.nesterov,
                proxy_->steps() == 1};
  } else {
    const optim::RMSPropOptions d;
    rule.kind = optim::detail::Rule::Kind::rmsprop;
    rule.rms = {lr, static_cast<float>(d.alpha),       static_cast<float>(d.eps),
                wd, static_cast<float>(opt_.momentum), d.centered};
  }
  // This rank's shard, cut into work items (the update is element-wise: any split gives the
  // same bits).
  std::vector<Piece> work;
  for (const Piece& pc : pieces_in(lo_, hi_)) {
    if (!had_grad_[pc.param]) continue;  // as Optimizer::step: untouched without a gradient
    for (int64_t b = pc.begin; b < pc.end; b += kChunk)
      work.push_back({pc.param, b, std::min(pc.end, b + kChunk), pc.flat + (b - pc.begin)});
  }
#pragma omp parallel for schedule(dynamic, 2) if (work.size() > 1)
  for (int64_t w = 0; w < static_cast<int64_t>(work.size()); ++w) {
    const Piece& pc = work[w];
    const nn::Parameter& p = *params_[pc.param];
    const int64_t off = pc.flat - lo_;
    optim::detail::UpdateArgs a;
    a.mode = optim::MasterMode::fp32;
    a.grad_mult = mult;
    a.master = master_.data() + off;
    const Tensor& wt = p.weight.data();
    a.weight = static_cast<char*>(wt.raw_data()) + pc.begin * wt.element_size();
    a.weight_dtype = wt.dtype();
    a.grad = grad_.data() + off;
    a.grad_dtype = DType::f32;
    if (!state_[0].empty()) a.s0 = state_[0].data() + off;
    if (!state_[1].empty()) a.s1 = state_[1].data() + off;
    if (!state_[2].empty()) a.s2 = state_[2].data() + off;
    a.n = pc.end - pc.begin;
    optim::detail::run_update(rule, a);
  }
  // All-gather the compute-dtype weights: each rank's shard as a byte range of the
  // concatenated weights (parameters may differ in compute dtype).
  std::vector<int64_t> wbegin{0};
  for (auto* p : params_) {
    if (!p->weight.data().is_contiguous())
      throw ShapeError(fmt::format("--zero 1: weight of '{}' is not contiguous", p->name));
    wbegin.push_back(wbegin.back() +
                     p->numel() * static_cast<int64_t>(p->weight.data().element_size()));
  }
  auto byte_of = [&](int64_t e) {
    if (e >= flat_begin_.back()) return wbegin.back();
    const size_t i = static_cast<size_t>(
        std::upper_bound(flat_begin_.begin(), flat_begin_.end(), e) - flat_begin_.begin() - 1);
    return wbegin[i] +
           (e - flat_begin_[i]) * static_cast<int64_t>(params_[i]->weight.data().element_size());
  };
  std::vector<int64_t> bytes(size_), off(size_);
  for (int j = 0; j < size_; ++j) {
    off[j] = byte_of(shard_lo_[j]);
    bytes[j] = byte_of(shard_lo_[j + 1]) - off[j];
  }
  std::vector<char> buf(wbegin.back());
  auto copy_region = [&](int j, bool to_buf) {
    for (const Piece& pc : pieces_in(shard_lo_[j], shard_lo_[j + 1])) {
      const Tensor& wt = params_[pc.param]->weight.data();
      const int64_t es = static_cast<int64_t>(wt.element_size());
      char* w = static_cast<char*>(wt.raw_data()) + pc.begin * es;
      char* b = buf.data() + wbegin[pc.param] + pc.begin * es;
      if (to_buf)
        std::memcpy(b, w, (pc.end - pc.begin) * es);
      else
        std::memcpy(w, b, (pc.end - pc.begin) * es);
    }
  };
  copy_region(rank_, true);
  allgatherv_inplace(buf.data(), bytes.data(), off.data());
  for (int j = 0; j < size_; ++j)
    if (j != rank_) copy_region(j, false);
}

void DataParallel::zero_grad() {
  for (auto* p : params_) p->zero_grad();
}

int64_t DataParallel::optimizer_state_bytes(const optim::Optimizer& full) const {
  if (opt_.zero) {
    int64_t slots = 0;
    for (const auto& s : state_) slots += !s.empty();
    return (hi_ - lo_) * 4 * (1 + slots);
  }
  int64_t b = 0;
  for (const auto& [n, t] : full.state_tensors())
    if (t.dtype() != DType::i64) b += static_cast<int64_t>(t.nbytes());
  if (full.master_mode() == optim::MasterMode::fp32) b += flat_begin_.back() * 4;
  return b;
}

std::vector<std::pair<std::string, Tensor>> DataParallel::gather_state() {
  if (!opt_.zero) throw Error("DataParallel::gather_state: only with ZeRO-1");
  const int64_t total = flat_begin_.back();
  std::vector<int64_t> bytes(size_), off(size_);
  for (int j = 0; j < size_; ++j) {
    off[j] = shard_lo_[j] * 4;
    bytes[j] = (shard_lo_[j + 1] - shard_lo_[j]) * 4;
  }
  auto gather = [&](const std::vector<float>& shard) {
    std::vector<float> full(total);
    std::copy(shard.begin(), shard.end(), full.begin() + lo_);
    allgatherv_inplace(full.data(), bytes.data(), off.data());
    return full;
  };
  {
    const std::vector<float> m = gather(master_);
    for (size_t i = 0; i < params_.size(); ++i)
      std::copy(m.begin() + flat_begin_[i], m.begin() + flat_begin_[i + 1],
                f32_data(params_[i]->master, "master of " + params_[i]->name));
  }
  std::vector<std::pair<std::string, Tensor>> out;
  std::vector<std::vector<float>> full(3);
  for (int j = 0; j < 3; ++j)
    if (!state_names_[j].empty()) full[j] = gather(state_[j]);
  for (size_t i = 0; i < params_.size(); ++i)
    for (int j = 0; j < 3; ++j) {
      if (state_names_[j].empty()) continue;
      Tensor t = Tensor::empty(params_[i]->master.shape(), DType::f32);
      std::copy(full[j].begin() + flat_begin_[i], full[j].begin() + flat_begin_[i + 1],
                t.data<float>());
      out.emplace_back(fmt::format("optim.{}.{}", params_[i]->name, state_names_[j]), t);
    }
  const std::string prefix = fmt::format("optim.{}.", kProxyName);
  for (auto& [n, t] : proxy_->state_tensors())  // optim.step, optim.rng_step
    if (n.rfind(prefix, 0) != 0) out.emplace_back(n, t);
  return out;
}

void DataParallel::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors) {
  if (!opt_.zero) throw Error("DataParallel::load_state: only with ZeRO-1");
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : tensors) by_name[n] = &t;
  auto find = [&](const std::string& n) -> const Tensor& {
    auto it = by_name.find(n);
    if (it == by_name.end())
      throw IOError(fmt::format("--zero 1 load_state: tensor '{}' is missing", n));
    return *it->second;
  };
  // Validate first, then copy this rank's slice of everything.
  for (size_t i = 0; i < params_.size(); ++i)
    for (int j = 0; j < 3; ++j) {
      if (state_names_[j].empty()) continue;
      const std::string n = fmt::format("optim.{}.{}", params_[i]->name, state_names_[j]);
      const Tensor& t = find(n);
      if (t.shape() != params_[i]->master.shape() || t.dtype() != DType::f32)
        throw ShapeError(fmt::format("--zero 1 load_state: tensor '{}' is {} (expected f32 {})", n,
                                     t.str(), shape_str(params_[i]->master.shape())));
    }
  const std::string prefix = fmt::format("optim.{}.", kProxyName);
  std::vector<std::pair<std::string, Tensor>> proxy_state;
  for (auto& [n, t] : proxy_->state_tensors())
    proxy_state.emplace_back(n, n.rfind(prefix, 0) == 0 ? t : find(n));
  proxy_->load_state(proxy_state);
  for (const Piece& pc : pieces_in(lo_, hi_)) {
    const nn::Parameter& p = *params_[pc.param];
    const int64_t off = pc.flat - lo_;
    const float* m = f32_data(p.master, "master of " + p.name);
    std::copy(m + pc.begin, m + pc.end, master_.data() + off);
    for (int j = 0; j < 3; ++j) {
      if (state_names_[j].empty()) continue;
      Tensor t = find(fmt::format("optim.{}.{}", p.name, state_names_[j])).contiguous();
      const float* s = t.data<float>();
      std::copy(s + pc.begin, s + pc.end, state_[j].data() + off);
    }
  }
}

std::unique_ptr<DataParallel> make_data_parallel(const train::TrainConfig& cfg, DType compute,
                                                 std::vector<nn::Parameter*> params) {
  if (cfg.zero != 0 && cfg.zero != 1)
    throw ConfigError(fmt::format("--zero: {} (expected 0 or 1)", cfg.zero));
  if (cfg.allreduce != "fp32" && cfg.allreduce != "compute")
    throw ConfigError(fmt::format("--allreduce: '{}' (expected fp32 or compute)", cfg.allreduce));
  set_timeout(cfg.comm_timeout);
  const int n = size();
  const int64_t micro = cfg.batch / cfg.grad_accum;
  if (micro % n != 0)
    throw ConfigError(fmt::format(
        "--batch {} / --grad-accum {} gives micro-batches of {} rows, which {} ranks cannot split "
        "evenly (each rank takes an equal slice of every global micro-batch)",
        cfg.batch, cfg.grad_accum, micro, n));
  DataParallelOptions o;
  o.zero = cfg.zero == 1;
  // fp16 compute puts fp16 on the wire; an fp32 compute dtype makes "compute" mean fp32.
  o.wire = cfg.allreduce == "compute" ? compute : DType::f32;
  o.optimizer = cfg.optimizer;
  o.weight_decay = cfg.weight_decay;
  o.momentum = cfg.momentum;
  return std::make_unique<DataParallel>(std::move(params), o);
}

void run_on_root(const std::function<void()>& fn) {
  std::string err;
  std::exception_ptr ep;
  if (rank() == 0) {
    try {
      fn();
    } catch (const std::exception& e) {
      err = e.what();
      ep = std::current_exception();
    }
  }
  err = broadcast_string(err);
  if (ep) std::rethrow_exception(ep);
  if (!err.empty()) throw ConfigError(err);
}

std::string broadcast_string(std::string s) {
  if (size() == 1) return s;
  int64_t n = static_cast<int64_t>(s.size());
  broadcast(&n, sizeof n, 0);
  s.resize(static_cast<size_t>(n));
  if (n > 0) broadcast(s.data(), n, 0);
  return s;
}

double mean_over_ranks(double v) {
  if (size() == 1) return v;
  allreduce_sum(&v, 1);
  return v / size();
}

}  // namespace mixtrain::dist
