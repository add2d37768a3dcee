// The CUDA runtime state seqmix uses: the current device, one stream per (device, thread) that all
// kernels launch on, and library handles bound to it.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/tensor.h"

namespace seqmix::cuda {

void select_device(int index);       // cudaSetDevice only when it changes
int current_device();
cudaStream_t current_stream();        // the stream of the current device for this thread
void set_current_stream(cudaStream_t s);  // e.g. a communication stream; nullptr restores the default
void synchronize();                   // waits for the current stream
// Peer access between the current device and every other one that supports it, both ways (what NCCL's
// peer-to-peer transport sets up between two ranks); for measuring what it costs. Returns the number of peers.
int enable_peer_access();
cublasHandle_t cublas_handle();       // bound to current_stream()
cublasLtHandle_t cublaslt_handle();
void* cublas_workspace(size_t* bytes);  // a per-device workspace for cuBLASLt
int sm_count();
int max_shared_memory_optin();        // dynamic shared memory one block may opt in to, bytes
// SMs the GEMMs leave free for kernels that run beside them (this thread's launches; 0: use all).
// cuBLASLt's Hopper kernels are persistent, one CTA per SM: a collective that holds a few SMs (NCCL
// during the bucketed gradient reduction) otherwise stalls the whole GEMM until it ends.
void set_gemm_sm_margin(int sms);
int gemm_sm_margin();

// Host <-> device and device <-> device copies of whole contiguous tensors of one shape and dtype.
void copy_between_devices(const Tensor& dst, const Tensor& src);

// Copies `bytes` of pageable host memory into the contiguous device tensor `dst` through a ring of
// pinned staging buffers: the transfer is asynchronous on the current stream and `host` may be reused
// as soon as this returns (the data loader's next batch overlaps the GPU's work on this one).
void upload_async(const void* host, size_t bytes, const Tensor& dst);

// Kernel launch geometry for n elements with `threads` per block (grid capped, grid-stride loops).
inline unsigned blocks_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return unsigned(b > 65535 * 8 ? 65535 * 8 : b);
}

}  // namespace seqmix::cuda
