// CUDA max-plus scan (the mLSTM stabilizer): m_t = max(logf_t + m_{t-1}, ig_t) per (b, h), in f64.
//
// One thread per (b, h) column walks T sequentially, the same f64 operations in the same order as the
// CPU reference (core/cpu/maxplus_scan.cpp), so both agree bitwise (a parallel scan would reassociate the
// f64 sums). Neighbouring threads take neighbouring h, so every step's loads and stores are coalesced.
// The loads do not depend on m: each thread fetches kUnroll steps ahead, so the serial chain waits only on
// the add/compare and not on memory latency.
#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

constexpr int kUnroll = 8;
constexpr int kScanThreads = 64;  // columns are few (B * H): small blocks spread them over more SMs

template <typename T> constexpr bool is_float_v = std::is_same_v<T, double> || std::is_same_v<T, float> || is_half_type_v<T>;

template <typename TI, typename TO>
__global__ void __launch_bounds__(kScanThreads)
    maxplus_scan_kernel(const TI* __restrict__ logf, const TI* __restrict__ ig, const double* __restrict__ m0, int64_t BH,
                        int64_t T, int64_t H, TO* __restrict__ m_out, TO* __restrict__ prev_out, double* __restrict__ last) {
  for (int64_t bh = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; bh < BH; bh += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = bh / H, h = bh - b * H;
    const int64_t base = b * T * H + h;
    double m = m0 ? m0[bh] : 0.0;
    int64_t t = 0;
    for (; t + kUnroll <= T; t += kUnroll) {
      double f[kUnroll], g[kUnroll];
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        const int64_t i = base + (t + j) * H;
        f[j] = convert<double>(logf[i]);
        g[j] = convert<double>(ig[i]);
      }
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        const int64_t i = base + (t + j) * H;
        prev_out[i] = convert<TO>(m);
        const double a = f[j] + m;
        m = a < g[j] ? g[j] : a;  // std::max(a, g) exactly, NaN cases included
        m_out[i] = convert<TO>(m);
      }
    }
    for (; t < T; ++t) {
      const int64_t i = base + t * H;
      prev_out[i] = convert<TO>(m);
      const double a = convert<double>(logf[i]) + m, g = convert<double>(ig[i]);
      m = a < g ? g : a;
      m_out[i] = convert<TO>(m);
    }
    last[bh] = m;
  }
}

}  // namespace

MaxplusScanResult maxplus_scan(const Tensor& logf_in, const Tensor& ig_in, const Tensor& m0_in, DType out_dtype) {
  const int64_t B = ig_in.size(0), T = ig_in.size(1), H = ig_in.size(2), BH = B * H;
  Tensor logf = logf_in.contiguous(), ig = ig_in.contiguous();
  Tensor m0 = m0_in.defined() ? m0_in.contiguous() : Tensor();
  MaxplusScanResult r;
  r.m = Tensor::empty({B, T, H}, out_dtype, ig.device());
  r.m_prev = Tensor::empty({B, T, H}, out_dtype, ig.device());
  r.m_last = Tensor::empty({B, H}, DType::F64, ig.device());
  if (BH == 0) return r;
  cudaStream_t stream = current_stream();
  const unsigned grid = grid_for(BH, kScanThreads, 32);
  // f64 inputs and outputs are allowed here (unlike the elementwise kernels): the scan is f64 anyway
  SEQMIX_CUDA_DISPATCH_ALL(ig.dtype(), "maxplus_scan", [&]<typename TI>() {
    if constexpr (is_float_v<TI>) {
      SEQMIX_CUDA_DISPATCH_ALL(out_dtype, "maxplus_scan", [&]<typename TO>() {
        if constexpr (is_float_v<TO>) {
          maxplus_scan_kernel<TI, TO><<<grid, kScanThreads, 0, stream>>>(
              static_cast<const TI*>(logf.data_ptr()), static_cast<const TI*>(ig.data_ptr()),
              m0.defined() ? static_cast<const double*>(m0.data_ptr()) : nullptr, BH, T, H, static_cast<TO*>(r.m.data_ptr()),
              static_cast<TO*>(r.m_prev.data_ptr()), static_cast<double*>(r.m_last.data_ptr()));
          SEQMIX_CUDA_CHECK_LAUNCH("maxplus_scan");
        } else {
          SEQMIX_FAIL("maxplus_scan: out_dtype must be floating");
        }
      });
    } else {
      SEQMIX_FAIL("maxplus_scan: logf and ig must be floating");
    }
  });
  return r;
}

}  // namespace seqmix::cuda
