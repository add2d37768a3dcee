// Fused multi-tensor AdamW on CUDA: f32 params, exp_avg, exp_avg_sq, updated in place, from f32 or bf16
// gradients (bf16: data-parallel buckets reduced in bf16, read without widening them first; one
// launch per gradient dtype).
//
// The tensors of one step are packed into launches of up to kMaxTensors; each launch's table
// (pointers, sizes, decay factors) travels as the kernel argument (under the 4 KB limit), so there is
// no host->device copy and no host synchronization. Inside a launch the tensors are laid end to end
// in groups of 4 elements (each tensor padded to a whole group); a grid-stride loop hands consecutive
// groups to consecutive threads, a thread finds its tensor by binary search over the group offsets
// (uniform across a warp except at tensor boundaries) and updates 4 elements with 16-byte loads and
// stores when all four pointers are 16-byte aligned (element-wise otherwise, and at a tensor's tail).
// The arithmetic is detail::adamw_update, shared with the CPU, with explicitly rounded f32 operations.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "core/cuda/device_utils.cuh"
#include "train/optimizer.h"

namespace seqmix::train::detail {

namespace {

constexpr int kMaxTensors = 64;
constexpr int kThreads = 256;

template <typename G>
struct AdamWLaunch {
  float* p[kMaxTensors];
  const G* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  int64_t n[kMaxTensors];
  int64_t group_start[kMaxTensors + 1];  // prefix sums of ceil(n / 4)
  float decay[kMaxTensors];
  unsigned char vec_ok[kMaxTensors];
  int count;
};
static_assert(sizeof(AdamWLaunch<float>) + sizeof(AdamWScalars) < 4000, "kernel argument too large");

template <typename G>
__global__ void __launch_bounds__(kThreads) adamw_multi_tensor_kernel(const AdamWLaunch<G> L, const AdamWScalars s) {
  const int64_t total = L.group_start[L.count];
  for (int64_t grp = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; grp < total;
       grp += int64_t(gridDim.x) * blockDim.x) {
    const int t = seqmix::cuda::find_group_owner(L, grp);
    const int64_t e = (grp - L.group_start[t]) * 4;
    const int64_t n = L.n[t];
    const float decay = L.decay[t];
    float* p = L.p[t];
    const G* g = L.g[t];
    float* m = L.m[t];
    float* v = L.v[t];
    if (L.vec_ok[t] && e + 4 <= n) {
      float4 pp = *reinterpret_cast<const float4*>(p + e);
      const float4 gg = seqmix::cuda::load4_float(g + e);
      float4 mm = *reinterpret_cast<const float4*>(m + e);
      float4 vv = *reinterpret_cast<const float4*>(v + e);
      adamw_update(pp.x, gg.x, mm.x, vv.x, decay, s);
      adamw_update(pp.y, gg.y, mm.y, vv.y, decay, s);
      adamw_update(pp.z, gg.z, mm.z, vv.z, decay, s);
      adamw_update(pp.w, gg.w, mm.w, vv.w, decay, s);
      *reinterpret_cast<float4*>(p + e) = pp;
      *reinterpret_cast<float4*>(m + e) = mm;
      *reinterpret_cast<float4*>(v + e) = vv;
    } else {
      const int64_t end = e + 4 < n ? e + 4 : n;
      for (int64_t i = e; i < end; ++i) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_update(pi, seqmix::cuda::to_float(g[i]), mi, vi, decay, s);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
      }
    }
  }
}

template <typename G>
void launch(AdamWLaunch<G>& L, const AdamWScalars& s) {
  if (L.count == 0) return;
  const int64_t total = L.group_start[L.count];
  if (total > 0) {
    const unsigned grid = seqmix::cuda::grid_for(total, kThreads, 8);
    adamw_multi_tensor_kernel<G><<<grid, kThreads, 0, seqmix::cuda::current_stream()>>>(L, s);
    SEQMIX_CUDA_CHECK_LAUNCH("adamw_multi_tensor_kernel");
  }
  L.count = 0;
  L.group_start[0] = 0;
}

// Packs the tensors whose gradient is of type G into launches of kMaxTensors.
template <typename G>
void step_all(const std::vector<AdamWTensor>& tensors, const AdamWScalars& s) {
  AdamWLaunch<G> L{};
  L.count = 0;
  L.group_start[0] = 0;
  for (const AdamWTensor& t : tensors) {
    const G* g;
    if constexpr (std::is_same_v<G, float>) g = t.g_bf16 ? nullptr : t.g;
    else g = reinterpret_cast<const G*>(t.g_bf16);
    if (t.n <= 0 || g == nullptr) continue;
    const int i = L.count;
    L.p[i] = t.p;
    L.g[i] = g;
    L.m[i] = t.m;
    L.v[i] = t.v;
    L.n[i] = t.n;
    L.decay[i] = t.decay;
    const bool g_ok = std::is_same_v<G, float> ? seqmix::cuda::aligned16(g) : reinterpret_cast<uintptr_t>(g) % 8 == 0;
    L.vec_ok[i] = seqmix::cuda::aligned16(t.p) && g_ok && seqmix::cuda::aligned16(t.m) && seqmix::cuda::aligned16(t.v);
    L.group_start[i + 1] = L.group_start[i] + (t.n + 3) / 4;
    L.count = i + 1;
    if (L.count == kMaxTensors) launch(L, s);
  }
  launch(L, s);
}

}  // namespace

void adamw_step_cuda(const std::vector<AdamWTensor>& tensors, const AdamWScalars& s) {
  step_all<float>(tensors, s);
  step_all<__nv_bfloat16>(tensors, s);
}

}  // namespace seqmix::train::detail
