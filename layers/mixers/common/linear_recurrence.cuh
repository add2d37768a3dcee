// Device helpers of the CUDA chunked linear recurrence (linear_recurrence.cu): register-tiled block matrix
// products over shared / global memory, for any (also odd) sizes; and the chunk-decay helpers that the
// tensor-core kernels (linear_recurrence_tc.cu) share.
//
// Tile mapping (every product in linear_recurrence.cu uses it): an M x N output is cut into micro-tiles of
// TM x TN; micro-tile (tm, tn) holds rows tm + r * mt (r < TM, mt = ceil(M / TM)) and columns tn * TN + c
// (c < TN). Consecutive threads take consecutive tm, so the lanes of a warp read *different rows* of the
// left operand a(i, kk) (kept in shared memory with an odd row stride: conflict-free) and mostly *the same
// elements* of the right operand b(kk, j) (a broadcast: the right operand may live in global memory).
// Rows / columns past M / N are clamped for the loads and dropped by the caller's store.
// Include only from .cu files; no spdlog / fmt here.
#pragma once
#include <cuda_runtime.h>

namespace seqmix::mixers::lr_cuda {

template <int TM, int TN>
struct MicroTile {
  int i[TM];   // row indices (may be >= M: check before storing)
  int ic[TM];  // clamped row indices (safe to load)
  int j[TN];
  int jc[TN];
};

// Calls f(tile) for every micro-tile of an M x N output this thread owns.
template <int TM, int TN, class F>
__device__ __forceinline__ void for_each_tile(int M, int N, F&& f) {
  if (M <= 0 || N <= 0) return;
  const int mt = (M + TM - 1) / TM, nt = (N + TN - 1) / TN;
  for (int id = int(threadIdx.x); id < mt * nt; id += int(blockDim.x)) {
    const int tm = id % mt, tn = id / mt;
    MicroTile<TM, TN> t;
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      t.i[r] = tm + r * mt;
      t.ic[r] = t.i[r] < M ? t.i[r] : M - 1;
    }
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      t.j[c] = tn * TN + c;
      t.jc[c] = t.j[c] < N ? t.j[c] : N - 1;
    }
    f(t);
  }
}

template <int TM, int TN>
__device__ __forceinline__ void zero_acc(float (&acc)[TM][TN]) {
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) acc[r][c] = 0.f;
}

// acc[r][c] += sum_{kk in [k0, k1)} a(i_r, kk) * b(kk, j_c)
template <int TM, int TN, class FA, class FB>
__device__ __forceinline__ void mm_acc(float (&acc)[TM][TN], const MicroTile<TM, TN>& t, int k0, int k1, FA&& fa,
                                       FB&& fb) {
#pragma unroll 2
  for (int kk = k0; kk < k1; ++kk) {
    float a[TM], b[TN];
#pragma unroll
    for (int r = 0; r < TM; ++r) a[r] = fa(t.ic[r], kk);
#pragma unroll
    for (int c = 0; c < TN; ++c) b[c] = fb(kk, t.jc[c]);
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
  }
}

// acc[r][c] += sum_kk a(i_r, kk) * b(kk, j_c) * exp(E[r][c] + ea(i_r, kk) - eb(kk, j_c)).
// A masked term has a = 0 and ea = -inf (its exponential is 0, never inf * 0).
template <int TM, int TN, class FA, class FEA, class FB, class FEB>
__device__ __forceinline__ void mm_acc_exp(float (&acc)[TM][TN], const float (&E)[TM][TN], const MicroTile<TM, TN>& t,
                                           int k0, int k1, FA&& fa, FEA&& fea, FB&& fb, FEB&& feb) {
  for (int kk = k0; kk < k1; ++kk) {
    float a[TM], ea[TM], b[TN], eb[TN];
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      a[r] = fa(t.ic[r], kk);
      ea[r] = fea(t.ic[r], kk);
    }
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      b[c] = fb(kk, t.jc[c]);
      eb[c] = feb(kk, t.jc[c]);
    }
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) acc[r][c] = fmaf(a[r] * b[c], __expf(E[r][c] + ea[r] - eb[c]), acc[r][c]);
  }
}

// ---- chunk decays, shared by the FFMA kernels (linear_recurrence.cu) and the tensor-core ones (_tc.cu) ----

// Decay accessors over the chunk's G (MODE 0: none, 1: per head, 2: per channel).
template <int MODE>
struct Decay {
  const float* G;
  int ldg;
  bool bonus;
  __device__ __forceinline__ float g(int t, int c) const {
    if constexpr (MODE == 0) return 0.f;
    else if constexpr (MODE == 1) return G[t * ldg];
    else return G[t * ldg + c];
  }
  __device__ __forceinline__ float gq(int t, int c) const {  // the cumulative decay the query of row t sees
    if (bonus) return t == 0 ? 0.f : g(t - 1, c);
    return g(t, c);
  }
};

// Largest |G| for which a chunk's per-channel decays may be factored out of the products:
// exp(Gq_t - G_s) = exp(Gq_t) * exp(-G_s) with both factors within [e^-60, e^60] (f32 keeps full relative
// precision there, and sums of Dk such terms stay far below the f32 range). Chunks with stronger decays
// take the pairwise path (an exponential per term).
constexpr float kFactorLimit = 60.f;

// True when every |G| of the chunk is <= kFactorLimit (the same answer in every thread; a barrier).
__device__ __forceinline__ bool chunk_factorable(const float* G, int ldg, int C, int gw) {
  int ok = 1;
  for (int idx = threadIdx.x; idx < C * gw; idx += blockDim.x) {
    const int r = idx / gw, c = idx - r * gw;
    if (!(fabsf(G[r * ldg + c]) <= kFactorLimit)) ok = 0;
  }
  return __syncthreads_and(ok) != 0;
}

// out[c] = sum over the chunk's L rows of rows[t * row_stride + c] (c < D), in row order: the chunk sums of
// r = q dq - k dk that the dg pass turns into suffix sums (both backward kernels write them).
__device__ __forceinline__ void chunk_column_sums(float* out, const float* rows, int64_t row_stride, int L, int D) {
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float s = 0.f;
    for (int t = 0; t < L; ++t) s += rows[int64_t(t) * row_stride + c];
    out[c] = s;
  }
}

}  // namespace seqmix::mixers::lr_cuda
