// The CUDA runtime state: current device, one non-blocking stream per (thread, device), cuBLAS /
// cuBLASLt handles and workspaces per (thread, device) bound to that stream, and device copies.
//
// Handles and workspaces are per thread as well as per device: a handle's stream is set on each
// fetch, so sharing one handle between threads that use different streams would race.
#include "core/cuda/runtime.h"
#include "core/kernels.h"

#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/device.h"
#include "core/error.h"

namespace seqmix {

bool cuda_built() { return true; }

int cuda_device_count() {
  // Cached: the count cannot change during a process. Never throws: no driver or no GPU gives 0.
  static const int count = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

namespace cuda {

namespace {

struct ThreadState {
  std::vector<cudaStream_t> streams;    // created on first use, never destroyed (process lifetime)
  std::vector<cudaStream_t> overrides;  // set_current_stream; nullptr = the default one
  std::vector<cublasHandle_t> cublas;
  std::vector<cublasLtHandle_t> cublaslt;
  std::vector<void*> workspaces;
};

ThreadState& thread_state() {
  // Leaked on purpose: CUDA objects must not be destroyed after the driver shut down at exit.
  thread_local ThreadState* st = [] {
    auto* s = new ThreadState();
    size_t n = size_t(cuda_device_count() > 0 ? cuda_device_count() : 1);
    s->streams.assign(n, nullptr);
    s->overrides.assign(n, nullptr);
    s->cublas.assign(n, nullptr);
    s->cublaslt.assign(n, nullptr);
    s->workspaces.assign(n, nullptr);
    return s;
  }();
  return *st;
}

void check_index(int index) {
  int n = cuda_device_count();
  SEQMIX_CHECK(n > 0, "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES), use --device cpu");
  SEQMIX_CHECK(index >= 0 && index < n, "CUDA device ", index, " does not exist: ", n, " device(s) visible");
}

// Runs f with `device` current, restoring the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    SEQMIX_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) SEQMIX_CUDA_CHECK(cudaSetDevice(device));
    changed_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

}  // namespace

// The stream of `device` for this thread (used by the allocator and device copies). Declared in
// core/cuda/allocator.cpp as well.
cudaStream_t stream_of_device(int device) {
  ThreadState& st = thread_state();
  if (device >= 0 && size_t(device) < st.streams.size() && st.streams[device] && !st.overrides[device]) return st.streams[device];
  check_index(device);
  if (st.overrides[device]) return st.overrides[device];
  if (!st.streams[device]) {
    DeviceGuard g(device);
    cudaStream_t s = nullptr;
    SEQMIX_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    st.streams[device] = s;
  }
  return st.streams[device];
}

// This thread's stream on `device` if it has one (current override or default), else nullptr; never
// creates one. Used by the allocator when a block is freed on another stream than its own.
cudaStream_t existing_stream_of_device(int device) {
  if (device < 0 || device >= cuda_device_count()) return nullptr;
  ThreadState& st = thread_state();
  return st.overrides[device] ? st.overrides[device] : st.streams[device];
}

// The current device, cached per thread: every op asks, and cudaGetDevice costs a driver call.
// Code that switches devices temporarily (DeviceGuard) restores the previous one, keeping it valid.
thread_local int t_current_device = -1;

void select_device(int index) {
  if (index == t_current_device) return;
  check_index(index);
  int cur = -1;
  SEQMIX_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != index) SEQMIX_CUDA_CHECK(cudaSetDevice(index));
  t_current_device = index;
}

int current_device() {
  if (t_current_device < 0) SEQMIX_CUDA_CHECK(cudaGetDevice(&t_current_device));
  return t_current_device;
}

cudaStream_t current_stream() { return stream_of_device(current_device()); }

void set_current_stream(cudaStream_t s) {
  int dev = current_device();
  check_index(dev);
  thread_state().overrides[dev] = s;
}

void synchronize() { SEQMIX_CUDA_CHECK(cudaStreamSynchronize(current_stream())); }

int enable_peer_access() {
  const int self = current_device(), n = cuda_device_count();
  int peers = 0;
  for (int d = 0; d < n; ++d) {
    int ok_there = 0, ok_back = 0;
    if (d == self) continue;
    SEQMIX_CUDA_CHECK(cudaDeviceCanAccessPeer(&ok_there, self, d));
    SEQMIX_CUDA_CHECK(cudaDeviceCanAccessPeer(&ok_back, d, self));
    if (!ok_there || !ok_back) continue;
    SEQMIX_CUDA_CHECK(cudaDeviceEnablePeerAccess(d, 0));
    SEQMIX_CUDA_CHECK(cudaSetDevice(d));
    SEQMIX_CUDA_CHECK(cudaDeviceEnablePeerAccess(self, 0));
    SEQMIX_CUDA_CHECK(cudaSetDevice(self));
    ++peers;
  }
  return peers;
}

cublasHandle_t cublas_handle() {
  int dev = current_device();
  check_index(dev);
  ThreadState& st = thread_state();
  if (!st.cublas[dev]) {
    cublasHandle_t h = nullptr;
    SEQMIX_CUBLAS_CHECK(cublasCreate(&h));
    st.cublas[dev] = h;
  }
  SEQMIX_CUBLAS_CHECK(cublasSetStream(st.cublas[dev], current_stream()));
  return st.cublas[dev];
}

cublasLtHandle_t cublaslt_handle() {
  int dev = current_device();
  check_index(dev);
  ThreadState& st = thread_state();
  if (!st.cublaslt[dev]) {
    cublasLtHandle_t h = nullptr;
    SEQMIX_CUBLAS_CHECK(cublasLtCreate(&h));
    st.cublaslt[dev] = h;
  }
  return st.cublaslt[dev];
}

void* cublas_workspace(size_t* bytes) {
  constexpr size_t kWorkspaceBytes = size_t(32) << 20;
  int dev = current_device();
  check_index(dev);
  ThreadState& st = thread_state();
  if (!st.workspaces[dev]) {
    // Straight from the driver (not the caching allocator): it lives as long as the process and
    // would only blur the allocator's statistics.
    void* p = nullptr;
    SEQMIX_CUDA_CHECK(cudaMalloc(&p, kWorkspaceBytes));
    st.workspaces[dev] = p;
  }
  if (bytes) *bytes = kWorkspaceBytes;
  return st.workspaces[dev];
}

namespace {
thread_local int g_gemm_sm_margin = 0;
}

void set_gemm_sm_margin(int sms) {
  SEQMIX_CHECK(sms >= 0, "GEMM SM margin must be >= 0, got ", sms);
  g_gemm_sm_margin = sms;
}

int gemm_sm_margin() { return g_gemm_sm_margin; }

namespace {
// A CUDA attribute of the current device, queried once per (device, attribute): callers ask on every launch.
int device_attribute(cudaDeviceAttr attr) {
  int dev = current_device();
  check_index(dev);
  static std::mutex mu;
  static std::map<std::pair<int, int>, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto [it, fresh] = cache.try_emplace({dev, int(attr)}, 0);
  if (fresh) SEQMIX_CUDA_CHECK(cudaDeviceGetAttribute(&it->second, attr, dev));
  return it->second;
}
}  // namespace

int sm_count() { return device_attribute(cudaDevAttrMultiProcessorCount); }

int max_shared_memory_optin() { return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

void copy_between_devices(const Tensor& dst, const Tensor& src) {
  SEQMIX_CHECK(dst.shape() == src.shape(), "copy between devices: shapes differ (", shape_str(dst.shape()), " and ",
               shape_str(src.shape()), ")");
  SEQMIX_CHECK(dst.dtype() == src.dtype(), "copy between devices: dtypes differ (", dtype_name(dst.dtype()), " and ",
               dtype_name(src.dtype()), ")");
  if (!src.is_contiguous()) {
    copy_between_devices(dst, src.contiguous());
    return;
  }
  if (!dst.is_contiguous()) {
    // stage in a contiguous tensor on the destination device, then a strided same-device copy
    Tensor staged = Tensor::empty(dst.shape(), dst.dtype(), dst.device());
    copy_between_devices(staged, src);
    kernels::copy(dst, staged);
    return;
  }
  size_t n = src.nbytes();
  if (n == 0) return;
  Device dd = dst.device(), sd = src.device();
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst.data_ptr(), src.data_ptr(), n);
    return;
  }
  if (dd.is_cuda() && sd.is_cpu()) {
    // Host to device: ordered on the destination's stream. A pageable source is staged by the driver
    // before cudaMemcpyAsync returns, so the host buffer may be released right after.
    DeviceGuard g(dd.index);
    cudaStream_t s = stream_of_device(dd.index);
    SEQMIX_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), n, cudaMemcpyHostToDevice, s));
    return;
  }
  if (dd.is_cpu() && sd.is_cuda()) {
    // Device to host: the host reads the data right after, so wait for the copy.
    DeviceGuard g(sd.index);
    cudaStream_t s = stream_of_device(sd.index);
    SEQMIX_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), n, cudaMemcpyDeviceToHost, s));
    SEQMIX_CUDA_CHECK(cudaStreamSynchronize(s));
    return;
  }
  // Device to device.
  if (dd.index == sd.index) {
    DeviceGuard g(dd.index);
    SEQMIX_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), n, cudaMemcpyDeviceToDevice,
                                      stream_of_device(dd.index)));
    return;
  }
  // Across devices: the copy runs on the destination's stream after the source's stream reached this
  // point, and the source's stream waits for the copy (its block may be reused there right after).
  cudaStream_t ss = stream_of_device(sd.index), ds = stream_of_device(dd.index);
  cudaEvent_t src_ready = nullptr, copy_done = nullptr;
  {
    DeviceGuard g(sd.index);
    SEQMIX_CUDA_CHECK(cudaEventCreateWithFlags(&src_ready, cudaEventDisableTiming));
    SEQMIX_CUDA_CHECK(cudaEventRecord(src_ready, ss));
  }
  {
    DeviceGuard g(dd.index);
    SEQMIX_CUDA_CHECK(cudaEventCreateWithFlags(&copy_done, cudaEventDisableTiming));
    SEQMIX_CUDA_CHECK(cudaStreamWaitEvent(ds, src_ready, 0));
    SEQMIX_CUDA_CHECK(cudaMemcpyPeerAsync(dst.data_ptr(), dd.index, src.data_ptr(), sd.index, n, ds));
    SEQMIX_CUDA_CHECK(cudaEventRecord(copy_done, ds));
  }
  {
    DeviceGuard g(sd.index);
    SEQMIX_CUDA_CHECK(cudaStreamWaitEvent(ss, copy_done, 0));
  }
  // Destroying a recorded event is fine: resources are released once it completes.
  SEQMIX_CUDA_CHECK(cudaEventDestroy(src_ready));
  SEQMIX_CUDA_CHECK(cudaEventDestroy(copy_done));
}

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED (out of GPU memory)";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

const char* cufft_status_name(cufftResult s) {
  switch (int(s)) {
    case CUFFT_SUCCESS: return "CUFFT_SUCCESS";
    case CUFFT_INVALID_PLAN: return "CUFFT_INVALID_PLAN";
    case CUFFT_ALLOC_FAILED: return "CUFFT_ALLOC_FAILED (out of GPU memory)";
    case CUFFT_INVALID_TYPE: return "CUFFT_INVALID_TYPE";
    case CUFFT_INVALID_VALUE: return "CUFFT_INVALID_VALUE";
    case CUFFT_INTERNAL_ERROR: return "CUFFT_INTERNAL_ERROR";
    case CUFFT_EXEC_FAILED: return "CUFFT_EXEC_FAILED";
    case CUFFT_SETUP_FAILED: return "CUFFT_SETUP_FAILED";
    case CUFFT_INVALID_SIZE: return "CUFFT_INVALID_SIZE";
    case CUFFT_UNALIGNED_DATA: return "CUFFT_UNALIGNED_DATA";
    case CUFFT_INVALID_DEVICE: return "CUFFT_INVALID_DEVICE";
    case CUFFT_NO_WORKSPACE: return "CUFFT_NO_WORKSPACE";
    case CUFFT_NOT_IMPLEMENTED: return "CUFFT_NOT_IMPLEMENTED";
    case CUFFT_NOT_SUPPORTED: return "CUFFT_NOT_SUPPORTED";
    default: return "unknown cuFFT status";
  }
}

}  // namespace cuda
namespace cuda {

namespace {
// A few pinned buffers used in turn; each is reused only after its last copy finished (its event).
struct PinnedRing {
  struct Slot {
    void* ptr = nullptr;
    size_t size = 0;
    cudaEvent_t done = nullptr;
  };
  std::mutex mu;
  std::vector<Slot> slots = std::vector<Slot>(4);
  size_t next = 0;
};
PinnedRing& pinned_ring() {
  static PinnedRing* ring = new PinnedRing();  // leaked: freed by the driver at exit
  return *ring;
}
}  // namespace

void upload_async(const void* host, size_t bytes, const Tensor& dst) {
  SEQMIX_CHECK(dst.is_cuda() && dst.is_contiguous() && dst.nbytes() == bytes, "upload_async: destination must be a contiguous ",
               "CUDA tensor of ", bytes, " bytes");
  if (bytes == 0) return;
  select_device(dst.device().index);
  PinnedRing& ring = pinned_ring();
  std::lock_guard<std::mutex> lock(ring.mu);
  PinnedRing::Slot& slot = ring.slots[ring.next];
  ring.next = (ring.next + 1) % ring.slots.size();
  if (slot.done) SEQMIX_CUDA_CHECK(cudaEventSynchronize(slot.done));  // its previous copy has left
  if (slot.size < bytes) {
    if (slot.ptr) SEQMIX_CUDA_CHECK(cudaFreeHost(slot.ptr));
    SEQMIX_CUDA_CHECK(cudaHostAlloc(&slot.ptr, bytes, cudaHostAllocDefault));
    slot.size = bytes;
  }
  if (!slot.done) SEQMIX_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
  std::memcpy(slot.ptr, host, bytes);
  cudaStream_t s = current_stream();
  SEQMIX_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), slot.ptr, bytes, cudaMemcpyHostToDevice, s));
  SEQMIX_CUDA_CHECK(cudaEventRecord(slot.done, s));
}

}  // namespace cuda

}  // namespace seqmix
