// The CPU backend's GEMM on oneDNN 2.6 matmul: transposes and strided views expressed as memory
// descriptor strides (no copies, no reorders), alpha as output scales, beta as the sum
// post-op, bias and ReLU/GELU fused. Primitives are cached per (shapes, strides, dtypes,
// whether alpha is 1, beta, epilogue); combinations oneDNN rejects (fp16 without fp16 hardware,
// bf16 without AVX-512) are converted and run in fp32, so no call fails for lack of an ISA.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "cpu/backend.h"
#include "mixtrain/gemm.h"

namespace mixtrain {

namespace {

// ---------------------------------------------------------------------------------------
// One engine for the process (a stream per thread, see run_onednn). Leaked on purpose:
// thread-local cache entries hold oneDNN memory objects that must not outlive the engine
// during static destruction.
dnnl::engine& engine() {
  static auto* e = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *e;
}

dnnl::memory::data_type to_dnnl(DType dt) {
  switch (dt) {
    case DType::f32:
      return dnnl::memory::data_type::f32;
    case DType::bf16:
      return dnnl::memory::data_type::bf16;
    case DType::f16:
      return dnnl::memory::data_type::f16;
    default:
      break;
  }
  throw DTypeError(fmt::format("gemm: dtype {} has no oneDNN GEMM", dtype_name(dt)));
}

// ---------------------------------------------------------------------------------------
// The cache key: every int64 so there is no padding and memcmp / word hashing are exact.
struct Key {
  int64_t bt, a_bt, b_bt, M, N, K;  // dst batch; A's and B's batch (bt or 1 = broadcast)
  int64_t as[3], bs[3], cs[3];      // logical strides (batch, row, col) of op(A), op(B), C
  int64_t bias_stride;              // element stride of bias, -1: no bias
  int64_t dta, dtb, dtc, dtbias;
  // alpha != 1 is a runtime output scale, not part of the primitive: fp8 GEMMs pass a new
  // alpha (their inverse scales) on nearly every call, and baking each into its own primitive
  // JIT-compiled one per call and grew this cache without bound (36 KB a step on the MLP).
  int64_t scaled, beta_bits, epi;
};
static_assert(sizeof(Key) == 23 * sizeof(int64_t), "Key must have no padding");

bool operator==(const Key& x, const Key& y) { return std::memcmp(&x, &y, sizeof(Key)) == 0; }

struct KeyHash {
  size_t operator()(const Key& k) const {
    const auto* w = reinterpret_cast<const uint64_t*>(&k);
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof(Key) / 8; ++i) {
      h ^= w[i] + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    }
    return static_cast<size_t>(h);
  }
};

// A created primitive (or the fact that oneDNN cannot do this combination).
struct Entry {
  bool ok = false;
  dnnl::matmul prim;
  dnnl::memory::desc src, wei, dst, bias, scratch;
  int bias_arg = 0;     // DNNL_ARG_BIAS, a binary post-op's SRC_1, or 0 without bias
  bool scaled = false;  // alpha comes at run time (DNNL_ARG_ATTR_OUTPUT_SCALES)
};

// Shared by all threads: creating a primitive is the expensive part (JIT), done once.
struct GlobalCache {
  std::mutex mu;
  std::unordered_map<Key, std::shared_ptr<const Entry>, KeyHash> map;
};
GlobalCache& global_cache() {
  static GlobalCache* c = new GlobalCache();
  return *c;
}
std::atomic<int64_t> g_created{0};

// Per thread: the primitive plus its own memory objects, whose data handles are swapped in
// on every call; so a hit takes no lock, allocates nothing and builds no argument map.
struct Local {
  std::shared_ptr<const Entry> entry;
  dnnl::memory src, wei, dst, bias, scratch, alpha;
  dnnl_exec_arg_t args[6];
  int nargs = 0;
};

// The calling thread's scratchpad and stream. Primitives are shared by every thread, and with
// oneDNN's own (library) scratchpad, common to all primitives, a primitive must run on the
// thread that created it: two threads running one primitive corrupted each other's products
// (Gemm.ConcurrentCallsFromThreads failed 7 runs in 30 on a Sapphire Rapids, whose AMX kernels
// use scratchpad; never with AMX disabled). So each thread hands every primitive its own buffer,
// sized to the largest it has needed (the footprint of the library's shared one, per thread).
struct ThreadScratch {
  char* data = nullptr;
  size_t size = 0;
  ThreadScratch() = default;
  ThreadScratch(const ThreadScratch&) = delete;
  ThreadScratch& operator=(const ThreadScratch&) = delete;
  ~ThreadScratch() { std::free(data); }
  void* get(size_t bytes) {
    if (bytes > size) {
      std::free(data);
      size = (bytes + 4095) / 4096 * 4096;
      data = static_cast<char*>(std::aligned_alloc(4096, size));
      if (!data) {
        size = 0;
        throw Error(fmt::format("out of memory allocating a {}-byte GEMM scratchpad", bytes));
      }
    }
    return data;
  }
};

dnnl::memory::desc make_md(int64_t bt, int64_t rows, int64_t cols, const int64_t* s, bool batched,
                           DType dt) {
  using dims = dnnl::memory::dims;
  if (!batched) return dnnl::memory::desc(dims{rows, cols}, to_dnnl(dt), dims{s[1], s[2]});
  // A broadcast batch (bt == 1 under a batched dst) may carry any stride: give it a dense one.
  const int64_t sb = bt == 1 ? std::max<int64_t>(1, rows * cols) : s[0];
  return dnnl::memory::desc(dims{bt, rows, cols}, to_dnnl(dt), dims{sb, s[1], s[2]});
}

std::shared_ptr<const Entry> create_entry(const Key& k) {
  auto e = std::make_shared<Entry>();
  const bool batched = k.bt > 1;
  const DType dta = static_cast<DType>(k.dta), dtb = static_cast<DType>(k.dtb);
  const DType dtc = static_cast<DType>(k.dtc);
  const float beta = std::bit_cast<float>(static_cast<uint32_t>(k.beta_bits));
  try {
    e->src = make_md(k.a_bt, k.M, k.K, k.as, batched, dta);
    e->wei = make_md(k.b_bt, k.K, k.N, k.bs, batched, dtb);
    e->dst = make_md(k.bt, k.M, k.N, k.cs, batched, dtc);
    const bool has_bias = k.bias_stride >= 0;
    if (has_bias) {
      const int64_t s = k.bias_stride, bs[3] = {k.N * s, k.N * s, s};
      e->bias = make_md(1, 1, k.N, bs, batched, static_cast<DType>(k.dtbias));
    }
    dnnl::primitive_attr attr;
    dnnl::post_ops po;
    int n_post = 0;
    e->scaled = k.scaled != 0;
    if (e->scaled) attr.set_output_scales(0, {DNNL_RUNTIME_F32_VAL});
    if (beta != 0.0f) {
      po.append_sum(beta);  // dst = acc + beta * dst, before any eltwise
      ++n_post;
    }
    // oneDNN's bias argument is added before the output scale: alpha·(AB + bias). Our
    // contract is alpha·AB + bias, so with alpha != 1 the bias is a binary post-op instead.
    const bool bias_as_post_op = has_bias && e->scaled;
    if (bias_as_post_op) {
      po.append_binary(dnnl::algorithm::binary_add, e->bias);
      e->bias_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(n_post) | DNNL_ARG_SRC_1;
      ++n_post;
    } else if (has_bias) {
      e->bias_arg = DNNL_ARG_BIAS;
    }
    const auto epi = static_cast<Epilogue>(k.epi);
    if (epi == Epilogue::relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    if (epi == Epilogue::gelu)
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_tanh, 0.f, 0.f);
    attr.set_post_ops(po);
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per thread: see ThreadScratch
    const dnnl::memory::desc no_bias;
    const auto desc = (has_bias && !bias_as_post_op)
                          ? dnnl::matmul::desc(e->src, e->wei, e->bias, e->dst)
                          : dnnl::matmul::desc(e->src, e->wei, no_bias, e->dst);
    const dnnl::matmul::primitive_desc pd(desc, attr, engine());
    e->prim = dnnl::matmul(pd);
    e->scratch = pd.scratchpad_desc();
    e->ok = true;
  } catch (const dnnl::error&) {
    e->ok = false;  // this ISA / oneDNN build cannot: the caller converts and runs fp32
  }
  return e;
}

Local& lookup(const Key& k) {
  thread_local std::unordered_map<Key, Local, KeyHash> local;
  auto it = local.find(k);
  if (it != local.end()) return it->second;
  std::shared_ptr<const Entry> entry;
  {
    GlobalCache& g = global_cache();
    std::lock_guard<std::mutex> lock(g.mu);
    auto git = g.map.find(k);
    if (git != g.map.end()) entry = git->second;
  }
  if (!entry) {
    // Created outside the lock (JIT takes milliseconds); a racing thread's duplicate is
    // harmless, the first one stored wins.
    auto fresh = create_entry(k);
    GlobalCache& g = global_cache();
    std::lock_guard<std::mutex> lock(g.mu);
    auto [git, inserted] = g.map.emplace(k, fresh);
    if (inserted && fresh->ok) g_created.fetch_add(1, std::memory_order_relaxed);
    entry = git->second;
  }
  Local l;
  l.entry = entry;
  if (entry->ok) {
    const auto& eng = engine();
    l.src = dnnl::memory(entry->src, eng, DNNL_MEMORY_NONE);
    l.wei = dnnl::memory(entry->wei, eng, DNNL_MEMORY_NONE);
    l.dst = dnnl::memory(entry->dst, eng, DNNL_MEMORY_NONE);
    l.args[l.nargs++] = {DNNL_ARG_SRC, l.src.get()};
    l.args[l.nargs++] = {DNNL_ARG_WEIGHTS, l.wei.get()};
    l.args[l.nargs++] = {DNNL_ARG_DST, l.dst.get()};
    if (entry->bias_arg != 0) {
      l.bias = dnnl::memory(entry->bias, eng, DNNL_MEMORY_NONE);
      l.args[l.nargs++] = {entry->bias_arg, l.bias.get()};
    }
    if (entry->scaled) {
      l.alpha = dnnl::memory({{1}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::x}, eng,
                             DNNL_MEMORY_NONE);
      l.args[l.nargs++] = {DNNL_ARG_ATTR_OUTPUT_SCALES, l.alpha.get()};
    }
    if (entry->scratch.get_size() > 0) {
      l.scratch = dnnl::memory(entry->scratch, eng, DNNL_MEMORY_NONE);
      l.args[l.nargs++] = {DNNL_ARG_SCRATCHPAD, l.scratch.get()};
    }
  }
  return local.emplace(k, std::move(l)).first->second;
}

// Runs the cached primitive for k on these pointers; false if oneDNN cannot do k.
bool run_onednn(const Key& k, const void* a, const void* b, void* c, const void* bias,
                float alpha) {
  Local& l = lookup(k);
  if (!l.entry->ok) return false;
  // Plain layouts have no padding to zero, so this only swaps pointers (~10 ns each).
  thread_local dnnl::stream strm(engine());
  thread_local ThreadScratch scratch;
  l.src.set_data_handle(const_cast<void*>(a), strm);
  l.wei.set_data_handle(const_cast<void*>(b), strm);
  l.dst.set_data_handle(c, strm);
  if (l.entry->bias_arg != 0) l.bias.set_data_handle(const_cast<void*>(bias), strm);
  if (l.entry->scaled) l.alpha.set_data_handle(&alpha, strm);
  if (l.scratch) l.scratch.set_data_handle(scratch.get(l.entry->scratch.get_size()), strm);
  // The C entry point with a prebuilt argument array: the C++ execute() builds a vector
  // from an unordered_map on every call.
  const dnnl_status_t st = dnnl_primitive_execute(l.entry->prim.get(), strm.get(), l.nargs, l.args);
  if (st != dnnl_success)
    throw BackendError(
        fmt::format("gemm: oneDNN matmul execution failed (status {})", static_cast<int>(st)));
  strm.wait();
  return true;
}

// ---------------------------------------------------------------------------------------
// op(X) seen as a logical [bt, rows, cols] matrix with element strides.
struct Mat {
  const char* ptr = nullptr;
  int64_t bt = 1, rows = 0, cols = 0;
  int64_t s[3] = {0, 0, 0};  // batch, row, col
};

// Strides of extent-1 dims are arbitrary in a Tensor; oneDNN wants them consistent with a
// plain layout (and leading dims >= the extent), so give them the value a dense layout has.
void normalize(int64_t rows, int64_t cols, int64_t* s) {
  if (cols == 1) s[2] = 1;
  if (rows == 1) s[1] = s[2] == 1 ? cols : 1;
}

Mat logical(const Tensor& t, bool trans) {
  Mat m;
  m.ptr = static_cast<const char*>(t.raw_data());
  const int64_t d = t.dim();
  if (d == 3) {
    m.bt = t.size(0);
    m.s[0] = t.strides()[0];
  }
  m.rows = t.size(-2);
  m.cols = t.size(-1);
  m.s[1] = t.strides()[d - 2];
  m.s[2] = t.strides()[d - 1];
  if (trans) {
    std::swap(m.rows, m.cols);
    std::swap(m.s[1], m.s[2]);
  }
  normalize(m.rows, m.cols, m.s);
  if (m.bt > 1 && m.s[0] == 0) m.bt = 1;  // an expanded (stride-0) batch is a shared matrix
  return m;
}

bool unit_stride(const Mat& m) { return m.s[1] == 1 || m.s[2] == 1; }

std::string operand_str(const Tensor& t, bool trans) {
  return fmt::format("{}{}", t.str(), trans ? "ᵀ" : "");
}

float apply_epilogue(float v, Epilogue epi) {
  switch (epi) {
    case Epilogue::relu:
      return v > 0.0f ? v : 0.0f;
    case Epilogue::gelu: {
      const double x = v;
      return static_cast<float>(0.5 * x *
                                (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
    }
    case Epilogue::none:
      break;
  }
  return v;
}

// K == 0: the product is empty, C = epi(bias + beta·C) (beta == 0 does not read C).
void gemm_k0(Tensor& c, float beta, const Tensor* bias, Epilogue epi) {
  std::vector<float> v = beta != 0.0f ? c.to_vector() : std::vector<float>(c.numel(), 0.0f);
  std::vector<float> bv = bias ? bias->to_vector() : std::vector<float>();
  const int64_t N = c.size(-1);
  for (size_t i = 0; i < v.size(); ++i) {
    float x = beta != 0.0f ? beta * v[i] : 0.0f;
    if (bias) x += bv[i % N];
    v[i] = apply_epilogue(x, epi);
  }
  c.copy_from(Tensor::from_vector(v, c.shape(), DType::f32));
}

void gemm_widened(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
                  float alpha, float beta, const Tensor* bias, Epilogue epi);

// oneDNN 2.6's sgemm without AVX-512 sends a product with a short side (1/M + 1/N >= 0.0038,
// e.g. an MLP's batch of 256 against width 2048) to its no-copy kernel, which reads B in
// place. When B's rows lie a multiple of 256 floats apart (1 KiB: every power-of-two width
// from 256) they fall into the same cache sets and a plain-B product runs at about half speed:
// MLP dX [256, 2048]·[2048, 2048] 24 ms, 11 ms with B's rows 2064 floats apart (an AVX2 EPYC,
// 2 threads). So B is copied with padded rows first. The copy costs a pass over B, so only
// products with M >= 128 rows take it (at M = 64 the gain and the copy are about even). AVX-512
// CPUs run other kernels under other rules; not measured there, so left as they are.
bool sgemm_ld_aliases(int64_t M, int64_t N, int64_t ldb) {
  static const bool avx512 = [] {
    using I = dnnl::cpu_isa;
    const I isa = dnnl::get_effective_cpu_isa();
    return isa == I::avx512_core || isa == I::avx512_core_vnni || isa == I::avx512_core_bf16 ||
           isa == I::avx512_core_amx;
  }();
  return !avx512 && M >= 128 && ldb % 256 == 0 && 1.0 / M + 1.0 / N >= 0.0038;
}
constexpr int64_t kRowPad = 16;  // floats: rows 64 bytes apart from the aliasing stride

// An fp32 copy of the 2-d `b` [K, N] (any dtype, unit column stride) whose rows are N + 16
// floats apart: a view [K, N] of a [K, N + 16] storage.
Tensor padded_f32(const Tensor& b) {
  const int64_t K = b.size(0), N = b.size(1);
  Tensor p = Tensor::empty({K, N + kRowPad}, DType::f32).slice(1, 0, N);
  const char* src = static_cast<const char*>(b.raw_data());
  const int64_t src_row = b.strides()[0] * static_cast<int64_t>(b.element_size());
  float* dst = p.data<float>();
  const DType dt = b.dtype();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < K; ++r)
    convert(src + r * src_row, dt, dst + r * (N + kRowPad), DType::f32, static_cast<size_t>(N));
  return p;
}

// C = epi(alpha·op(A)·op(B) + bias + beta·C), the arguments checked by the caller (ops/gemm.cpp).
void gemm_run(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
              float alpha, float beta, const Tensor* bias, Epilogue epi) {
  const bool batched = a.dim() == 3 || b.dim() == 3;
  const int64_t M = ta ? a.size(-1) : a.size(-2), K = ta ? a.size(-2) : a.size(-1);
  const int64_t N = tb ? b.size(-2) : b.size(-1);
  const int64_t bt = a.dim() == 3 ? a.size(0) : (b.dim() == 3 ? b.size(0) : 1);
  if (M == 0 || N == 0 || bt == 0) return;
  if (K == 0) return gemm_k0(c, beta, bias, epi);

  // --- layouts oneDNN's fast kernels cannot take are copied (rare: views with no unit
  // stride in either of the last two dims).
  Mat A = logical(a, ta), B = logical(b, tb);
  if (!unit_stride(A)) return gemm_run(op, a.contiguous(), ta, b, tb, c, alpha, beta, bias, epi);
  if (!unit_stride(B)) return gemm_run(op, a, ta, b.contiguous(), tb, c, alpha, beta, bias, epi);
  if (b.dtype() == DType::f32 && !batched && !tb && B.s[2] == 1 && sgemm_ld_aliases(M, N, B.s[1]))
    return gemm_run(op, a, ta, padded_f32(b), tb, c, alpha, beta, bias, epi);
  Mat C = logical(c, false);
  if (C.s[2] != 1) {
    if (C.s[1] == 1 && !bias) {
      // Column-major C: compute Cᵀ = op(B)ᵀ · op(A)ᵀ, which is row-major (oneDNN only has
      // slow reference kernels for a transposed dst).
      Mat At = B, Bt = A, Ct = C;
      std::swap(At.rows, At.cols), std::swap(At.s[1], At.s[2]);
      std::swap(Bt.rows, Bt.cols), std::swap(Bt.s[1], Bt.s[2]);
      std::swap(Ct.rows, Ct.cols), std::swap(Ct.s[1], Ct.s[2]);
      A = At, B = Bt, C = Ct;
    } else {
      Tensor tmp = beta != 0.0f ? c.clone() : Tensor::empty(c.shape(), c.dtype());
      gemm_run(op, a, ta, b, tb, tmp, alpha, beta, bias, epi);
      c.copy_from(tmp);
      return;
    }
  }

  Key k;
  std::memset(&k, 0, sizeof(k));
  k.bt = C.bt;
  k.a_bt = A.bt;
  k.b_bt = B.bt;
  k.M = C.rows;
  k.N = C.cols;
  k.K = A.cols;
  // Batch folding: a batched A over a shared B whose rows run on into the next batch's is
  // one tall GEMM [Bt·M, K]·[K, N] (faster than Bt small ones); likewise a shared A over a
  // batched B whose columns run on is one wide GEMM.
  if (k.bt > 1 && A.bt == k.bt && B.bt == 1 && A.s[0] == k.M * A.s[1] && C.s[0] == k.M * C.s[1]) {
    k.M *= k.bt;
    k.bt = k.a_bt = 1;
  } else if (k.bt > 1 && A.bt == 1 && B.bt == k.bt && B.s[0] == k.N * B.s[2] &&
             C.s[0] == k.N * C.s[2]) {
    k.N *= k.bt;
    k.bt = k.b_bt = 1;
  }
  for (int i = 0; i < 3; ++i) k.as[i] = A.s[i], k.bs[i] = B.s[i], k.cs[i] = C.s[i];
  normalize(k.M, k.K, k.as);  // again: folding may have grown an extent-1 dim
  normalize(k.K, k.N, k.bs);
  normalize(k.M, k.N, k.cs);
  if (k.bt == 1) k.as[0] = k.bs[0] = k.cs[0] = 0;  // unused: keep equal keys equal
  if (A.bt == 1) k.as[0] = 0;
  if (B.bt == 1) k.bs[0] = 0;
  k.bias_stride = bias ? bias->strides()[0] : -1;
  if (bias && bias->size(0) == 1) k.bias_stride = 1;
  k.dta = static_cast<int64_t>(a.dtype());
  k.dtb = static_cast<int64_t>(b.dtype());
  k.dtc = static_cast<int64_t>(c.dtype());
  k.dtbias = bias ? static_cast<int64_t>(bias->dtype()) : 0;
  k.scaled = alpha != 1.0f;
  k.beta_bits = std::bit_cast<uint32_t>(beta);
  k.epi = static_cast<int64_t>(epi);
  if (run_onednn(k, A.ptr, B.ptr, const_cast<char*>(C.ptr), bias ? bias->raw_data() : nullptr,
                 alpha))
    return;

  // --- oneDNN cannot run these dtypes on this CPU (f16 without AVX512-FP16, bf16 without
  // AVX-512): convert to fp32, compute there (same fp32 accumulation), round once into C.
  const bool all_f32 =
      a.dtype() == DType::f32 && c.dtype() == DType::f32 && (!bias || bias->dtype() == DType::f32);
  if (all_f32)
    throw BackendError(
        fmt::format("{}: A {} · B {} -> C {}: oneDNN cannot create an fp32 matmul "
                    "(epilogue {})",
                    op, operand_str(a, ta), operand_str(b, tb), c.str(), epilogue_name(epi)));
  gemm_widened(op, a, ta, b, tb, c, alpha, beta, bias, epi);
}

// The widening fallback. Whole fp32 copies of a training step's activations are tens of MiB
// (GPT batch 32: 48 MiB for one [8192, 1536] operand) and they came on top of the peak, so 2-d
// products go by pieces of about 2^21 elements (8 MiB widened; at 2^20 the extra calls cost a
// measurable 2-3% on GPT batch 8's [2048, 1536]·[1536, 384]):
//  - a 16-bit C by blocks of its rows: those rows of op(A) and of C widened, B once;
//  - an fp32 C (the weight gradients, no bias or epilogue) by blocks of the reduction: the
//    two operands' slices widened and summed into C in fp32.
// Batched products, and anything small, widen whole.
void gemm_widened(const char* op, const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
                  float alpha, float beta, const Tensor* bias, Epilogue epi) {
  constexpr int64_t kPiece = int64_t{1} << 21;
  auto block = [&](int64_t per_row, int64_t extent) {
    const int64_t n = std::max<int64_t>(64, kPiece / std::max<int64_t>(per_row, 1) / 64 * 64);
    return std::min(n, extent);
  };
  Tensor bias32;
  if (bias) bias32 = bias->to(DType::f32);
  const Tensor* bias_p = bias ? &bias32 : nullptr;
  const bool two_d = a.dim() == 2 && b.dim() == 2 && c.dim() == 2;
  const int64_t M = c.size(-2), N = c.size(-1), K = ta ? a.size(-2) : a.size(-1);
  // Widened straight into padded rows where the fp32 product would copy B again for them.
  const bool pad_b = two_d && !tb && b.strides()[1] == 1 && sgemm_ld_aliases(M, N, b.strides()[0]);
  if (two_d && c.dtype() != DType::f32 && M > block(std::max(K, N), M)) {
    const Tensor b32 = pad_b ? padded_f32(b) : b.to(DType::f32);
    const int64_t rows = block(std::max(K, N), M);
    for (int64_t m0 = 0; m0 < M; m0 += rows) {
      const int64_t m1 = std::min(M, m0 + rows);
      const Tensor a32 = (ta ? a.slice(1, m0, m1) : a.slice(0, m0, m1)).to(DType::f32);
      Tensor cp = c.slice(0, m0, m1);
      Tensor c32 = beta != 0.0f ? cp.to(DType::f32) : Tensor::empty({m1 - m0, N}, DType::f32);
      gemm_run(op, a32, ta, b32, tb, c32, alpha, beta, bias_p, epi);
      cp.copy_from(c32);
    }
    return;
  }
  if (two_d && c.dtype() == DType::f32 && !bias && epi == Epilogue::none &&
      K > block(std::max(M, N), K)) {
    const int64_t depth = block(std::max(M, N), K);
    for (int64_t k0 = 0; k0 < K; k0 += depth) {
      const int64_t k1 = std::min(K, k0 + depth);
      const Tensor a32 = (ta ? a.slice(0, k0, k1) : a.slice(1, k0, k1)).to(DType::f32);
      const Tensor b32 = (tb ? b.slice(1, k0, k1) : b.slice(0, k0, k1)).to(DType::f32);
      gemm_run(op, a32, ta, b32, tb, c, alpha, k0 == 0 ? beta : 1.0f, nullptr, epi);
    }
    return;
  }
  const Tensor a32 = a.to(DType::f32), b32 = pad_b ? padded_f32(b) : b.to(DType::f32);
  if (c.dtype() == DType::f32) {
    gemm_run(op, a32, ta, b32, tb, c, alpha, beta, bias_p, epi);
    return;
  }
  Tensor c32 = beta != 0.0f ? c.to(DType::f32) : Tensor::empty(c.shape(), DType::f32);
  gemm_run(op, a32, ta, b32, tb, c32, alpha, beta, bias_p, epi);
  c.copy_from(c32);
}

const char* isa_name(dnnl::cpu_isa isa) {
  using I = dnnl::cpu_isa;
  switch (isa) {
    case I::sse41:
      return "sse41";
    case I::avx:
      return "avx";
    case I::avx2:
      return "avx2";
    case I::avx2_vnni:
      return "avx2_vnni";
    case I::avx512_mic:
      return "avx512_mic";
    case I::avx512_mic_4ops:
      return "avx512_mic_4ops";
    case I::avx512_core:
      return "avx512_core";
    case I::avx512_core_vnni:
      return "avx512_core_vnni";
    case I::avx512_core_bf16:
      return "avx512_core_bf16";
    case I::avx512_core_amx:
      return "avx512_core_amx";
    case I::all:
      return "all";
    default:
      break;
  }
  return "unknown";
}

}  // namespace

namespace cpu {

void CpuBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                      const Tensor& c_in, float alpha, float beta, const Tensor* bias,
                      Epilogue epi) {
  Tensor c = c_in;
  // A bias with a non-unit stride given to oneDNN as a strided memory descriptor (as the bias
  // argument or as a binary post-op) gave wrong sums (test_backend_ops, gemm_ex "strided
  // bias": off by 13% in fp32): such a bias is copied to a dense vector first.
  Tensor dense_bias;
  if (bias && bias->size(0) > 1 && bias->strides()[0] != 1) {
    dense_bias = bias->contiguous();
    bias = &dense_bias;
  }
  gemm_run("gemm", a, trans_a, b, trans_b, c, alpha, beta, bias, epi);
}

}  // namespace cpu

GemmBackendInfo gemm_backend_info() {
  GemmBackendInfo info;
  info.library = "oneDNN";
  const dnnl_version_t* v = dnnl::version();
  info.version = fmt::format("{}.{}.{}", v->major, v->minor, v->patch);
  info.isa = isa_name(dnnl::get_effective_cpu_isa());
  info.threads = omp_get_max_threads();
  return info;
}

int64_t gemm_cache_size() { return g_created.load(std::memory_order_relaxed); }

}  // namespace mixtrain
