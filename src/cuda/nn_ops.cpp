// The CUDA backend's nn and reduction ops on tensors (nn_ops.h): shapes and strides into the
// launchers' plain arguments (nn_kernels.h), scratch as device tensors. A scratch tensor may be
// released as soon as its kernels are queued: the allocator either caches the buffer for a
// later tensor, whose every use is queued on the same stream after these kernels, or gives it
// back with cudaFree, which waits for the device.
#include "cuda/nn_ops.h"

#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <string>

#include "cuda/kernels.h"
#include "cuda/nn_kernels.h"
#include "cuda/runtime.h"

namespace mixtrain::cuda {

namespace {

int dt(const Tensor& t) { return static_cast<int>(t.dtype()); }

View view_of(const Tensor& t) {
  if (t.dim() > kMaxRank)
    throw ShapeError(fmt::format("cuda: {} has more than {} dims", t.str(), kMaxRank));
  View v;
  v.data = t.raw_data();
  v.dtype = dt(t);
  v.rank = static_cast<int>(t.dim());
  for (int k = 0; k < v.rank; ++k) {
    v.shape[k] = t.shape()[static_cast<size_t>(k)];
    v.strides[k] = t.strides()[static_cast<size_t>(k)];
  }
  return v;
}

// Throws for a launcher's -1 (a dtype or size its kernels do not take), else checks the CUDA
// error.
void finish(int rc, const char* op, const std::string& what) {
  if (rc < 0)
    throw BackendError(fmt::format(
        "cuda: {} on {}: the CUDA kernels take f32, bf16, f16 and f64 data and i32 and i64 "
        "indices",
        op, what));
  check(static_cast<cudaError_t>(rc), op);
}

// Outputs are the caller's contiguous tensors (backend.h); a kernel writes them by row-major
// index.
void require_contiguous(const Tensor& t, const char* op) {
  if (!t.is_contiguous())
    throw BackendError(fmt::format("cuda: {}: output {} must be contiguous", op, t.str()));
}

// n elements of scratch (a device tensor; undefined when n is 0).
Tensor scratch(int64_t n, DType d) {
  return n > 0 ? Tensor::empty({n}, d, Device::cuda) : Tensor();
}
template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

AttnOperand operand(const Tensor& t) {
  AttnOperand a;
  a.data = t.raw_data();
  a.dtype = dt(t);
  a.sb = t.strides()[0];
  a.sh = t.strides()[1];
  a.st = t.strides()[2];
  return a;
}
// Inputs with a strided head dimension are copied (the kernels read D unit-stride); outputs
// must have it.
Tensor unit_d(const Tensor& t) { return t.strides().back() == 1 ? t : t.contiguous(); }
void require_unit_d(const Tensor& t, const char* op) {
  if (t.strides().back() != 1)
    throw BackendError(
        fmt::format("cuda: {}: output {} must have a unit-stride last dim", op, t.str()));
}

AttnDims attn_dims(const Tensor& q, const Tensor& k, bool causal, float scale, const char* op) {
  if (q.size(3) > kAttnMaxHeadDim)
    throw BackendError(
        fmt::format("cuda: {}: q {} has head size D = {}; the CUDA kernels take "
                    "D up to {}",
                    op, q.str(), q.size(3), kAttnMaxHeadDim));
  AttnDims d;
  d.B = q.size(0);
  d.H = q.size(1);
  d.Tq = q.size(2);
  d.Tk = k.size(2);
  d.D = q.size(3);
  d.causal = causal;
  d.scale = scale;
  return d;
}

}  // namespace

void dropout(const Tensor& x, uint64_t seed, uint64_t base, float p, float scale, const Tensor& y) {
  finish(launch_dropout(view_of(x), view_of(y), seed, base, p, scale), "dropout", x.str());
}

void sum(const Tensor& x_in, const std::vector<int64_t>& axes, float scale, const Tensor& out) {
  if (out.numel() == 0) return;
  require_contiguous(out, "sum");
  const int64_t nd = x_in.dim();
  Tensor x = x_in.contiguous();
  std::vector<bool> red(static_cast<size_t>(nd), false);
  for (int64_t a : axes) red[static_cast<size_t>(a)] = true;
  bool range = true;
  for (size_t i = 1; i < axes.size(); ++i) range = range && axes[i] == axes[i - 1] + 1;
  int64_t O = 1, R = 1, I = 1;
  if (!range) {
    // As the CPU: the kept dims first and the reduced ones last (transposes), one contiguous
    // copy, then row sums.
    std::vector<int64_t> perm;
    for (int64_t k = 0; k < nd; ++k)
      if (!red[static_cast<size_t>(k)]) perm.push_back(k);
    for (int64_t k = 0; k < nd; ++k)
      if (red[static_cast<size_t>(k)]) perm.push_back(k);
    std::vector<int64_t> cur(static_cast<size_t>(nd));
    std::iota(cur.begin(), cur.end(), 0);
    Tensor v = x;
    for (int64_t i = 0; i < nd; ++i) {
      const int64_t j =
          std::find(cur.begin(), cur.end(), perm[static_cast<size_t>(i)]) - cur.begin();
      if (j != i) {
        v = v.transpose(i, j);
        std::swap(cur[static_cast<size_t>(i)], cur[static_cast<size_t>(j)]);
      }
    }
    x = v.contiguous();
    for (int64_t k = 0; k < nd; ++k)
      (red[static_cast<size_t>(perm[static_cast<size_t>(k)])] ? R : O) *=
          x.shape()[static_cast<size_t>(k)];
  } else {
    const int64_t first = axes.empty() ? nd : axes.front();
    const int64_t last = axes.empty() ? nd - 1 : axes.back();
    for (int64_t k = 0; k < nd; ++k) {
      const int64_t e = x.shape()[static_cast<size_t>(k)];
      if (k < first)
        O *= e;
      else if (k <= last)
        R *= e;
      else
        I *= e;
    }
  }
  const Tensor part = scratch(sum_scratch_floats(O, R, I), DType::f32);
  finish(launch_sum(x.raw_data(), dt(x), O, R, I, scale, static_cast<float*>(out.raw_data()),
                    ptr<float>(part)),
         "sum", x.str());
}

namespace {
// x viewed as [outer, n, inner] around axis.
void lines(const Tensor& x, int64_t axis, int64_t& outer, int64_t& n, int64_t& inner) {
  const Shape& s = x.shape();
  n = s[static_cast<size_t>(axis)];
  inner = 1;
  for (size_t d = static_cast<size_t>(axis) + 1; d < s.size(); ++d) inner *= s[d];
  outer = n * inner != 0 ? x.numel() / (n * inner) : 0;
}
}  // namespace

void softmax(const Tensor& x_in, int64_t axis, bool log, const Tensor& y) {
  const char* op = log ? "log_softmax" : "softmax";
  require_contiguous(y, op);
  const Tensor x = x_in.contiguous();
  int64_t outer, n, inner;
  lines(x, axis, outer, n, inner);
  if (y.dtype() != x.dtype())
    throw BackendError(fmt::format("cuda: {}: y {} must be x's dtype", op, y.str()));
  finish(launch_softmax(x.raw_data(), dt(x), outer, n, inner, log, y.raw_data()), op, x.str());
}

void softmax_backward(const Tensor& y_in, const Tensor& g_in, int64_t axis, bool log,
                      const Tensor& dx) {
  const char* op = log ? "log_softmax backward" : "softmax backward";
  require_contiguous(dx, op);
  const Tensor y = y_in.contiguous();
  const Tensor g = g_in.dtype() == y.dtype() ? g_in.contiguous() : g_in.to(y.dtype()).contiguous();
  if (dx.dtype() != y.dtype())
    throw BackendError(fmt::format("cuda: {}: dx {} must be y's dtype", op, dx.str()));
  int64_t outer, n, inner;
  lines(y, axis, outer, n, inner);
  finish(launch_softmax_backward(y.raw_data(), g.raw_data(), dt(y), outer, n, inner, log,
                                 dx.raw_data()),
         op, y.str());
}

IndexScan scan_indices(const Tensor& ids, int64_t n, std::optional<int64_t> ignore) {
  const Tensor result = Tensor::empty({3}, DType::i64, Device::cuda);
  finish(launch_scan_indices(view_of(ids), n, ignore.has_value(), ignore.value_or(0),
                             static_cast<int64_t*>(result.raw_data())),
         "index check", ids.str());
  // The one read of the result (waits for the kernels).
  uint64_t host[3] = {};
  check(cudaMemcpyAsync(host, result.raw_data(), sizeof host, cudaMemcpyDeviceToHost, stream()),
        "index check");
  check(cudaStreamSynchronize(stream()), "index check");
  IndexScan r;
  if (host[0] != ~uint64_t{0}) {
    r.bad_pos = static_cast<int64_t>(host[0]);
    r.bad_value = static_cast<int64_t>(host[2]);
  }
  r.counted = static_cast<int64_t>(host[1]);
  return r;
}

void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore, int64_t count,
                   const Tensor& lse, const Tensor& loss) {
  const Tensor x = logits.contiguous(), tg = targets.contiguous();
  require_contiguous(lse, "cross_entropy");
  const int64_t N = tg.numel(), V = x.size(-1);
  const Tensor row_loss = scratch(N, DType::f64);
  finish(launch_cross_entropy(x.raw_data(), dt(x), tg.raw_data(), dt(tg), N, V, ignore, count,
                              static_cast<float*>(lse.raw_data()), ptr<double>(row_loss),
                              loss.raw_data(), dt(loss)),
         "cross_entropy", x.str());
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore,
                            int64_t count, const Tensor& lse, const Tensor& g_in,
                            const Tensor& dlogits) {
  require_contiguous(dlogits, "cross_entropy backward");
  const Tensor x = logits.contiguous(), tg = targets.contiguous(), l = lse.contiguous();
  // g is read on the device (no host round trip); a host g is moved there first.
  const Tensor g = g_in.device() == Device::cuda ? g_in : g_in.to(Device::cuda);
  const int64_t N = tg.numel(), V = x.size(-1);
  finish(launch_cross_entropy_backward(x.raw_data(), dt(x), tg.raw_data(), dt(tg), N, V, ignore,
                                       count, static_cast<const float*>(l.raw_data()), g.raw_data(),
                                       dt(g), dlogits.raw_data(), dt(dlogits)),
         "cross_entropy backward", x.str());
}

void layer_norm(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, float eps,
                const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  require_contiguous(y, "layer_norm");
  const Tensor x = x_in.contiguous();
  const Tensor w = w_in.to(DType::f32).contiguous(), b = b_in.to(DType::f32).contiguous();
  const int64_t C = x.size(-1);
  const int64_t N = C ? x.numel() / C : 0;
  finish(
      launch_layer_norm(x.raw_data(), dt(x), static_cast<const float*>(w.raw_data()),
                        static_cast<const float*>(b.raw_data()), N, C, eps, y.raw_data(), dt(y),
                        static_cast<float*>(mean.raw_data()), static_cast<float*>(rstd.raw_data())),
      "layer_norm", x.str());
}

void layer_norm_backward(const Tensor& x_in, const Tensor& w_in, const Tensor& g_in,
                         const Tensor& mean, const Tensor& rstd, const Tensor& dx, const Tensor& dw,
                         const Tensor& db) {
  require_contiguous(dx, "layer_norm backward");
  const Tensor x = x_in.contiguous(), g = g_in.contiguous();
  const Tensor w = w_in.to(DType::f32).contiguous();
  const int64_t C = x.size(-1);
  const int64_t N = C ? x.numel() / C : 0;
  const Tensor part = scratch(layer_norm_backward_scratch_floats(N, C), DType::f32);
  finish(launch_layer_norm_backward(x.raw_data(), dt(x), static_cast<const float*>(w.raw_data()),
                                    g.raw_data(), dt(g), static_cast<const float*>(mean.raw_data()),
                                    static_cast<const float*>(rstd.raw_data()), N, C, dx.raw_data(),
                                    dt(dx), static_cast<float*>(dw.raw_data()),
                                    static_cast<float*>(db.raw_data()), ptr<float>(part)),
         "layer_norm backward", x.str());
}

void embedding(const Tensor& ids_in, const Tensor& table_in, const Tensor& out) {
  require_contiguous(out, "embedding");
  const Tensor ids = ids_in.contiguous(), table = table_in.contiguous();
  const int64_t C = table.size(1), N = ids.numel();
  finish(launch_embedding(ids.raw_data(), dt(ids), N, table.raw_data(), dt(table), C,
                          out.raw_data(), dt(out)),
         "embedding", table.str());
}

void embedding_backward(const Tensor& ids_in, const Tensor& g_in, const Tensor& dtable) {
  require_contiguous(dtable, "embedding backward");
  const Tensor ids = ids_in.contiguous(), g = g_in.contiguous();
  const int64_t N = ids.numel(), V = dtable.size(0), C = dtable.size(1);
  const size_t bytes = embedding_backward_scratch_bytes(N, V);
  const Tensor work = scratch(static_cast<int64_t>(bytes), DType::u8);
  finish(launch_embedding_backward(ids.raw_data(), dt(ids), N, g.raw_data(), dt(g), V, C,
                                   static_cast<float*>(dtable.raw_data()), ptr<void>(work), bytes),
         "embedding backward", g.str());
}

void attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal, float scale,
               const Tensor& o, const Tensor& lse) {
  require_unit_d(o, "attention");
  require_contiguous(lse, "attention");
  const Tensor q = unit_d(q_in), k = unit_d(k_in), v = unit_d(v_in);
  finish(launch_attention(attn_dims(q, k, causal, scale, "attention"), operand(q), operand(k),
                          operand(v), operand(o), static_cast<float*>(lse.raw_data())),
         "attention", q.str());
}

void attention_backward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                        const Tensor& g_in, const Tensor& lse_in, bool causal, float scale,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  for (const Tensor* t : {&dq, &dk, &dv}) require_unit_d(*t, "attention backward");
  const Tensor q = unit_d(q_in), k = unit_d(k_in), v = unit_d(v_in), g = unit_d(g_in);
  const Tensor lse = lse_in.contiguous();
  const AttnDims dm = attn_dims(q, k, causal, scale, "attention backward");
  const Tensor di = scratch(dm.B * dm.H * dm.Tq, DType::f32);
  finish(launch_attention_backward(dm, operand(q), operand(k), operand(v), operand(g),
                                   static_cast<const float*>(lse.raw_data()), operand(dq),
                                   operand(dk), operand(dv), ptr<float>(di)),
         "attention backward", q.str());
}

}  // namespace mixtrain::cuda
