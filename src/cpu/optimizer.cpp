// The CPU backend's optimizer and gradient passes: the fused update over many tensors (split
// into pieces across OpenMP threads, each piece run by the level's kernel, optimizer.isa.cpp),
// the gradient scan behind the loss scaler's unscale, the diagnostics histograms, split16's
// encoding, and the typed single-tensor kernels of optim/kernels.h.
#include "cpu/optimizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#include "cpu/backend.h"
#include "mixtrain/detail/grad_math.h"
#include "mixtrain/error.h"

namespace mixtrain::cpu {

const UpdateKernel& update_kernel() {
  static const IsaTable<UpdateKernel> table({&update_kernel<Isa::scalar>(),
                                             &update_kernel<Isa::avx2>(),
                                             &update_kernel<Isa::avx512>(), nullptr});
  return *table.get();
}

void bad_update_dtype(const char* role, DType dt) {
  throw DTypeError(
      fmt::format("optimizer update: {} dtype {} (expected f32, bf16, f16)", role, dtype_name(dt)));
}

namespace {

using amp::GradHistogram;

// Work is cut into pieces of at most this many elements so that a few big tensors and many
// small ones alike spread over the threads (parallel across and within tensors).
constexpr int64_t kPiece = int64_t{1} << 15;
// Below this many elements in all, the fork/join (and, on a loaded machine, waiting for a busy
// core) costs more than the pass itself: run on the calling thread.
constexpr int64_t kMinParallel = int64_t{1} << 18;

struct Piece {
  size_t t;
  int64_t begin, end;
};

// Pieces of tensors of sizes n(i), in order; `parallel` whether they are worth the threads.
template <class Size>
std::vector<Piece> make_pieces(size_t count, Size n, bool* parallel) {
  std::vector<Piece> out;
  int64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    const int64_t len = n(i);
    total += len;
    for (int64_t b = 0; b < len; b += kPiece) out.push_back({i, b, std::min(len, b + kPiece)});
  }
  *parallel = total >= kMinParallel && out.size() > 1;
  return out;
}

template <class G>
float load_g(G v) {
  return static_cast<float>(v);
}

// Sum of squares of one range and whether it holds Inf/NaN. The fast loop keeps 16 fp32
// partial sums (independent lanes, so it vectorises) flushed to double every 1024 elements;
// only a range whose sum came out non-finite is rescanned element by element, to tell Inf
// from NaN and from finite values whose squares overflow fp32.
struct RangeStats {
  double sumsq = 0;
  int64_t first_bad = -1;  // element index
  bool bad_nan = false;
  bool has_inf = false, has_nan = false;
};

template <class G>
RangeStats range_stats(const G* g, int64_t b, int64_t e) {
  RangeStats r;
  bool suspicious = false;
  for (int64_t blk = b; blk < e; blk += 1024) {
    const int64_t be = std::min(e, blk + 1024);
    float acc[16] = {};
    int64_t i = blk;
    for (; i + 16 <= be; i += 16)
      for (int j = 0; j < 16; ++j) {
        const float x = load_g(g[i + j]);
        acc[j] += x * x;
      }
    for (; i < be; ++i) {
      const float x = load_g(g[i]);
      acc[0] += x * x;
    }
    double s = 0;
    for (float a : acc) s += a;
    if (!std::isfinite(s)) suspicious = true;
    r.sumsq += s;
  }
  if (suspicious) {
    r.sumsq = 0;
    for (int64_t i = b; i < e; ++i) {
      const float x = load_g(g[i]);
      if (std::isnan(x) || std::isinf(x)) {
        const bool nan = std::isnan(x);
        if (r.first_bad < 0) {
          r.first_bad = i;
          r.bad_nan = nan;
        }
        (nan ? r.has_nan : r.has_inf) = true;
      } else {
        r.sumsq += static_cast<double>(x) * x;
      }
    }
  }
  return r;
}

RangeStats grad_range_stats(const Tensor& g, int64_t b, int64_t e) {
  switch (g.dtype()) {
    case DType::f32:
      return range_stats(g.data<float>(), b, e);
    case DType::bf16:
      return range_stats(g.data<bf16>(), b, e);
    case DType::f16:
      return range_stats(g.data<fp16>(), b, e);
    default:
      break;
  }
  throw DTypeError(fmt::format("gradient_stats: gradient {} (expected f32, bf16 or f16)", g.str()));
}

// Each value classified by the per-element rule every backend shares (detail/grad_math.h).
template <class T>
void scan(const T* g, int64_t b, int64_t e, float inv_carried, float to_fp16, GradHistogram& h,
          int64_t& first_bad, bool& first_nan) {
  using mixtrain::detail::HistClass;
  for (int64_t i = b; i < e; ++i) {
    const HistClass c =
        mixtrain::detail::hist_classify<GradHistogram::kMinExp, GradHistogram::kMaxExp>(
            static_cast<float>(g[i]), inv_carried, to_fp16);
    switch (c.kind) {
      case HistClass::nan:
        ++h.nan;
        if (first_bad < 0) first_bad = i, first_nan = true;
        continue;
      case HistClass::inf:
        ++h.inf;
        ++h.fp16_overflow;
        if (first_bad < 0) first_bad = i, first_nan = false;
        continue;
      case HistClass::zero:
        ++h.zero;
        continue;
      case HistClass::finite:
        break;
    }
    h.fp16_zero += c.fp16_zero;
    h.fp16_subnormal += c.fp16_subnormal;
    h.fp16_overflow += c.fp16_overflow;
    h.max_abs = std::max(h.max_abs, static_cast<double>(c.u));
    if (c.bin < 0)
      ++h.below;
    else if (c.bin >= GradHistogram::kBins)
      ++h.above;
    else
      ++h.bins[static_cast<size_t>(c.bin)];
  }
}

}  // namespace

void CpuBackend::optimizer_update(const optim::detail::Rule& rule,
                                  std::span<const UpdateArgs> tensors) {
  bool par = false;
  const auto pieces = make_pieces(
      tensors.size(), [&](size_t i) { return tensors[i].n; }, &par);
  const UpdateKernel run = update_kernel();
#pragma omp parallel for schedule(dynamic, 2) if (par)
  for (int64_t k = 0; k < static_cast<int64_t>(pieces.size()); ++k) {
    const Piece& pc = pieces[k];
    run(rule, sub_args(tensors[pc.t], pc.begin, pc.end - pc.begin));
  }
}

GradScan CpuBackend::grad_scan(std::span<const Tensor> grads) {
  bool par = false;
  const auto pieces = make_pieces(
      grads.size(), [&](size_t i) { return grads[i].numel(); }, &par);
  std::vector<RangeStats> rs(pieces.size());
#pragma omp parallel for schedule(dynamic, 4) if (par)
  for (int64_t k = 0; k < static_cast<int64_t>(pieces.size()); ++k) {
    const Piece& pc = pieces[k];
    rs[k] = grad_range_stats(grads[pc.t], pc.begin, pc.end);
  }
  GradScan st;
  for (size_t k = 0; k < pieces.size(); ++k) {  // in order: "first" is by tensor order
    st.sumsq += rs[k].sumsq;
    st.found_inf |= rs[k].has_inf;
    st.found_nan |= rs[k].has_nan;
    if (rs[k].first_bad >= 0 && st.first_bad < 0) {
      st.first_bad = static_cast<int64_t>(pieces[k].t);
      st.first_bad_nan = rs[k].bad_nan;
    }
  }
  return st;
}

std::vector<HistogramScan> CpuBackend::grad_histograms(std::span<const Tensor> grads_in,
                                                       float inv_carried, float to_fp16) {
  std::vector<Tensor> grads(grads_in.size());
  for (size_t t = 0; t < grads.size(); ++t) grads[t] = grads_in[t].contiguous();
  bool par = false;
  const auto pieces = make_pieces(
      grads.size(), [&](size_t i) { return grads[i].numel(); }, &par);
  std::vector<amp::GradHistogram> ph(pieces.size());
  std::vector<int64_t> bad(pieces.size(), -1);
  std::vector<char> bad_nan(pieces.size(), 0);
  // Small reports run on the calling thread: a fork/join costs more than the scan.
#pragma omp parallel for schedule(dynamic, 4) if (par)
  for (int64_t k = 0; k < static_cast<int64_t>(pieces.size()); ++k) {
    const Piece& p = pieces[k];
    const Tensor& g = grads[p.t];
    bool nan = false;
    switch (g.dtype()) {
      case DType::f32:
        scan(g.data<float>(), p.begin, p.end, inv_carried, to_fp16, ph[k], bad[k], nan);
        break;
      case DType::bf16:
        scan(g.data<bf16>(), p.begin, p.end, inv_carried, to_fp16, ph[k], bad[k], nan);
        break;
      default:
        scan(g.data<fp16>(), p.begin, p.end, inv_carried, to_fp16, ph[k], bad[k], nan);
        break;
    }
    bad_nan[k] = nan;
    ph[k].numel = p.end - p.begin;
  }
  std::vector<HistogramScan> out(grads.size());
  for (size_t k = 0; k < pieces.size(); ++k) {
    HistogramScan& o = out[pieces[k].t];
    o.hist.merge(ph[k]);
    if (bad[k] >= 0 && o.first_bad < 0) {
      o.first_bad = bad[k];
      o.first_bad_nan = bad_nan[k];
    }
  }
  return out;
}

void CpuBackend::split16_split(const Tensor& master, const Tensor& hi, const Tensor& lo) {
  const float* m = master.data<float>();
  auto* h = static_cast<uint16_t*>(hi.raw_data());
  auto* l = static_cast<uint16_t*>(lo.raw_data());
  for (int64_t k = 0; k < master.numel(); ++k) optim::detail::split16_encode(m[k], h + k, l + k);
}

void CpuBackend::split16_join(const Tensor& hi, const Tensor& lo, const Tensor& out) {
  const auto* h = static_cast<const uint16_t*>(hi.raw_data());
  const auto* l = static_cast<const uint16_t*>(lo.raw_data());
  float* o = out.data<float>();
  for (int64_t k = 0; k < out.numel(); ++k) o[k] = optim::detail::split16_decode(h[k], l[k]);
}

}  // namespace mixtrain::cpu

// ---- the typed single-tensor kernels of optim/kernels.h (host pointers, calling thread) ----

namespace mixtrain::optim {

namespace {

// The arguments every rule shares; the caller adds its state arrays.
template <class G, class W>
detail::UpdateArgs common_args(float grad_mult, float* master, const G* grad, W* weight_copy,
                               int64_t n) {
  detail::UpdateArgs a;
  a.grad_mult = grad_mult;
  a.master = master;
  a.weight = weight_copy;
  a.weight_dtype = dtype_of<W>();
  a.grad = grad;
  a.grad_dtype = dtype_of<G>();
  a.n = n;
  return a;
}

}  // namespace

template <class G, class W>
void adamw_update(const AdamWHyper& h, float grad_mult, float* master, float* m, float* v,
                  const G* grad, W* weight_copy, int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::adam;
  r.adam = h;
  detail::UpdateArgs a = common_args(grad_mult, master, grad, weight_copy, n);
  a.s0 = m;
  a.s1 = v;
  cpu::update_kernel()(r, a);
}

template <class G, class W>
void sgd_update(const SgdHyper& h, float grad_mult, float* master, float* momentum_buf,
                const G* grad, W* weight_copy, int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::sgd;
  r.sgd = h;
  detail::UpdateArgs a = common_args(grad_mult, master, grad, weight_copy, n);
  a.s0 = momentum_buf;
  cpu::update_kernel()(r, a);
}

template <class G, class W>
void rmsprop_update(const RMSPropHyper& h, float grad_mult, float* master, float* square_avg,
                    float* grad_avg, float* momentum_buf, const G* grad, W* weight_copy,
                    int64_t n) {
  detail::Rule r;
  r.kind = detail::Rule::Kind::rmsprop;
  r.rms = h;
  detail::UpdateArgs a = common_args(grad_mult, master, grad, weight_copy, n);
  a.s0 = square_avg;
  a.s1 = grad_avg;
  a.s2 = momentum_buf;
  cpu::update_kernel()(r, a);
}

#define MT_INST(G, W)                                                                              \
  template void adamw_update<G, W>(const AdamWHyper&, float, float*, float*, float*, const G*, W*, \
                                   int64_t);                                                       \
  template void sgd_update<G, W>(const SgdHyper&, float, float*, float*, const G*, W*, int64_t);   \
  template void rmsprop_update<G, W>(const RMSPropHyper&, float, float*, float*, float*, float*,   \
                                     const G*, W*, int64_t);
#define MT_INST_G(G) MT_INST(G, float) MT_INST(G, bf16) MT_INST(G, fp16)
MT_INST_G(float)
MT_INST_G(bf16)
MT_INST_G(fp16)

}  // namespace mixtrain::optim
