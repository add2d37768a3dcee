// Wall time of the phases of a training step, for finding what data parallelism costs: set
// SEQMIX_STEP_PROFILE=1. Each mark waits for the current CUDA stream, so the phases are serialized
// (the step gets a little slower): forward + backward, the wait for the gradient reductions that
// backward did not hide, the gradient norm and loss, the optimizer. Averages go to the log every
// 20 steps, after 5 warm-up steps.
#pragma once
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <string>

#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace seqmix::train {

class StepProfiler {
 public:
  enum Phase { kForwardBackward, kReduceWait, kNormLoss, kOptimizer, kPhases };

  explicit StepProfiler(bool cuda) : cuda_(cuda) {
    const char* v = std::getenv("SEQMIX_STEP_PROFILE");
    on_ = v && std::string(v) != "0";
  }
  bool on() const { return on_; }
  void start() {
    if (on_) last_ = now();
  }
  void mark(Phase p) {
    if (!on_) return;
    const double t = now();
    if (steps_ >= kWarmup) sum_[p] += t - last_;
    last_ = t;
  }
  void end_step() {
    if (!on_) return;
    if (++steps_ <= kWarmup || (steps_ - kWarmup) % 20 != 0) return;
    const double n = double(steps_ - kWarmup);
    spdlog::info("step profile over {} steps (ms per step): forward+backward {:.3f} | reduction wait {:.3f} | norm+loss {:.3f} | "
                 "optimizer {:.3f}", steps_ - kWarmup, 1e3 * sum_[0] / n, 1e3 * sum_[1] / n, 1e3 * sum_[2] / n, 1e3 * sum_[3] / n);
  }

 private:
  static constexpr int kWarmup = 5;
  double now() const {
#ifdef SEQMIX_WITH_CUDA
    if (cuda_) cuda::synchronize();
#endif
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  bool on_ = false, cuda_ = false;
  int64_t steps_ = 0;
  double last_ = 0;
  std::array<double, kPhases> sum_{};
};

}  // namespace seqmix::train
