// Data-parallel gradient reduction, ZeRO-1, ZeRO-2 and ZeRO-3 (see data_parallel.h).
//
// One scheme serves all. The flat gradient (all parameters in order) is cut into buckets of
// whole parameters, in reverse parameter order (the order backward finishes them). Each
// bucket's elements are split into one region per rank; an alltoallv sends every rank its
// region in the wire dtype (a reduce-scatter) and that rank sums the N copies in fp32, in rank
// order. Without ZeRO the regions are an even split of the bucket and the sums go back out in
// the wire dtype (all-gather), so every rank unpacks the same bits. With ZeRO the regions are
// the bucket's intersections with the ranks' shards: the owner keeps the fp32 sum as its
// shard optimizer's gradient, and after the update the compute-dtype weights are all-gathered.
// ZeRO-2 runs the same reduce-scatter after every micro-batch instead of once a step: the sums
// accumulate in the rank's fp32 gradient shard (written by the first micro-batch, added to by
// the rest), and each bucket's model gradients are released once packed for the wire, so no
// rank holds a whole gradient between micro-batches. The accumulation is thereby sharded: each
// micro-batch is summed over the ranks first and over the micro-batches second, where stages 0
// and 1 sum each rank's micro-batches first (fp32 rounding differs; with one micro-batch a step
// the two are the same bits).
// Sums are element-wise in rank order, so neither the bucket size nor when a bucket starts
// (during backward or after it) changes a bit of the result.
//
// Bytes sent per rank per step: 2 (N-1)/N x (gradient elements x wire size) for the
// all-reduce; (N-1)/N x (gradients x wire size + weights x compute size) for ZeRO-1.
//
// The ZeRO-1 shard is a contiguous slice of the flat parameter space, not whole tensors per
// rank: it balances to within one element whatever the tensor sizes (a GPT's embedding alone
// can be a third of the model), and a contiguous slice is what the reduce-scatter delivers.
// A parameter split between ranks simply gives each a piece; the fused optimizer kernels
// take pointers and lengths, so a piece is a pointer offset.
//
// ZeRO-3 cuts differently: per unit (a child module), because a unit's weights are gathered as
// a whole just before it runs. Each unit's elements are split evenly, so every all-gather and
// reduce-scatter is balanced; a rank's shard is its region of every unit, and its pieces are
// the same kind of pointer offsets (into its bytes of each unit's flat weight buffer). A unit's
// gradients are one bucket whose regions are those same splits, so the reduce-scatter lands
// each rank's sums where its weights and masters are. Bytes sent per rank per micro-batch:
// (N-1)/N x (gradients x wire size + 2 x weights x compute size), the weights gathered for
// forward and again for backward (once with --reshard-after-forward false); none after the
// update.
#include "dist/data_parallel.h"

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "backend/backend.h"
#include "mixtrain/error.h"

namespace mixtrain::dist {

namespace {

// Adds the scope's wall time to a counter.
struct Timed {
  double& acc;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  ~Timed() { acc += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
};

Tensor flat_view(const Tensor& t, const std::string& what) {
  if (!t.is_contiguous())
    throw ShapeError(fmt::format("data parallel: {} is not contiguous ({})", what, t.str()));
  return t.view({-1});
}

}  // namespace

DataParallel::DataParallel(nn::Module& model, DataParallelOptions opt)
    : model_(model),
      params_(model.parameters()),
      opt_(std::move(opt)),
      rank_(dist::rank()),
      size_(dist::size()) {
  if (opt_.reduce_dtype != DType::f32 && opt_.reduce_dtype != DType::bf16 &&
      opt_.reduce_dtype != DType::f16)
    throw ConfigError(fmt::format("--allreduce: wire dtype {} (expected f32, bf16 or f16)",
                                  dtype_name(opt_.reduce_dtype)));
  if (opt_.bucket_bytes < 1)
    throw ConfigError(fmt::format("--bucket-kib: {} bytes (must be > 0)", opt_.bucket_bytes));
  flat_begin_.push_back(0);
  for (auto* p : params_) flat_begin_.push_back(flat_begin_.back() + p->numel());
  had_grad_.assign(params_.size(), 0);
  if (opt_.zero < 0 || opt_.zero > 3)
    throw ConfigError(fmt::format("--zero: stage {} (expected 0, 1, 2 or 3)", opt_.zero));
  reached_.assign(params_.size(), 0);
  const int64_t total = flat_begin_.back();
  if (opt_.zero && total < size_)
    throw ConfigError(fmt::format("--zero {}: {} parameters cannot be sharded over {} ranks",
                                  opt_.zero, total, size_));
  for (int j = 0; j <= size_; ++j) shard_lo_.push_back(total * j / size_);
  lo_ = shard_lo_[rank_];
  hi_ = shard_lo_[rank_ + 1];
  bucket_of_.assign(params_.size(), 0);
  if (sharded_weights()) {
    // ZeRO-3 units: the root's own parameters, then each child holding any, in parameter
    // order (named_parameters lists a module's own parameters first, then each child's). A
    // unit's gradients are one bucket, split evenly: the reduce-scatter lands each rank's part
    // where its weights shard is.
    std::vector<std::pair<std::string, nn::Module*>> mods{{"(root)", &model_}};
    for (auto& c : model_.children()) mods.push_back(c);
    size_t p = 0;
    for (size_t m = 0; m < mods.size(); ++m) {
      // (parameters() would rename them relative to the child: count the variables)
      const size_t n = m == 0 ? mods[m].second->own_parameters().size()
                              : mods[m].second->parameter_variables().size();
      if (n == 0) continue;
      Unit u;
      u.module = mods[m].second;
      u.name = mods[m].first;
      u.p0 = p;
      u.p1 = p += n;
      u.a = flat_begin_[u.p0];
      u.b = flat_begin_[u.p1];
      if (u.b - u.a < size_)
        throw ConfigError(
            fmt::format("--zero 3: unit '{}' holds {} parameters, fewer than the {} "
                        "ranks it is sharded over",
                        u.name, u.b - u.a, size_));
      units_.push_back(std::move(u));
    }
    if (p != params_.size())
      throw Error(fmt::format("--zero 3: the units of a {} cover {} of its {} parameters",
                              model_.type(), p, params_.size()));
    // Buckets in reverse unit order: a guess at backward's; each launches when its unit's
    // gradients are final, whatever the order.
    unit_of_.assign(params_.size(), 0);
    for (size_t ui = units_.size(); ui-- > 0;) {
      Unit& u = units_[ui];
      Bucket k;
      k.p0 = u.p0;
      k.p1 = u.p1;
      k.a = u.a;
      k.b = u.b;
      for (int j = 0; j <= size_; ++j) k.region.push_back(k.a + (k.b - k.a) * j / size_);
      for (size_t i = k.p0; i < k.p1; ++i) {
        bucket_of_[i] = buckets_.size();
        unit_of_[i] = ui;
      }
      u.bucket = buckets_.size();
      buckets_.push_back(std::move(k));
    }
    fwd_pos_.assign(units_.size(), -1);
    for (size_t i = 0; i < params_.size(); ++i)
      params_[i]->weight.impl()->grad_ready_hook = [this, i](VariableImpl&) { on_grad_ready(i); };
    set_run_in_flight(true);
    return;
  }
  // Buckets of whole parameters, from the last parameter back (backward's finishing order).
  const auto ws = static_cast<int64_t>(dtype_size(opt_.reduce_dtype));
  for (size_t p1 = params_.size(); p1 > 0;) {
    size_t p0 = p1;
    int64_t bytes = 0;
    while (p0 > 0 && (bytes == 0 || bytes + params_[p0 - 1]->numel() * ws <= opt_.bucket_bytes))
      bytes += params_[--p0]->numel() * ws;
    Bucket k;
    k.p0 = p0;
    k.p1 = p1;
    k.a = flat_begin_[p0];
    k.b = flat_begin_[p1];
    for (int j = 0; j <= size_; ++j)
      k.region.push_back(opt_.zero ? std::clamp(shard_lo_[j], k.a, k.b)
                                   : k.a + (k.b - k.a) * j / size_);
    for (size_t i = p0; i < p1; ++i) bucket_of_[i] = buckets_.size();
    buckets_.push_back(std::move(k));
    p1 = p0;
  }
  if (opt_.overlap && size_ > 1)
    for (size_t i = 0; i < params_.size(); ++i)
      params_[i]->weight.impl()->grad_ready_hook = [this, i](VariableImpl&) { on_grad_ready(i); };
  if (size_ > 1) set_run_in_flight(true);
}

DataParallel::~DataParallel() {
  for (auto* p : params_)
    if (p->weight.defined()) p->weight.impl()->grad_ready_hook = nullptr;
  for (Unit& u : units_) u.module->set_hooks({});
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

std::unique_ptr<optim::Optimizer> DataParallel::make_optimizer() {
  if (made_optimizer_) throw Error("DataParallel::make_optimizer: called twice");
  made_optimizer_ = true;
  if (!opt_.zero)
    return optim::make_optimizer(opt_.optimizer, params_, opt_.lr, opt_.weight_decay, opt_.momentum,
                                 opt_.common);
  if (opt_.common.master != optim::MasterMode::fp32)
    throw ConfigError(
        fmt::format("--zero {} shards the fp32 master: --master {} is not supported "
                    "with it (use --master fp32)",
                    opt_.zero, optim::master_mode_name(opt_.common.master)));
  std::vector<char> shares(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const nn::Parameter& p = *params_[i];
    if (p.master.dtype() != DType::f32)
      throw DTypeError(fmt::format("--zero {}: parameter '{}' master is {} (expected f32)",
                                   opt_.zero, p.name, p.master.str()));
    shares[i] = p.shares_master();
  }
  if (sharded_weights()) {
    // Each unit's region of this rank, in unit order, is its part of the flat space.
    int64_t off = 0;
    for (const Unit& u : units_) {
      const Bucket& k = buckets_[u.bucket];
      for (const Piece& pc : pieces_in(k.region[rank_], k.region[rank_ + 1]))
        shard_pieces_.push_back(pc);
      unit_goff_.push_back(off);
      off += k.region[rank_ + 1] - k.region[rank_];
    }
    grad_shard_ = Tensor::empty({off}, DType::f32, comm_device());
    shard_weights();
  } else {
    if (sharded_grads()) grad_shard_ = Tensor::empty({hi_ - lo_}, DType::f32, comm_device());
    shard_pieces_ = pieces_in(lo_, hi_);
  }
  shard_.reserve(shard_pieces_.size());  // the optimizer keeps pointers into it
  for (const Piece& pc : shard_pieces_) {
    nn::Parameter& p = *params_[pc.param];
    Tensor w;
    if (sharded_weights()) {  // its piece of the unit's shard of bytes
      const Unit& u = units_[unit_of_[pc.param]];
      const DType dt = p.weight.dtype();
      w = u.shard.view_bytes(u.lead + u.pbyte[pc.param - u.p0] - u.edge[rank_] +
                                 pc.begin * static_cast<int64_t>(dtype_size(dt)),
                             {pc.end - pc.begin}, dt);
    } else {
      w = flat_view(p.weight.data(), "weight of " + p.name).slice(0, pc.begin, pc.end);
    }
    nn::Parameter& sp = shard_.emplace_back();
    sp.name = p.name;
    // fp32 compute: the weight is the master, updated in place (the kernel then writes no copy).
    sp.master = shares[pc.param]
                    ? w
                    : flat_view(p.master, "master of " + p.name).slice(0, pc.begin, pc.end).clone();
    sp.weight = Variable(w, true, p.name);
  }
  // The model's own fp32 masters go: each rank keeps only its shard's (the point of ZeRO-1);
  // with ZeRO-3 an fp32 master shared with the weight goes too (the shard holds its piece).
  for (size_t i = 0; i < params_.size(); ++i)
    if (!shares[i] || sharded_weights()) params_[i]->master = Tensor();
  std::vector<nn::Parameter*> ptrs;
  for (auto& sp : shard_) ptrs.push_back(&sp);
  return optim::make_optimizer(opt_.optimizer, ptrs, opt_.lr, opt_.weight_decay, opt_.momentum,
                               opt_.common);
}

void DataParallel::before_backward(bool last) {
  if (sharded_weights()) {  // every micro-batch: each unit reduces as its backward finishes
    for (Bucket& k : buckets_) k.pending = static_cast<int64_t>(k.p1 - k.p0);
    for (Unit& u : units_) u.backward_done = false;
    armed_ = true;
    return;
  }
  if (!opt_.overlap || size_ == 1 || (!last && !sharded_grads())) return;
  for (Bucket& k : buckets_) k.pending = static_cast<int64_t>(k.p1 - k.p0);
  armed_ = true;
}

void DataParallel::on_grad_ready(size_t param) {
  if (!armed_) return;
  Timed timed{comm_seconds_};
  Bucket& k = buckets_[bucket_of_[param]];
  if (--k.pending == 0 && !k.launched) {
    launch(k);
    if (sharded_weights()) {
      // Its backward is done: its weights go, and older reductions finish (their receive
      // buffers go), so at most this unit's gradients are in flight while backward goes on.
      Unit& u = units_[unit_of_[param]];
      u.backward_done = true;
      release(u);
      for (Bucket& o : buckets_)
        if (&o != &k && o.launched && !o.summed) sum_received(o);
    }
  }
  // MPI moves data only inside MPI calls: poke the buckets in flight while backward goes on.
  for (Bucket& o : buckets_)
    if (o.launched && o.rs) test(o.rs);
}

void DataParallel::launch(Bucket& k) {
  k.launched = true;
  const int64_t n = k.b - k.a, ws = static_cast<int64_t>(dtype_size(opt_.reduce_dtype));
  if (sharded_weights()) {  // the unreduced gradients held now: this unit's (and any other's)
    int64_t held = 0;
    for (auto* p : params_)
      if (p->grad().defined()) held += static_cast<int64_t>(p->grad().nbytes());
    peak_unreduced_bytes_ = std::max(peak_unreduced_bytes_, held);
  }
  if (!k.send.defined() || k.send.numel() != n)
    k.send = Tensor::empty({n}, opt_.reduce_dtype, comm_device());
  for (size_t i = k.p0; i < k.p1; ++i) {
    const Tensor& g = params_[i]->grad();
    had_grad_[i] = g.defined();
    const int64_t len = params_[i]->numel(), at = flat_begin_[i] - k.a;
    Tensor d = k.send.slice(0, at, at + len);
    if (!g.defined()) {
      d.fill(0.0f);
      continue;
    }
    if (!g.is_contiguous() || g.numel() != len)
      throw ShapeError(fmt::format("data parallel: gradient of '{}' is {} (expected {} contiguous)",
                                   params_[i]->name, g.str(), len));
    d.copy_from(g.view({-1}));  // into the wire dtype, across devices if need be
    if (sharded_grads()) {      // ZeRO-2: its sum lives in the owner's shard from here on
      reached_[i] = 1;
      params_[i]->zero_grad();
    }
  }
  const int64_t len = k.region[rank_ + 1] - k.region[rank_];
  k.sb.resize(size_);
  k.so.resize(size_);
  k.rb.resize(size_);
  k.ro.resize(size_);
  for (int j = 0; j < size_; ++j) {
    k.sb[j] = (k.region[j + 1] - k.region[j]) * ws;
    k.so[j] = (k.region[j] - k.a) * ws;
    k.rb[j] = len * ws;
    k.ro[j] = j * len * ws;
  }
  if (!k.recv.defined() || k.recv.numel() != size_ * len)
    k.recv = Tensor::empty({size_ * len}, opt_.reduce_dtype, comm_device());
  k.rs = ialltoallv(k.send.raw_data(), k.sb.data(), k.so.data(), k.recv.raw_data(), k.rb.data(),
                    k.ro.data());
}

// fp32 sum on arrival, in rank order (the same order whichever rank owns the region).
void DataParallel::sum_received(Bucket& k) {
  wait(k.rs, "gradient reduce-scatter (alltoallv)");
  k.rs = 0;
  k.summed = true;
  const int64_t len = k.region[rank_ + 1] - k.region[rank_];
  Tensor acc = Tensor::empty({len}, DType::f32, comm_device());
  Backend& be = backend_for(comm_device());
  for (int i = 0; i < size_; ++i) {
    const Tensor part = k.recv.slice(0, i * len, (i + 1) * len);
    if (i == 0)
      acc.copy_from(part);
    else
      be.add_into(acc, part);
  }
  if (sharded_grads()) {
    // The wire buffers go until the next micro-batch: kept, every bucket's would add up to the
    // whole gradient again in the wire dtype.
    k.send = Tensor();
    k.recv = Tensor();
    if (len == 0) return;  // the bucket lies outside this rank's shard
    const int64_t o = shard_offset(k.region[rank_]);
    Tensor dst = grad_shard_.slice(0, o, o + len);
    if (first_micro_)
      dst.copy_from(acc);
    else
      be.add_into(dst, acc);
    return;
  }
  if (opt_.zero) {
    // The owner's sums go into its own gradient tensors (the shard optimizer's gradients are
    // views of them): no second gradient-sized buffer.
    for (const Piece& pc : pieces_in(k.region[rank_], k.region[rank_ + 1])) {
      if (!had_grad_[pc.param]) continue;
      const int64_t at = pc.flat - k.region[rank_];
      flat_view(params_[pc.param]->grad(), "gradient of " + params_[pc.param]->name)
          .slice(0, pc.begin, pc.end)
          .copy_from(acc.slice(0, at, at + pc.end - pc.begin));
    }
    return;
  }
  const int64_t own = k.region[rank_] - k.a;
  k.send.slice(0, own, own + len).copy_from(acc);
  k.ag = iallgatherv_inplace(k.send.raw_data(), k.sb.data(), k.so.data());
}

void DataParallel::reduce_buckets() {
  for (Bucket& k : buckets_)
    if (!k.launched) launch(k);
  for (Bucket& k : buckets_)
    if (!k.summed) sum_received(k);
  for (Bucket& k : buckets_) {
    k.launched = false;
    k.summed = false;
    if (opt_.zero) continue;
    wait(k.ag, "gradient all-gather (allgatherv)");
    k.ag = 0;
    for (size_t i = k.p0; i < k.p1; ++i) {
      if (!had_grad_[i]) continue;
      const int64_t at = flat_begin_[i] - k.a;
      Tensor g = params_[i]->grad().view({-1});
      g.copy_from(k.send.slice(0, at, at + params_[i]->numel()));
    }
  }
}

void DataParallel::after_backward() {
  if (!sharded_grads()) return;
  Timed timed{comm_seconds_};
  armed_ = false;
  release_all();
  reduce_buckets();
  first_micro_ = false;
}

void DataParallel::reduce_gradients() {
  Timed timed{comm_seconds_};
  ++comm_steps_;
  armed_ = false;
  if (size_ == 1) {
    if (!opt_.zero) return;
    // One rank: the shard is the whole model and nothing goes on the wire (no wire rounding).
    for (size_t i = 0; i < params_.size(); ++i) had_grad_[i] = params_[i]->grad().defined();
  } else {
    release_all();
    reduce_buckets();
  }
  if (!opt_.zero) return;
  for (size_t s = 0; s < shard_.size(); ++s) {
    const Piece& pc = shard_pieces_[s];
    // As Optimizer::step: a parameter backward did not reach keeps its value and state.
    const nn::Parameter& p = *params_[pc.param];
    if (sharded_grads())
      shard_[s].weight.grad() = reached_[pc.param]
                                    ? grad_shard_.slice(0, shard_offset(pc.flat),
                                                        shard_offset(pc.flat) + (pc.end - pc.begin))
                                    : Tensor();
    else
      shard_[s].weight.grad() =
          had_grad_[pc.param]
              ? flat_view(p.grad(), "gradient of " + p.name).slice(0, pc.begin, pc.end)
              : Tensor();
  }
  reduce_stats();
}

// The global verdict over the shards: found Inf/NaN, the first offending parameter (by flat
// index, so "first in order" means what it means in a single process) and the sum of squares.
void DataParallel::reduce_stats() {
  std::vector<nn::Parameter*> ptrs;
  for (auto& sp : shard_) ptrs.push_back(&sp);
  const optim::GradStats local = optim::gradient_stats(ptrs, 1.0f);
  int64_t key = std::numeric_limits<int64_t>::min();  // max-reduced: the smallest index wins
  if (!local.first_bad.empty())
    for (size_t s = 0; s < shard_.size(); ++s)
      if (shard_[s].name == local.first_bad) {
        key = -(2 * shard_pieces_[s].flat + (local.first_bad_nan ? 1 : 0));
        break;
      }
  int64_t flags[3] = {key, local.found_inf, local.found_nan};
  double sumsq = local.sumsq;
  if (size_ > 1) {
    allreduce_max(flags, 3);
    allreduce_sum(&sumsq, 1);
  }
  stats_ = optim::GradStats{};
  stats_.found_inf = flags[1] != 0;
  stats_.found_nan = flags[2] != 0;
  stats_.sumsq = sumsq;
  if (flags[0] != std::numeric_limits<int64_t>::min()) {
    const int64_t k = -flags[0], idx = k / 2;
    const auto p = static_cast<size_t>(
        std::upper_bound(flat_begin_.begin(), flat_begin_.end(), idx) - flat_begin_.begin() - 1);
    stats_.first_bad = params_[p]->name;
    stats_.first_bad_nan = (k & 1) != 0;
  }
}

void DataParallel::after_step(const optim::StepResult& r) {
  if (!opt_.zero || !r.applied || size_ == 1 || sharded_weights()) return;
  Timed timed{comm_seconds_};
  // Bucket by bucket, each rank's region of the compute weights (its shard's intersection with
  // the bucket) is all-gathered as bytes: parameters may differ in compute dtype, so a bucket's
  // weights are their bytes side by side, each parameter's piece viewed in its own dtype
  // (copies between equal dtypes are bit for bit). The staging buffer is the bucket's gradient
  // wire buffer, idle until the next step (the wire dtype is never narrower than the compute
  // dtype, so it holds the weights, unless a module computes wider than the rest).
  for (Bucket& k : buckets_) {
    std::vector<int64_t> wbegin{0};  // bytes of params [p0, p) within the bucket
    for (size_t i = k.p0; i < k.p1; ++i) {
      const Tensor& w = params_[i]->weight.data();
      if (!w.is_contiguous())
        throw ShapeError(fmt::format("--zero {}: weight of '{}' is not contiguous", opt_.zero,
                                     params_[i]->name));
      wbegin.push_back(wbegin.back() + w.numel() * static_cast<int64_t>(w.element_size()));
    }
    auto byte_of = [&](int64_t e) {  // flat element e of the bucket -> its byte in the buffer
      if (e >= k.b) return wbegin.back();
      const auto i = static_cast<size_t>(
          std::upper_bound(flat_begin_.begin() + k.p0, flat_begin_.begin() + k.p1 + 1, e) -
          flat_begin_.begin() - 1);
      return wbegin[i - k.p0] +
             (e - flat_begin_[i]) * static_cast<int64_t>(params_[i]->weight.data().element_size());
    };
    std::vector<int64_t> bytes(size_), off(size_);
    for (int j = 0; j < size_; ++j) {
      off[j] = byte_of(k.region[j]);
      bytes[j] = byte_of(k.region[j + 1]) - off[j];
    }
    const Tensor buf = static_cast<int64_t>(k.send.nbytes()) >= wbegin.back()
                           ? k.send
                           : Tensor::empty({wbegin.back()}, DType::u8, comm_device());
    auto copy_region = [&](int j, bool to_buf) {
      for (const Piece& pc : pieces_in(k.region[j], k.region[j + 1])) {
        const Tensor& wt = params_[pc.param]->weight.data();
        const auto es = static_cast<int64_t>(wt.element_size());
        Tensor w = wt.view({-1}).slice(0, pc.begin, pc.end);
        Tensor b = Tensor::wrap(
            static_cast<char*>(buf.raw_data()) + wbegin[pc.param - k.p0] + pc.begin * es,
            {pc.end - pc.begin}, wt.dtype(), buf.device());
        if (to_buf)
          b.copy_from(w);
        else
          w.copy_from(b);
      }
    };
    copy_region(rank_, true);
    allgatherv_inplace(buf.raw_data(), bytes.data(), off.data());
    for (int j = 0; j < size_; ++j)
      if (j != rank_) copy_region(j, false);
  }
}

void DataParallel::zero_grad() {
  for (auto* p : params_) p->zero_grad();
  first_micro_ = true;
  std::fill(reached_.begin(), reached_.end(), 0);
}

int64_t DataParallel::gradient_bytes() const {
  if (sharded_grads()) return grad_shard_.defined() ? grad_shard_.numel() * 4 : 0;
  int64_t b = 0;
  for (auto* p : params_) b += p->numel() * static_cast<int64_t>(dtype_size(p->grad_dtype));
  return b;
}

StateBytes DataParallel::state_bytes(const optim::Optimizer& opt) const {
  StateBytes b;
  for (const auto& [n, t] : opt.state_tensors()) {
    if (t.dtype() == DType::f32) b.moments += static_cast<int64_t>(t.nbytes());
    if (t.dtype() == DType::bf16) b.master += static_cast<int64_t>(t.nbytes());  // split16/kahan
  }
  if (opt.master_mode() == optim::MasterMode::fp32) {
    if (!opt_.zero) return b.master += flat_begin_.back() * 4, b;
    for (const Piece& pc : shard_pieces_) b.master += (pc.end - pc.begin) * 4;
  }
  return b;
}

ModelStateBytes DataParallel::model_state_bytes(const optim::Optimizer& opt) const {
  ModelStateBytes b;
  if (sharded_weights()) {
    for (const Unit& u : units_) b.weights += u.edge[rank_ + 1] - u.edge[rank_];
    b.gathered_weights = peak_gathered_bytes_;
    b.unreduced_gradients = peak_unreduced_bytes_;
    b.weights += b.gathered_weights;
  } else {
    for (auto* p : params_) b.weights += static_cast<int64_t>(p->weight.data().nbytes());
  }
  b.gradients = gradient_bytes() + b.unreduced_gradients;
  for (const auto& [n, t] : opt.state_tensors()) {
    if (t.dtype() == DType::f32) b.moments += static_cast<int64_t>(t.nbytes());
    if (t.dtype() == DType::bf16) b.master += static_cast<int64_t>(t.nbytes());  // split16/kahan
  }
  if (opt.master_mode() == optim::MasterMode::fp32) {
    if (opt_.zero) {
      for (const nn::Parameter& sp : shard_)
        if (sp.master.storage() != sp.weight.data().storage()) b.master += sp.master.numel() * 4;
    } else {
      for (auto* p : params_)
        if (!p->shares_master()) b.master += p->numel() * 4;
    }
  }
  return b;
}

// ---- ZeRO-3: unit buffers, gathers and the module hooks -----------------------------------

// Flat element e of the unit (or its end) -> its byte in the unit's buffer.
int64_t DataParallel::unit_byte_of(const Unit& u, int64_t e) const {
  if (e >= u.b) return u.pbyte.back();
  const auto i = static_cast<size_t>(
      std::upper_bound(flat_begin_.begin() + u.p0, flat_begin_.begin() + u.p1 + 1, e) -
      flat_begin_.begin() - 1);
  return u.pbyte[i - u.p0] +
         (e - flat_begin_[i]) * static_cast<int64_t>(dtype_size(params_[i]->weight.dtype()));
}

int64_t DataParallel::shard_offset(int64_t e) const {
  if (!sharded_weights()) return e - lo_;
  const auto i = static_cast<size_t>(std::upper_bound(flat_begin_.begin(), flat_begin_.end(), e) -
                                     flat_begin_.begin() - 1);
  const size_t ui = unit_of_[i];
  return unit_goff_[ui] + e - buckets_[units_[ui].bucket].region[rank_];
}

// Lays each unit's weights out as one buffer of bytes (each parameter 64-byte aligned, in its
// compute dtype, so a --fp32-modules unit gathers fp32), keeps this rank's region of it, makes
// the model's weights views of the buffer and releases it: from here a unit's weights are
// resident only between its gather and its release.
void DataParallel::shard_weights() {
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = units_[ui];
    const Bucket& k = buckets_[u.bucket];
    int64_t at = 0;
    for (size_t i = u.p0; i < u.p1; ++i) {
      const Tensor& w = params_[i]->weight.data();
      if (!w.is_contiguous())
        throw ShapeError(fmt::format("--zero 3: weight of '{}' is not contiguous ({})",
                                     params_[i]->name, w.str()));
      at = (at + 63) / 64 * 64;
      u.pbyte.push_back(at);
      at += static_cast<int64_t>(w.nbytes());
    }
    u.pbyte.push_back(at);
    for (int j = 0; j <= size_; ++j) u.edge.push_back(unit_byte_of(u, k.region[j]));
    for (int j = 0; j < size_; ++j) u.bytes.push_back(u.edge[j + 1] - u.edge[j]);
    u.full = Tensor::zeros({at}, DType::u8, comm_device());
    for (size_t i = u.p0; i < u.p1; ++i) {
      Tensor& w = params_[i]->weight.data();
      Tensor v = u.full.view_bytes(u.pbyte[i - u.p0], w.shape(), w.dtype());
      v.copy_from(w);
      w = v;  // the same Variable (its hooks, its gradient) over the unit's buffer
    }
    const int64_t n = u.edge[rank_ + 1] - u.edge[rank_];
    u.lead = u.edge[rank_] % 64;
    u.shard = Tensor::empty({u.lead + n}, DType::u8, comm_device());
    u.shard.slice(0, u.lead, u.lead + n)
        .copy_from(u.full.slice(0, u.edge[rank_], u.edge[rank_] + n));
    u.full.storage()->release();
    nn::ModuleHooks h;
    h.pre_forward = [this, ui] { pre_forward(ui); };
    h.post_forward = [this, ui] { post_forward(ui); };
    h.pre_backward =
        std::make_shared<const std::function<void()>>([this, ui] { pre_backward(ui); });
    u.module->set_hooks(std::move(h));
  }
}

// Allocates the unit's buffer, puts this rank's region in place and starts the all-gather.
void DataParallel::start_gather(Unit& u) {
  if (u.state != Unit::State::sharded) return;
  Timed timed{comm_seconds_};
  u.full.storage()->materialize();
  gathered_bytes_ += static_cast<int64_t>(u.full.nbytes());
  peak_gathered_bytes_ = std::max(peak_gathered_bytes_, gathered_bytes_);
  const int64_t n = u.edge[rank_ + 1] - u.edge[rank_];
  u.full.slice(0, u.edge[rank_], u.edge[rank_] + n).copy_from(u.shard.slice(0, u.lead, u.lead + n));
  u.ag = iallgatherv_inplace(u.full.raw_data(), u.bytes.data(), u.edge.data());
  u.state = Unit::State::gathering;
}

void DataParallel::finish_gather(Unit& u) {
  if (u.state != Unit::State::gathering) return;
  Timed timed{comm_seconds_};
  const std::string what = "parameter all-gather (allgatherv) of unit " + u.name;
  wait(u.ag, what.c_str());
  u.ag = 0;
  u.state = Unit::State::gathered;
}

void DataParallel::release(Unit& u) {
  if (u.state == Unit::State::sharded) return;
  finish_gather(u);  // never free a buffer a collective is writing
  u.full.storage()->release();
  gathered_bytes_ -= static_cast<int64_t>(u.full.nbytes());
  u.state = Unit::State::sharded;
}

void DataParallel::release_all() {
  for (Unit& u : units_) release(u);
}

void DataParallel::pre_forward(size_t ui) {
  if (fwd_pos_[ui] < 0) {
    fwd_pos_[ui] = static_cast<int64_t>(fwd_order_.size());
    fwd_order_.push_back(ui);
  }
  Unit& u = units_[ui];
  start_gather(u);
  const auto next = static_cast<size_t>(fwd_pos_[ui] + 1);
  if (opt_.prefetch && next < fwd_order_.size()) start_gather(units_[fwd_order_[next]]);
  finish_gather(u);
}

void DataParallel::post_forward(size_t ui) {
  // Without a tape no backward follows (evaluation): the weights go whatever the flag says.
  if (opt_.reshard_after_forward || !grad_enabled()) release(units_[ui]);
}

void DataParallel::pre_backward(size_t ui) {
  Unit& u = units_[ui];
  // Ops of its forward that read no weight may come after its gradients are done.
  if (u.backward_done) return;
  start_gather(u);
  if (opt_.prefetch && fwd_pos_[ui] > 0) {
    Unit& prev = units_[fwd_order_[static_cast<size_t>(fwd_pos_[ui] - 1)]];
    if (!prev.backward_done) start_gather(prev);
  }
  finish_gather(u);
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
