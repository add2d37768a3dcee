// The caching CUDA allocator behind seqmix::cuda::alloc / free (declared in core/allocator.h).
//
// - Sizes are binned: requests up to 1 MiB round up to a multiple of 512 B, larger ones to a multiple
//   of 2 MiB, so blocks of nearby sizes are interchangeable.
// - A freed block goes to the cache of the (device, stream) it was allocated on and is handed out
//   again only for that stream: work queued on one stream runs in order, so a block freed there can
//   be reused there at once, with no synchronization. When the freeing thread's stream is not the
//   block's (a tensor made by one thread, e.g. a loader, and released by another), the block's stream
//   is first made to wait for the work queued so far on the freeing stream (an event), so reuse on
//   the block's stream cannot overtake kernels that still read it. Uses on any third stream are not
//   tracked: keep such tensors alive until that stream is done.
// - A cached block serves a request when it is at least as large and not much larger (at most 2x
//   for small blocks, +25% for large ones), smallest first.
// - On cudaMalloc failure the cache is emptied (cudaFree synchronizes the device) and the call is
//   retried once; a second failure throws a seqmix::Error with the numbers and what to do.
// - One mutex guards everything; the driver is called with it held (allocation is rare once the
//   cache is warm).
#include <cstdio>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#include "core/error.h"

namespace seqmix::cuda {

cudaStream_t stream_of_device(int device);           // core/cuda/runtime.cpp
cudaStream_t existing_stream_of_device(int device);  // core/cuda/runtime.cpp

namespace {

constexpr size_t kSmallLimit = size_t(1) << 20;  // 1 MiB
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t(2) << 20;  // 2 MiB

size_t round_size(size_t n) {
  if (n <= kSmallLimit) return (n + kSmallRound - 1) / kSmallRound * kSmallRound;
  return (n + kLargeRound - 1) / kLargeRound * kLargeRound;
}

struct Block {
  void* ptr = nullptr;
  size_t size = 0;  // rounded size, what cudaMalloc returned
  int device = 0;
  cudaStream_t stream = nullptr;
};

std::string mib(size_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

class CachingAllocator {
 public:
  void* alloc(size_t nbytes, int device) {
    if (nbytes == 0) return nullptr;
    cudaStream_t stream = stream_of_device(device);
    size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    AllocatorStats& st = stats_[device];
    st.num_allocs++;
    // smallest cached block on this (device, stream) that fits without wasting too much
    auto& cache = caches_[Key{device, stream}];
    auto it = cache.lower_bound(size);
    size_t limit = size <= kSmallLimit ? 2 * size : size + size / 4;
    if (it != cache.end() && it->first <= limit) {
      Block b = it->second;
      cache.erase(it);
      in_use_[b.ptr] = b;
      note_alloc(st, b.size);
      return b.ptr;
    }
    void* p = driver_alloc(size, device, nbytes, st);
    Block b{p, size, device, stream};
    in_use_[p] = b;
    st.reserved_bytes += size;
    st.num_driver_allocs++;
    note_alloc(st, size);
    return p;
  }

  void free(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_use_.find(p);
    SEQMIX_CHECK(it != in_use_.end(), "cuda::free: pointer ", p, " was not allocated by seqmix's CUDA allocator (or was freed twice)");
    Block b = it->second;
    cudaStream_t freeing = existing_stream_of_device(b.device);
    if (freeing && freeing != b.stream) order_after(b, freeing);
    in_use_.erase(it);
    stats_[b.device].current_bytes -= b.size;
    caches_[Key{b.device, b.stream}].emplace(b.size, b);
  }

  AllocatorStats stats(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_[device];
  }

  void reset_peak(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    AllocatorStats& st = stats_[device];
    st.peak_bytes = st.current_bytes;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached(-1);
  }

 private:
  struct Key {
    int device;
    cudaStream_t stream;
    bool operator==(const Key& o) const { return device == o.device && stream == o.stream; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<void*>()(static_cast<void*>(k.stream)) * 31u + std::hash<int>()(k.device);
    }
  };

  // Makes b.stream wait for the work queued so far on `other` (both on b.device).
  static void order_after(const Block& b, cudaStream_t other) {
    int prev = -1;
    SEQMIX_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != b.device) SEQMIX_CUDA_CHECK(cudaSetDevice(b.device));
    cudaEvent_t ev = nullptr;
    SEQMIX_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    SEQMIX_CUDA_CHECK(cudaEventRecord(ev, other));
    SEQMIX_CUDA_CHECK(cudaStreamWaitEvent(b.stream, ev, 0));
    SEQMIX_CUDA_CHECK(cudaEventDestroy(ev));  // released once the wait is satisfied
    if (prev != b.device) SEQMIX_CUDA_CHECK(cudaSetDevice(prev));
  }

  static void note_alloc(AllocatorStats& st, size_t size) {
    st.current_bytes += size;
    if (st.current_bytes > st.peak_bytes) st.peak_bytes = st.current_bytes;
  }

  // cudaFree every cached block (of one device, or all when device < 0). Called with mu_ held.
  void release_cached(int device) {
    int prev = -1;
    (void)cudaGetDevice(&prev);
    for (auto& [key, cache] : caches_) {
      if (device >= 0 && key.device != device) continue;
      if (cache.empty()) continue;
      SEQMIX_CUDA_CHECK(cudaSetDevice(key.device));
      for (auto& [size, b] : cache) {
        SEQMIX_CUDA_CHECK(cudaFree(b.ptr));
        stats_[b.device].reserved_bytes -= b.size;
      }
      cache.clear();
    }
    if (prev >= 0) (void)cudaSetDevice(prev);
  }

  // cudaMalloc on `device`, emptying the cache and retrying once when the driver is out of memory.
  void* driver_alloc(size_t size, int device, size_t requested, AllocatorStats& st) {
    int prev = -1;
    SEQMIX_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != device) SEQMIX_CUDA_CHECK(cudaSetDevice(device));
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cached(device);
      if (prev != device) (void)cudaSetDevice(device);
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      if (prev != device) (void)cudaSetDevice(prev);
      if (e == cudaErrorMemoryAllocation) {
        SEQMIX_FAIL("CUDA out of memory on cuda:", device, ": tried to allocate ", requested, " bytes (", mib(requested),
                    "); tensors hold ", st.current_bytes, " bytes (", mib(st.current_bytes), "), seqmix has reserved ",
                    st.reserved_bytes, " bytes (", mib(st.reserved_bytes), "), the device has ", mib(free_b), " free of ",
                    mib(total_b), ". Reduce train.batch_size or data.seq_len (or use grad_accum / activation recompute).");
      }
      SEQMIX_FAIL("cudaMalloc of ", requested, " bytes on cuda:", device, " failed: ", cudaGetErrorName(e), " (",
                  cudaGetErrorString(e), ")");
    }
    if (prev != device) (void)cudaSetDevice(prev);
    return p;
  }

  std::mutex mu_;
  std::unordered_map<int, AllocatorStats> stats_;
  std::unordered_map<Key, std::multimap<size_t, Block>, KeyHash> caches_;
  std::unordered_map<void*, Block> in_use_;
};

CachingAllocator& allocator() {
  // Leaked on purpose: tensors held by static objects are freed after static destructors ran.
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

void* alloc(size_t nbytes, int device) { return allocator().alloc(nbytes, device); }
void free(void* p) { allocator().free(p); }
AllocatorStats stats(int device) { return allocator().stats(device); }
void reset_peak(int device) { allocator().reset_peak(device); }
void empty_cache() { allocator().empty_cache(); }

}  // namespace seqmix::cuda
