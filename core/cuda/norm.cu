// CUDA layernorm and rmsnorm over the last dim, forward and backward (f32 statistics).
//
// A row of D elements is handled by a group of G threads: one warp (several rows per block) when
// D fits in 32 threads x 32 elements, else one block per row. Each thread caches its share of the
// row in registers (16-byte vector loads when D and the pointers allow), so x is read once:
//   forward:  mean and variance are two exact passes over the registers (no Welford needed),
//             y = (x - mean) * rstd * w + b, mean/rstd written as f32 per row.
//   backward: xhat = (x - mean) * rstd, dxhat = g * w,
//             dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))  (rmsnorm: no mean term).
// Weight/bias gradients are deterministic: a persistent grid walks the rows with a fixed schedule,
// each thread accumulates g * xhat and g for its columns in f32 registers, the warps of a block are
// merged in a fixed order through shared memory into one partial row per block, and a second kernel
// sums the partial rows per column in a fixed order (f32), writing the weight's dtype.
#include <cmath>

#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_f(const T* p, float (&f)[VEC]) {
  Pack<T, VEC> q = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int e = 0; e < VEC; ++e) f[e] = to_float(q.v[e]);
}
template <typename T, int VEC>
__device__ __forceinline__ void store_f(T* p, const float (&f)[VEC]) {
  Pack<T, VEC> q;
#pragma unroll
  for (int e = 0; e < VEC; ++e) q.v[e] = from_float<T>(f[e]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = q;
}

// Sum over the row's group: a warp, or the whole block (scratch: 64 floats of shared memory).
template <bool WARP>
__device__ __forceinline__ void group_sum2(float& a, float& b, float* scratch) {
  a = warp_reduce_sum(a);
  b = warp_reduce_sum(b);
  if constexpr (!WARP) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (nwarps == 1) return;
    __syncthreads();
    if (lane == 0) {
      scratch[warp] = a;
      scratch[32 + warp] = b;
    }
    __syncthreads();
    a = lane < nwarps ? scratch[lane] : 0.0f;
    b = lane < nwarps ? scratch[32 + lane] : 0.0f;
    a = warp_reduce_sum(a);
    b = warp_reduce_sum(b);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. Thread t of a group holds vectors t, t + G, ..., (NV of them) of VEC elements each.
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC, int NV, bool WARP>
__global__ void __launch_bounds__(1024) norm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t rows,
                                int D, float eps, bool layernorm) {
  __shared__ float scratch[64];
  const int G = WARP ? 32 : blockDim.x;
  const int t = WARP ? (threadIdx.x & 31) : threadIdx.x;
  const int64_t row = WARP ? int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5) : int64_t(blockIdx.x);
  if (row >= rows) return;  // uniform over the group
  const int nvec = D / VEC;
  const T* xr = x + row * D;
  float v[NV][VEC];
  float s = 0.0f, dummy = 0.0f;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    int vi = t + G * j;
    if (vi < nvec) {
      load_f<T, VEC>(xr + vi * VEC, v[j]);
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += v[j][e];
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[j][e] = 0.0f;
    }
  }
  float mu = 0.0f;
  if (layernorm) {
    group_sum2<WARP>(s, dummy, scratch);
    mu = s / float(D);
  }
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (t + G * j < nvec) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float d = v[j][e] - mu;
        ss += d * d;
      }
    }
  }
  dummy = 0.0f;
  group_sum2<WARP>(ss, dummy, scratch);
  float rs = rsqrtf(ss / float(D) + eps);
  if (t == 0) {
    if (layernorm) mean_out[row] = mu;
    rstd_out[row] = rs;
  }
  T* yr = y + row * D;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    int vi = t + G * j;
    if (vi < nvec) {
      float wv[VEC], bv[VEC], o[VEC];
      if (w) load_f<T, VEC>(w + vi * VEC, wv);
      if (b) load_f<T, VEC>(b + vi * VEC, bv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float r = (v[j][e] - mu) * rs;
        if (w) r *= wv[e];
        if (b) r += bv[e];
        o[e] = r;
      }
      store_f<T, VEC>(yr + vi * VEC, o);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward. Persistent grid: group k of the grid handles rows k, k + groups, ... so the weight
// gradient's summation order is fixed. part_dw / part_db: [gridDim.x, D] f32 partial sums.
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC, int NV, bool WARP>
__global__ void __launch_bounds__(1024) norm_bwd_kernel(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ w,
                                const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ dx,
                                float* __restrict__ part_dw, float* __restrict__ part_db, int64_t rows, int D, bool layernorm,
                                bool wgrad) {
  __shared__ float scratch[64];
  constexpr int kMaxCols = WARP ? 32 * NV * VEC : 1;
  __shared__ float red_dw[kMaxCols];
  __shared__ float red_db[kMaxCols];
  const int G = WARP ? 32 : blockDim.x;
  const int t = WARP ? (threadIdx.x & 31) : threadIdx.x;
  const int groups_per_block = WARP ? (blockDim.x >> 5) : 1;
  const int group = WARP ? (threadIdx.x >> 5) : 0;
  const int64_t gid = int64_t(blockIdx.x) * groups_per_block + group;
  const int64_t gstride = int64_t(gridDim.x) * groups_per_block;
  const int nvec = D / VEC;
  const float inv_d = 1.0f / float(D);
  const bool want_dw = part_dw != nullptr, want_db = part_db != nullptr;

  float wv[NV][VEC];
  float dwa[NV][VEC], dba[NV][VEC];
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    int vi = t + G * j;
    if (w && vi < nvec) {
      load_f<T, VEC>(w + vi * VEC, wv[j]);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) wv[j][e] = 1.0f;
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) dwa[j][e] = dba[j][e] = 0.0f;
  }

  for (int64_t row = gid; row < rows; row += gstride) {
    const T* xr = x + row * D;
    const T* gr = g + row * D;
    float xv[NV][VEC], gv[NV][VEC];
    const float mu = layernorm ? mean[row] : 0.0f;
    const float rs = rstd[row];
    float a = 0.0f, bsum = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      int vi = t + G * j;
      if (vi < nvec) {
        load_f<T, VEC>(xr + vi * VEC, xv[j]);
        load_f<T, VEC>(gr + vi * VEC, gv[j]);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          float xh = (xv[j][e] - mu) * rs;
          xv[j][e] = xh;  // keep xhat
          float dxh = gv[j][e] * wv[j][e];
          a += dxh;
          bsum += dxh * xh;
        }
      }
    }
    group_sum2<WARP>(a, bsum, scratch);
    const float m1 = layernorm ? a * inv_d : 0.0f, m2 = bsum * inv_d;
    T* dr = dx + row * D;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      int vi = t + G * j;
      if (vi < nvec) {
        float o[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          float xh = xv[j][e], gg = gv[j][e];
          o[e] = rs * (gg * wv[j][e] - m1 - xh * m2);
          if (want_dw) dwa[j][e] += gg * xh;
          if (want_db) dba[j][e] += gg;
        }
        store_f<T, VEC>(dr + vi * VEC, o);
      }
    }
  }
  if (!wgrad) return;
  float* pdw = want_dw ? part_dw + int64_t(blockIdx.x) * D : nullptr;
  float* pdb = want_db ? part_db + int64_t(blockIdx.x) * D : nullptr;
  if constexpr (WARP) {
    // Merge the warps of the block in warp order (deterministic), then write one partial row.
    for (int k = 0; k < groups_per_block; ++k) {
      if (group == k) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          int vi = t + G * j;
          if (vi < nvec) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
              int c = vi * VEC + e;
              red_dw[c] = k == 0 ? dwa[j][e] : red_dw[c] + dwa[j][e];
              red_db[c] = k == 0 ? dba[j][e] : red_db[c] + dba[j][e];
            }
          }
        }
      }
      __syncthreads();
    }
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      if (want_dw) pdw[c] = red_dw[c];
      if (want_db) pdb[c] = red_db[c];
    }
  } else {
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      int vi = t + G * j;
      if (vi < nvec) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          if (want_dw) pdw[vi * VEC + e] = dwa[j][e];
          if (want_db) pdb[vi * VEC + e] = dba[j][e];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Rows longer than 1024 threads x the cached elements per thread: one block per row, no register cache (x is re-read, mostly from L2).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float block_sum1(float v, float* scratch) {
  float dummy = 0.0f;
  group_sum2<false>(v, dummy, scratch);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(1024) norm_fwd_loop_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                             const T* __restrict__ b, T* __restrict__ y,
                                                             float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                                             int64_t D, float eps, bool layernorm) {
  __shared__ float scratch[64];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  T* yr = y + row * D;
  float mu = 0.0f;
  if (layernorm) {
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += to_float(xr[i]);
    mu = block_sum1(s, scratch) / float(D);
  }
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float d = to_float(xr[i]) - mu;
    ss += d * d;
  }
  float rs = rsqrtf(block_sum1(ss, scratch) / float(D) + eps);
  if (threadIdx.x == 0) {
    if (layernorm) mean_out[row] = mu;
    rstd_out[row] = rs;
  }
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float r = (to_float(xr[i]) - mu) * rs;
    if (w) r *= to_float(w[i]);
    if (b) r += to_float(b[i]);
    yr[i] = from_float<T>(r);
  }
}

// Persistent blocks; column c is always handled by thread c % blockDim.x of a block, which owns
// part_dw[block, c] (no races, fixed order).
template <typename T>
__global__ void __launch_bounds__(1024) norm_bwd_loop_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                                             const T* __restrict__ w, const float* __restrict__ mean,
                                                             const float* __restrict__ rstd, T* __restrict__ dx,
                                                             float* __restrict__ part_dw, float* __restrict__ part_db,
                                                             int64_t rows, int64_t D, bool layernorm, bool wgrad) {
  __shared__ float scratch[64];
  float* pdw = part_dw ? part_dw + int64_t(blockIdx.x) * D : nullptr;
  float* pdb = part_db ? part_db + int64_t(blockIdx.x) * D : nullptr;
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
    if (pdw) pdw[c] = 0.0f;
    if (pdb) pdb[c] = 0.0f;
  }
  const float inv_d = 1.0f / float(D);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * D;
    const T* gr = g + row * D;
    T* dr = dx + row * D;
    const float mu = layernorm ? mean[row] : 0.0f, rs = rstd[row];
    float a = 0.0f, bs = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      float xh = (to_float(xr[i]) - mu) * rs;
      float dxh = to_float(gr[i]) * (w ? to_float(w[i]) : 1.0f);
      a += dxh;
      bs += dxh * xh;
    }
    group_sum2<false>(a, bs, scratch);
    const float m1 = layernorm ? a * inv_d : 0.0f, m2 = bs * inv_d;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      float xh = (to_float(xr[i]) - mu) * rs;
      float gg = to_float(gr[i]);
      dr[i] = from_float<T>(rs * (gg * (w ? to_float(w[i]) : 1.0f) - m1 - xh * m2));
      if (pdw) pdw[i] += gg * xh;
      if (pdb) pdb[i] += gg;
    }
  }
}

// out[c] = sum_p part[p, c], p in order (blocks of 32 columns x 16 lanes over p, then a fixed tree).
template <typename T>
__global__ void column_sum_kernel(const float* __restrict__ part, int P, int D, T* __restrict__ out) {
  __shared__ float red[16][33];
  int c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < D)
    for (int p = threadIdx.y; p < P; p += 16) s += part[int64_t(p) * D + c];
  red[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  for (int h = 8; h > 0; h >>= 1) {
    if (int(threadIdx.y) < h) red[threadIdx.y][threadIdx.x] += red[threadIdx.y + h][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < D) out[c] = from_float<T>(red[0][threadIdx.x]);
}

// ---------------------------------------------------------------------------------------------
// Host side: pick VEC (16-byte vectors when D and every pointer allow), the group size and NV.
// ---------------------------------------------------------------------------------------------
struct Config {
  bool loop;  // rows too long for the register cache: the *_loop_kernel variants
  bool vec;
  bool warp;
  int threads;  // block size
  int nv;       // vectors per thread (a power of two)
};

// Elements cached per thread: up to 32 in the forward (x only: more bytes in flight per thread, fewer
// threads per row) and 8 in the backward (x, g and the f32 weight-gradient accumulators). Both stay
// within 64 registers, so a 1024-thread block per row always launches.
constexpr int kMaxElemsFwd = 32;
constexpr int kMaxElemsBwd = 8;

Config pick_config(int64_t D, int vec_elems, bool vec_ok, int max_elems) {
  Config c;
  c.vec = vec_ok && D % vec_elems == 0;
  int ve = c.vec ? vec_elems : 1;
  int64_t nvec = D / ve;
  // scalar rows (odd D or unaligned pointers) keep at most 8 elements: more would spill
  int nv_max = (c.vec ? max_elems : std::min(max_elems, 8)) / ve;
  int g = 32;
  while (g < 1024 && nvec > int64_t(g) * nv_max) g *= 2;
  c.loop = nvec > int64_t(g) * nv_max;
  c.warp = g == 32;
  int need = int((nvec + g - 1) / g);
  c.nv = 1;
  while (c.nv < need) c.nv *= 2;
  c.threads = c.warp ? 256 : g;
  return c;
}

bool aligned_or_null(const Tensor& t) { return !t.defined() || aligned16(t.data_ptr()); }

// Calls f.template operator()<VEC, NV, WARP>() for the configuration (NV * VEC <= MAXE).
template <typename T, int MAXE, typename F>
void dispatch_config(const Config& c, F&& f) {
  constexpr int VE = 16 / sizeof(T);
  auto by_nv = [&]<int VEC, bool WARP>() {
    constexpr int nvmax = (VEC == 1 ? (MAXE < 8 ? MAXE : 8) : MAXE) / VEC;
    switch (c.nv) {
      case 1: return f.template operator()<VEC, 1, WARP>();
      case 2: if constexpr (nvmax >= 2) return f.template operator()<VEC, 2, WARP>(); break;
      case 4: if constexpr (nvmax >= 4) return f.template operator()<VEC, 4, WARP>(); break;
      case 8: if constexpr (nvmax >= 8) return f.template operator()<VEC, 8, WARP>(); break;
      case 16: if constexpr (nvmax >= 16) return f.template operator()<VEC, 16, WARP>(); break;
      case 32: if constexpr (nvmax >= 32) return f.template operator()<VEC, 32, WARP>(); break;
    }
    SEQMIX_FAIL("norm: internal error: no kernel for ", c.nv, " vectors per thread");
  };
  if (c.vec) {
    if (c.warp) by_nv.template operator()<VE, true>();
    else by_nv.template operator()<VE, false>();
  } else {
    if (c.warp) by_nv.template operator()<1, true>();
    else by_nv.template operator()<1, false>();
  }
}

void check_param(const Tensor& p, const Tensor& x, int64_t D, const char* op, const char* what) {
  if (!p.defined()) return;
  SEQMIX_CHECK(p.is_cuda() && p.is_contiguous() && p.numel() == D, op, ": ", what, " must be a contiguous CUDA tensor of ",
               D, " elements, got ", shape_str(p.shape()));
  SEQMIX_CHECK(p.dtype() == x.dtype(), op, ": ", what, " is ", dtype_name(p.dtype()), " but the input is ",
               dtype_name(x.dtype()), " (cast the parameter first)");
}

NormResult norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, bool layernorm,
                        const char* op) {
  SEQMIX_CHECK(x.is_cuda() && x.is_contiguous(), op, ": input must be a contiguous CUDA tensor");
  int64_t D = x.dim() == 0 ? 1 : x.size(-1);
  int64_t rows = D == 0 ? 0 : x.numel() / D;
  check_param(weight, x, D, op, "weight");
  check_param(bias, x, D, op, "bias");
  NormResult r;
  r.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (layernorm) r.mean = Tensor::empty({rows}, DType::F32, x.device());
  r.rstd = Tensor::empty({rows}, DType::F32, x.device());
  if (rows == 0) return r;
  SEQMIX_CHECK(D < (int64_t(1) << 31), op, ": rows too long");
  cudaStream_t st = current_stream();
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), op, [&]<typename T>() {
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pw = weight.defined() ? static_cast<const T*>(weight.data_ptr()) : nullptr;
    const T* pb = bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr;
    T* py = static_cast<T*>(r.y.data_ptr());
    bool vec_ok = aligned16(px) && aligned16(py) && aligned_or_null(weight) && aligned_or_null(bias);
    Config c = pick_config(D, 16 / sizeof(T), vec_ok, kMaxElemsFwd);
    float* pm = layernorm ? r.mean.data<float>() : nullptr;
    float* pr = r.rstd.data<float>();
    if (c.loop) {
      SEQMIX_CHECK(rows < (int64_t(1) << 31), op, ": too many rows");
      norm_fwd_loop_kernel<T><<<unsigned(rows), 1024, 0, st>>>(px, pw, pb, py, pm, pr, D, float(eps), layernorm);
      SEQMIX_CUDA_CHECK_LAUNCH("norm_fwd_loop_kernel");
      return;
    }
    dispatch_config<T, kMaxElemsFwd>(c, [&]<int VEC, int NV, bool WARP>() {
      int64_t per_block = WARP ? c.threads / 32 : 1;
      int64_t grid = (rows + per_block - 1) / per_block;
      SEQMIX_CHECK(grid < (int64_t(1) << 31), op, ": too many rows");
      norm_fwd_kernel<T, VEC, NV, WARP><<<unsigned(grid), c.threads, 0, st>>>(px, pw, pb, py, pm, pr, rows, int(D), float(eps),
                                                                              layernorm);
      SEQMIX_CUDA_CHECK_LAUNCH("norm_fwd_kernel");
    });
  });
  return r;
}

NormGrads norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                        bool need_weight_grads, bool layernorm, const char* op) {
  SEQMIX_CHECK(x.is_cuda() && x.is_contiguous() && g.is_cuda() && g.is_contiguous(), op,
               ": grad and input must be contiguous CUDA tensors");
  SEQMIX_CHECK(g.shape() == x.shape() && g.dtype() == x.dtype(), op, ": grad ", shape_str(g.shape()), " ",
               dtype_name(g.dtype()), " does not match input ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
  int64_t D = x.dim() == 0 ? 1 : x.size(-1);
  int64_t rows = D == 0 ? 0 : x.numel() / D;
  check_param(weight, x, D, op, "weight");
  SEQMIX_CHECK(rstd.defined() && rstd.dtype() == DType::F32 && rstd.numel() == rows && rstd.is_contiguous(), op,
               ": rstd must be f32 [", rows, "]");
  if (layernorm)
    SEQMIX_CHECK(mean.defined() && mean.dtype() == DType::F32 && mean.numel() == rows && mean.is_contiguous(), op,
                 ": mean must be f32 [", rows, "]");
  NormGrads r;
  r.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  bool want_dw = need_weight_grads && weight.defined();
  bool want_db = need_weight_grads && layernorm;
  bool wgrad = want_dw || want_db;
  if (want_dw) r.dweight = Tensor::empty({D}, weight.dtype(), x.device());
  if (want_db) r.dbias = Tensor::empty({D}, x.dtype(), x.device());
  cudaStream_t st = current_stream();
  if (rows == 0) {
    if (want_dw) SEQMIX_CUDA_CHECK(cudaMemsetAsync(r.dweight.data_ptr(), 0, r.dweight.nbytes(), st));
    if (want_db) SEQMIX_CUDA_CHECK(cudaMemsetAsync(r.dbias.data_ptr(), 0, r.dbias.nbytes(), st));
    return r;
  }
  SEQMIX_CHECK(D < (int64_t(1) << 31), op, ": rows too long");
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), op, [&]<typename T>() {
    const T* pg = static_cast<const T*>(g.data_ptr());
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pw = weight.defined() ? static_cast<const T*>(weight.data_ptr()) : nullptr;
    T* pd = static_cast<T*>(r.dx.data_ptr());
    bool vec_ok = aligned16(pg) && aligned16(px) && aligned16(pd) && aligned_or_null(weight);
    Config c = pick_config(D, 16 / sizeof(T), vec_ok, kMaxElemsBwd);
    const float* pm = layernorm ? static_cast<const float*>(mean.data_ptr()) : nullptr;
    const float* pr = static_cast<const float*>(rstd.data_ptr());
    int64_t per_block = c.loop ? 1 : c.warp ? c.threads / 32 : 1;
    int threads = c.loop ? 1024 : c.threads;
    int64_t blocks_needed = (rows + per_block - 1) / per_block;
    int64_t grid = 0;
    Tensor part;
    float* pdw = nullptr;
    float* pdb = nullptr;
    // A persistent grid of as many blocks as fit at once (the kernel's occupancy): the more rows in
    // flight, the more bytes in flight, which is what a memory-bound kernel needs.
    auto size_grid = [&](const void* kernel) {
      int per_sm = 1;
      SEQMIX_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
      grid = std::min(blocks_needed, int64_t(sm_count()) * std::max(per_sm, 1));
      if (wgrad) {
        part = Tensor::empty({int64_t(want_dw) + int64_t(want_db), grid, D}, DType::F32, x.device());
        float* p = part.data<float>();
        if (want_dw) pdw = p;
        if (want_db) pdb = p + (want_dw ? grid * D : 0);
      }
    };
    if (c.loop) {
      size_grid(reinterpret_cast<const void*>(norm_bwd_loop_kernel<T>));
      norm_bwd_loop_kernel<T><<<unsigned(grid), threads, 0, st>>>(pg, px, pw, pm, pr, pd, pdw, pdb, rows, D, layernorm, wgrad);
      SEQMIX_CUDA_CHECK_LAUNCH("norm_bwd_loop_kernel");
    } else {
      dispatch_config<T, kMaxElemsBwd>(c, [&]<int VEC, int NV, bool WARP>() {
        size_grid(reinterpret_cast<const void*>(norm_bwd_kernel<T, VEC, NV, WARP>));
        norm_bwd_kernel<T, VEC, NV, WARP><<<unsigned(grid), threads, 0, st>>>(pg, px, pw, pm, pr, pd, pdw, pdb, rows, int(D),
                                                                              layernorm, wgrad);
        SEQMIX_CUDA_CHECK_LAUNCH("norm_bwd_kernel");
      });
    }
    dim3 cb(32, 16);
    unsigned cgrid = unsigned((D + 31) / 32);
    if (want_dw) {
      column_sum_kernel<T><<<cgrid, cb, 0, st>>>(pdw, int(grid), int(D), static_cast<T*>(r.dweight.data_ptr()));
      SEQMIX_CUDA_CHECK_LAUNCH("column_sum_kernel");
    }
    if (want_db) {
      column_sum_kernel<T><<<cgrid, cb, 0, st>>>(pdb, int(grid), int(D), static_cast<T*>(r.dbias.data_ptr()));
      SEQMIX_CUDA_CHECK_LAUNCH("column_sum_kernel");
    }
  });
  return r;
}

}  // namespace

NormResult layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  return norm_forward(x, weight, bias, eps, true, "layer_norm");
}

NormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                             bool need_weight_grads) {
  return norm_backward(g, x, weight, mean, rstd, need_weight_grads, true, "layer_norm_backward");
}

NormResult rmsnorm(const Tensor& x, const Tensor& weight, double eps) {
  return norm_forward(x, weight, Tensor(), eps, false, "rms_norm");
}

NormGrads rmsnorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& rstd, bool need_weight_grad) {
  return norm_backward(g, x, weight, Tensor(), rstd, need_weight_grad, false, "rms_norm_backward");
}

}  // namespace seqmix::cuda
