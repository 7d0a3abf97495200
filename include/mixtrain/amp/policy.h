// Precision policy (autocast): which dtype each op computes in. Chosen once, consulted by
// every op through its category, overridable per op and per module (a scoped policy).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "mixtrain/amp/fp8.h"
#include "mixtrain/dtype.h"
#include "mixtrain/tensor.h"

namespace mixtrain::amp {

enum class LossScaling { none, fixed, dynamic };

/// How an op picks its dtype under a policy (PyTorch autocast's lists, see docs/DESIGN.md):
///  lower:   matmul, linear, attention products: inputs cast to the compute dtype.
///  fp32:    losses, sum/mean, exp/log/pow: computed and returned in fp32.
///  stats32: softmax, log-softmax, layer norm: fp32 internals, output in the input dtype
///           (the statistics need fp32; the activations that leave the op do not).
///  promote: binary elementwise: the widest floating input.
///  same:    relu, gelu, tanh, dropout, shape ops: the input's dtype.
enum class OpCategory { lower, fp32, stats32, promote, same };

struct Policy {
  DType param = DType::f32;    ///< master weights
  DType compute = DType::f32;  ///< weights' working copy, activations, their gradients
  DType output = DType::f32;   ///< what the model hands to the loss
  LossScaling scaling = LossScaling::none;
  /// op name -> dtype it computes in, whatever its category ("linear" -> f32 keeps every
  /// linear in fp32; module scopes do the same for one module).
  std::map<std::string, DType, std::less<>> op_overrides;
  /// FP8 training (amp/fp8.h): the linear ops that compute in bf16 quantize their GEMM inputs
  /// to fp8 under this recipe. A module kept out of fp8 (Module::set_fp8) runs plain bf16.
  std::optional<Fp8Options> fp8_gemms;

  static Policy fp32();
  static Policy bf16();  ///< fp32 params, bf16 compute, no scaling
  static Policy fp16();  ///< fp32 params, fp16 compute, dynamic loss scaling
  /// bf16 mixed precision with every linear's GEMM inputs in fp8 (`recipe`), no loss scaling.
  static Policy fp8(const Fp8Options& recipe = {});
  /// bf16 where this CPU computes bf16 natively, else fp16 with dynamic scaling. `why`
  /// receives a sentence saying which and why.
  static Policy automatic(std::string* why = nullptr);
  /// auto on `device`: the CPU's rule above, or on cuda the current GPU's (auto_policy).
  static Policy automatic(Device device, std::string* why);
  /// "fp32" | "bf16" | "fp16" | "fp8" | "auto", or jmp-style "p=f32,c=bf16,o=f32". Throws
  /// ConfigError.
  static Policy parse(std::string_view spec, std::string* why = nullptr);
  /// The same, auto resolved for `device`.
  static Policy parse(std::string_view spec, Device device, std::string* why);
  /// "bf16 (p=f32,c=bf16,o=f32, no loss scaling)".
  std::string str() const;
  std::string name;  ///< preset name, or "custom"
};

/// What --precision auto decides on: the device and what it computes natively.
struct AutoTarget {
  bool cuda = false;
  int compute_capability = 0;    ///< cuda: major * 10 + minor (cuda_compute_capability())
  std::string gpu_name;          ///< cuda: for the sentence
  bool cpu_native_bf16 = false;  ///< cpu: CpuFeatures::native_bf16()
};
/// The rule of --precision auto, apart from the machine it runs on (tested with made-up
/// targets). On a GPU: bf16 from compute capability 8.0 (Ampere: bf16 tensor cores, fp32's
/// exponent range, no loss scaling), fp16 with dynamic loss scaling on 7.0 and 7.5 (Volta and
/// Turing: fp16 tensor cores only), fp32 below (no tensor cores). On the CPU: bf16 where it
/// computes bf16 natively, else fp16 with dynamic loss scaling. `why` gets one sentence
/// naming the choice and the reason.
Policy auto_policy(const AutoTarget& target, std::string* why = nullptr);

/// The active policy for this thread, or nullptr when none is set (ops then keep their
/// inputs' dtypes: an explicit bf16 tensor stays bf16).
const Policy* current_policy();

/// Makes `policy` current for a scope (nests; restores the previous one on exit).
class PolicyScope {
 public:
  explicit PolicyScope(const Policy& policy);
  /// Makes a copy of `*policy` current, or no policy at all when it is null (a recomputed
  /// checkpoint block runs under exactly the policy its forward saw, even "none").
  explicit PolicyScope(const Policy* policy);
  ~PolicyScope();
  PolicyScope(const PolicyScope&) = delete;
  PolicyScope& operator=(const PolicyScope&) = delete;

 private:
  const Policy* prev_;
  Policy policy_;
};

/// The dtype op `op` of category `cat` computes in, given its floating inputs' dtypes.
DType op_dtype(std::string_view op, OpCategory cat, std::initializer_list<DType> inputs);

/// The widest of a set of floating dtypes (f64 > f32 > f16 = bf16 -> f32 when mixed > fp8).
DType promote_types(std::initializer_list<DType> inputs);

}  // namespace mixtrain::amp
