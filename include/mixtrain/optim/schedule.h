// Learning-rate schedules: constant, and linear warm-up then cosine decay to a minimum. A
// skipped step (loss-scale overflow) does not advance the schedule unless asked to.
//
//   optim::LrScheduler sched({.kind = optim::LrSchedule::cosine, .base_lr = 3e-4,
//                             .warmup = 100, .total = 5000});
//   opt.set_lr(sched.lr());  StepResult r = scaler.step(opt);  sched.step(r);
#pragma once

#include <cstdint>
#include <string>

#include "mixtrain/optim/optimizer.h"

namespace mixtrain::optim {

enum class LrSchedule : uint8_t { constant, cosine };

struct ScheduleOptions {
  LrSchedule kind = LrSchedule::constant;
  double base_lr = 1e-3;
  double min_lr = 0.0;           ///< cosine: the floor reached at `total`
  int64_t warmup = 0;            ///< linear warm-up steps (lr ramps (k+1)/warmup * base_lr)
  int64_t total = 0;             ///< cosine: steps until min_lr (then held there)
  bool advance_on_skip = false;  ///< count skipped steps too
};

/// The lr after `k` applied steps (k = 0 for the first step).
double schedule_lr(const ScheduleOptions& o, int64_t k);

class LrScheduler {
 public:
  /// Throws ConfigError for negative values, min_lr > base_lr, or cosine without total.
  explicit LrScheduler(ScheduleOptions o);
  /// The lr for the next step.
  double lr() const { return schedule_lr(opt_, position_); }
  /// Advances after a step (skipped steps only with advance_on_skip); returns the next lr.
  double step(const StepResult& r);
  /// Sets opt's lr to lr().
  void apply(Optimizer& opt) const { opt.set_lr(lr()); }
  int64_t position() const { return position_; }
  void set_position(int64_t p) { position_ = p; }
  const ScheduleOptions& options() const { return opt_; }

 private:
  ScheduleOptions opt_;
  int64_t position_ = 0;
};

/// "constant" | "cosine" (throws ConfigError).
LrSchedule parse_schedule(const std::string& name);

}  // namespace mixtrain::optim
