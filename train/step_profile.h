// Wall time of the phases of a training step, for finding what data parallelism costs: set
// SEQMIX_STEP_PROFILE=1. Each mark waits for the current CUDA stream, so the phases are serialized
// (the step gets a little slower): forward, backward, the wait for the gradient reductions that
// backward did not hide, the gradient norm and loss, the optimizer. Averages go to the log every
// 20 steps, after 5 warm-up steps.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace seqmix::train {

class StepProfiler {
 public:
  enum Phase { kForward, kBackward, kReduceWait, kNormLoss, kOptimizer, kPhases };

  StepProfiler();  // reads SEQMIX_STEP_PROFILE
  bool on() const { return on_; }
  // `cuda`: the step runs on a GPU, so each mark waits for the current stream first.
  void start(bool cuda) {
    cuda_ = cuda;
    trace_mark("step start");
    if (on_) last_ = now();
  }
  void mark(Phase p) {
    trace_mark(kNames[p]);
    if (!on_) return;
    const double t = now();
    if (steps_ >= kWarmup) sum_[p] += t - last_;
    last_ = t;
  }
  void end_step();

 private:
  static constexpr int kWarmup = 5;
  static constexpr const char* kNames[kPhases] = {"forward", "backward", "reduction wait", "norm+loss", "optimizer"};
  static void trace_mark(const char* label);  // a mark in the kernel trace's timeline, if one runs
  double now() const;
  bool on_ = false, cuda_ = false;
  int64_t steps_ = 0;
  double last_ = 0;
  std::array<double, kPhases> sum_{};
};

// SEQMIX_KERNEL_TRACE=FILE.csv: the GPU time of every kernel over the steps from SEQMIX_KERNEL_TRACE_FROM
// (default 20, counted from this process's first step) to the end of training, or for SEQMIX_KERNEL_TRACE_STEPS
// steps, one row per kernel name (core/cuda/kernel_trace.h); rank r > 0 writes FILE.rank<r>.csv. The totals
// go to the log. With SEQMIX_KERNEL_TRACE_STEPS, also FILE.timeline.csv: every kernel in time order, with the
// GPU's idle gaps and the step's phase marks (those of SEQMIX_STEP_PROFILE, which need not be on). CUPTI starts
// one step before the window (its start-up stalls the host for a millisecond or two, which the window leaves out).
class KernelTraceWindow {
 public:
  KernelTraceWindow(int rank, bool cuda);  // reads the environment
  void before_step();                   // starts the trace at the chosen step
  void finish();                        // stops it, writes the file, logs the totals
 private:
  void stop();
  std::string path_, timeline_;
  int64_t from_ = 20, limit_ = 0, seen_ = 0, traced_ = 0;
  uint64_t window_start_ = 0;  // the trace's clock at the first counted step
  bool running_ = false;
};

}  // namespace seqmix::train
