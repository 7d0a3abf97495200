// Loss scaling for fp16 training: none / fixed / dynamic (PyTorch GradScaler's rule) with a
// floor and ceiling, DeepSpeed-style hysteresis, an error naming the offending parameter
// when the scale is stuck at its floor, and a small checkpointable state.
//
//   amp::LossScaler scaler;                       // dynamic, init 2^16, x2 per 2000 clean steps
//   loss.backward(scaler.scale());                // each micro-batch: the scale is fixed
//   scaler.unscale(opt);                          // at the boundary, once: found-inf + norm
//   opt.clip_grad_norm(1.0);                      // optional, after unscale
//   optim::StepResult r = scaler.step(opt);       // r.applied / r.reason / r.grad_norm
//   scaler.update();                              // grow or back off
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mixtrain/amp/policy.h"
#include "mixtrain/optim/optimizer.h"

namespace mixtrain::amp {

struct LossScalerOptions {
  LossScaling mode = LossScaling::dynamic;
  float init_scale = 65536.0f;  ///< 2^16 (PyTorch, Apex, DeepSpeed); the fixed scale in `fixed`
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  int64_t growth_interval = 2000;  ///< consecutive clean steps before growing
  float min_scale = 1.0f;          ///< floor: backoff never goes below it (PyTorch has none)
  float max_scale = 16777216.0f;   ///< ceiling 2^24 (Apex's)
  /// Overflowing steps needed before a backoff (DeepSpeed's delayed shift); 1 = every one.
  int64_t hysteresis = 1;
  /// Refill the hysteresis on every clean step (DeepSpeed consecutive_hysteresis) rather
  /// than only when the scale grows.
  bool consecutive_hysteresis = false;
  /// Consecutive overflowing steps at the floor (or in none/fixed mode, where the scale can
  /// not move) before update() throws NumericalError.
  int64_t max_overflows_at_floor = 10;

  /// Throws ConfigError naming a bad value.
  void validate() const;
};

/// Everything that must survive a checkpoint.
struct LossScalerState {
  float scale = 65536.0f;
  int64_t growth_tracker = 0;   ///< consecutive clean steps since the last growth/overflow
  int64_t hysteresis_left = 1;  ///< overflows still tolerated before a backoff
  int64_t overflows_at_floor = 0;
  int64_t steps = 0;          ///< update() calls
  int64_t skipped_steps = 0;  ///< of which had a non-finite gradient

  /// "<prefix>scale" (f32 [1]) and "<prefix>growth_tracker" etc. (i64 [1]).
  std::vector<std::pair<std::string, Tensor>> to_tensors(
      const std::string& prefix = "loss_scaler.") const;
  /// Throws IOError naming a missing tensor.
  static LossScalerState from_tensors(const std::vector<std::pair<std::string, Tensor>>& t,
                                      const std::string& prefix = "loss_scaler.");
  /// Exact text form (the scale printed so it parses back to the same float).
  std::map<std::string, std::string> to_map() const;
  static LossScalerState from_map(const std::map<std::string, std::string>& m);
  bool operator==(const LossScalerState&) const = default;
};

class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions opt = {});
  /// Options for a policy: dynamic for fp16 compute, none otherwise (bf16 has fp32's range).
  static LossScalerOptions options_for(const Policy& policy);

  const LossScalerOptions& options() const { return opt_; }
  /// The factor to seed backward with (1 in mode none).
  float scale() const { return state_.scale; }

  /// One read of `opt`'s gradients: Inf/NaN (first offending parameter) and the global norm
  /// of the unscaled gradients. Gradients are not rewritten: 1/scale (computed in double,
  /// used as fp32, as PyTorch) is folded into the optimizer's update pass. Throws Error if
  /// called twice for `opt` before update().
  const optim::GradStats& unscale(optim::Optimizer& opt);
  /// unscale with gradient statistics reduced elsewhere (at multiplier 1): ZeRO-1, where
  /// `opt` holds this rank's shard and `reduced` is the global found-Inf/NaN verdict and sum
  /// of squares, so every rank skips the same steps, clips by the same global norm and keeps
  /// the same scale (what PyTorch's ShardedGradScaler does).
  const optim::GradStats& unscale(optim::Optimizer& opt, const optim::GradStats& reduced);
  /// unscale (if not yet done this step) then opt.clip_grad_norm(max_norm); returns the norm.
  double clip_grad_norm(optim::Optimizer& opt, double max_norm);
  /// Applies opt's step unless its gradients held Inf/NaN (unscales first if needed).
  optim::StepResult step(optim::Optimizer& opt);
  /// Ends the step: backs off if any optimizer overflowed since the last update, else counts
  /// towards growth. Throws NumericalError when the scale is stuck at its floor; throws
  /// Error if no optimizer was unscaled or stepped since the last update.
  void update();

  /// Whether the last update() saw an overflow.
  bool last_overflowed() const { return last_overflow_; }
  const LossScalerState& state() const { return state_; }
  /// Throws ConfigError for a non-positive or non-finite scale.
  void load_state(const LossScalerState& s);

 private:
  const optim::GradStats& unscale_impl(optim::Optimizer& opt, const optim::GradStats* reduced);
  struct PerOptimizer {
    bool unscaled = false;
    bool stepped = false;
    optim::GradStats stats;
  };
  LossScalerOptions opt_;
  LossScalerState state_;
  std::unordered_map<const optim::Optimizer*, PerOptimizer> per_opt_;
  bool last_overflow_ = false;
};

}  // namespace mixtrain::amp
