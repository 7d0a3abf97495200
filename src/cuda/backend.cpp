// The CUDA backend (built with MIXTRAIN_CUDA=ON): device memory (memory.cpp) under the
// library's step planner, host <-> device transfers, the element-wise fill and strided
// converting copy, the element-wise maps and gradient accumulation (kernels.cu, with the CPU's
// per-element math from mixtrain/detail/), so tensors live on the GPU and move and convert there
// exactly as on the host; the nn and reduction ops (dropout, sum, softmax, the index scan,
// cross-entropy, layer norm, embedding, attention) through cuda/nn_ops.h; the GEMM through
// cuBLASLt (gemm_cublaslt.cpp); the optimizer update and the gradient passes as multi-tensor
// kernels (multi_tensor.cu). None of these kernels has run on a GPU yet (the op harness,
// tests/test_backend_ops.cpp, checks them where one is present).
#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <cstring>
#include <string>

#include "backend/backend.h"
#include "cuda/fp8.h"
#include "cuda/gemm_cublaslt.h"
#include "cuda/gemm_fp8.h"
#include "cuda/kernels.h"
#include "cuda/memory.h"
#include "cuda/multi_tensor.h"
#include "cuda/nn_ops.h"
#include "cuda/runtime.h"

namespace mixtrain {

namespace {

using cuda::check;

cuda::View view_of(const Tensor& t) {
  if (t.dim() > cuda::kMaxRank)
    throw ShapeError(fmt::format("cuda: {} has more than {} dims for an element-wise kernel",
                                 t.str(), cuda::kMaxRank));
  cuda::View v;
  v.data = t.raw_data();
  v.dtype = static_cast<int>(t.dtype());
  v.rank = static_cast<int>(t.dim());
  for (int k = 0; k < v.rank; ++k) {
    v.shape[k] = t.shape()[static_cast<size_t>(k)];
    v.strides[k] = t.strides()[static_cast<size_t>(k)];
  }
  return v;
}

// An input of a map as a view of out's rank and shape: numpy broadcasting, right-aligned, a
// broadcast dimension read with stride 0.
cuda::View broadcast_view(const Tensor& t, const Tensor& out) {
  cuda::View v = view_of(out);
  v.data = t.raw_data();
  v.dtype = static_cast<int>(t.dtype());
  const int64_t lead = out.dim() - t.dim();
  for (int k = 0; k < v.rank; ++k) {
    const int64_t j = k - lead;
    v.strides[k] =
        j < 0 || t.shape()[static_cast<size_t>(j)] == 1 ? 0 : t.strides()[static_cast<size_t>(j)];
  }
  return v;
}

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::cuda; }
  /// Every GPU: name, compute capability, memory, and which 16- and 8-bit formats its tensor
  /// cores multiply (bf16 from sm_80, fp8 from sm_89; fp16 on all since sm_70), with the
  /// driver and runtime versions.
  std::string describe() const override {
    int count = 0, driver = 0, runtime = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) return "cuda";
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    std::string out =
        fmt::format("{} GPU{} (driver {}.{}, runtime {}.{})", count, count == 1 ? "" : "s",
                    driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    for (int dev = 0; dev < count; ++dev) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) continue;
      const int sm = prop.major * 10 + prop.minor;
      out += fmt::format("; cuda:{} {} (sm_{}, {} GiB, tensor cores: {})", dev, prop.name, sm,
                         prop.totalGlobalMem >> 30,
                         sm >= 89   ? "fp16 bf16 fp8"
                         : sm >= 80 ? "fp16 bf16, no fp8"
                         : sm >= 70 ? "fp16 only"
                                    : "none");
    }
    return out;
  }
  DeviceMemory& memory() override { return memory_; }

  void fill(const Tensor& dst, float value) override {
    uint64_t pattern = 0;
    const size_t es = dst.element_size();
    convert(&value, DType::f32, &pattern, dst.dtype(), 1);  // the host's rounding, once
    check(static_cast<cudaError_t>(cuda::launch_fill(view_of(dst), pattern, static_cast<int>(es))),
          "fill");
  }
  void copy(const Tensor& src, const Tensor& dst) override {
    const int rc = cuda::launch_copy(view_of(src), view_of(dst));
    if (rc < 0)
      throw BackendError(
          fmt::format("cuda: copy {} -> {}: the CUDA backend converts among f32, "
                      "bf16 and f16 only (move other dtypes through the host)",
                      src.str(), dst.str()));
    check(static_cast<cudaError_t>(rc), "copy");
  }
  void upload(const void* host, void* device_dst, size_t bytes) override {
    if (!bytes) return;
    // Synchronous for the host: the caller may free or reuse `host` when this returns.
    check(cudaMemcpyAsync(device_dst, host, bytes, cudaMemcpyHostToDevice, cuda::stream()),
          "upload");
    check(cudaStreamSynchronize(cuda::stream()), "upload");
  }
  void download(const void* device_src, void* host, size_t bytes) override {
    if (!bytes) return;
    check(cudaMemcpyAsync(host, device_src, bytes, cudaMemcpyDeviceToHost, cuda::stream()),
          "download");
    check(cudaStreamSynchronize(cuda::stream()), "download");
  }

  void map(MapOp op, std::span<const Tensor> ins, float s, const Tensor& out) override {
    static_assert(static_cast<int>(MapOp::add) == 0 && static_cast<int>(MapOp::gelu) == 12 &&
                      static_cast<int>(MapOp::div_grad_b) == 19,
                  "kernels.cu's Op list follows MapOp");
    cuda::View v[3];
    for (size_t k = 0; k < ins.size() && k < 3; ++k) v[k] = broadcast_view(ins[k], out);
    const int rc =
        cuda::launch_map(static_cast<int>(op), v, static_cast<int>(ins.size()), s, view_of(out));
    if (rc < 0)
      throw BackendError(fmt::format("cuda: map '{}' into {}: f32, bf16 and f16 only",
                                     map_op_name(op), out.str()));
    check(static_cast<cudaError_t>(rc), map_op_name(op));
  }
  void add_into(const Tensor& dst, const Tensor& src) override {
    const int rc = cuda::launch_add_into(view_of(dst), view_of(src));
    if (rc < 0)
      throw BackendError(fmt::format("cuda: gradient accumulation {} += {}: f32, bf16 and f16 only",
                                     dst.str(), src.str()));
    check(static_cast<cudaError_t>(rc), "gradient accumulation");
  }
  void dropout(const Tensor& x, uint64_t seed, uint64_t base, float p, float scale,
               const Tensor& y) override {
    cuda::dropout(x, seed, base, p, scale, y);
  }
  void sum(const Tensor& x, const std::vector<int64_t>& axes, float scale,
           const Tensor& out) override {
    cuda::sum(x, axes, scale, out);
  }
  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            float alpha, float beta, const Tensor* bias, Epilogue epi) override {
    cuda::gemm(a, trans_a, b, trans_b, c, alpha, beta, bias, epi);  // gemm_cublaslt.cpp
  }
  // The nn and reduction ops: cuda/nn_ops.h (kernels in nn_kernels.cu, embedding_backward.cu
  // and attention.cu).
  void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& y) override {
    cuda::softmax(x, axis, log, y);
  }
  void softmax_backward(const Tensor& y, const Tensor& g, int64_t axis, bool log,
                        const Tensor& dx) override {
    cuda::softmax_backward(y, g, axis, log, dx);
  }
  IndexScan scan_indices(const Tensor& ids, int64_t n, std::optional<int64_t> ignore) override {
    return cuda::scan_indices(ids, n, ignore);
  }
  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore, int64_t count,
                     const Tensor& lse, const Tensor& loss) override {
    cuda::cross_entropy(logits, targets, ignore, count, lse, loss);
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore,
                              int64_t count, const Tensor& lse, const Tensor& g,
                              const Tensor& dlogits) override {
    cuda::cross_entropy_backward(logits, targets, ignore, count, lse, g, dlogits);
  }
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, const Tensor& y,
                  const Tensor& mean, const Tensor& rstd) override {
    cuda::layer_norm(x, w, b, eps, y, mean, rstd);
  }
  void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& g, const Tensor& mean,
                           const Tensor& rstd, const Tensor& dx, const Tensor& dw,
                           const Tensor& db) override {
    cuda::layer_norm_backward(x, w, g, mean, rstd, dx, dw, db);
  }
  void embedding(const Tensor& ids, const Tensor& table, const Tensor& out) override {
    cuda::embedding(ids, table, out);
  }
  void embedding_backward(const Tensor& ids, const Tensor& g, const Tensor& dtable) override {
    cuda::embedding_backward(ids, g, dtable);
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale,
                 const Tensor& o, const Tensor& lse) override {
    cuda::attention(q, k, v, causal, scale, o, lse);
  }
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                          const Tensor& lse, bool causal, float scale, const Tensor& dq,
                          const Tensor& dk, const Tensor& dv) override {
    cuda::attention_backward(q, k, v, g, lse, causal, scale, dq, dk, dv);
  }
  // The multi-tensor passes: multi_tensor_host.cpp, kernels in multi_tensor.cu.
  void optimizer_update(const optim::detail::Rule& rule,
                        std::span<const UpdateArgs> tensors) override {
    cuda::optimizer_update(rule, tensors);
  }
  GradScan grad_scan(std::span<const Tensor> grads) override { return cuda::grad_scan(grads); }
  std::vector<HistogramScan> grad_histograms(std::span<const Tensor> grads, float inv_carried,
                                             float to_fp16) override {
    return cuda::grad_histograms(grads, inv_carried, to_fp16);
  }
  void split16_split(const Tensor& master, const Tensor& hi, const Tensor& lo) override {
    cuda::split16_split(master, hi, lo);
  }
  void split16_join(const Tensor& hi, const Tensor& lo, const Tensor& out) override {
    cuda::split16_join(hi, lo, out);
  }
  // fp8 (fp8.cu). The amax is read back: a per-tensor scale is the host's to set.
  float amax(const Tensor& x) override {
    const Tensor bits = Tensor::empty({1}, DType::i32, Device::cuda);
    check(static_cast<cudaError_t>(cuda::launch_amax(x.raw_data(), static_cast<int>(x.dtype()),
                                                     x.numel(),
                                                     static_cast<uint32_t*>(bits.raw_data()))),
          "amax");
    return read_amax(bits);
  }
  void fp8_quantize(const Tensor& x, float scale, DType fmt, const Tensor& q) override {
    check(static_cast<cudaError_t>(cuda::launch_fp8_quantize(
              x.raw_data(), static_cast<int>(x.dtype()), x.numel(), scale, fmt == DType::e5m2,
              q.raw_data(), static_cast<int>(q.dtype()))),
          "fp8 quantization");
  }
  float mx_quantize(const Tensor& x, DType fmt, const Tensor& q, const Tensor& scales) override {
    const Tensor bits = Tensor::empty({1}, DType::i32, Device::cuda);
    check(static_cast<cudaError_t>(cuda::launch_mx_quantize(
              x.raw_data(), static_cast<int>(x.dtype()), x.size(0), x.size(1), fmt == DType::e5m2,
              static_cast<uint16_t*>(q.raw_data()), scales.data<uint8_t>(),
              static_cast<uint32_t*>(bits.raw_data()))),
          "MXFP8 quantization");
    return read_amax(bits);
  }
  // Native fp8 GEMMs on sm_89 and above (gemm_fp8.cpp, cuBLASLt).
  bool has_fp8_gemm() const override { return cuda::fp8_gemm_supported(); }
  bool fp8_gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
                float scale_a_inv, float scale_b_inv, const Tensor* bias) override {
    return cuda::fp8_gemm(a, trans_a, b, trans_b, c, scale_a_inv, scale_b_inv, bias);
  }

 private:
  float read_amax(const Tensor& bits) {
    uint32_t u = 0;
    download(bits.raw_data(), &u, sizeof u);
    return detail::f32_from_bits(u);
  }
  DeviceMemory& memory_ = cuda::device_memory();  // memory.cpp: a stream-ordered pool
};

}  // namespace

Backend* cuda_backend(std::string* why) {
  // Asked once: a process sees the same devices throughout.
  static const std::string reason = [] {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
      return fmt::format("cuda: no usable CUDA device ({}: {})", cudaGetErrorName(e),
                         cudaGetErrorString(e));
    if (count == 0) return std::string("cuda: no CUDA device on this machine");
    return std::string();
  }();
  if (!reason.empty()) {
    if (why) *why = reason;
    return nullptr;
  }
  static auto* b = new CudaBackend;  // never destroyed: storages may die during static teardown
  return b;
}

}  // namespace mixtrain
