#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace seqmix::train {

namespace {
constexpr const char* kKinds = "cosine, wsd, constant, linear";
constexpr double kPi = 3.14159265358979323846;
}  // namespace

void validate_schedule(const ScheduleConfig& c) {
  SEQMIX_CHECK(c.kind == "cosine" || c.kind == "wsd" || c.kind == "constant" || c.kind == "linear",
               "unknown learning-rate schedule '", c.kind, "' (train.schedule must be one of: ", kKinds, ")");
  SEQMIX_CHECK(std::isfinite(c.lr) && c.lr > 0, "train.lr must be a finite number > 0, got ", c.lr);
  SEQMIX_CHECK(std::isfinite(c.min_lr) && c.min_lr >= 0 && c.min_lr <= c.lr,
               "train.min_lr must be in [0, train.lr = ", c.lr, "], got ", c.min_lr);
  SEQMIX_CHECK(c.steps >= 1, "train.steps must be >= 1, got ", c.steps);
  SEQMIX_CHECK(c.warmup >= 0 && c.warmup <= c.steps, "train.warmup must be in [0, train.steps = ", c.steps,
               "], got ", c.warmup);
  SEQMIX_CHECK(std::isfinite(c.decay_fraction) && c.decay_fraction >= 0 && c.decay_fraction <= 1,
               "train.decay_fraction must be in [0, 1], got ", c.decay_fraction);
}

double lr_at(const ScheduleConfig& c, int64_t step) {
  validate_schedule(c);
  SEQMIX_CHECK(step >= 0, "lr_at: step must be >= 0, got ", step);
  if (step < c.warmup) return c.lr * double(step + 1) / double(c.warmup);
  if (c.kind == "constant") return c.lr;

  int64_t decay_start = c.warmup;
  if (c.kind == "wsd") {
    if (c.decay_fraction <= 0) return c.lr;  // a plateau to the end
    int64_t decay_steps = std::llround(c.decay_fraction * double(c.steps));
    if (decay_steps < 1) decay_steps = 1;
    decay_start = std::max(c.warmup, c.steps - decay_steps);
  }
  if (step >= c.steps) return c.min_lr;
  const int64_t span = c.steps - decay_start;
  if (step < decay_start || span <= 0) return c.lr;
  const double q = double(step - decay_start) / double(span);
  if (c.kind == "cosine") return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + std::cos(kPi * q));
  return c.lr + (c.min_lr - c.lr) * q;  // linear and the wsd decay
}

}  // namespace seqmix::train
