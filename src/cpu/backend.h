// The CPU backend: Backend (backend/backend.h) over host memory, OpenMP threads, the per-level
// SIMD kernels (cpu/isa.h) and oneDNN's GEMM. Each op family's kernels are in a file of their
// own in this folder (elementwise.cpp, reduce.cpp, softmax.cpp, layer_norm.cpp, embedding.cpp,
// attention.cpp, gemm_onednn.cpp, optimizer.cpp, copy.cpp), with the levels' builds beside them
// (*.isa.cpp).
#pragma once

#include "backend/backend.h"

namespace mixtrain::cpu {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  std::string describe() const override;
  DeviceMemory& memory() override;

  void fill(const Tensor& dst, float value) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void upload(const void* host, void* device_dst, size_t bytes) override;
  void download(const void* device_src, void* host, size_t bytes) override;

  void map(MapOp op, std::span<const Tensor> ins, float s, const Tensor& out) override;
  void add_into(const Tensor& dst, const Tensor& src) override;
  void dropout(const Tensor& x, uint64_t seed, uint64_t base, float p, float scale,
               const Tensor& y) override;

  void sum(const Tensor& x, const std::vector<int64_t>& axes, float scale,
           const Tensor& out) override;

  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
            float alpha, float beta, const Tensor* bias, Epilogue epi) override;

  void softmax(const Tensor& x, int64_t axis, bool log, const Tensor& y) override;
  void softmax_backward(const Tensor& y, const Tensor& g, int64_t axis, bool log,
                        const Tensor& dx) override;
  IndexScan scan_indices(const Tensor& ids, int64_t n, std::optional<int64_t> ignore) override;
  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore, int64_t count,
                     const Tensor& lse, const Tensor& loss) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore,
                              int64_t count, const Tensor& lse, const Tensor& g,
                              const Tensor& dlogits) override;
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, const Tensor& y,
                  const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& g, const Tensor& mean,
                           const Tensor& rstd, const Tensor& dx, const Tensor& dw,
                           const Tensor& db) override;
  void embedding(const Tensor& ids, const Tensor& table, const Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& g, const Tensor& dtable) override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale,
                 const Tensor& o, const Tensor& lse) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                          const Tensor& lse, bool causal, float scale, const Tensor& dq,
                          const Tensor& dk, const Tensor& dv) override;

  void optimizer_update(const optim::detail::Rule& rule,
                        std::span<const UpdateArgs> tensors) override;
  GradScan grad_scan(std::span<const Tensor> grads) override;
  std::vector<HistogramScan> grad_histograms(std::span<const Tensor> grads, float inv_carried,
                                             float to_fp16) override;
  void split16_split(const Tensor& master, const Tensor& hi, const Tensor& lo) override;
  void split16_join(const Tensor& hi, const Tensor& lo, const Tensor& out) override;
  float amax(const Tensor& x) override;
  void fp8_quantize(const Tensor& x, float scale, DType fmt, const Tensor& q) override;
  float mx_quantize(const Tensor& x, DType fmt, const Tensor& q, const Tensor& scales) override;
};

/// The process's CPU backend.
CpuBackend& cpu_backend();

}  // namespace mixtrain::cpu
