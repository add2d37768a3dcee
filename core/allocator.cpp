#include "core/allocator.h"

#include <cstdlib>

#include "core/error.h"

namespace seqmix {

void* cpu_alloc(size_t nbytes) {
  size_t rounded = (nbytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = std::aligned_alloc(64, rounded);
  SEQMIX_CHECK(p != nullptr, "out of host memory: could not allocate ", nbytes, " bytes");
  return p;
}

void cpu_free(void* p) { std::free(p); }

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.is_cpu()) {
    data_ = cpu_alloc(nbytes);
  } else {
    data_ = nbytes ? cuda::alloc(nbytes, device.index) : nullptr;
  }
}

Storage::~Storage() {
  if (!data_) return;
  if (device_.is_cpu()) {
    cpu_free(data_);
  } else {
    try {
      cuda::free(data_);
    } catch (...) {
      // a destructor must not throw; a failed free at shutdown is not actionable
    }
  }
}

#ifndef SEQMIX_WITH_CUDA
namespace cuda {
[[noreturn]] static void not_built() {
  SEQMIX_FAIL("this seqmix was built without CUDA: rebuild with nvcc available (cmake -DSEQMIX_CUDA=ON) or use --device cpu");
}
void* alloc(size_t, int) { not_built(); }
void free(void*) { not_built(); }
AllocatorStats stats(int) { return {}; }
void reset_peak(int) {}
void empty_cache() {}
}  // namespace cuda
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
#endif

bool cuda_available() { return cuda_device_count() > 0; }

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda" || s == "gpu") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      return Device::cuda(std::stoi(s.substr(5)));
    } catch (...) {
    }
  }
  SEQMIX_FAIL("unknown device '", s, "': use cpu, cuda or cuda:N");
}

}  // namespace seqmix
