#include "core/cuda/kernel_trace.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.h"

#ifdef SEQMIX_WITH_CUPTI
#include <cupti.h>
#include <cxxabi.h>
#endif

namespace seqmix::cuda {

#ifndef SEQMIX_WITH_CUPTI

bool kernel_trace_available() { return false; }
void kernel_trace_start() {
  SEQMIX_FAIL("kernel trace: this build has no CUPTI (CMake found no CUDA::cupti); unset SEQMIX_KERNEL_TRACE");
}
uint64_t kernel_trace_now() { return 0; }
void kernel_trace_mark(const char*) {}
KernelTraceSummary kernel_trace_stop(const std::string&, int64_t, const std::string&, uint64_t) { return {}; }

#else

namespace {

#define SEQMIX_CUPTI_CHECK(call)                                               \
  do {                                                                         \
    CUptiResult seqmix_r_ = (call);                                            \
    if (seqmix_r_ != CUPTI_SUCCESS) {                                          \
      const char* seqmix_s_ = "?";                                             \
      cuptiGetResultString(seqmix_r_, &seqmix_s_);                             \
      SEQMIX_FAIL("CUPTI error in ", #call, ": ", seqmix_s_);                 \
    }                                                                          \
  } while (0)

struct Record {
  uint32_t name;
  int32_t stream;       // -1: a host mark
  uint64_t start, end;  // ns, CUPTI's clock (the host's; GPU timestamps are converted to it)
};

// Filled by CUPTI's worker thread (buffer_completed) and read after the final flush.
struct Trace {
  std::mutex mu;
  std::atomic<bool> running{false};
  bool callbacks = false;
  std::vector<Record> records;
  std::vector<Record> marks;
  std::unordered_map<std::string, uint32_t> ids;
  std::vector<std::string> names;
  int64_t dropped = 0;

  uint32_t id(const std::string& name) {
    auto [it, fresh] = ids.emplace(name, uint32_t(names.size()));
    if (fresh) names.push_back(name);
    return it->second;
  }
};

Trace& trace() {
  static Trace t;
  return t;
}

constexpr size_t kBufferBytes = size_t(16) << 20;

std::string demangled(const char* name) {
  if (!name) return "(unnamed kernel)";
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : name;
  std::free(d);
  if (s.size() > 160) s = s.substr(0, 157) + "...";  // cutlass-style template lists run to kilobytes
  return s;
}

// A CSV field: quoted, inner quotes doubled (demangled names hold commas).
std::string csv_quoted(std::string s) {
  for (size_t p = s.find('"'); p != std::string::npos; p = s.find('"', p + 2)) s.insert(p, 1, '"');
  return '"' + s + '"';
}

const char* copy_kind(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "[copy host to device]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "[copy device to host]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "[copy device to device]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP: return "[copy peer to peer]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH: return "[copy host to host]";
    default: return "[copy, other]";
  }
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t, size_t valid) {
  Trace& t = trace();
  {
    std::lock_guard<std::mutex> lk(t.mu);
    CUpti_Activity* r = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
      if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
        auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
        t.records.push_back({t.id(demangled(k->name)), int32_t(k->streamId), k->start, k->end});
      } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
        auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
        t.records.push_back({t.id(copy_kind(m->copyKind)), int32_t(m->streamId), m->start, m->end});
      } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
        auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
        t.records.push_back({t.id("[memset]"), int32_t(m->streamId), m->start, m->end});
      }
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS) t.dropped += int64_t(dropped);
  }
  std::free(buffer);
}

const CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                     CUPTI_ACTIVITY_KIND_MEMSET};

}  // namespace

bool kernel_trace_available() { return true; }

void kernel_trace_start() {
  Trace& t = trace();
  {
    std::lock_guard<std::mutex> lk(t.mu);
    SEQMIX_CHECK(!t.running, "kernel trace: already running");
    t.records.clear();
    t.marks.clear();
    t.dropped = 0;
    t.running = true;
  }
  if (!t.callbacks) {
    SEQMIX_CUPTI_CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    t.callbacks = true;
  }
  for (CUpti_ActivityKind k : kKinds) SEQMIX_CUPTI_CHECK(cuptiActivityEnable(k));
}

uint64_t kernel_trace_now() {
  uint64_t now = 0;
  SEQMIX_CUPTI_CHECK(cuptiGetTimestamp(&now));
  return now;
}

void kernel_trace_mark(const char* label) {
  Trace& t = trace();
  if (!t.running.load(std::memory_order_relaxed)) return;
  uint64_t now = 0;
  if (cuptiGetTimestamp(&now) != CUPTI_SUCCESS) return;
  std::lock_guard<std::mutex> lk(t.mu);
  t.marks.push_back({t.id(std::string("> ") + label), -1, now, now});
}

KernelTraceSummary kernel_trace_stop(const std::string& csv_path, int64_t steps, const std::string& timeline_path,
                                     uint64_t since) {
  Trace& t = trace();
  SEQMIX_CHECK(t.running, "kernel trace: stop without start");
  for (CUpti_ActivityKind k : kKinds) SEQMIX_CUPTI_CHECK(cuptiActivityDisable(k));
  SEQMIX_CUPTI_CHECK(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED));
  std::lock_guard<std::mutex> lk(t.mu);
  t.running = false;
  if (since > 0) {
    auto before = [since](const Record& r) { return r.start < since; };
    t.records.erase(std::remove_if(t.records.begin(), t.records.end(), before), t.records.end());
    t.marks.erase(std::remove_if(t.marks.begin(), t.marks.end(), before), t.marks.end());
  }

  KernelTraceSummary s;
  s.records = int64_t(t.records.size());
  s.dropped = t.dropped;
  struct Total {
    int64_t calls = 0;
    double ns = 0;
  };
  std::vector<Total> per(t.names.size());
  for (const Record& r : t.records) {
    per[r.name].calls++;
    per[r.name].ns += double(r.end - r.start);
  }
  // busy time: the union of the intervals (overlapping streams count once)
  std::sort(t.records.begin(), t.records.end(), [](const Record& a, const Record& b) { return a.start < b.start; });
  uint64_t busy = 0, cur_start = 0, cur_end = 0, last_end = 0;
  for (const Record& r : t.records) {
    if (r.start > cur_end) {
      busy += cur_end - cur_start;
      cur_start = r.start;
      cur_end = r.end;
    } else {
      cur_end = std::max(cur_end, r.end);
    }
    last_end = std::max(last_end, r.end);
  }
  busy += cur_end - cur_start;
  if (!t.records.empty()) s.span_ms = double(last_end - t.records.front().start) * 1e-6;
  s.busy_ms = double(busy) * 1e-6;

  std::vector<uint32_t> order;
  for (uint32_t i = 0; i < per.size(); ++i)
    if (per[i].calls > 0) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return per[a].ns > per[b].ns; });
  std::ofstream out(csv_path);
  SEQMIX_CHECK(out.good(), "kernel trace: cannot write ", csv_path, " (check the directory exists and is writable)");
  out << "name,calls,total_ms,mean_us,ms_per_step\n";
  const double n = double(std::max<int64_t>(steps, 1));
  for (uint32_t i : order) {
    out << csv_quoted(t.names[i]) << ',' << per[i].calls << ',' << per[i].ns * 1e-6 << ','
        << per[i].ns * 1e-3 / double(per[i].calls) << ',' << per[i].ns * 1e-6 / n << '\n';
  }
  if (!timeline_path.empty()) {
    std::vector<Record> all = t.records;
    all.insert(all.end(), t.marks.begin(), t.marks.end());
    std::stable_sort(all.begin(), all.end(), [](const Record& a, const Record& b) { return a.start < b.start; });
    std::ofstream tl(timeline_path);
    SEQMIX_CHECK(tl.good(), "kernel trace: cannot write ", timeline_path);
    tl << "start_us,end_us,idle_before_us,stream,name\n";
    const uint64_t t0 = t.records.empty() ? 0 : t.records.front().start;
    uint64_t ended = t0;
    for (const Record& r : all) {
      const double rel = (double(r.start) - double(t0)) * 1e-3;
      const double idle = r.stream >= 0 && r.start > ended ? double(r.start - ended) * 1e-3 : 0.0;
      tl << rel << ',' << (double(r.end) - double(t0)) * 1e-3 << ',' << idle << ',' << r.stream << ','
         << csv_quoted(t.names[r.name]) << '\n';
      if (r.stream >= 0) ended = std::max(ended, r.end);
    }
  }
  t.records.clear();
  t.records.shrink_to_fit();
  t.marks.clear();
  return s;
}

#endif

}  // namespace seqmix::cuda
