// The CUDA backend (built with MIXTRAIN_CUDA=ON): device memory (memory.cpp) under the
// library's step planner, host <-> device transfers, the element-wise fill and strided
// converting copy, the element-wise maps and gradient accumulation (kernels.cu, with the CPU's
// per-element math from mixtrain/detail/), so tensors live on the GPU and move and convert there
// exactly as on the host. The maps and accumulation have not run on a GPU yet (the op harness,
// tests/test_backend_ops.cpp, checks them where one is present); the other op kernels are not
// written yet: each names itself in a BackendError.
#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include <cstring>
#include <string>

#include "backend/backend.h"
#include "cuda/kernels.h"
#include "cuda/memory.h"
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

[[noreturn]] void missing(const char* op) {
  throw BackendError(fmt::format(
      "cuda: {} has no CUDA kernel yet (the CUDA backend holds and moves tensors; its op kernels "
      "are to come)",
      op));
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
  void dropout(const Tensor&, uint64_t, uint64_t, float, float, const Tensor&) override {
    missing("dropout");
  }
  void sum(const Tensor&, const std::vector<int64_t>&, float, const Tensor&) override {
    missing("sum");
  }
  void gemm(const Tensor&, bool, const Tensor&, bool, const Tensor&, float, float, const Tensor*,
            Epilogue) override {
    missing("gemm");
  }
  void softmax(const Tensor&, int64_t, bool, const Tensor&) override { missing("softmax"); }
  void softmax_backward(const Tensor&, const Tensor&, int64_t, bool, const Tensor&) override {
    missing("softmax backward");
  }
  IndexScan scan_indices(const Tensor&, int64_t, std::optional<int64_t>) override {
    missing("index check");
  }
  void cross_entropy(const Tensor&, const Tensor&, int64_t, int64_t, const Tensor&,
                     const Tensor&) override {
    missing("cross_entropy");
  }
  void cross_entropy_backward(const Tensor&, const Tensor&, int64_t, int64_t, const Tensor&,
                              const Tensor&, const Tensor&) override {
    missing("cross_entropy backward");
  }
  void layer_norm(const Tensor&, const Tensor&, const Tensor&, float, const Tensor&, const Tensor&,
                  const Tensor&) override {
    missing("layer_norm");
  }
  void layer_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                           const Tensor&, const Tensor&, const Tensor&, const Tensor&) override {
    missing("layer_norm backward");
  }
  void embedding(const Tensor&, const Tensor&, const Tensor&) override { missing("embedding"); }
  void embedding_backward(const Tensor&, const Tensor&, const Tensor&) override {
    missing("embedding backward");
  }
  void attention(const Tensor&, const Tensor&, const Tensor&, bool, float, const Tensor&,
                 const Tensor&) override {
    missing("attention");
  }
  void attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          bool, float, const Tensor&, const Tensor&, const Tensor&) override {
    missing("attention backward");
  }
  void optimizer_update(const optim::detail::Rule&, std::span<const UpdateArgs>) override {
    missing("the optimizer update");
  }
  GradScan grad_scan(std::span<const Tensor>) override { missing("the gradient scan"); }
  std::vector<HistogramScan> grad_histograms(std::span<const Tensor>, float, float) override {
    missing("the gradient histograms");
  }
  void split16_split(const Tensor&, const Tensor&, const Tensor&) override { missing("split16"); }
  void split16_join(const Tensor&, const Tensor&, const Tensor&) override { missing("split16"); }

 private:
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
