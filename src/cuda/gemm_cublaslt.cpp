// The CUDA backend's GEMM on cuBLASLt. cuBLASLt is column-major and mixtrain row-major, so a
// product C = op(A)·op(B) is run as Cᵀ = op(B)ᵀ·op(A)ᵀ: a row-major matrix with unit column
// stride is the column-major matrix of its transpose, with the same leading dimension, so no
// operand moves. Strided views with a unit stride in one of their last two dims are passed as
// they are (leading dimension, batch stride; a shared 2-d operand of a batched product has
// batch stride 0); other layouts are copied first. Accumulation is fp32 (CUBLAS_COMPUTE_32F;
// TF32 for fp32 inputs only on request, gemm_cublaslt.h); the bias and ReLU/GELU (cuBLASLt's
// GELU is the tanh approximation, as ours) are cuBLASLt's epilogue, in fp32 before the one
// rounding into C: D = epi(alpha·op(A)·op(B) + beta·C + bias).
//
// Dtype combinations cuBLASLt has no kernel for (fp32 inputs into a 16-bit C; bf16 into fp16
// and the reverse; a bias whose dtype is not C's where converting it could round) run into an
// fp32 C, rounded once into C by the backend's copy; A and B of different dtypes are widened
// to fp32 (exact) first. Descriptors and the heuristic's algorithm are cached per shape,
// strides, dtypes, epilogue and pointer alignments. Not yet run on a GPU.
#include "cuda/gemm_cublaslt.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "backend/backend.h"
#include "cuda/runtime.h"
#include "mixtrain/error.h"

namespace mixtrain::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw BackendError(fmt::format("cuda: gemm: {}: {} (cuBLASLt status {})", what,
                                   cublasLtGetStatusString(st), static_cast<int>(st)));
}

// The library handle and the workspace, created once for the process (the backend drives one
// GPU) and never destroyed: the backend lives until exit.
struct Lt {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};
const Lt& lt() {
  static const Lt* l = [] {
    auto* made = new Lt;
    check_lt(cublasLtCreate(&made->handle), "creating the cuBLASLt handle");
    check(cudaMalloc(&made->workspace, kWorkspaceBytes), "allocating the cuBLASLt workspace");
    return made;
  }();
  return *l;
}

// -1: not decided yet (the environment is read at the first GEMM); 0 off; 1 on.
std::atomic<int> g_tf32{-1};
std::atomic<int64_t> g_plans{0};

cudaDataType to_cuda(DType dt) {
  switch (dt) {
    case DType::f32:
      return CUDA_R_32F;
    case DType::bf16:
      return CUDA_R_16BF;
    case DType::f16:
      return CUDA_R_16F;
    default:
      break;
  }
  throw DTypeError(fmt::format("cuda: gemm: dtype {} (f32, bf16, f16 only)", dtype_name(dt)));
}

// Whether cuBLASLt multiplies A, B of dtype ab into C of dtype c with fp32 accumulation.
bool native(DType ab, DType c) { return c == ab || c == DType::f32; }

// op(X) seen as a logical [bt, rows, cols] matrix with element strides (as gemm_onednn.cpp).
struct Mat {
  const char* ptr = nullptr;
  int64_t bt = 1, rows = 0, cols = 0;
  int64_t s[3] = {0, 0, 0};  // batch, row, col
};

// Strides of extent-1 dims are arbitrary in a Tensor; give them the value a dense layout has.
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
  m.s[1] = t.strides()[static_cast<size_t>(d - 2)];
  m.s[2] = t.strides()[static_cast<size_t>(d - 1)];
  if (trans) {
    std::swap(m.rows, m.cols);
    std::swap(m.s[1], m.s[2]);
  }
  normalize(m.rows, m.cols, m.s);
  if (m.bt > 1 && m.s[0] == 0) m.bt = 1;  // an expanded (stride-0) batch is a shared matrix
  return m;
}

// A column-major operand for cuBLASLt: the stored rows x cols with leading dimension ld, and
// whether cuBLASLt must transpose it.
struct Operand {
  int64_t rows = 0, cols = 0, ld = 0;
  bool trans = false;
};

// op(X)ᵀ (the operand the column-major product needs) from the logical op(X): with a unit
// column stride op(X) is stored as column-major op(X)ᵀ (no transpose); with a unit row stride
// as column-major op(X) (transposed by cuBLASLt). False when the strides allow neither.
bool transposed_operand(const Mat& m, Operand* o) {
  if (m.s[2] == 1 && m.s[1] >= std::max<int64_t>(1, m.cols)) {
    *o = {m.cols, m.rows, m.s[1], false};
    return true;
  }
  if (m.s[1] == 1 && m.s[2] >= std::max<int64_t>(1, m.rows)) {
    *o = {m.rows, m.cols, m.s[2], true};
    return true;
  }
  return false;
}

// The largest power of two (up to 256) dividing the address: the alignment the heuristic may
// assume.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al /= 2;
  return al;
}

// ---- plans --------------------------------------------------------------------------------

struct Key {
  int64_t m, n, k, batch;                  // cuBLASLt's (m = N, n = M)
  int64_t lda, ldb, ldc, sa, sb, sc;       // leading dims and batch strides of A', B', C
  int64_t a_rows, a_cols, b_rows, b_cols;  // stored extents of A', B'
  int64_t ta, tb, dt_ab, dt_c, dt_bias, epi, tf32, device;
  int64_t align_a, align_b, align_c, align_bias;
};
static_assert(sizeof(Key) == 26 * sizeof(int64_t), "Key must have no padding");

// The descriptors and the algorithm of one key (ok = false: the heuristic found none).
struct Plan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

cublasLtMatrixLayout_t make_layout(DType dt, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                                   int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  check_lt(cublasLtMatrixLayoutCreate(&l, to_cuda(dt), static_cast<uint64_t>(rows),
                                      static_cast<uint64_t>(cols), ld),
           "creating a matrix layout");
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    check_lt(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                              sizeof(count)),
             "setting the batch count");
    check_lt(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                              &stride, sizeof(stride)),
             "setting the batch stride");
  }
  return l;
}

cublasLtEpilogue_t epilogue_of(Epilogue epi, bool bias) {
  switch (epi) {
    case Epilogue::relu:
      return bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    case Epilogue::gelu:
      return bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    case Epilogue::none:
      break;
  }
  return bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
}

std::unique_ptr<Plan> make_plan(const Key& k, const void* bias) {
  auto p = std::make_unique<Plan>();
  const DType ab = static_cast<DType>(k.dt_ab), dc = static_cast<DType>(k.dt_c);
  const cublasComputeType_t compute = k.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  check_lt(cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F), "creating a matmul descriptor");
  const cublasOperation_t ta = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)),
           "setting transa");
  check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)),
           "setting transb");
  const cublasLtEpilogue_t epi = epilogue_of(static_cast<Epilogue>(k.epi), k.dt_bias >= 0);
  check_lt(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)),
      "setting the epilogue");
  if (k.dt_bias >= 0) {
    // The bias is a vector of C's dtype (the caller converts it): cuBLASLt's default.
    check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                            sizeof(bias)),
             "setting the bias pointer");
  }
  p->a = make_layout(ab, k.a_rows, k.a_cols, k.lda, k.batch, k.sa);
  p->b = make_layout(ab, k.b_rows, k.b_cols, k.ldb, k.batch, k.sb);
  p->c = make_layout(dc, k.m, k.n, k.ldc, k.batch, k.sc);

  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "creating a matmul preference");
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t al[4] = {static_cast<uint32_t>(k.align_a), static_cast<uint32_t>(k.align_b),
                          static_cast<uint32_t>(k.align_c), static_cast<uint32_t>(k.align_c)};
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  const cublasLtMatmulPreferenceAttributes_t which[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i)
    st = cublasLtMatmulPreferenceSetAttribute(pref, which[i], &al[i], sizeof(al[i]));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(lt().handle, p->desc, p->a, p->b, p->c, p->c, pref, 1,
                                        &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    p->algo = result.algo;
    p->ok = true;
    g_plans.fetch_add(1, std::memory_order_relaxed);
  }
  return p;
}

struct Cache {
  std::mutex mu;  // held across a plan's use too: the bias pointer is set on its descriptor
  std::unordered_map<Key, std::unique_ptr<Plan>, PodKeyHash<Key>, PodKeyEq<Key>> map;
};
Cache& cache() {
  static Cache* c = new Cache;  // never destroyed (plans hold library objects)
  return *c;
}

int current_device() {
  int dev = 0;
  check(cudaGetDevice(&dev), "gemm: current device");
  return dev;
}

std::string operand_str(const Tensor& t, bool trans) {
  return fmt::format("{}{}", t.str(), trans ? "ᵀ" : "");
}

// K == 0: the product is empty, C = epi(bias + beta·C): run by the CPU backend on a host copy
// of C (rare, and the CPU defines the semantics).
void gemm_k0(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c, float alpha,
             float beta, const Tensor* bias, Epilogue epi) {
  const Tensor ah = Tensor::empty(a.shape(), a.dtype()), bh = Tensor::empty(b.shape(), b.dtype());
  Tensor ch = beta != 0.0f ? c.to(Device::cpu) : Tensor::empty(c.shape(), c.dtype());
  Tensor biash;
  if (bias) biash = bias->to(Device::cpu);
  backend_for(Device::cpu).gemm(ah, ta, bh, tb, ch, alpha, beta, bias ? &biash : nullptr, epi);
  Tensor(c).copy_from(ch);
}

void run(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c, float alpha,
         float beta, const Tensor* bias, Epilogue epi) {
  const bool batched = a.dim() == 3 || b.dim() == 3;
  const int64_t M = ta ? a.size(-1) : a.size(-2), K = ta ? a.size(-2) : a.size(-1);
  const int64_t N = tb ? b.size(-2) : b.size(-1);
  const int64_t bt = a.dim() == 3 ? a.size(0) : (b.dim() == 3 ? b.size(0) : 1);
  if (M == 0 || N == 0 || bt == 0) return;
  if (K == 0) return gemm_k0(a, ta, b, tb, c, alpha, beta, bias, epi);

  // --- dtypes: A and B of one dtype (widened to fp32, exactly, when they differ); C and the
  // bias in a combination cuBLASLt runs, else an fp32 C rounded once into C.
  if (a.dtype() != b.dtype()) {
    const Tensor a32 = a.to(DType::f32), b32 = b.to(DType::f32);
    return run(a32, ta, b32, tb, c, alpha, beta, bias, epi);
  }
  const DType ab = a.dtype();
  const bool bias_ok = !bias || bias->dtype() == c.dtype() || c.dtype() == DType::f32;
  if (!native(ab, c.dtype()) || !bias_ok) {
    Tensor c32 = beta != 0.0f ? c.to(DType::f32) : Tensor::empty(c.shape(), DType::f32, c.device());
    run(a, ta, b, tb, c32, alpha, beta, bias, epi);
    Tensor(c).copy_from(c32);
    return;
  }
  // The bias as a contiguous vector of C's dtype (exact: same dtype, or widened into fp32).
  Tensor bias_c;
  if (bias) {
    bias_c = *bias;
    if (bias_c.dtype() != c.dtype())
      bias_c = bias_c.to(c.dtype());
    else if (bias_c.size(0) > 1 && bias_c.strides()[0] != 1)
      bias_c = bias_c.contiguous();
  }

  // --- layouts: operands without a unit stride in their last two dims, and a C that is not
  // row-major with unit column stride, are copied.
  Mat A = logical(a, ta), B = logical(b, tb), C = logical(c, false);
  Operand oa, ob;  // cuBLASLt's A' = op(B)ᵀ and B' = op(A)ᵀ
  if (!transposed_operand(B, &oa)) return run(a, ta, b.contiguous(), tb, c, alpha, beta, bias, epi);
  if (!transposed_operand(A, &ob)) return run(a.contiguous(), ta, b, tb, c, alpha, beta, bias, epi);
  if (C.s[2] != 1 || C.s[1] < N || (batched && C.bt > 1 && C.s[0] < M * C.s[1])) {
    Tensor tmp = beta != 0.0f ? c.clone() : Tensor::empty(c.shape(), c.dtype(), c.device());
    run(a, ta, b, tb, tmp, alpha, beta, bias, epi);
    Tensor(c).copy_from(tmp);
    return;
  }

  Key k;
  std::memset(&k, 0, sizeof(k));
  k.m = N;
  k.n = M;
  k.k = K;
  k.batch = C.bt;
  k.ldc = C.s[1];
  k.sc = C.bt > 1 ? C.s[0] : 0;
  k.sa = B.bt > 1 ? B.s[0] : 0;  // a shared operand: batch stride 0
  k.sb = A.bt > 1 ? A.s[0] : 0;
  // Batch folding: a batched A over a shared B whose rows run on into the next batch's is one
  // tall product [Bt·M, K]·[K, N] (cuBLASLt's n grows).
  if (k.batch > 1 && A.bt == k.batch && B.bt == 1 && !ob.trans && A.s[0] == M * A.s[1] &&
      C.s[0] == M * C.s[1]) {
    k.n = M * k.batch;
    ob.cols = k.n;
    k.batch = 1;
    k.sa = k.sb = k.sc = 0;
  }
  k.a_rows = oa.rows;
  k.a_cols = oa.cols;
  k.lda = oa.ld;
  k.ta = oa.trans;
  k.b_rows = ob.rows;
  k.b_cols = ob.cols;
  k.ldb = ob.ld;
  k.tb = ob.trans;
  k.dt_ab = static_cast<int64_t>(ab);
  k.dt_c = static_cast<int64_t>(c.dtype());
  k.dt_bias = bias ? static_cast<int64_t>(bias_c.dtype()) : -1;
  k.epi = static_cast<int64_t>(epi);
  k.tf32 = ab == DType::f32 && tf32();
  k.device = current_device();
  k.align_a = alignment(B.ptr);
  k.align_b = alignment(A.ptr);
  k.align_c = alignment(C.ptr);
  const void* bias_ptr = bias ? bias_c.raw_data() : nullptr;
  k.align_bias = bias ? alignment(bias_ptr) : 0;

  Cache& cc = cache();
  std::lock_guard<std::mutex> lock(cc.mu);
  auto it = cc.map.find(k);
  if (it == cc.map.end()) it = cc.map.emplace(k, make_plan(k, bias_ptr)).first;
  const Plan& p = *it->second;
  if (!p.ok)
    throw BackendError(
        fmt::format("cuda: gemm: A {} · B {} -> C {}: cuBLASLt has no algorithm for this product "
                    "(epilogue {}{})",
                    operand_str(a, ta), operand_str(b, tb), c.str(), epilogue_name(epi),
                    bias ? fmt::format(", bias {}", bias->str()) : std::string()));
  if (bias)
    check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                            sizeof(bias_ptr)),
             "setting the bias pointer");
  check_lt(cublasLtMatmul(lt().handle, p.desc, &alpha, B.ptr, p.a, A.ptr, p.b, &beta, C.ptr, p.c,
                          const_cast<char*>(C.ptr), p.c, &p.algo, lt().workspace, kWorkspaceBytes,
                          stream()),
           "cublasLtMatmul");
  // bias_c (a converted copy) may be released now: a later allocation that reuses its memory
  // is ordered after this product on the same stream.
}

}  // namespace

void set_tf32(bool on) { g_tf32.store(on ? 1 : 0); }

bool tf32() {
  int v = g_tf32.load();
  if (v < 0) {
    const char* env = std::getenv("MIXTRAIN_CUDA_TF32");
    const int from_env = env && env[0] == '1' && env[1] == '\0' ? 1 : 0;
    g_tf32.compare_exchange_strong(v, from_env);  // set_tf32 in between wins
    v = g_tf32.load();
  }
  return v == 1;
}

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
          float alpha, float beta, const Tensor* bias, Epilogue epi) {
  run(a, trans_a, b, trans_b, c, alpha, beta, bias, epi);
}

double gemm_peak_tflops(int m, int n, int k, DType dt) {
  if (m <= 0 || n <= 0 || k <= 0)
    throw ShapeError(fmt::format("gemm_peak_tflops: m, n, k = {}, {}, {}", m, n, k));
  Tensor a = Tensor::empty({m, k}, dt, Device::cuda), b = Tensor::empty({k, n}, dt, Device::cuda);
  Tensor c = Tensor::empty({m, n}, dt, Device::cuda);
  a.fill(0.5f);
  b.fill(0.25f);
  for (int i = 0; i < 3; ++i) run(a, false, b, false, c, 1.0f, 0.0f, nullptr, Epilogue::none);
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "gemm_peak_tflops: creating an event");
  check(cudaEventCreate(&stop), "gemm_peak_tflops: creating an event");
  // About 50 ms of products at 1 PFLOP/s, at least 10 of them.
  const double flops = 2.0 * m * n * k;
  const int reps = static_cast<int>(std::clamp(5e13 / flops, 10.0, 1000.0));
  check(cudaEventRecord(start, stream()), "gemm_peak_tflops: recording an event");
  for (int i = 0; i < reps; ++i) run(a, false, b, false, c, 1.0f, 0.0f, nullptr, Epilogue::none);
  check(cudaEventRecord(stop, stream()), "gemm_peak_tflops: recording an event");
  check(cudaEventSynchronize(stop), "gemm_peak_tflops: waiting for the products");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "gemm_peak_tflops: elapsed time");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return flops * reps / (static_cast<double>(ms) * 1e-3) / 1e12;
}

void* cublaslt_handle() { return lt().handle; }

void* cublaslt_workspace(size_t* bytes) {
  *bytes = kWorkspaceBytes;
  return lt().workspace;
}

int64_t gemm_plan_count() { return g_plans.load(std::memory_order_relaxed); }

}  // namespace mixtrain::cuda
