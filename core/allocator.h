// Memory: a 64-byte aligned CPU allocator and a caching CUDA allocator (stream-ordered, size-binned,
// with current / peak statistics and release on demand). Storage owns one allocation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/device.h"

namespace seqmix {

void* cpu_alloc(size_t nbytes);  // 64-byte aligned; throws on failure
void cpu_free(void* p);

struct AllocatorStats {
  size_t current_bytes = 0;   // bytes handed out and not yet returned
  size_t peak_bytes = 0;      // maximum of current_bytes since the last reset
  size_t reserved_bytes = 0;  // bytes held from the driver (handed out + cached)
  size_t num_allocs = 0;      // requests served
  size_t num_driver_allocs = 0;  // requests that had to call cudaMalloc
};

namespace cuda {
// All of these throw seqmix::Error when the CUDA backend is not built.
void* alloc(size_t nbytes, int device);  // on the device's current stream
void free(void* p);
AllocatorStats stats(int device = 0);
void reset_peak(int device = 0);
void empty_cache();  // returns all cached, unused blocks to the driver
}  // namespace cuda

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

}  // namespace seqmix
