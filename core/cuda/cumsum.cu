// CUDA cumulative sum along one dim (optionally from the end), f32 accumulation, any input strides.
//
// The output is contiguous: [outer, L, inner] around the scanned dim. Two kernels:
// - inner == 1 (scanning the last dim): a warp per row. Each step the warp takes 128 elements, 4
//   consecutive per lane: a serial scan in the lane, a shuffle scan of the lane totals, plus the carry
//   from the previous step.
// - inner > 1 (or short rows): a thread per column (outer, inner) walking L serially; neighbouring threads take
//   neighbouring inner indices, so reads and writes are coalesced.
#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

template <typename T>
__global__ void __launch_bounds__(256)
    cumsum_rows_kernel(const T* __restrict__ x, OffsetCalc<1> oc, int64_t rows, int64_t L, int64_t sx,
                       T* __restrict__ out, bool reverse) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; row < rows; row += warps_total) {
    int64_t off[1];
    oc.get(row, off);
    const T* xr = x + off[0];
    T* orow = out + row * L;
    float carry = 0.f;
    for (int64_t base = 0; base < L; base += 128) {
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int64_t k = base + lane * 4 + j;  // position in scan order
        int64_t r = reverse ? L - 1 - k : k;
        v[j] = k < L ? to_float(xr[r * sx]) : 0.f;
      }
      v[1] += v[0];
      v[2] += v[1];
      v[3] += v[2];
      // inclusive scan of the lane totals
      float total = v[3];
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        float t = __shfl_up_sync(0xffffffffu, total, d);
        if (lane >= d) total += t;
      }
      float excl = total - v[3] + carry;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int64_t k = base + lane * 4 + j;
        int64_t r = reverse ? L - 1 - k : k;
        if (k < L) orow[r] = from_float<T>(excl + v[j]);
      }
      carry += __shfl_sync(0xffffffffu, total, 31);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(256)
    cumsum_cols_kernel(const T* __restrict__ x, OffsetCalc<1> oc, int64_t cols, int64_t inner, int64_t L, int64_t sx,
                       T* __restrict__ out, bool reverse) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[1];
    oc.get(c, off);
    const T* xc = x + off[0];
    int64_t o_outer = c / inner, o_inner = c - o_outer * inner;
    T* oc_base = out + o_outer * L * inner + o_inner;
    float acc = 0.f;
    for (int64_t k = 0; k < L; ++k) {
      int64_t r = reverse ? L - 1 - k : k;
      acc += to_float(xc[r * sx]);
      oc_base[r * inner] = from_float<T>(acc);
    }
  }
}

}  // namespace

Tensor cumsum(const Tensor& x, int dim, bool reverse) {
  SEQMIX_CHECK(is_floating(x.dtype()), "cumsum: needs a floating tensor, got ", dtype_name(x.dtype()));
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  if (x.dim() == 0) {
    kernels::copy(out, x);
    return out;
  }
  SEQMIX_CHECK(dim >= 0 && dim < x.dim(), "cumsum: dim ", dim, " out of range for shape ", shape_str(x.shape()));
  Shape shape_wo, strides_wo;
  int64_t inner = 1;
  for (int i = 0; i < x.dim(); ++i) {
    if (i == dim) continue;
    shape_wo.push_back(x.shape()[i]);
    strides_wo.push_back(x.strides()[i]);
    if (i > dim) inner *= x.shape()[i];
  }
  const int64_t L = x.shape()[dim], sx = x.strides()[dim], cols = shape_numel(shape_wo);
  OffsetCalc<1> oc = make_offset_calc<1>(shape_wo, {strides_wo});
  cudaStream_t stream = current_stream();
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), "cumsum", [&]<typename T>() {
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    if (inner == 1 && L >= 64) {
      int64_t blocks = (cols + 7) / 8;
      int64_t cap = int64_t(sm_count()) * 8;
      if (blocks > cap) blocks = cap;
      cumsum_rows_kernel<T><<<unsigned(blocks), 256, 0, stream>>>(xp, oc, cols, L, sx, op, reverse);
    } else {
      cumsum_cols_kernel<T><<<grid_for(cols, 256, 8), 256, 0, stream>>>(xp, oc, cols, inner, L, sx, op, reverse);
    }
    SEQMIX_CUDA_CHECK_LAUNCH("cumsum");
  });
  return out;
}

}  // namespace seqmix::cuda
