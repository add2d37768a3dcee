// Per-kernel GPU time from CUPTI's activity records: which kernels a change, or a second GPU beside the
// first, makes slower. The trainer records steps from SEQMIX_KERNEL_TRACE_FROM (default 20) to the end of
// training when SEQMIX_KERNEL_TRACE=FILE.csv is set; `seqmix_bench step --trace FILE.csv` records its timed
// steps. Kernel durations come from the GPU's own timestamps, so they are exact; the tracing itself adds
// host work per launch, so compare traced runs with traced runs only.
#pragma once
#include <cstdint>
#include <string>

namespace seqmix::cuda {

struct KernelTraceSummary {
  int64_t records = 0;  // kernels, copies and memsets recorded
  int64_t dropped = 0;  // records CUPTI lost (its buffers were full): the totals are then low
  double span_ms = 0;   // from the first record's start to the last one's end
  double busy_ms = 0;   // the union of the records' intervals: time the GPU ran something
};

bool kernel_trace_available();  // this build links CUPTI
// Starts recording every kernel, copy and memset of this process (all devices, all streams). Fails if a
// trace is already running or the build has no CUPTI.
void kernel_trace_start();
// The trace's clock now (ns): pass it to kernel_trace_stop as `since` to leave out what ran before, e.g. a first
// step that paid for the trace's start-up. 0 without CUPTI.
uint64_t kernel_trace_now();
// A host-side mark in the timeline (e.g. "backward done"), at the host's clock, which CUPTI's GPU timestamps
// share; nothing when no trace runs.
void kernel_trace_mark(const char* label);
// Stops, and writes `csv_path`: one row per kernel name (demangled), copy kind or memset, sorted by total
// time: name,calls,total_ms,mean_us,ms_per_step (total / `steps`). With `timeline_path`, also every record
// and mark in time order: start_us,end_us,idle_before_us,stream,name (times from the first record; the idle
// gap is the time since every earlier record had ended; marks have stream -1). Records and marks that started
// before `since` (kernel_trace_now) are left out. Returns the totals.
KernelTraceSummary kernel_trace_stop(const std::string& csv_path, int64_t steps, const std::string& timeline_path = "",
                                     uint64_t since = 0);

}  // namespace seqmix::cuda
