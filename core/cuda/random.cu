// CUDA Philox fills and dropout, with exactly the element mapping of core/random.h, so a seed gives
// the same numbers on the CPU and the GPU:
// - uniform_: one thread per Philox block (4 uniforms); the value lo + (hi - lo) * u is computed in
//   f64 without fused multiply-add, as the CPU does, so f32/bf16 results are bit-identical.
// - normal_: one thread per block (2 normals, Box-Muller with the device formula of random.h).
// - dropout: one thread per block of 4 elements; keep = u >= p, y = x * f32(1 / (1 - p)).
// Element i is the i-th element in row-major (logical) order, whatever the strides.
#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"
#include "core/random.h"

namespace seqmix::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ void put(T* out, const OffsetCalc<1>& oc, bool contiguous, int64_t i, double v) {
  int64_t off;
  if (contiguous) {
    off = i;
  } else {
    int64_t o[1];
    oc.get(i, o);
    off = o[0];
  }
  out[off] = convert<T>(float(v));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    uniform_kernel(T* out, OffsetCalc<1> oc, bool contiguous, int64_t n, uint64_t seed, uint64_t offset, double lo,
                   double span) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    PhiloxOut r = philox4x32_10(offset + uint64_t(b), seed);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      int64_t i = b * 4 + lane;
      if (i < n) put(out, oc, contiguous, i, __dadd_rn(lo, __dmul_rn(span, double(philox_to_unit(r.v[lane])))));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    normal_kernel(T* out, OffsetCalc<1> oc, bool contiguous, int64_t n, uint64_t seed, uint64_t offset, double mean,
                  double stddev) {
  const int64_t blocks = (n + 1) / 2;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    PhiloxOut r = philox4x32_10(offset + uint64_t(b), seed);
#pragma unroll
    for (int pair = 0; pair < 2; ++pair) {
      int64_t i = b * 2 + pair;
      if (i >= n) break;
      float u1 = philox_to_unit(r.v[2 * pair]);
      float u2 = philox_to_unit(r.v[2 * pair + 1]);
      float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);  // as philox_normal() on the device
      put(out, oc, contiguous, i, __dadd_rn(mean, __dmul_rn(stddev, double(z))));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    dropout_kernel(const T* __restrict__ x, OffsetCalc<1> oc, bool contiguous, int64_t n, uint64_t seed,
                   uint64_t offset, float p, float scale, T* __restrict__ out) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    PhiloxOut r = philox4x32_10(offset + uint64_t(b), seed);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      int64_t i = b * 4 + lane;
      if (i >= n) break;
      int64_t off = i;
      if (!contiguous) {
        int64_t o[1];
        oc.get(i, o);
        off = o[0];
      }
      bool keep = philox_to_unit(r.v[lane]) >= p;
      out[i] = keep ? from_float<T>(__fmul_rn(to_float(x[off]), scale)) : from_float<T>(0.f);
    }
  }
}

unsigned grid_of(int64_t threads) { return grid_for(threads, kThreads, 8); }

}  // namespace

void uniform_(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi) {
  int64_t n = out.numel();
  if (n == 0) return;
  OffsetCalc<1> oc = make_offset_calc<1>(out.shape(), {out.strides()});
  bool contiguous = out.is_contiguous();
  SEQMIX_CUDA_DISPATCH_FLOAT(out.dtype(), "uniform_", [&]<typename T>() {
    uniform_kernel<T><<<grid_of((n + 3) / 4), kThreads, 0, current_stream()>>>(static_cast<T*>(out.data_ptr()), oc,
                                                                               contiguous, n, seed, offset, lo, hi - lo);
    SEQMIX_CUDA_CHECK_LAUNCH("uniform_");
  });
}

void normal_(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double std) {
  int64_t n = out.numel();
  if (n == 0) return;
  OffsetCalc<1> oc = make_offset_calc<1>(out.shape(), {out.strides()});
  bool contiguous = out.is_contiguous();
  SEQMIX_CUDA_DISPATCH_FLOAT(out.dtype(), "normal_", [&]<typename T>() {
    normal_kernel<T><<<grid_of((n + 1) / 2), kThreads, 0, current_stream()>>>(static_cast<T*>(out.data_ptr()), oc,
                                                                              contiguous, n, seed, offset, mean, std);
    SEQMIX_CUDA_CHECK_LAUNCH("normal_");
  });
}

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  SEQMIX_CHECK(p >= 0.0 && p <= 1.0, "dropout: p must be in [0, 1], got ", p);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  int64_t n = x.numel();
  if (n == 0) return out;
  OffsetCalc<1> oc = make_offset_calc<1>(x.shape(), {x.strides()});
  bool contiguous = x.is_contiguous();
  float scale = float(1.0 / (1.0 - p));  // as the CPU: inf at p = 1, where nothing is kept
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), "dropout", [&]<typename T>() {
    dropout_kernel<T><<<grid_of((n + 3) / 4), kThreads, 0, current_stream()>>>(
        static_cast<const T*>(x.data_ptr()), oc, contiguous, n, seed, offset, float(p), scale,
        static_cast<T*>(out.data_ptr()));
    SEQMIX_CUDA_CHECK_LAUNCH("dropout");
  });
  return out;
}

}  // namespace seqmix::cuda
