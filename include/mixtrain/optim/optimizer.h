// Optimizers with fp32 state (SGD, Adam, AdamW, RMSProp; torch.optim semantics) over
// nn::Parameters, with the loss scaler's unscale and global-norm clipping folded into one
// fused update pass, master-free memory modes, and named-tensor state for checkpoints.
//
//   optim::AdamW opt(model.parameters(), {.lr = 3e-4, .weight_decay = 0.1});
//   loss.backward(scaler.scale());
//   scaler.unscale(opt);            // one read of the gradients: found-inf + global norm
//   opt.clip_grad_norm(1.0);        // no pass: folds a coefficient into the update
//   StepResult r = scaler.step(opt);   // skipped (and why) on Inf/NaN
//   scaler.update();
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mixtrain/nn/parameter.h"
#include "mixtrain/optim/kernels.h"
#include "mixtrain/tensor.h"

namespace mixtrain::optim {

enum class SkipReason : uint8_t { none, inf_grad, nan_grad };

/// What one optimizer step did: loggers and LR schedulers read it.
struct StepResult {
  bool applied = true;
  SkipReason reason = SkipReason::none;
  std::string bad_param;   ///< the first parameter (in order) with a non-finite gradient
  double grad_norm = -1;   ///< global L2 norm of the unscaled gradients; -1: not measured
  float scale = 1.0f;      ///< loss scale the gradients carried
  float clip_coef = 1.0f;  ///< factor clipping applied (1: none)
  /// "applied (norm 0.53, scale 65536)" / "skipped: Inf gradient in 'fc1.weight' (scale ...)".
  std::string str() const;
};

/// One read of the gradients: non-finite values and the global norm of grad * mult.
struct GradStats {
  bool found_inf = false, found_nan = false;
  std::string first_bad;       ///< first parameter (in order) holding Inf or NaN
  bool first_bad_nan = false;  ///< whether that parameter's first bad value is a NaN
  double sumsq = 0;            ///< sum of (grad * mult)^2 over finite values
  bool finite() const { return !found_inf && !found_nan; }
  double norm() const;
};
/// Computes GradStats in one parallel pass (gradients f32/bf16/f16; undefined ones skipped).
GradStats gradient_stats(const std::vector<nn::Parameter*>& params, float grad_mult = 1.0f);

/// Options shared by every optimizer.
struct CommonOptions {
  MasterMode master = MasterMode::fp32;
  uint64_t seed = 0;  ///< stochastic rounding stream (bf16_stochastic)
};

/// Memory per parameter, in bytes, for a master mode (compute copy + master + state + grad).
struct BytesPerParam {
  double weight = 0, master = 0, state = 0, grad = 0;
  double total() const { return weight + master + state + grad; }
  std::string note;  ///< what it saves against fp32 master and why
};
/// `state_floats`: fp32 state per parameter (Adam 2, SGD with momentum 1, RMSProp 1..3).
BytesPerParam bytes_per_parameter(MasterMode mode, DType compute = DType::bf16,
                                  DType grad = DType::f32, int state_floats = 2);

class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  const std::vector<nn::Parameter*>& params() const { return params_; }
  virtual const char* name() const = 0;
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  /// Applied steps so far (Adam's bias-correction t; skipped steps do not count).
  int64_t steps() const { return steps_; }
  MasterMode master_mode() const { return common_.master; }

  /// One pass over the gradients: Inf/NaN (first offending parameter) and the global norm of
  /// grad * grad_mult. Gradients are not rewritten: grad_mult (the loss scaler's 1/scale) is
  /// folded into the next step(). LossScaler::unscale calls this.
  const GradStats& prepare_gradients(float grad_mult = 1.0f);
  /// As prepare_gradients, with statistics read elsewhere instead of from this optimizer's
  /// gradients: data parallel ZeRO-1, where each rank's optimizer holds one shard and
  /// `reduced` is the verdict and sum of squares all-reduced over every shard. `reduced.sumsq`
  /// is at multiplier 1; grad_mult is applied to it here, as prepare_gradients does.
  const GradStats& prepare_gradients(float grad_mult, const GradStats& reduced);
  /// Stats of the last prepare_gradients() since the previous step, or nullptr.
  const GradStats* prepared() const { return prepared_ ? &stats_ : nullptr; }
  /// Global-norm clipping (torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6),
  /// applied when < 1), folded into the next step. Runs prepare_gradients(1) if not yet done
  /// (so call it after LossScaler::unscale). Returns the total norm before clipping.
  double clip_grad_norm(double max_norm);

  /// Applies one update with the pending multiplier (unscale x clip), then clears it.
  StepResult step();
  /// Records a skipped step (clears the pending multiplier; parameters and state untouched).
  StepResult skip(StepResult why);
  void zero_grad();

  /// State as named tensors: "optim.<param>.<buffer>" plus "optim.step" and "optim.rng_step".
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  /// Loads what state_tensors() saved; throws IOError naming a missing tensor, ShapeError
  /// naming a mis-shaped one.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors);

  /// Parameter i's value as an fp32 tensor (the master, or its reconstruction).
  Tensor master_value(size_t i) const;
  /// Bytes this optimizer holds per parameter (as bytes_per_parameter, for its own mode).
  BytesPerParam bytes_per_param() const;

 protected:
  Optimizer(std::vector<nn::Parameter*> params, double lr, CommonOptions common, int state_buffers);
  /// The rule for the step about to be applied (steps_ already counts it).
  virtual detail::Rule rule() const = 0;
  /// Names of the fp32 state buffers in use (index 0..2 = s0..s2), "" for unused.
  virtual std::vector<std::string> state_names() const = 0;

  std::vector<nn::Parameter*> params_;
  double lr_;
  CommonOptions common_;
  int64_t steps_ = 0;
  uint64_t rng_step_ = 0;
  struct Slot {
    Tensor s[3];          ///< fp32 state
    Tensor aux;           ///< split16 low bits / kahan compensation (bf16-typed 16-bit container)
    uint64_t offset = 0;  ///< first stochastic-rounding counter of this tensor in a step
  };
  std::vector<Slot> slots_;
  uint64_t total_numel_ = 0;

 private:
  bool prepared_ = false;
  GradStats stats_;
  float grad_mult_ = 1.0f;
  float clip_coef_ = 1.0f;
};

struct SgdOptions {
  double lr = 1e-2, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  CommonOptions common;
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<nn::Parameter*> params, SgdOptions opt = {});
  const char* name() const override { return "sgd"; }

 protected:
  detail::Rule rule() const override;
  std::vector<std::string> state_names() const override;

 private:
  SgdOptions opt_;
};

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  CommonOptions common;
};
/// Adam: weight decay as L2 (added to the gradient), as torch.optim.Adam.
class Adam : public Optimizer {
 public:
  Adam(std::vector<nn::Parameter*> params, AdamOptions opt = {});
  const char* name() const override { return decoupled_ ? "adamw" : "adam"; }

 protected:
  Adam(std::vector<nn::Parameter*> params, AdamOptions opt, bool decoupled);
  detail::Rule rule() const override;
  std::vector<std::string> state_names() const override;

 private:
  AdamOptions opt_;
  bool decoupled_;
};
/// AdamW: decoupled weight decay (param *= 1 - lr * wd), as torch.optim.AdamW (its default
/// weight_decay is 1e-2).
class AdamW : public Adam {
 public:
  AdamW(std::vector<nn::Parameter*> params, AdamOptions opt = {.weight_decay = 1e-2});
};

struct RMSPropOptions {
  double lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
  bool centered = false;
  CommonOptions common;
};
class RMSProp : public Optimizer {
 public:
  RMSProp(std::vector<nn::Parameter*> params, RMSPropOptions opt = {});
  const char* name() const override { return "rmsprop"; }

 protected:
  detail::Rule rule() const override;
  std::vector<std::string> state_names() const override;

 private:
  RMSPropOptions opt_;
};

/// "adamw" | "adam" | "sgd" | "rmsprop" with lr, weight decay, momentum (sgd, rmsprop), mode.
std::unique_ptr<Optimizer> make_optimizer(const std::string& kind,
                                          std::vector<nn::Parameter*> params, double lr,
                                          double weight_decay, double momentum,
                                          CommonOptions common = {});

}  // namespace mixtrain::optim
