// The CUDA backend's native fp8 GEMM on cuBLASLt (sm_89 and above): C = scale_a_inv ·
// scale_b_inv · op(A)·op(B) (+ bias) from E4M3/E5M2 codes, fp32 accumulation, one rounding into
// C. Compiled, not yet run on a GPU.
//
// cuBLASLt's FP8 kernels take only the "TN" layout (its A transposed, its B not: in its
// column-major terms both operands K-contiguous), 16-byte leading dimensions and aligned
// pointers, fp32 compute and scale types, and no E5M2 x E5M2 product. As in gemm_cublaslt.cpp
// the row-major product C = op(A)·op(B) runs as Cᵀ = op(B)ᵀ·op(A)ᵀ; with op(A) stored as a
// row-major [M, K] and op(B) as a row-major [N, K] (both K-contiguous) that is exactly TN. An
// operand stored the other way is copied transposed first by the backend's strided copy (a
// bit copy of the 1-byte codes): linear's backward products pass W, dYᵀ and Xᵀ that way. M, N
// and K must be multiples of 16 (the 16-byte leading dims of A', B' and, for a bf16 C, of C), so
// the caller knows in advance which products run here.
//
// The scale factors: cuBLASLt's A/B scale pointers (device floats) are left unset (1); the
// product scale_a_inv · scale_b_inv, rounded once in fp32, is the host alpha, as the emulated
// path (ops/matmul.cpp) passes it to gemm(): the per-tensor scales are the host's already. Fast
// accumulation is off (CUBLASLT_MATMUL_DESC_FAST_ACCUM = 0: the tensor cores' partial sums,
// kept at less than fp32's precision, are added into fp32 accumulators periodically). The bias, for
// a bf16 C only (cuBLASLt's fp8 kernels take a bf16 bias for a bf16 output, set explicitly with
// BIAS_DATA_TYPE; an fp32 output has bias dtype rules of its own, which linear does not need), is
// the epilogue's, added to the fp32 sums before the rounding. Descriptors and the heuristic's
// algorithm are cached per shape, dtypes, bias and alignment.
#include "cuda/gemm_fp8.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "cuda/gemm_cublaslt.h"
#include "cuda/runtime.h"
#include "mixtrain/error.h"

namespace mixtrain::cuda {

namespace {

void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw BackendError(fmt::format("cuda: fp8 gemm: {}: {} (cuBLASLt status {})", what,
                                   cublasLtGetStatusString(st), static_cast<int>(st)));
}

cublasLtHandle_t handle() { return static_cast<cublasLtHandle_t>(cublaslt_handle()); }

bool is_fp8(DType dt) { return dt == DType::e4m3 || dt == DType::e5m2; }

cudaDataType to_cuda(DType dt) {
  switch (dt) {
    case DType::e4m3:
      return CUDA_R_8F_E4M3;
    case DType::e5m2:
      return CUDA_R_8F_E5M2;
    case DType::bf16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

// The largest power of two (up to 256) dividing the address.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al /= 2;
  return al;
}

int current_device() {
  int dev = 0;
  check(cudaGetDevice(&dev), "fp8 gemm: current device");
  return dev;
}

// cuBLASLt's view: D [m, n] (column-major, m = N, n = M) = A'ᵀ · B', A' the [K, N] column-major
// B (its row-major [N, K]) and B' the [K, M] column-major A (its row-major [M, K]).
struct Key {
  int64_t m, n, k;
  int64_t dt_a, dt_b, dt_c;  // of A' (mixtrain's B), B' (mixtrain's A) and C
  int64_t bias, device, align;
};
static_assert(sizeof(Key) == 9 * sizeof(int64_t), "Key must have no padding");

struct Plan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

std::unique_ptr<Plan> make_plan(const Key& k, const void* bias) {
  auto p = std::make_unique<Plan>();
  check_lt(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
           "creating a matmul descriptor");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;  // "TN"
  check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)),
           "setting transa");
  check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)),
           "setting transb");
  const int8_t fast_accum = 0;
  check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum,
                                          sizeof(fast_accum)),
           "turning fast accumulation off");
  const cublasLtEpilogue_t epi = k.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  check_lt(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)),
      "setting the epilogue");
  if (k.bias) {
    const int32_t bias_type = CUDA_R_16BF;
    check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                            &bias_type, sizeof(bias_type)),
             "setting the bias dtype");
    check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                            sizeof(bias)),
             "setting the bias pointer");
  }
  check_lt(cublasLtMatrixLayoutCreate(&p->a, to_cuda(static_cast<DType>(k.dt_a)),
                                      static_cast<uint64_t>(k.k), static_cast<uint64_t>(k.m), k.k),
           "creating A's layout");
  check_lt(cublasLtMatrixLayoutCreate(&p->b, to_cuda(static_cast<DType>(k.dt_b)),
                                      static_cast<uint64_t>(k.k), static_cast<uint64_t>(k.n), k.k),
           "creating B's layout");
  check_lt(cublasLtMatrixLayoutCreate(&p->c, to_cuda(static_cast<DType>(k.dt_c)),
                                      static_cast<uint64_t>(k.m), static_cast<uint64_t>(k.n), k.m),
           "creating C's layout");

  size_t ws_bytes = 0;
  cublaslt_workspace(&ws_bytes);
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "creating a matmul preference");
  const uint64_t ws = ws_bytes;
  const uint32_t al = static_cast<uint32_t>(k.align);
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  const cublasLtMatmulPreferenceAttributes_t which[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i)
    st = cublasLtMatmulPreferenceSetAttribute(pref, which[i], &al, sizeof(al));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(handle(), p->desc, p->a, p->b, p->c, p->c, pref, 1, &result,
                                        &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    p->algo = result.algo;
    p->ok = true;
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

}  // namespace

bool fp8_gemm_supported() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  // Per device: 0 not read yet, else the compute capability + 1 (0 + 1 where it cannot be read).
  static std::array<std::atomic<int>, 64> known{};
  std::atomic<int>* slot = dev >= 0 && dev < 64 ? &known[static_cast<size_t>(dev)] : nullptr;
  int v = slot ? slot->load(std::memory_order_relaxed) : 0;
  if (v == 0) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      major = minor = 0;
    }
    v = major * 10 + minor + 1;
    if (slot) slot->store(v, std::memory_order_relaxed);
  }
  return v - 1 >= 89;
}

bool fp8_gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
              float scale_a_inv, float scale_b_inv, const Tensor* bias) {
  // --- what cuBLASLt's FP8 kernels take (backend.h's contract); anything else: false.
  if (!is_fp8(a.dtype()) || !is_fp8(b.dtype())) return false;
  if (a.dtype() == DType::e5m2 && b.dtype() == DType::e5m2) return false;
  if (a.dim() != 2 || b.dim() != 2 || c.dim() != 2 || !c.is_contiguous()) return false;
  if (c.dtype() != DType::bf16 && c.dtype() != DType::f32) return false;
  const int64_t M = trans_a ? a.size(1) : a.size(0), K = trans_a ? a.size(0) : a.size(1);
  const int64_t N = trans_b ? b.size(0) : b.size(1);
  if ((trans_b ? b.size(1) : b.size(0)) != K || c.size(0) != M || c.size(1) != N) return false;
  if (M <= 0 || N <= 0 || K <= 0 || M % 16 != 0 || N % 16 != 0 || K % 16 != 0) return false;
  if (bias && (c.dtype() != DType::bf16 || bias->dtype() != DType::bf16 || bias->dim() != 1 ||
               bias->size(0) != N))
    return false;
  if (!fp8_gemm_supported()) return false;

  // --- TN: op(A) as a row-major [M, K] and op(B) as a row-major [N, K], copied where stored
  // otherwise (contiguous() keeps a tensor that already is).
  const Tensor ak = (trans_a ? a.transpose(0, 1) : a).contiguous();
  const Tensor bk = (trans_b ? b : b.transpose(0, 1)).contiguous();
  Tensor biask;
  if (bias) biask = bias->contiguous();
  const void* pa = ak.raw_data();
  const void* pb = bk.raw_data();
  const void* pc = c.raw_data();
  const void* pbias = bias ? biask.raw_data() : nullptr;
  uint32_t al = std::min({alignment(pa), alignment(pb), alignment(pc)});
  if (bias && alignment(pbias) < 16) {
    biask = biask.clone();  // a fresh buffer: the allocator's alignment
    pbias = biask.raw_data();
  }
  if (al < 16) {
    // A view at an odd offset: fresh copies of the operands (C is the caller's: product into a
    // fresh C, then copied).
    if (alignment(pc) < 16) {
      Tensor tmp = Tensor::empty(c.shape(), c.dtype(), c.device());
      const bool ok =
          fp8_gemm(ak, false, bk, true, tmp, scale_a_inv, scale_b_inv, bias ? &biask : nullptr);
      if (ok) Tensor(c).copy_from(tmp);
      return ok;
    }
    return fp8_gemm(ak.clone(), false, bk.clone(), true, c, scale_a_inv, scale_b_inv,
                    bias ? &biask : nullptr);
  }

  Key k;
  std::memset(&k, 0, sizeof(k));
  k.m = N;
  k.n = M;
  k.k = K;
  k.dt_a = static_cast<int64_t>(bk.dtype());
  k.dt_b = static_cast<int64_t>(ak.dtype());
  k.dt_c = static_cast<int64_t>(c.dtype());
  k.bias = bias ? 1 : 0;
  k.device = current_device();
  k.align = al;

  const float alpha = scale_a_inv * scale_b_inv, beta = 0.0f;
  size_t ws_bytes = 0;
  void* ws = cublaslt_workspace(&ws_bytes);
  Cache& cc = cache();
  std::lock_guard<std::mutex> lock(cc.mu);
  auto it = cc.map.find(k);
  if (it == cc.map.end()) it = cc.map.emplace(k, make_plan(k, pbias)).first;
  const Plan& p = *it->second;
  if (!p.ok)
    throw BackendError(fmt::format(
        "cuda: fp8 gemm: A {}{} · B {}{} -> C {}{}: cuBLASLt has no FP8 algorithm for this "
        "product",
        a.str(), trans_a ? "ᵀ" : "", b.str(), trans_b ? "ᵀ" : "", c.str(), bias ? " + bias" : ""));
  if (bias)
    check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pbias,
                                            sizeof(pbias)),
             "setting the bias pointer");
  check_lt(cublasLtMatmul(handle(), p.desc, &alpha, pb, p.a, pa, p.b, &beta, pc, p.c,
                          const_cast<void*>(pc), p.c, &p.algo, ws, ws_bytes, stream()),
           "cublasLtMatmul");
  // ak, bk and biask (copies, when made) may be released now: a later allocation that reuses
  // their memory is ordered after this product on the same stream.
  return true;
}

}  // namespace mixtrain::cuda
