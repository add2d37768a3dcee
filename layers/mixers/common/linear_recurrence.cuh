// Device helpers of the CUDA chunked linear recurrence (linear_recurrence.cu): register-tiled block
// matrix products over shared / global memory, for any (also odd) sizes.
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

}  // namespace seqmix::mixers::lr_cuda
