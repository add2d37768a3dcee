// Learning-rate schedules. Steps are 0-based: the update made at step s uses lr_at(c, s).
//
//   warmup (every kind): for s < warmup, lr * (s + 1) / warmup (so lr / warmup at step 0 and lr at
//                        step warmup - 1); the shape below starts at step `warmup` with lr.
//   cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * q)) / 2,  q = (s - warmup) / (steps - warmup)
//   linear:   lr + (min_lr - lr) * q
//   constant: lr (min_lr unused)
//   wsd:      warmup, then a plateau at lr, then the last decay_fraction of `steps`
//             (decay_steps = round(decay_fraction * steps), at least 1 when decay_fraction > 0) decays
//             linearly to min_lr: decay starts at max(warmup, steps - decay_steps).
// Every decaying kind reaches min_lr at s == steps and stays there for s > steps.
#pragma once
#include <cstdint>
#include <string>

namespace seqmix::train {

struct ScheduleConfig {
  std::string kind = "cosine";  // cosine | wsd | constant | linear
  double lr = 3e-4, min_lr = 0;
  int64_t warmup = 0, steps = 1;
  double decay_fraction = 0.2;  // wsd: the last fraction of `steps` decays linearly to min_lr
};

// Throws a seqmix::Error naming the bad field: an unknown kind (listing the valid ones), lr <= 0 or
// not finite, min_lr outside [0, lr], steps < 1, warmup outside [0, steps], decay_fraction outside [0, 1].
void validate_schedule(const ScheduleConfig& c);

// The learning rate for 0-based step `step` (validates c; step < 0 is an error).
double lr_at(const ScheduleConfig& c, int64_t step);

}  // namespace seqmix::train
