// Fused multi-tensor sum of squares (f32 and bf16 gradients) and in-place scaling (f32) on CUDA.
//
// Tensors are packed into launches of up to kMaxTensors; each launch's table (pointers, sizes) is the
// kernel argument. Inside a launch the tensors are laid end to end in groups of 4 elements (each
// padded to a whole group) and a grid-stride loop hands groups to threads; a thread finds its tensor
// by binary search over the group offsets and uses a 16-byte load where the pointer is aligned.
// Sum of squares: each thread accumulates in f32, each block reduces in f32 and writes one partial;
// a one-block kernel adds all partials of all launches in double in a fixed order, and the result is
// copied to the host (the only synchronization). The grid depends only on the work size and the SM
// count, so the result is deterministic on a given device.
#include <cuda_bf16.h>

#include <type_traits>

#include "core/allocator.h"
#include "core/cuda/device_utils.cuh"
#include "train/grad_norm.h"

namespace seqmix::train::detail {

namespace {

constexpr int kMaxTensors = 128;
constexpr int kThreads = 256;
constexpr int kFinalThreads = 512;

template <typename G>
struct GradLaunch {
  G* g[kMaxTensors];
  int64_t n[kMaxTensors];
  int64_t group_start[kMaxTensors + 1];
  unsigned char vec_ok[kMaxTensors];
  int count;
};
static_assert(sizeof(GradLaunch<float>) + 16 < 4000, "kernel argument too large");

template <typename G>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(const GradLaunch<G> L, float* __restrict__ partial) {
  __shared__ float scratch[32];
  const int64_t total = L.group_start[L.count];
  float acc = 0.f;
  for (int64_t grp = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; grp < total;
       grp += int64_t(gridDim.x) * blockDim.x) {
    const int t = seqmix::cuda::find_group_owner(L, grp);
    const int64_t e = (grp - L.group_start[t]) * 4;
    const int64_t n = L.n[t];
    const G* g = L.g[t];
    if (L.vec_ok[t] && e + 4 <= n) {
      const float4 x = seqmix::cuda::load4_float(g + e);
      acc += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    } else {
      const int64_t end = e + 4 < n ? e + 4 : n;
      for (int64_t i = e; i < end; ++i) acc += seqmix::cuda::to_float(g[i]) * seqmix::cuda::to_float(g[i]);
    }
  }
  acc = seqmix::cuda::block_reduce_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kFinalThreads) final_sum_kernel(const float* __restrict__ partial, int64_t n,
                                                                  double* __restrict__ out) {
  __shared__ double scratch[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += double(partial[i]);
  acc = seqmix::cuda::block_reduce_sum(acc, scratch);
  if (threadIdx.x == 0) *out = acc;
}

__global__ void __launch_bounds__(kThreads) scale_kernel(const GradLaunch<float> L, float factor) {
  const int64_t total = L.group_start[L.count];
  for (int64_t grp = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; grp < total;
       grp += int64_t(gridDim.x) * blockDim.x) {
    const int t = seqmix::cuda::find_group_owner(L, grp);
    const int64_t e = (grp - L.group_start[t]) * 4;
    const int64_t n = L.n[t];
    float* g = L.g[t];
    if (L.vec_ok[t] && e + 4 <= n) {
      float4 x = *reinterpret_cast<const float4*>(g + e);
      x.x *= factor;
      x.y *= factor;
      x.z *= factor;
      x.w *= factor;
      *reinterpret_cast<float4*>(g + e) = x;
    } else {
      const int64_t end = e + 4 < n ? e + 4 : n;
      for (int64_t i = e; i < end; ++i) g[i] *= factor;
    }
  }
}

// Splits the gradients of type G (f32: GradRef::g, bf16: g_bf16) into launch tables (tensors with n == 0
// dropped).
template <typename G>
std::vector<GradLaunch<G>> pack(const std::vector<GradRef>& grads) {
  std::vector<GradLaunch<G>> out;
  GradLaunch<G> L{};
  L.count = 0;
  L.group_start[0] = 0;
  for (const GradRef& r : grads) {
    G* g;
    if constexpr (std::is_same_v<G, float>) g = r.g_bf16 ? nullptr : r.g;
    else g = reinterpret_cast<G*>(const_cast<uint16_t*>(r.g_bf16));
    if (r.n <= 0 || g == nullptr) continue;
    const int i = L.count;
    L.g[i] = g;
    L.n[i] = r.n;
    L.vec_ok[i] = std::is_same_v<G, float> ? seqmix::cuda::aligned16(g) : reinterpret_cast<uintptr_t>(g) % 8 == 0;
    L.group_start[i + 1] = L.group_start[i] + (r.n + 3) / 4;
    L.count = i + 1;
    if (L.count == kMaxTensors) {
      out.push_back(L);
      L.count = 0;
      L.group_start[0] = 0;
    }
  }
  if (L.count > 0) out.push_back(L);
  return out;
}

}  // namespace

double grad_sumsq_cuda(const std::vector<GradRef>& grads, const double* extra, size_t n_extra, double* extra_host) {
  const std::vector<GradLaunch<float>> launches = pack<float>(grads);
  const std::vector<GradLaunch<__nv_bfloat16>> launches16 = pack<__nv_bfloat16>(grads);
  if (launches.empty() && launches16.empty()) {
    if (n_extra > 0) {
      cudaStream_t stream = seqmix::cuda::current_stream();
      SEQMIX_CUDA_CHECK(cudaMemcpyAsync(extra_host, extra, n_extra * sizeof(double), cudaMemcpyDeviceToHost, stream));
      SEQMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    return 0.0;
  }
  std::vector<unsigned> grids;  // f32 launches, then bf16
  int64_t nparts = 0;
  auto add_grid = [&](int64_t groups) {
    grids.push_back(seqmix::cuda::grid_for(groups, kThreads, 4));
    nparts += grids.back();
  };
  for (const auto& L : launches) add_grid(L.group_start[L.count]);
  for (const auto& L : launches16) add_grid(L.group_start[L.count]);
  const int device = seqmix::cuda::current_device();
  cudaStream_t stream = seqmix::cuda::current_stream();
  // one scratch allocation: the double result, then the f32 partials
  const size_t bytes = sizeof(double) + size_t(nparts) * sizeof(float);
  void* scratch = seqmix::cuda::alloc(bytes, device);
  double* out = static_cast<double*>(scratch);
  float* partial = reinterpret_cast<float*>(static_cast<char*>(scratch) + sizeof(double));
  double result = 0;
  try {
    int64_t at = 0;
    size_t k = 0;
    for (const auto& L : launches) {
      sumsq_kernel<<<grids[k], kThreads, 0, stream>>>(L, partial + at);
      SEQMIX_CUDA_CHECK_LAUNCH("sumsq_kernel");
      at += grids[k++];
    }
    for (const auto& L : launches16) {
      sumsq_kernel<<<grids[k], kThreads, 0, stream>>>(L, partial + at);
      SEQMIX_CUDA_CHECK_LAUNCH("sumsq_kernel (bf16)");
      at += grids[k++];
    }
    final_sum_kernel<<<1, kFinalThreads, 0, stream>>>(partial, nparts, out);
    SEQMIX_CUDA_CHECK_LAUNCH("final_sum_kernel");
    SEQMIX_CUDA_CHECK(cudaMemcpyAsync(&result, out, sizeof(double), cudaMemcpyDeviceToHost, stream));
    if (n_extra > 0)
      SEQMIX_CUDA_CHECK(cudaMemcpyAsync(extra_host, extra, n_extra * sizeof(double), cudaMemcpyDeviceToHost, stream));
    SEQMIX_CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    seqmix::cuda::free(scratch);
    throw;
  }
  seqmix::cuda::free(scratch);
  return result;
}

void scale_cuda(const std::vector<GradRef>& grads, float factor) {
  cudaStream_t stream = seqmix::cuda::current_stream();
  for (const GradLaunch<float>& L : pack<float>(grads)) {
    const unsigned grid = seqmix::cuda::grid_for(L.group_start[L.count], kThreads, 8);
    scale_kernel<<<grid, kThreads, 0, stream>>>(L, factor);
    SEQMIX_CUDA_CHECK_LAUNCH("scale_kernel");
  }
}

}  // namespace seqmix::train::detail
