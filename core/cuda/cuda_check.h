// CUDA error checking: every CUDA runtime, cuBLAS and cuFFT call goes through one of these macros,
// and a failure becomes a seqmix::Error naming the call, the file and the line.
// Include only from CUDA-side files (core/cuda/*, mixer kernels); no spdlog/fmt here (see gpu/README).
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cufft.h>

#include "core/error.h"

namespace seqmix::cuda {
const char* cublas_status_name(cublasStatus_t s);
const char* cufft_status_name(cufftResult s);
}  // namespace seqmix::cuda

#define SEQMIX_CUDA_CHECK(call)                                                                     \
  do {                                                                                              \
    cudaError_t seqmix_err_ = (call);                                                               \
    if (seqmix_err_ != cudaSuccess) {                                                               \
      if (seqmix_err_ == cudaErrorMemoryAllocation) (void)cudaGetLastError();                       \
      SEQMIX_FAIL("CUDA error in ", #call, ": ", cudaGetErrorName(seqmix_err_), " (",              \
                  cudaGetErrorString(seqmix_err_), ")");                                           \
    }                                                                                               \
  } while (0)

// After a kernel launch: reports a bad launch configuration at the launch site.
#define SEQMIX_CUDA_CHECK_LAUNCH(name) SEQMIX_CUDA_CHECK_NAMED(cudaGetLastError(), name)
#define SEQMIX_CUDA_CHECK_NAMED(call, name)                                                          \
  do {                                                                                              \
    cudaError_t seqmix_err_ = (call);                                                               \
    if (seqmix_err_ != cudaSuccess)                                                                 \
      SEQMIX_FAIL("CUDA error launching ", name, ": ", cudaGetErrorName(seqmix_err_), " (",        \
                  cudaGetErrorString(seqmix_err_), ")");                                           \
  } while (0)

#define SEQMIX_CUBLAS_CHECK(call)                                                                   \
  do {                                                                                              \
    cublasStatus_t seqmix_st_ = (call);                                                             \
    if (seqmix_st_ != CUBLAS_STATUS_SUCCESS)                                                        \
      SEQMIX_FAIL("cuBLAS error in ", #call, ": ", ::seqmix::cuda::cublas_status_name(seqmix_st_)); \
  } while (0)

#define SEQMIX_CUFFT_CHECK(call)                                                                    \
  do {                                                                                              \
    cufftResult seqmix_st_ = (call);                                                                \
    if (seqmix_st_ != CUFFT_SUCCESS)                                                                \
      SEQMIX_FAIL("cuFFT error in ", #call, ": ", ::seqmix::cuda::cufft_status_name(seqmix_st_));   \
  } while (0)
