// CUDA causal depthwise conv1d over time: x [B, T, C], w [C, K], optional bias [C].
//   y[b,t,c] = bias[c] + sum_{j<K} w[c,j] x[b, t-K+1+j, c]
//
// One thread per channel (consecutive threads -> consecutive channels, so every load is coalesced)
// walks a tile of consecutive time steps with a sliding window of the last KMAX inputs in registers
// (KMAX = K rounded up to 4, 8, 16, 32 or 64; the weights are right-aligned in a KMAX array with
// zeros in front, so the window arithmetic is all compile-time indexed). f32 accumulation.
//
// Backward, one pass over g and x per tile, walking time backwards:
//   dx[b,s,c] = sum_j w[c,j] g[b, s+K-1-j, c]   (window of the next KMAX gradients)
//   dw[c,j]   = sum_{b,t} g[b,t,c] x[b,t-K+1+j,c], dbias[c] = sum g   (window of past inputs)
// dw/dbias are deterministic: each (batch, time tile) writes f32 partials, and a second kernel sums
// them per (c, j) in a fixed order.
#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

constexpr int kChannels = 128;  // threads (channels) per block

template <typename T, int KMAX>
__global__ void conv_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                T* __restrict__ y, int64_t T_len, int64_t C, int K, int64_t tile) {
  const int64_t c = int64_t(blockIdx.x) * kChannels + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.z;
  const int64_t t0 = int64_t(blockIdx.y) * tile;
  const int64_t t1 = t0 + tile < T_len ? t0 + tile : T_len;
  const T* xb = x + b * T_len * C + c;
  T* yb = y + b * T_len * C + c;
  float wp[KMAX];
#pragma unroll
  for (int j = 0; j < KMAX; ++j) {
    int i = j - (KMAX - K);
    wp[j] = i >= 0 ? to_float(w[c * K + i]) : 0.0f;
  }
  const float bv = bias ? to_float(bias[c]) : 0.0f;
  float win[KMAX];  // win[j] = x[t - KMAX + 1 + j]
#pragma unroll
  for (int j = 0; j < KMAX - 1; ++j) {
    int64_t s = t0 - KMAX + 1 + j;
    win[j + 1] = s >= 0 ? to_float(xb[s * C]) : 0.0f;  // pre-shifted: slot j+1 moves to j below
  }
  for (int64_t t = t0; t < t1; ++t) {
#pragma unroll
    for (int j = 0; j < KMAX - 1; ++j) win[j] = win[j + 1];
    win[KMAX - 1] = to_float(xb[t * C]);
    float acc = bv;
#pragma unroll
    for (int j = 0; j < KMAX; ++j) acc += wp[j] * win[j];
    yb[t * C] = from_float<T>(acc);
  }
}

// grid (channel blocks, time tiles, B). part_dw: [B * tiles, C, K], part_db: [B * tiles, C].
template <typename T, int KMAX>
__global__ void conv_bwd_kernel(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ dx,
                                float* __restrict__ part_dw, float* __restrict__ part_db, int64_t T_len, int64_t C, int K,
                                int64_t tile) {
  const int64_t c = int64_t(blockIdx.x) * kChannels + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.z;
  const int64_t t0 = int64_t(blockIdx.y) * tile;
  const int64_t t1 = t0 + tile < T_len ? t0 + tile : T_len;
  const T* xb = x + b * T_len * C + c;
  const T* gb = g + b * T_len * C + c;
  float wr[KMAX];  // wr[m] = w[K-1-m]: dx[s] = sum_m wr[m] g[s+m]
#pragma unroll
  for (int m = 0; m < KMAX; ++m) wr[m] = (dx && m < K) ? to_float(w[c * K + (K - 1 - m)]) : 0.0f;
  float gw[KMAX];  // gw[m] = g[t + m]
  float xw[KMAX];  // xw[j] = x[t - KMAX + 1 + j]
  const int64_t tl = t1 - 1;
#pragma unroll
  for (int m = 0; m < KMAX; ++m) {
    int64_t s = tl + m;
    gw[m] = s < T_len ? to_float(gb[s * C]) : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < KMAX; ++j) {
    int64_t s = tl - KMAX + 1 + j;
    xw[j] = s >= 0 ? to_float(xb[s * C]) : 0.0f;
  }
  float dwa[KMAX];
#pragma unroll
  for (int j = 0; j < KMAX; ++j) dwa[j] = 0.0f;
  float dba = 0.0f;
  const bool wgrad = part_dw != nullptr;
  for (int64_t t = tl; t >= t0; --t) {
    if (dx) {
      float acc = 0.0f;
#pragma unroll
      for (int m = 0; m < KMAX; ++m) acc += wr[m] * gw[m];
      dx[b * T_len * C + t * C + c] = from_float<T>(acc);
    }
    if (wgrad) {
      const float gt = gw[0];
#pragma unroll
      for (int j = 0; j < KMAX; ++j) dwa[j] += gt * xw[j];
      dba += gt;
    }
    if (t > t0) {
#pragma unroll
      for (int m = KMAX - 1; m > 0; --m) gw[m] = gw[m - 1];
      gw[0] = to_float(gb[(t - 1) * C]);
#pragma unroll
      for (int j = KMAX - 1; j > 0; --j) xw[j] = xw[j - 1];
      int64_t s = t - KMAX;
      xw[0] = s >= 0 ? to_float(xb[s * C]) : 0.0f;
    }
  }
  if (wgrad) {
    const int64_t p = b * gridDim.y + blockIdx.y;
    float* pw = part_dw + (p * C + c) * K;
#pragma unroll
    for (int j = 0; j < KMAX; ++j) {
      int i = j - (KMAX - K);
      if (i >= 0) pw[i] = dwa[j];
    }
    part_db[p * C + c] = dba;
  }
}

// out[i] = sum_p part[p, i] for i < n, p in order (32 columns x 16 lanes over p, then a fixed tree).
template <typename T>
__global__ void partial_sum_kernel(const float* __restrict__ part, int64_t P, int64_t n, T* __restrict__ out) {
  __shared__ float red[16][33];
  int64_t i = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.0f;
  if (i < n)
    for (int64_t p = threadIdx.y; p < P; p += 16) s += part[p * n + i];
  red[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  for (int h = 8; h > 0; h >>= 1) {
    if (int(threadIdx.y) < h) red[threadIdx.y][threadIdx.x] += red[threadIdx.y + h][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && i < n) out[i] = from_float<T>(red[0][threadIdx.x]);
}

// Calls f.template operator()<KMAX>() for the smallest supported KMAX >= K.
template <typename F>
void dispatch_kmax(int K, F&& f) {
  if (K <= 4) return f.template operator()<4>();
  if (K <= 8) return f.template operator()<8>();
  if (K <= 16) return f.template operator()<16>();
  if (K <= 32) return f.template operator()<32>();
  if (K <= 64) return f.template operator()<64>();
  SEQMIX_FAIL("conv1d_causal: kernel size ", K, " is not supported on CUDA (at most 64; use fft_conv for long filters)");
}

void check_inputs(const Tensor& x, const Tensor& w, const char* op) {
  SEQMIX_CHECK(x.dim() == 3 && w.dim() == 2 && x.size(2) == w.size(0), op, ": x must be [B, T, C] and w [C, K]; got ",
               shape_str(x.shape()), " and ", shape_str(w.shape()));
  SEQMIX_CHECK(x.is_cuda() && w.is_cuda() && x.is_contiguous() && w.is_contiguous(), op,
               ": x and w must be contiguous CUDA tensors");
  SEQMIX_CHECK(x.dtype() == w.dtype(), op, ": x is ", dtype_name(x.dtype()), " but w is ", dtype_name(w.dtype()));
  SEQMIX_CHECK(w.size(1) >= 1, op, ": empty kernel");
}

}  // namespace

Tensor conv1d_causal(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_inputs(x, w, "conv1d_causal");
  int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  int K = int(w.size(1));
  if (bias.defined())
    SEQMIX_CHECK(bias.is_cuda() && bias.is_contiguous() && bias.numel() == C && bias.dtype() == x.dtype(),
                 "conv1d_causal: bias must be a contiguous CUDA [", C, "] tensor of dtype ", dtype_name(x.dtype()));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (y.numel() == 0) return y;
  cudaStream_t st = current_stream();
  const int64_t tile = 64;
  int64_t tiles = (T + tile - 1) / tile;
  SEQMIX_CHECK(tiles < 65536 && B < 65536, "conv1d_causal: shape ", shape_str(x.shape()), " too large");
  dim3 grid(static_cast<unsigned>((C + kChannels - 1) / kChannels), static_cast<unsigned>(tiles), static_cast<unsigned>(B));
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), "conv1d_causal", [&]<typename T_>() {
    dispatch_kmax(K, [&]<int KMAX>() {
      conv_fwd_kernel<T_, KMAX><<<grid, kChannels, 0, st>>>(
          static_cast<const T_*>(x.data_ptr()), static_cast<const T_*>(w.data_ptr()),
          bias.defined() ? static_cast<const T_*>(bias.data_ptr()) : nullptr, static_cast<T_*>(y.data_ptr()), T, C, K, tile);
      SEQMIX_CUDA_CHECK_LAUNCH("conv_fwd_kernel");
    });
  });
  return y;
}

void conv1d_causal_backward(const Tensor& g, const Tensor& x, const Tensor& w, Tensor* dx, Tensor* dw, Tensor* dbias) {
  check_inputs(x, w, "conv1d_causal_backward");
  SEQMIX_CHECK(g.is_cuda() && g.is_contiguous() && g.shape() == x.shape() && g.dtype() == x.dtype(),
               "conv1d_causal_backward: grad must be a contiguous CUDA tensor like x ", shape_str(x.shape()));
  int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  int K = int(w.size(1));
  Device dev = x.device();
  cudaStream_t st = current_stream();
  if (dx) *dx = Tensor::empty(x.shape(), x.dtype(), dev);
  if (dw) *dw = Tensor::empty(w.shape(), w.dtype(), dev);
  if (dbias) *dbias = Tensor::empty({C}, x.dtype(), dev);
  if (!dx && !dw && !dbias) return;
  if (B * T == 0 || C == 0) {
    if (dw && dw->numel()) SEQMIX_CUDA_CHECK(cudaMemsetAsync(dw->data_ptr(), 0, dw->nbytes(), st));
    if (dbias && dbias->numel()) SEQMIX_CUDA_CHECK(cudaMemsetAsync(dbias->data_ptr(), 0, dbias->nbytes(), st));
    return;
  }
  bool wgrad = dw || dbias;
  // Time tiles: about 256 (batch, tile) partial rows in all, at least 64 steps per tile.
  int64_t tile = std::max<int64_t>(64, (B * T + 255) / 256);
  tile = std::min(tile, T);
  int64_t tiles = (T + tile - 1) / tile;
  SEQMIX_CHECK(tiles < 65536 && B < 65536, "conv1d_causal_backward: shape ", shape_str(x.shape()), " too large");
  int64_t P = B * tiles;
  Tensor part;
  float* pdw = nullptr;
  float* pdb = nullptr;
  if (wgrad) {
    part = Tensor::empty({P * C * (K + 1)}, DType::F32, dev);
    pdw = part.data<float>();
    pdb = pdw + P * C * K;
  }
  dim3 grid(static_cast<unsigned>((C + kChannels - 1) / kChannels), static_cast<unsigned>(tiles), static_cast<unsigned>(B));
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), "conv1d_causal_backward", [&]<typename T_>() {
    dispatch_kmax(K, [&]<int KMAX>() {
      conv_bwd_kernel<T_, KMAX><<<grid, kChannels, 0, st>>>(
          static_cast<const T_*>(g.data_ptr()), static_cast<const T_*>(x.data_ptr()), static_cast<const T_*>(w.data_ptr()),
          dx ? static_cast<T_*>(dx->data_ptr()) : nullptr, pdw, pdb, T, C, K, tile);
      SEQMIX_CUDA_CHECK_LAUNCH("conv_bwd_kernel");
    });
    dim3 rb(32, 16);
    if (dw) {
      int64_t n = C * K;
      partial_sum_kernel<T_><<<static_cast<unsigned>((n + 31) / 32), rb, 0, st>>>(pdw, P, n, static_cast<T_*>(dw->data_ptr()));
      SEQMIX_CUDA_CHECK_LAUNCH("partial_sum_kernel");
    }
    if (dbias) {
      partial_sum_kernel<T_><<<static_cast<unsigned>((C + 31) / 32), rb, 0, st>>>(pdb, P, C, static_cast<T_*>(dbias->data_ptr()));
      SEQMIX_CUDA_CHECK_LAUNCH("partial_sum_kernel");
    }
  });
}

}  // namespace seqmix::cuda
