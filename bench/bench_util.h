// Shared by the GPU benchmarks: the median of CUDA-event timings on the current stream.
#pragma once
#ifdef SEQMIX_WITH_CUDA
#include <algorithm>
#include <functional>
#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"

namespace seqmix::bench {

// Median milliseconds of f() over `iters` runs after `warmup` runs, each bracketed by events.
inline double median_ms(const std::function<void()>& f, int warmup, int iters) {
  cudaStream_t st = cuda::current_stream();
  for (int i = 0; i < warmup; ++i) f();
  std::vector<cudaEvent_t> ev(size_t(2 * iters));
  for (cudaEvent_t& e : ev) SEQMIX_CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    SEQMIX_CUDA_CHECK(cudaEventRecord(ev[size_t(2 * i)], st));
    f();
    SEQMIX_CUDA_CHECK(cudaEventRecord(ev[size_t(2 * i + 1)], st));
  }
  SEQMIX_CUDA_CHECK(cudaStreamSynchronize(st));
  std::vector<double> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    float t = 0;
    SEQMIX_CUDA_CHECK(cudaEventElapsedTime(&t, ev[size_t(2 * i)], ev[size_t(2 * i + 1)]));
    ms[size_t(i)] = t;
  }
  for (cudaEvent_t& e : ev) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return iters % 2 ? ms[size_t(iters / 2)] : 0.5 * (ms[size_t(iters / 2 - 1)] + ms[size_t(iters / 2)]);
}

}  // namespace seqmix::bench
#endif
