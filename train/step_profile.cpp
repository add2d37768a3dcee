#include "train/step_profile.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

#include "core/error.h"
#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/kernel_trace.h"
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

KernelTraceWindow::KernelTraceWindow(int rank, bool cuda) {
  const char* p = std::getenv("SEQMIX_KERNEL_TRACE");
  if (!p || !*p) return;
  SEQMIX_CHECK(cuda, "SEQMIX_KERNEL_TRACE traces GPU kernels, but this run is on the CPU; unset it or train with --device cuda");
#ifdef SEQMIX_WITH_CUDA
  SEQMIX_CHECK(cuda::kernel_trace_available(), "SEQMIX_KERNEL_TRACE is set but this build has no CUPTI; unset it");
  // "run.csv" -> "run<tag>.csv"
  auto tagged = [](std::string path, const std::string& tag) {
    const size_t dot = path.rfind('.');
    if (dot == std::string::npos || path.find('/', dot) != std::string::npos) return path + tag;
    return path.insert(dot, tag);
  };
  path_ = rank > 0 ? tagged(p, ".rank" + std::to_string(rank)) : std::string(p);
  auto count = [](const char* name, int64_t* v) {
    if (const char* f = std::getenv(name)) {
      char* end = nullptr;
      *v = std::strtoll(f, &end, 10);
      SEQMIX_CHECK(end && *end == 0 && *v >= 0, name, " must be a step count >= 0, got '", f, "'");
    }
  };
  count("SEQMIX_KERNEL_TRACE_FROM", &from_);
  count("SEQMIX_KERNEL_TRACE_STEPS", &limit_);
  if (limit_ > 0) timeline_ = tagged(path_, ".timeline");
#endif
}

void StepProfiler::trace_mark(const char* label) {
#ifdef SEQMIX_WITH_CUDA
  cuda::kernel_trace_mark(label);
#else
  (void)label;
#endif
}

void KernelTraceWindow::before_step() {
  if (path_.empty()) return;
#ifdef SEQMIX_WITH_CUDA
  if (running_ && limit_ > 0 && traced_ == limit_) stop();
  const int64_t step = seen_++;
  if (step == std::max<int64_t>(from_ - 1, 0)) {  // a warm-up step: CUPTI's start-up stays out of the window
    cuda::synchronize();
    cuda::kernel_trace_start();
    running_ = true;
  }
  if (running_ && step == from_) window_start_ = cuda::kernel_trace_now();
  if (running_ && step >= from_) traced_++;
#endif
}

void KernelTraceWindow::finish() {
  if (running_) stop();
  if (!path_.empty() && traced_ == 0)
    spdlog::warn("kernel trace: training ran {} steps, fewer than SEQMIX_KERNEL_TRACE_FROM={}; nothing traced", seen_, from_);
}

void KernelTraceWindow::stop() {
#ifdef SEQMIX_WITH_CUDA
  cuda::synchronize();
  running_ = false;
  cuda::KernelTraceSummary s = cuda::kernel_trace_stop(path_, traced_, timeline_, window_start_);
  const double n = double(std::max<int64_t>(traced_, 1));
  spdlog::info("kernel trace: {} steps, {} records{} -> {}; per step: span {:.3f} ms, GPU busy {:.3f} ms, idle {:.3f} ms", traced_,
               s.records, s.dropped ? fmt::format(" ({} dropped: totals are low)", s.dropped) : "", path_, s.span_ms / n,
               s.busy_ms / n, (s.span_ms - s.busy_ms) / n);
#endif
}

}  // namespace seqmix::train
