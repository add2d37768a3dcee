// The caching CUDA allocator and the CUDA runtime state: statistics, size bins, reuse, stream-ordered
// caching, peak reset, empty_cache, out-of-memory errors; streams, handles and device copies.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/kernels.h"
#include "core/ops.h"
#ifdef SEQMIX_WITH_CUDA
#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#endif

using namespace seqmix;

#define SKIP_WITHOUT_CUDA() \
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device"

TEST(CudaAllocator, StatsMoveAndBlocksAreReused) {
  SKIP_WITHOUT_CUDA();
  cuda::empty_cache();  // no cached block of another test may be picked instead
  AllocatorStats s0 = cuda::stats(0);
  void* p = cuda::alloc(1000, 0);  // binned to 1024 bytes
  ASSERT_NE(p, nullptr);
  AllocatorStats s1 = cuda::stats(0);
  EXPECT_EQ(s1.current_bytes, s0.current_bytes + 1024);
  EXPECT_EQ(s1.num_allocs, s0.num_allocs + 1);
  EXPECT_GE(s1.peak_bytes, s1.current_bytes);
  EXPECT_GE(s1.reserved_bytes, s1.current_bytes);
  cuda::free(p);
  AllocatorStats s2 = cuda::stats(0);
  EXPECT_EQ(s2.current_bytes, s0.current_bytes);
  EXPECT_EQ(s2.reserved_bytes, s1.reserved_bytes);  // cached, not returned

  // the same bin again: the cached block comes back without a driver call
  void* q = cuda::alloc(1020, 0);
  AllocatorStats s3 = cuda::stats(0);
  EXPECT_EQ(q, p);
  EXPECT_EQ(s3.num_driver_allocs, s2.num_driver_allocs);
  cuda::free(q);
}

TEST(CudaAllocator, LargeSizesRoundToTwoMiB) {
  SKIP_WITHOUT_CUDA();
  AllocatorStats s0 = cuda::stats(0);
  void* p = cuda::alloc((3 << 20) + 1, 0);
  EXPECT_EQ(cuda::stats(0).current_bytes, s0.current_bytes + (size_t(4) << 20));
  cuda::free(p);
  EXPECT_EQ(cuda::stats(0).current_bytes, s0.current_bytes);
}

TEST(CudaAllocator, TensorsUseTheAllocator) {
  SKIP_WITHOUT_CUDA();
  size_t before = cuda::stats(0).current_bytes;
  {
    Tensor t = empty({1024}, DType::F32, Device::cuda());
    EXPECT_EQ(cuda::stats(0).current_bytes, before + 4096);
  }
  EXPECT_EQ(cuda::stats(0).current_bytes, before);
}

TEST(CudaAllocator, PeakResets) {
  SKIP_WITHOUT_CUDA();
  void* p = cuda::alloc(size_t(64) << 20, 0);
  size_t with_block = cuda::stats(0).current_bytes;
  cuda::free(p);
  AllocatorStats s = cuda::stats(0);
  EXPECT_GE(s.peak_bytes, with_block);
  cuda::reset_peak(0);
  s = cuda::stats(0);
  EXPECT_EQ(s.peak_bytes, s.current_bytes);
}

TEST(CudaAllocator, EmptyCacheReleasesCachedBlocks) {
  SKIP_WITHOUT_CUDA();
  void* p = cuda::alloc(size_t(32) << 20, 0);
  cuda::free(p);
  AllocatorStats s = cuda::stats(0);
  EXPECT_GE(s.reserved_bytes, s.current_bytes + (size_t(32) << 20));
  cuda::empty_cache();
  s = cuda::stats(0);
  EXPECT_EQ(s.reserved_bytes, s.current_bytes);  // only blocks in use remain
  // and allocation still works afterwards
  void* q = cuda::alloc(4096, 0);
  EXPECT_NE(q, nullptr);
  cuda::free(q);
}

TEST(CudaAllocator, OutOfMemoryThrowsAClearError) {
  SKIP_WITHOUT_CUDA();
  const size_t huge = size_t(1) << 50;  // 1 PiB
  try {
    cuda::alloc(huge, 0);
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(huge)), std::string::npos) << msg;
    EXPECT_NE(msg.find("batch_size"), std::string::npos) << msg;
  }
  // the allocator is still usable
  void* p = cuda::alloc(1024, 0);
  EXPECT_NE(p, nullptr);
  cuda::free(p);
  // and a tensor that is too large says so too
  EXPECT_THROW(empty({int64_t(1) << 48}, DType::F32, Device::cuda()), Error);
}

TEST(CudaAllocator, FreeOfAForeignPointerThrows) {
  SKIP_WITHOUT_CUDA();
  int x = 0;
  EXPECT_THROW(cuda::free(&x), Error);
}

#ifdef SEQMIX_WITH_CUDA
TEST(CudaAllocator, CachedBlocksStayOnTheirStream) {
  SKIP_WITHOUT_CUDA();
  cuda::select_device(0);
  cudaStream_t other = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
  cuda::empty_cache();
  cuda::set_current_stream(other);
  void* p = cuda::alloc(777 * 512, 0);  // a size no other test uses
  cuda::free(p);
  cuda::set_current_stream(nullptr);
  AllocatorStats s0 = cuda::stats(0);
  void* q = cuda::alloc(777 * 512, 0);  // default stream: must not take the block freed on `other`
  EXPECT_NE(q, p);
  EXPECT_EQ(cuda::stats(0).num_driver_allocs, s0.num_driver_allocs + 1);
  cuda::free(q);
  cuda::set_current_stream(other);
  void* r = cuda::alloc(777 * 512, 0);  // back on `other`: reused
  EXPECT_EQ(r, p);
  cuda::free(r);
  cuda::set_current_stream(nullptr);
  cuda::empty_cache();
  ASSERT_EQ(cudaStreamDestroy(other), cudaSuccess);
}

TEST(CudaRuntime, StreamsHandlesAndDevices) {
  SKIP_WITHOUT_CUDA();
  EXPECT_TRUE(cuda_built());
  EXPECT_GE(cuda_device_count(), 1);
  cuda::select_device(0);
  EXPECT_EQ(cuda::current_device(), 0);
  cudaStream_t s = cuda::current_stream();
  EXPECT_NE(s, nullptr);  // a non-default stream
  EXPECT_EQ(cuda::current_stream(), s);
  unsigned flags = 0;
  ASSERT_EQ(cudaStreamGetFlags(s, &flags), cudaSuccess);
  EXPECT_EQ(flags & cudaStreamNonBlocking, unsigned(cudaStreamNonBlocking));
  // another thread gets its own stream
  cudaStream_t other = nullptr;
  std::thread th([&] {
    cuda::select_device(0);
    other = cuda::current_stream();
  });
  th.join();
  EXPECT_NE(other, s);
  // handles are bound to the current stream
  cublasHandle_t h = cuda::cublas_handle();
  cudaStream_t hs = nullptr;
  ASSERT_EQ(cublasGetStream(h, &hs), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(hs, s);
  EXPECT_NE(cuda::cublaslt_handle(), nullptr);
  size_t ws = 0;
  EXPECT_NE(cuda::cublas_workspace(&ws), nullptr);
  EXPECT_EQ(ws, size_t(32) << 20);
  EXPECT_GT(cuda::sm_count(), 0);
  cuda::synchronize();
  EXPECT_THROW(cuda::select_device(cuda_device_count()), Error);
  EXPECT_STREQ(cuda::cublas_status_name(CUBLAS_STATUS_ALLOC_FAILED), "CUBLAS_STATUS_ALLOC_FAILED (out of GPU memory)");
  EXPECT_STREQ(cuda::cufft_status_name(CUFFT_INVALID_PLAN), "CUFFT_INVALID_PLAN");
}

TEST(CudaRuntime, CopiesBetweenDevices) {
  SKIP_WITHOUT_CUDA();
  std::vector<float> v(10007);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f - 3.f;
  Tensor h = Tensor::from_vector<float>(v, {10007});
  Tensor d = h.cuda();
  EXPECT_TRUE(d.is_cuda());
  EXPECT_EQ(d.cpu().to_vector<float>(), v);
  Tensor z = empty({0}, DType::F32, Device::cuda());
  EXPECT_EQ(z.cpu().numel(), 0);
  if (cuda_device_count() > 1) {
    Tensor d1 = d.to(Device::cuda(1));
    EXPECT_EQ(d1.device().index, 1);
    EXPECT_EQ(d1.cpu().to_vector<float>(), v);
    EXPECT_EQ(d1.to(Device::cuda(0)).cpu().to_vector<float>(), v);
  }
}
#endif

#ifdef SEQMIX_WITH_CUDA
#include <fstream>
#include <sstream>

#include "core/cuda/kernel_trace.h"

// The per-kernel trace records what ran between start and stop, names it, and counts each launch once.
TEST(KernelTrace, CountsTheKernelsBetweenStartAndStop) {
  SKIP_WITHOUT_CUDA();
  if (!cuda::kernel_trace_available()) GTEST_SKIP() << "built without CUPTI";
  Tensor a = ones({1000, 1000}, DType::F32, Device::cuda(0));
  Tensor warm = add(a, a);  // outside the trace
  cuda::synchronize();
  cuda::kernel_trace_start();
  EXPECT_THROW(cuda::kernel_trace_start(), Error);  // one trace at a time
  Tensor b;
  for (int i = 0; i < 3; ++i) b = matmul(a, a);
  cuda::synchronize();
  const std::string path = ::testing::TempDir() + "/kernel_trace_test.csv";
  cuda::KernelTraceSummary s = cuda::kernel_trace_stop(path, 3);
  EXPECT_GE(s.records, 3);
  EXPECT_EQ(s.dropped, 0);
  EXPECT_GT(s.busy_ms, 0.0);
  EXPECT_GE(s.span_ms, s.busy_ms - 1e-9);
  std::ifstream in(path);
  std::string header, row;
  std::getline(in, header);
  EXPECT_EQ(header, "name,calls,total_ms,mean_us,ms_per_step");
  int64_t calls = 0, rows = 0;
  while (std::getline(in, row)) {
    ++rows;
    const size_t q = row.rfind('"');  // name is quoted; calls follow it
    ASSERT_NE(q, std::string::npos) << row;
    calls += std::stoll(row.substr(q + 2));
  }
  EXPECT_GE(rows, 1);
  EXPECT_EQ(calls, s.records);
  EXPECT_NEAR(b.to(Device::cpu()).data<float>()[0], 1000.0f, 1e-3f);
}
#endif
