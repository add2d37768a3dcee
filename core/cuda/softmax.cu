// CUDA softmax family over the last dim, and the fused cross-entropy.
//
// softmax / log_softmax (and their backward) — rows of V elements, f32 statistics:
//   V <= 1024: one warp per row, the row held in registers (lane l holds elements l, l+32, ...):
//              one read, warp-shuffle max and sum, one write.
//   V  > 1024: one block per row. The row is read once with 16-byte vector loads (a misaligned head
//              and a tail are handled element-wise), each thread keeps a running (max, sum-of-exp)
//              pair (online softmax), the pairs are merged across the block, and the second pass
//              reads the row back from shared memory (staged there in the first pass) when it fits,
//              else from global memory (then usually an L2 hit). So DRAM traffic is one read and
//              one write per element.
// cross_entropy forward: one block (or one warp for small V) per row computes the row's logsumexp
//   in a single online pass, and the per-row loss lse - logit[target]; a one-block kernel then sums
//   the rows in a fixed order (deterministic) into the f32 0-d loss and count. Everything stays on
//   the device. A target outside [0, V) that is not ignore_index gives a NaN loss (the CPU throws).
// cross_entropy backward: elementwise over [N, V] with the saved lse: reads logits once, writes
//   dlogits once; ignored rows are written as zeros.
#include <cfloat>
#include <cmath>
#include <mutex>

#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

constexpr float kNegInf = -INFINITY;

// ---------------------------------------------------------------------------------------------
// Row geometry: a row of n elements at p splits into `head` scalars (until p is 16-byte aligned),
// `nvec` vectors of VEC elements, and `tail` scalars.
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC>
struct RowSplit {
  int head;
  int64_t nvec;
  int tail;
  __device__ __forceinline__ RowSplit(const T* p, int64_t n) {
    if constexpr (VEC == 1) {
      head = 0;
      nvec = n;
      tail = 0;
    } else {
      int mis = int((reinterpret_cast<uintptr_t>(p) & 15u) / sizeof(T));
      int64_t h = mis ? VEC - mis : 0;
      if (h > n) h = n;
      head = int(h);
      nvec = (n - h) / VEC;
      tail = int(n - h - nvec * VEC);
    }
  }
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}
template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& v) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

// Loop over j = t, t + nt, ... < n, U iterations at a time: all U loads are issued before any is
// used, so each thread keeps U 16-byte loads in flight (latency hiding without more threads).
constexpr int kUnroll = 4;
constexpr int kUnrollPair = 2;  // two inputs per step: fits the 64 registers of a 1024-thread block
template <int U, typename P, typename LoadF, typename UseF>
__device__ __forceinline__ void pipelined(int64_t t, int64_t n, int64_t nt, LoadF&& load, UseF&& use) {
  for (int64_t j0 = t; j0 < n; j0 += U * nt) {
    P p[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int64_t j = j0 + u * nt;
      if (j < n) p[u] = load(j);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      int64_t j = j0 + u * nt;
      if (j < n) use(j, p[u]);
    }
  }
}

template <typename P>
struct PackPair {
  P a, b;
};

// Online (max, sum of exp) pairs.
__device__ __forceinline__ void ms_merge(float& m, float& s, float m2, float s2) {
  float mn = fmaxf(m, m2);
  if (mn == kNegInf) return;  // both empty
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}
__device__ __forceinline__ void ms_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * __expf(m - x) + 1.0f;
    m = x;
  } else if (m > kNegInf) {  // (-inf into an empty pair adds nothing)
    s += __expf(x - m);
  }
}
__device__ __forceinline__ void warp_ms(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    ms_merge(m, s, m2, s2);
  }
}
// Block-wide merge; every thread gets the result. scratch: 64 floats of shared memory.
__device__ __forceinline__ void block_ms(float& m, float& s, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  warp_ms(m, s);
  if (nwarps == 1) return;
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = m;
    scratch[32 + warp] = s;
  }
  __syncthreads();
  m = lane < nwarps ? scratch[lane] : kNegInf;
  s = lane < nwarps ? scratch[32 + lane] : 0.0f;
  warp_ms(m, s);
}
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_reduce_sum(v);
  if (nwarps == 1) return v;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.0f;
  return warp_reduce_sum(v);
}

enum FwdMode : int { kSoftmax = 0, kLogSoftmax = 1 };
enum BwdMode : int { kSoftmaxBwd = 0, kLogSoftmaxBwd = 1 };

// ---------------------------------------------------------------------------------------------
// Forward, one warp per row (V <= 32 * N).
// ---------------------------------------------------------------------------------------------
template <typename T, int N, int MODE>
__global__ void softmax_warp_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int V) {
  int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* xr = x + row * V;
  T* yr = y + row * V;
  float v[N];
  float m = kNegInf;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    int i = lane + 32 * j;
    v[j] = i < V ? to_float(xr[i]) : kNegInf;
    m = fmaxf(m, v[j]);
  }
  m = warp_reduce_max(m);
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    int i = lane + 32 * j;
    if (i < V) s += __expf(v[j] - m);
  }
  s = warp_reduce_sum(s);
  if constexpr (MODE == kSoftmax) {
    float inv = 1.0f / s;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      int i = lane + 32 * j;
      if (i < V) yr[i] = from_float<T>(__expf(v[j] - m) * inv);
    }
  } else {
    float lse = m + logf(s);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      int i = lane + 32 * j;
      if (i < V) yr[i] = from_float<T>(v[j] - lse);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward, one block per row. CACHE: the row is staged in dynamic shared memory (V elements of T,
// laid out as [nvec packs][head + tail scalars]) and the second pass reads it from there.
// x and y rows have the same 16-byte alignment (the host picks VEC = 1 otherwise).
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC, bool CACHE, int MODE>
__global__ void __launch_bounds__(1024) softmax_block_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t V) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float scratch[64];
  using P = Pack<T, VEC>;
  int64_t row = blockIdx.x;
  const T* xr = x + row * V;
  T* yr = y + row * V;
  RowSplit<T, VEC> sp(xr, V);
  P* cache_v = reinterpret_cast<P*>(smem_raw);
  T* cache_s = reinterpret_cast<T*>(smem_raw + sp.nvec * int64_t(sizeof(P)));
  int t = threadIdx.x, nt = blockDim.x;
  const int64_t body = sp.head, tail0 = sp.head + sp.nvec * VEC;

  float m = kNegInf, s = 0.0f;
  if (t < sp.head) {
    T raw = xr[t];
    if (CACHE) cache_s[t] = raw;
    ms_add(m, s, to_float(raw));
  }
  pipelined<kUnroll, P>(
      t, sp.nvec, nt, [&](int64_t j) { return load_pack<T, VEC>(xr + body + j * VEC); },
      [&](int64_t j, const P& p) {
        if (CACHE) cache_v[j] = p;
        float f[VEC];
        float pm = kNegInf;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          f[e] = to_float(p.v[e]);
          pm = fmaxf(pm, f[e]);
        }
        float ps = 0.0f;
        if (pm > kNegInf) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) ps += __expf(f[e] - pm);
        }
        ms_merge(m, s, pm, ps);
      });
  if (t < sp.tail) {
    T raw = xr[tail0 + t];
    if (CACHE) cache_s[sp.head + t] = raw;
    ms_add(m, s, to_float(raw));
  }
  block_ms(m, s, scratch);
  // Each thread reads back only what it staged itself: no barrier needed for the cache.
  float inv = 1.0f / s, lse = m + logf(s);
  auto f_out = [&](float v) -> float {
    if constexpr (MODE == kSoftmax) return __expf(v - m) * inv;
    else return v - lse;
  };
  if (t < sp.head) {
    T raw = CACHE ? cache_s[t] : xr[t];
    yr[t] = from_float<T>(f_out(to_float(raw)));
  }
  pipelined<kUnroll, P>(
      t, sp.nvec, nt, [&](int64_t j) { return CACHE ? cache_v[j] : load_pack<T, VEC>(xr + body + j * VEC); },
      [&](int64_t j, const P& p) {
        P o;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(f_out(to_float(p.v[e])));
        store_pack<T, VEC>(yr + body + j * VEC, o);
      });
  if (t < sp.tail) {
    T raw = CACHE ? cache_s[sp.head + t] : xr[tail0 + t];
    yr[tail0 + t] = from_float<T>(f_out(to_float(raw)));
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: softmax dx = y * (g - sum(g*y)); log_softmax dx = g - exp(y) * sum(g).
// ---------------------------------------------------------------------------------------------
template <int MODE>
__device__ __forceinline__ float bwd_term(float g, float y) {
  if constexpr (MODE == kSoftmaxBwd) return g * y;
  else return g;
}
template <int MODE>
__device__ __forceinline__ float bwd_out(float g, float y, float r) {
  if constexpr (MODE == kSoftmaxBwd) return y * (g - r);
  else return g - __expf(y) * r;
}

template <typename T, int N, int MODE>
__global__ void softmax_bwd_warp_kernel(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx,
                                        int64_t rows, int V) {
  int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* gr = g + row * V;
  const T* yr = y + row * V;
  T* dr = dx + row * V;
  float gv[N], yv[N];
  float r = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    int i = lane + 32 * j;
    gv[j] = i < V ? to_float(gr[i]) : 0.0f;
    yv[j] = i < V ? to_float(yr[i]) : 0.0f;
    r += bwd_term<MODE>(gv[j], yv[j]);
  }
  r = warp_reduce_sum(r);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    int i = lane + 32 * j;
    if (i < V) dr[i] = from_float<T>(bwd_out<MODE>(gv[j], yv[j], r));
  }
}

// g, y and dx rows share one 16-byte alignment (else VEC = 1). CACHE stages both rows in shared
// memory: [nvec packs of g][nvec packs of y][head + tail scalars of g][head + tail of y].
template <typename T, int VEC, bool CACHE, int MODE>
__global__ void __launch_bounds__(1024) softmax_bwd_block_kernel(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx, int64_t V) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float scratch[64];
  using P = Pack<T, VEC>;
  int64_t row = blockIdx.x;
  const T* gr = g + row * V;
  const T* yr = y + row * V;
  T* dr = dx + row * V;
  RowSplit<T, VEC> sp(gr, V);
  P* cg = reinterpret_cast<P*>(smem_raw);
  P* cy = cg + sp.nvec;
  T* sg = reinterpret_cast<T*>(cy + sp.nvec);
  T* sy = sg + VEC * 2;  // head + tail < 2 * VEC
  int t = threadIdx.x, nt = blockDim.x;
  const int64_t body = sp.head, tail0 = sp.head + sp.nvec * VEC;

  float r = 0.0f;
  if (t < sp.head) {
    T a = gr[t], b = yr[t];
    if (CACHE) {
      sg[t] = a;
      sy[t] = b;
    }
    r += bwd_term<MODE>(to_float(a), to_float(b));
  }
  using PP = PackPair<P>;
  pipelined<kUnrollPair, PP>(
      t, sp.nvec, nt,
      [&](int64_t j) { return PP{load_pack<T, VEC>(gr + body + j * VEC), load_pack<T, VEC>(yr + body + j * VEC)}; },
      [&](int64_t j, const PP& q) {
        if (CACHE) {
          cg[j] = q.a;
          cy[j] = q.b;
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) r += bwd_term<MODE>(to_float(q.a.v[e]), to_float(q.b.v[e]));
      });
  if (t < sp.tail) {
    T a = gr[tail0 + t], b = yr[tail0 + t];
    if (CACHE) {
      sg[sp.head + t] = a;
      sy[sp.head + t] = b;
    }
    r += bwd_term<MODE>(to_float(a), to_float(b));
  }
  r = block_sum(r, scratch);
  if (t < sp.head) {
    T a = CACHE ? sg[t] : gr[t], b = CACHE ? sy[t] : yr[t];
    dr[t] = from_float<T>(bwd_out<MODE>(to_float(a), to_float(b), r));
  }
  pipelined<kUnrollPair, PP>(
      t, sp.nvec, nt,
      [&](int64_t j) {
        return CACHE ? PP{cg[j], cy[j]} : PP{load_pack<T, VEC>(gr + body + j * VEC), load_pack<T, VEC>(yr + body + j * VEC)};
      },
      [&](int64_t j, const PP& q) {
        P o;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(bwd_out<MODE>(to_float(q.a.v[e]), to_float(q.b.v[e]), r));
        store_pack<T, VEC>(dr + body + j * VEC, o);
      });
  if (t < sp.tail) {
    T a = CACHE ? sg[sp.head + t] : gr[tail0 + t], b = CACHE ? sy[sp.head + t] : yr[tail0 + t];
    dr[tail0 + t] = from_float<T>(bwd_out<MODE>(to_float(a), to_float(b), r));
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.
// ---------------------------------------------------------------------------------------------
template <typename I>
__device__ __forceinline__ int64_t load_index(const I* p, int64_t i) {
  return int64_t(p[i]);
}

// One block per row (blockDim a multiple of 32): single online pass for the logsumexp.
template <typename T, typename I, int VEC>
__global__ void __launch_bounds__(1024) ce_fwd_kernel(const T* __restrict__ logits, const I* __restrict__ targets, float* __restrict__ lse_out,
                              float* __restrict__ row_loss, int64_t V, int64_t ignore_index) {
  __shared__ float scratch[64];
  using P = Pack<T, VEC>;
  int64_t row = blockIdx.x;
  const T* xr = logits + row * V;
  RowSplit<T, VEC> sp(xr, V);
  int t = threadIdx.x, nt = blockDim.x;
  const int64_t body = sp.head, tail0 = sp.head + sp.nvec * VEC;
  float m = kNegInf, s = 0.0f;
  if (t < sp.head) ms_add(m, s, to_float(xr[t]));
  pipelined<kUnroll, P>(
      t, sp.nvec, nt, [&](int64_t j) { return load_pack<T, VEC>(xr + body + j * VEC); },
      [&](int64_t, const P& p) {
        float f[VEC];
        float pm = kNegInf;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          f[e] = to_float(p.v[e]);
          pm = fmaxf(pm, f[e]);
        }
        float ps = 0.0f;
        if (pm > kNegInf) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) ps += __expf(f[e] - pm);
        }
        ms_merge(m, s, pm, ps);
      });
  if (t < sp.tail) ms_add(m, s, to_float(xr[tail0 + t]));
  block_ms(m, s, scratch);
  if (t == 0) {
    float lse = m + logf(s);
    lse_out[row] = lse;
    int64_t tg = load_index(targets, row);
    float l;
    if (tg == ignore_index) l = 0.0f;
    else if (tg < 0 || tg >= V) l = NAN;  // out-of-range target: poison the loss (the CPU throws)
    else l = lse - to_float(xr[tg]);
    row_loss[row] = l;
  }
}

// One block: loss = sum(row_loss) / max(count, 1), count = #(targets != ignore_index). Fixed order.
template <typename I>
__global__ void ce_finalize_kernel(const float* __restrict__ row_loss, const I* __restrict__ targets, int64_t rows,
                                   int64_t ignore_index, float* __restrict__ loss, float* __restrict__ count) {
  __shared__ double sl[1024];
  __shared__ double sc[1024];
  double l = 0.0, c = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    if (load_index(targets, r) != ignore_index) {
      l += double(row_loss[r]);
      c += 1.0;
    }
  }
  sl[threadIdx.x] = l;
  sc[threadIdx.x] = c;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) {
      sl[threadIdx.x] += sl[threadIdx.x + w];
      sc[threadIdx.x] += sc[threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double n = sc[0];
    *loss = float(n > 0 ? sl[0] / n : 0.0);
    *count = float(n);
  }
}

// grid (rows, chunks); each block writes dlogits for a chunk of its row's vectors (chunk 0 also the
// head and tail scalars). logits and dlogits rows share one alignment (else VEC = 1).
template <typename T, typename I, int VEC>
__global__ void ce_bwd_kernel(const T* __restrict__ logits, const I* __restrict__ targets, const float* __restrict__ lse,
                              const float* __restrict__ grad_loss, const float* __restrict__ count, T* __restrict__ dl,
                              int64_t V, int64_t ignore_index, int64_t vec_per_chunk) {
  using P = Pack<T, VEC>;
  int64_t row = blockIdx.x;
  const T* xr = logits + row * V;
  T* dr = dl + row * V;
  RowSplit<T, VEC> sp(xr, V);
  int64_t tg = load_index(targets, row);
  bool ignored = tg == ignore_index;
  float scale = ignored ? 0.0f : *grad_loss / fmaxf(*count, 1.0f);
  float l = lse[row];
  int t = threadIdx.x, nt = blockDim.x;
  const int64_t body = sp.head, tail0 = sp.head + sp.nvec * VEC;
  auto val = [&](float x, int64_t i) -> float {
    if (ignored) return 0.0f;
    return scale * (__expf(x - l) - (i == tg ? 1.0f : 0.0f));
  };
  if (blockIdx.y == 0) {
    if (t < sp.head) dr[t] = from_float<T>(val(to_float(xr[t]), t));
    if (t < sp.tail) dr[tail0 + t] = from_float<T>(val(to_float(xr[tail0 + t]), tail0 + t));
  }
  int64_t j0 = int64_t(blockIdx.y) * vec_per_chunk;
  int64_t j1 = j0 + vec_per_chunk < sp.nvec ? j0 + vec_per_chunk : sp.nvec;
  if (ignored) {
    P z;
#pragma unroll
    for (int e = 0; e < VEC; ++e) z.v[e] = from_float<T>(0.0f);
    for (int64_t j = j0 + t; j < j1; j += nt) store_pack<T, VEC>(dr + body + j * VEC, z);
    return;
  }
  pipelined<kUnroll, P>(
      j0 + t, j1, nt, [&](int64_t j) { return load_pack<T, VEC>(xr + body + j * VEC); },
      [&](int64_t j, const P& p) {
        int64_t i0 = body + j * VEC;
        P o;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(val(to_float(p.v[e]), i0 + e));
        store_pack<T, VEC>(dr + i0, o);
      });
}

// ---------------------------------------------------------------------------------------------
// Host side.
// ---------------------------------------------------------------------------------------------
// Calls f.template operator()<I>() with I = int64_t or int32_t for an index tensor's dtype.
template <typename F>
void dispatch_index(DType dt, const char* op, F&& f) {
  if (dt == DType::I64) f.template operator()<int64_t>();
  else if (dt == DType::I32) f.template operator()<int32_t>();
  else SEQMIX_FAIL(op, ": targets must be i64 or i32, got ", dtype_name(dt));
}

int64_t rows_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.numel() / std::max<int64_t>(x.size(-1), 1); }
int64_t cols_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.size(-1); }

void need_cuda_contiguous(const Tensor& t, const char* op, const char* what) {
  SEQMIX_CHECK(t.defined() && t.is_cuda(), op, ": ", what, " must be a CUDA tensor");
  SEQMIX_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous (got strides ", shape_str(t.strides()), ")");
}

size_t max_smem_optin() { return size_t(max_shared_memory_optin()) - 1024; }  // room for static shared memory

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

int threads_for_row(int64_t nvec) {
  // ~4 vectors per thread, between one warp and 1024 threads
  int64_t want = (nvec + 3) / 4;
  int t = 32;
  while (t < want && t < 1024) t *= 2;
  return t;
}

bool same_alignment(const void* a, const void* b) {
  return (reinterpret_cast<uintptr_t>(a) & 15u) == (reinterpret_cast<uintptr_t>(b) & 15u);
}

template <typename T, int MODE>
void launch_softmax_fwd(const Tensor& x, const Tensor& y) {
  int64_t rows = rows_of(x), V = cols_of(x);
  if (rows == 0 || V == 0) return;
  const T* px = static_cast<const T*>(x.data_ptr());
  T* py = static_cast<T*>(y.data_ptr());
  cudaStream_t st = current_stream();
  if (V <= 1024) {
    unsigned grid = unsigned((rows + 3) / 4);
    int v = int(V);
#define SEQMIX_WARP_CASE(N)                                                                 \
  if (V <= 32 * N) {                                                                        \
    softmax_warp_kernel<T, N, MODE><<<grid, 128, 0, st>>>(px, py, rows, v);                 \
    SEQMIX_CUDA_CHECK_LAUNCH("softmax_warp_kernel");                                        \
    return;                                                                                 \
  }
    SEQMIX_WARP_CASE(1) SEQMIX_WARP_CASE(2) SEQMIX_WARP_CASE(4) SEQMIX_WARP_CASE(8) SEQMIX_WARP_CASE(16)
    SEQMIX_WARP_CASE(32)
#undef SEQMIX_WARP_CASE
  }
  SEQMIX_CHECK(rows < (int64_t(1) << 31), "softmax: too many rows (", rows, ")");
  constexpr int VEC = 16 / sizeof(T);
  bool vec = same_alignment(px, py) && (reinterpret_cast<uintptr_t>(px) % sizeof(T)) == 0;
  size_t cache_bytes = size_t(V) * sizeof(T) + 16;
  bool cache = cache_bytes <= max_smem_optin();
  int threads = threads_for_row(vec ? V / VEC : V);
  auto go = [&](auto kernel, size_t smem) {
    allow_smem(kernel, smem);
    kernel<<<unsigned(rows), threads, smem, st>>>(px, py, V);
    SEQMIX_CUDA_CHECK_LAUNCH("softmax_block_kernel");
  };
  if (vec) {
    if (cache) go(softmax_block_kernel<T, VEC, true, MODE>, cache_bytes);
    else go(softmax_block_kernel<T, VEC, false, MODE>, 0);
  } else {
    if (cache) go(softmax_block_kernel<T, 1, true, MODE>, cache_bytes);
    else go(softmax_block_kernel<T, 1, false, MODE>, 0);
  }
}

template <typename T, int MODE>
void launch_softmax_bwd(const Tensor& g, const Tensor& y, const Tensor& dx) {
  int64_t rows = rows_of(y), V = cols_of(y);
  if (rows == 0 || V == 0) return;
  const T* pg = static_cast<const T*>(g.data_ptr());
  const T* py = static_cast<const T*>(y.data_ptr());
  T* pd = static_cast<T*>(dx.data_ptr());
  cudaStream_t st = current_stream();
  if (V <= 1024) {
    unsigned grid = unsigned((rows + 3) / 4);
    int v = int(V);
#define SEQMIX_WARP_CASE(N)                                                                 \
  if (V <= 32 * N) {                                                                        \
    softmax_bwd_warp_kernel<T, N, MODE><<<grid, 128, 0, st>>>(pg, py, pd, rows, v);         \
    SEQMIX_CUDA_CHECK_LAUNCH("softmax_bwd_warp_kernel");                                    \
    return;                                                                                 \
  }
    SEQMIX_WARP_CASE(1) SEQMIX_WARP_CASE(2) SEQMIX_WARP_CASE(4) SEQMIX_WARP_CASE(8) SEQMIX_WARP_CASE(16)
    SEQMIX_WARP_CASE(32)
#undef SEQMIX_WARP_CASE
  }
  SEQMIX_CHECK(rows < (int64_t(1) << 31), "softmax_backward: too many rows (", rows, ")");
  constexpr int VEC = 16 / sizeof(T);
  bool vec = same_alignment(pg, py) && same_alignment(pg, pd);
  size_t cache_bytes = 2 * size_t(V) * sizeof(T) + 4 * VEC * sizeof(T) + 32;
  bool cache = cache_bytes <= max_smem_optin();
  int threads = threads_for_row(vec ? V / VEC : V);
  auto go = [&](auto kernel, size_t smem) {
    allow_smem(kernel, smem);
    kernel<<<unsigned(rows), threads, smem, st>>>(pg, py, pd, V);
    SEQMIX_CUDA_CHECK_LAUNCH("softmax_bwd_block_kernel");
  };
  if (vec) {
    if (cache) go(softmax_bwd_block_kernel<T, VEC, true, MODE>, cache_bytes);
    else go(softmax_bwd_block_kernel<T, VEC, false, MODE>, 0);
  } else {
    if (cache) go(softmax_bwd_block_kernel<T, 1, true, MODE>, cache_bytes);
    else go(softmax_bwd_block_kernel<T, 1, false, MODE>, 0);
  }
}

template <int MODE>
Tensor softmax_fwd(const Tensor& x, const char* name) {
  need_cuda_contiguous(x, name, "input");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), name, [&]<typename T>() { launch_softmax_fwd<T, MODE>(x, y); });
  return y;
}

template <int MODE>
Tensor softmax_bwd(const Tensor& g, const Tensor& y, const char* name) {
  need_cuda_contiguous(g, name, "grad");
  need_cuda_contiguous(y, name, "output");
  SEQMIX_CHECK(g.shape() == y.shape() && g.dtype() == y.dtype(), name, ": grad ", shape_str(g.shape()), " ",
               dtype_name(g.dtype()), " does not match output ", shape_str(y.shape()), " ", dtype_name(y.dtype()));
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  SEQMIX_CUDA_DISPATCH_FLOAT(y.dtype(), name, [&]<typename T>() { launch_softmax_bwd<T, MODE>(g, y, dx); });
  return dx;
}

}  // namespace

Tensor softmax(const Tensor& x) { return softmax_fwd<kSoftmax>(x, "softmax"); }
Tensor log_softmax(const Tensor& x) { return softmax_fwd<kLogSoftmax>(x, "log_softmax"); }
Tensor softmax_backward(const Tensor& g, const Tensor& y) { return softmax_bwd<kSoftmaxBwd>(g, y, "softmax_backward"); }
Tensor log_softmax_backward(const Tensor& g, const Tensor& y) {
  return softmax_bwd<kLogSoftmaxBwd>(g, y, "log_softmax_backward");
}

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  need_cuda_contiguous(logits, "cross_entropy", "logits");
  need_cuda_contiguous(targets, "cross_entropy", "targets");
  SEQMIX_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, V], got ", shape_str(logits.shape()));
  int64_t rows = logits.size(0), V = logits.size(1);
  SEQMIX_CHECK(targets.numel() == rows, "cross_entropy: ", rows, " rows of logits but ", targets.numel(), " targets");
  SEQMIX_CHECK(rows < (int64_t(1) << 31), "cross_entropy: too many rows (", rows, ")");
  CrossEntropyResult res;
  Device dev = logits.device();
  res.lse = Tensor::empty({rows}, DType::F32, dev);
  res.loss = Tensor::empty({}, DType::F32, dev);
  res.count = Tensor::empty({}, DType::F32, dev);
  cudaStream_t st = current_stream();
  if (rows == 0 || V == 0) {
    SEQMIX_CHECK(V > 0 || rows == 0, "cross_entropy: empty vocabulary");
    SEQMIX_CUDA_CHECK(cudaMemsetAsync(res.loss.data_ptr(), 0, sizeof(float), st));
    SEQMIX_CUDA_CHECK(cudaMemsetAsync(res.count.data_ptr(), 0, sizeof(float), st));
    return res;
  }
  Tensor row_loss = Tensor::empty({rows}, DType::F32, dev);
  SEQMIX_CUDA_DISPATCH_FLOAT(logits.dtype(), "cross_entropy", [&]<typename T>() {
    dispatch_index(targets.dtype(), "cross_entropy", [&]<typename I>() {
      const T* px = static_cast<const T*>(logits.data_ptr());
      const I* pt = static_cast<const I*>(targets.data_ptr());
      constexpr int VEC = 16 / sizeof(T);
      // Rows are read-only here, so any alignment works with vectors (head/tail peeled per row).
      int threads = threads_for_row(V / VEC);
      ce_fwd_kernel<T, I, VEC><<<unsigned(rows), threads, 0, st>>>(px, pt, res.lse.data<float>(), row_loss.data<float>(), V,
                                                                      ignore_index);
      SEQMIX_CUDA_CHECK_LAUNCH("ce_fwd_kernel");
      ce_finalize_kernel<I><<<1, 1024, 0, st>>>(row_loss.data<float>(), pt, rows, ignore_index, res.loss.data<float>(),
                                                res.count.data<float>());
      SEQMIX_CUDA_CHECK_LAUNCH("ce_finalize_kernel");
    });
  });
  return res;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t ignore_index,
                              const Tensor& grad_loss, const Tensor& count) {
  need_cuda_contiguous(logits, "cross_entropy_backward", "logits");
  need_cuda_contiguous(targets, "cross_entropy_backward", "targets");
  need_cuda_contiguous(lse, "cross_entropy_backward", "lse");
  SEQMIX_CHECK(logits.dim() == 2, "cross_entropy_backward: logits must be [N, V], got ", shape_str(logits.shape()));
  SEQMIX_CHECK(lse.dtype() == DType::F32 && grad_loss.dtype() == DType::F32 && count.dtype() == DType::F32,
               "cross_entropy_backward: lse, grad_loss and count must be f32");
  SEQMIX_CHECK(grad_loss.numel() == 1 && count.numel() == 1 && grad_loss.is_cuda() && count.is_cuda(),
               "cross_entropy_backward: grad_loss and count must be one-element CUDA tensors");
  int64_t rows = logits.size(0), V = logits.size(1);
  SEQMIX_CHECK(targets.numel() == rows && lse.numel() == rows, "cross_entropy_backward: ", rows, " rows of logits but ",
               targets.numel(), " targets and ", lse.numel(), " lse values");
  Tensor dl = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  if (rows == 0 || V == 0) return dl;
  SEQMIX_CHECK(rows < (int64_t(1) << 31), "cross_entropy_backward: too many rows (", rows, ")");
  cudaStream_t st = current_stream();
  const float* pg = static_cast<const float*>(grad_loss.data_ptr());
  const float* pc = static_cast<const float*>(count.data_ptr());
  SEQMIX_CUDA_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_backward", [&]<typename T>() {
    dispatch_index(targets.dtype(), "cross_entropy", [&]<typename I>() {
      const T* px = static_cast<const T*>(logits.data_ptr());
      const I* pt = static_cast<const I*>(targets.data_ptr());
      T* pd = static_cast<T*>(dl.data_ptr());
      constexpr int VEC = 16 / sizeof(T);
      auto go = [&](auto kernel, int vec) {
        int64_t nvec = V / vec;
        int threads = 32;
        while (threads < 256 && threads < nvec) threads *= 2;
        int64_t per_chunk = int64_t(threads) * 8;
        int64_t chunks = std::max<int64_t>(1, (nvec + per_chunk - 1) / per_chunk);
        SEQMIX_CHECK(chunks < 65536, "cross_entropy_backward: vocabulary too large (", V, ")");
        kernel<<<dim3(unsigned(rows), unsigned(chunks)), threads, 0, st>>>(px, pt, lse.data<float>(), pg, pc, pd, V,
                                                                           ignore_index, per_chunk);
        SEQMIX_CUDA_CHECK_LAUNCH("ce_bwd_kernel");
      };
      if (same_alignment(px, pd)) go(ce_bwd_kernel<T, I, VEC>, VEC);
      else go(ce_bwd_kernel<T, I, 1>, 1);
    });
  });
  return dl;
}

}  // namespace seqmix::cuda
