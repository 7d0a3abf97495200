// Learning-rate schedules (constant; linear warm-up then cosine to min_lr).
#include "mixtrain/optim/schedule.h"

#include <fmt/format.h>

#include <cmath>
#include <numbers>

#include "mixtrain/error.h"

namespace mixtrain::optim {

double schedule_lr(const ScheduleOptions& o, int64_t k) {
  if (k < o.warmup) return o.base_lr * static_cast<double>(k + 1) / static_cast<double>(o.warmup);
  if (o.kind == LrSchedule::constant) return o.base_lr;
  const int64_t span = o.total - o.warmup;
  if (span <= 0 || k >= o.total) return o.min_lr;
  const double progress = static_cast<double>(k - o.warmup) / static_cast<double>(span);
  return o.min_lr + 0.5 * (o.base_lr - o.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

LrScheduler::LrScheduler(ScheduleOptions o) : opt_(o) {
  if (!(o.base_lr >= 0) || !(o.min_lr >= 0) || o.min_lr > o.base_lr)
    throw ConfigError(fmt::format("lr schedule: base_lr {} / min_lr {} (need 0 <= min <= base)",
                                  o.base_lr, o.min_lr));
  if (o.warmup < 0 || o.total < 0)
    throw ConfigError(
        fmt::format("lr schedule: warmup {} / total {} (must be >= 0)", o.warmup, o.total));
  if (o.kind == LrSchedule::cosine && o.total <= o.warmup)
    throw ConfigError(fmt::format("lr schedule cosine: total steps {} must exceed the warm-up {}",
                                  o.total, o.warmup));
}

double LrScheduler::step(const StepResult& r) {
  if (r.applied || opt_.advance_on_skip) ++position_;
  return lr();
}

LrSchedule parse_schedule(const std::string& name) {
  if (name == "constant") return LrSchedule::constant;
  if (name == "cosine") return LrSchedule::cosine;
  throw ConfigError(fmt::format("lr schedule '{}': expected constant or cosine", name));
}

}  // namespace mixtrain::optim
