// The CUDA backend's multi-tensor passes (multi_tensor.cu): the fused optimizer update, the
// gradient scan and histograms over a list of tensors in one launch each, and split16's
// encoding, behind plain launchers. Host-side header, no CUDA types; the per-element math is
// mixtrain/detail/update_math.h and grad_math.h, shared with the CPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mixtrain/detail/update_math.h"

namespace mixtrain::cuda {

/// The rule of one update launch: which variant (the template the kernel is instantiated for)
/// and its fp32 constants (made on the host by detail::adam_consts and friends).
struct MtRule {
  enum Variant : int {
    adamw,                  ///< AdamRule<true>
    adam_l2,                ///< AdamRule<false>
    sgd_plain,              ///< SgdRule<false, false>
    sgd_momentum,           ///< SgdRule<true, false>
    sgd_nesterov,           ///< SgdRule<true, true>
    rms_plain,              ///< RmsRule<false, false>
    rms_momentum,           ///< RmsRule<false, true>
    rms_centered,           ///< RmsRule<true, false>
    rms_centered_momentum,  ///< RmsRule<true, true>
  } variant = adamw;
  detail::AdamConsts adam{};
  detail::SgdConsts sgd{};
  detail::RmsConsts rms{};
};

/// One tensor of an update (optim::detail::UpdateArgs with the home resolved): device
/// pointers, n elements, contiguous.
struct MtUpdate {
  float* master = nullptr;
  void* weight = nullptr;  ///< the 16-bit weight or copy, or the fp32 copy (Home::f32_copy_f32)
  uint16_t* aux = nullptr;
  const void* grad = nullptr;
  float* s0 = nullptr;
  float* s1 = nullptr;
  float* s2 = nullptr;
  int64_t n = 0;
  uint64_t seed = 0, counter = 0;
  float grad_mult = 1.0f;
  int home = 0;        ///< detail::Home's value
  int grad_dtype = 0;  ///< mixtrain::DType's value: f32, bf16 or f16
};

/// The fused update of `count` tensors in one kernel launch (its descriptor table uploaded
/// once, on the backend's stream). Returns the launch's cudaError_t as an int.
int launch_update(const MtRule& rule, const MtUpdate* tensors, int count);

/// One gradient of a scan: n contiguous elements of dtype (mixtrain::DType's value).
struct MtGrad {
  const void* data = nullptr;
  int64_t n = 0;
  int dtype = 0;
};

/// Backend::grad_scan's answer (first_bad: the index in the list).
struct MtScan {
  double sumsq = 0;
  bool found_inf = false, found_nan = false;
  int64_t first_bad = -1;
  bool first_bad_nan = false;
};
/// The sum of squares of the finite values (per (tensor, chunk) partial sums in double, then
/// one reduction in a fixed order: the bits depend on the sizes only), the Inf/NaN flags and
/// the first tensor holding one. Waits for the result (the one host sync). Returns the first
/// CUDA error as an int (0: success).
int scan_grads(const MtGrad* grads, int count, MtScan* out);

/// amp::GradHistogram's counters of one tensor, in this order, then its largest unscaled
/// magnitude and its first Inf/NaN.
constexpr int kHistMinExp = -40, kHistMaxExp = 20;  // GradHistogram's (checked by the caller)
constexpr int kHistBins = kHistMaxExp - kHistMinExp;
struct MtHist {
  enum : int { zero, inf, nan, below, above, fp16_zero, fp16_subnormal, fp16_overflow, bins };
  static constexpr int kCounters = bins + kHistBins;
  uint64_t counts[kCounters] = {};
  float max_abs = 0;
  int64_t first_bad = -1;  ///< element index
  bool first_bad_nan = false;
};
/// Every tensor's histogram (values · inv_carried, fp16 fractions at values · to_fp16) in one
/// launch; integer counts, so the result does not depend on the order blocks run in. Waits for
/// the result. Returns the first CUDA error as an int.
int grad_histograms(const MtGrad* grads, int count, float inv_carried, float to_fp16, MtHist* out);

/// split16: hi, lo from an fp32 master (n elements, contiguous), and back.
int launch_split16_split(const float* master, uint16_t* hi, uint16_t* lo, int64_t n);
int launch_split16_join(const uint16_t* hi, const uint16_t* lo, float* out, int64_t n);

}  // namespace mixtrain::cuda

// ---- the Backend methods built on the launchers (multi_tensor_host.cpp; host C++ only) ----
#if !defined(__CUDACC__)
#include <span>
#include <vector>

#include "backend/backend.h"

namespace mixtrain::cuda {

/// Backend::optimizer_update: every tensor in one launch (launch_update).
void optimizer_update(const optim::detail::Rule& rule, std::span<const UpdateArgs> tensors);
/// Backend::grad_scan (scan_grads): one host sync.
GradScan grad_scan(std::span<const Tensor> grads);
/// Backend::grad_histograms (grad_histograms above; strided gradients copied first).
std::vector<HistogramScan> grad_histograms(std::span<const Tensor> grads, float inv_carried,
                                           float to_fp16);
/// Backend::split16_split / split16_join.
void split16_split(const Tensor& master, const Tensor& hi, const Tensor& lo);
void split16_join(const Tensor& hi, const Tensor& lo, const Tensor& out);

}  // namespace mixtrain::cuda
#endif
