#include "train/step_profile.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <string>

#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace seqmix::train {

StepProfiler::StepProfiler() {
  const char* v = std::getenv("SEQMIX_STEP_PROFILE");
  on_ = v && std::string(v) != "0";
}

void StepProfiler::end_step() {
  if (!on_) return;
  if (++steps_ <= kWarmup || (steps_ - kWarmup) % 20 != 0) return;
  const double n = double(steps_ - kWarmup);
  spdlog::info("step profile over {} steps (ms per step): forward {:.3f} | backward {:.3f} | reduction wait {:.3f} | norm+loss {:.3f} | "
               "optimizer {:.3f}", steps_ - kWarmup, 1e3 * sum_[kForward] / n, 1e3 * sum_[kBackward] / n, 1e3 * sum_[kReduceWait] / n,
               1e3 * sum_[kNormLoss] / n, 1e3 * sum_[kOptimizer] / n);
}

double StepProfiler::now() const {
#ifdef SEQMIX_WITH_CUDA
  if (cuda_) cuda::synchronize();
#endif
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace seqmix::train
