// Tensor-core chunk kernels of the CUDA linear recurrence (interface in linear_recurrence_tc.cuh; the
// algorithm, notation and buffers are those of linear_recurrence.cu's header comment).
//
// What changes against the FFMA kernels: every product that has a 16 x 16 x 16 tiling runs as WMMA
// m16n16k16 (bf16 operands, f32 accumulation): U = sum_s k^_s v_s^T, A = Q K^T, dA = dO V^T, O = A V + Q~ S,
// dq = dA K + dO S, dk = dA^T Q + V dH, dv = A^T dO + K~ dH^T. Operands live in shared memory as bf16 with
// row strides padded by 8 elements (16 bytes: the 8 rows of an ldmatrix phase fall on distinct banks);
// f16 inputs are converted to bf16 too (the factored per-channel operands q e^Gq, k e^-G reach e^60, far
// beyond f16's range). The states S_n / dH_{n+1} come as bf16 (the state scan rounds them: half the bytes of
// f32); a chunk issues their global loads into registers at its start (S_n) or before dq (dH_{n+1}), so they
// overlap the preceding phases, and stores them to shared memory where the old contents are dead. The q, k,
// v, dO loads of a chunk are all issued before any is stored (RowFetch), for the same reason.
// A warp owns whole 16 x 16 output tiles (tile = warp, warp + nwarps, ...); its accumulators go through a
// per-warp 16 x 20 f32 scratch where the lanes apply masks, decays, scale and the elementwise terms (8
// consecutive columns per lane: 16-byte stores) before writing bf16 operands or the outputs.
// Decays: per head / none: one factor per (t, s) applied to A / dA in that epilogue. Per channel: a chunk
// with every |G| <= kFactorLimit uses the factored operands (as the FFMA kernels do, here rounded to bf16);
// any other chunk computes A and the intra-chunk parts of dq, dk pairwise on CUDA cores (one exp per term;
// slow but never overflows, and only strongly decaying chunks take it). The choice is uniform per CTA.
// Elementwise terms that need the raw q, k (dA_tt's diagonal terms, r = q dq - k dk, du) read them from
// global memory, exact in the input type (from shared memory where that holds them unchanged: bf16 inputs,
// unless a per-channel chunk was factored).
//
// The state pass: chunk_state_tc writes U_n rounded once to bf16 (through the warps' f32 scratch; WMMA has no
// bf16 accumulator store), and the state scan (linear_recurrence.cu) reads it, sums in f32 and writes S_n as
// bf16 in place: ~400 MB per direction at B=4 T=4096 H=16 D=128 (~670 MB with U_n in f32). The fused
// sequential pass (linear_recurrence_state_tc.cu) is opt-in (SEQMIX_LR_FUSED_STATE=1): fewer bytes, but
// slower on the H100 (it walks the chunks in order with only B * H * 4 CTAs).
//
// Shared memory at C = 64, Dk = Dv = 128 (per-channel decay; per head / none is smaller):
//   chunk_state_tc  66.3 KB (X, Y bf16, G f32 / scratch)                        256 threads, 3 CTAs / SM
//   chunk_fwd_tc   102.5 KB (q, A bf16; k, v bf16 + G overlaid by S bf16 later)  256 threads, 2 CTAs / SM
//                   (per head / none: 70.3 KB, 3 CTAs / SM; two passes, A V then Q~ S^T, see FwdLay)
//   chunk_bwd_tc   192.8 KB (q, k, v, dO, A, dA bf16, G f32, S then dH bf16)    512 threads, 1 CTA / SM
// Precision: bf16 operands (8-bit mantissa) with f32 accumulation; at bf16 inputs the products of raw
// inputs are exact, the derived operands (A, dA, factored q / k, states) carry one bf16 rounding each.
//
// CPU emulation: with SEQMIX_LR_EMULATE defined every kernel body compiles for the host (the harness
// scripts/lr_tc_emulate.cc; scripts/emulate/cuda_host.h and tc_tiles.cuh supply the CUDA built-ins and
// nvcuda::wmma on whole 16 x 16 tiles; one thread per block, or the real block size with one std::thread per
// CUDA thread and barriers for the syncs). The tile helpers shared with the delta-rule kernels are in
// tc_tiles.cuh.
// No spdlog / fmt here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "layers/mixers/common/linear_recurrence.cuh"
#include "layers/mixers/common/linear_recurrence_tc.cuh"
#include "layers/mixers/common/tc_tiles.cuh"

#ifndef SEQMIX_LR_EMULATE
#include "core/cuda/cuda_check.h"
#endif

namespace seqmix::mixers::lr_tc {

namespace {

using namespace ::seqmix::mixers::tc;  // bf16, wm, kScrLd / kScrTile, align128, tof / fromf, Lanes, FragC, mma16, ...
using ::seqmix::mixers::lr_cuda::chunk_column_sums;  // shared with the FFMA kernels (linear_recurrence.cuh)
using ::seqmix::mixers::lr_cuda::chunk_factorable;
using ::seqmix::mixers::lr_cuda::Decay;

constexpr int kStateThreads = 256;
constexpr int kFwdThreads = 256;
constexpr int kBwdThreads = 512;

struct Ld {
  int ldk, ldv, ldc, ldg;
  __host__ __device__ explicit Ld(const TcGeo& g)
      : ldk(g.Dk + 8), ldv(g.Dv + 8), ldc(g.C + 8), ldg(g.gw > 1 ? (g.gw | 1) : g.gw) {}
};

// Shared-memory layouts (byte offsets, 128-byte aligned), shared by the host (sizes) and the kernels.
// scr (the warps' f32 epilogue tiles) overlays G: G is dead once X is scaled (a barrier before the products),
// and per-channel G (33 KB at C = 64, Dk = 128) is larger than the 8 scratch tiles (10 KB): no growth there.
struct StateLay {
  size_t X, Y, G, scr, total;
  __host__ __device__ explicit StateLay(const TcGeo& g) {
    const Ld l(g);
    size_t o = 0;
    X = o; o = align128(o + size_t(g.C) * l.ldk * 2);
    Y = o; o = align128(o + size_t(g.C) * l.ldv * 2);
    G = scr = o;
    const size_t gb = size_t(g.C) * l.ldg * 4, sb = size_t(kStateThreads / 32) * kScrTile * 4;
    total = align128(o + (gb > sb ? gb : sb));
  }
};

// The output is formed in two passes so that S can take the place of k, v and G: A V into each warp's
// accumulators (k, G are dead once A and Q~ are formed), then, once every warp is past v, S (the chunk's
// state, bf16) overwrites k, v, G and Q~ S^T is added. Without per-channel decays that is ~70 KB at C = 64,
// D = 128: 3 CTAs / SM instead of 2.
struct FwdLay {
  size_t q, A, diag, scr, k, v, G, S, total;
  __host__ __device__ explicit FwdLay(const TcGeo& g) {
    const Ld l(g);
    size_t o = 0;
    q = o; o = align128(o + size_t(g.C) * l.ldk * 2);
    A = o; o = align128(o + size_t(g.C) * l.ldc * 2);
    diag = o; o = align128(o + size_t(g.C) * 4);
    scr = o; o = align128(o + size_t(kFwdThreads / 32) * kScrTile * 4);
    k = S = o;
    v = align128(o + size_t(g.C) * l.ldk * 2);
    G = align128(v + size_t(g.C) * l.ldv * 2);
    const size_t kvg = G + align128(size_t(g.C) * l.ldg * 4), s = align128(o + size_t(g.Dv) * l.ldk * 2);
    total = kvg > s ? kvg : s;
  }
};
// Output tiles a warp of chunk_fwd_tc holds in registers between the two passes (C <= 64, Dv <= 128: at most
// 32 tiles over 8 warps; the one-thread CPU emulation is one warp holding all of them).
#ifdef SEQMIX_LR_EMULATE
constexpr int kFwdAcc = 32;
#else
constexpr int kFwdAcc = 32 / (kFwdThreads / 32);
#endif

// SH holds S_n (bf16) for dq, then dH_{n+1} for dk and dv.
struct BwdLay {
  size_t q, k, v, dO, A, dA, diagA, dAd, G, SH, scr, total;
  __host__ __device__ explicit BwdLay(const TcGeo& g) {
    const Ld l(g);
    size_t o = 0;
    q = o; o = align128(o + size_t(g.C) * l.ldk * 2);
    k = o; o = align128(o + size_t(g.C) * l.ldk * 2);
    v = o; o = align128(o + size_t(g.C) * l.ldv * 2);
    dO = o; o = align128(o + size_t(g.C) * l.ldv * 2);
    A = o; o = align128(o + size_t(g.C) * l.ldc * 2);
    dA = o; o = align128(o + size_t(g.C) * l.ldc * 2);
    diagA = o; o = align128(o + size_t(g.C) * 4);
    dAd = o; o = align128(o + size_t(g.C) * 4);
    G = o; o = align128(o + size_t(g.C) * l.ldg * 4);
    SH = o; o = align128(o + size_t(g.Dv) * l.ldk * 2);
    scr = o; o = align128(o + size_t(kBwdThreads / 32) * 2 * kScrTile * 4);
    total = o;
  }
};

__device__ __forceinline__ float bf(const bf16 x) { return __bfloat162float(x); }

// The warp's scratch tile (chunk rows row0 .. row0 + 15) to dst's rows < L (row stride ld, element type T).
template <typename T>
__device__ __forceinline__ void store_scratch_rows(T* dst, int64_t ld, const float* sc, int row0, int L, const Lanes& w) {
  for_pieces(w, [&](int r, int c0) {
    const int t = row0 + r;
    if (t >= L) return;
    float x[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = sc[r * kScrLd + c0 + i];
    store8(dst + int64_t(t) * ld + c0, x);
  });
}

// Global rows (row stride row_stride, D elements of a 16-bit type T, rows >= L read as 0) into bf16 shared
// rows of stride ld, in two steps so that the global loads of several arrays are in flight together and can
// overlap earlier work: fetch() loads this thread's first NPF 16-byte pieces (idx = tid + i * blockDim) into
// registers, put() stores them (f16 converted to bf16) and copies any further pieces directly (only when
// NPF * blockDim does not cover the rows: the one-thread CPU emulation). A store to shared memory between two
// loads would keep the compiler from hoisting the second: one latency per piece.
template <int NPF, typename T>
struct RowFetch {
  static_assert(sizeof(T) == 2, "16-bit inputs");
  uint4 r[NPF];
  __device__ __forceinline__ void fetch(const T* __restrict__ src, int64_t row_stride, int L, int rows, int D) {
    const int nv = D >> 3, total = rows * nv;
#pragma unroll
    for (int i = 0; i < NPF; ++i) {
      const int idx = int(threadIdx.x) + i * int(blockDim.x), row = idx / nv, c = (idx - row * nv) << 3;
      r[i] = make_uint4(0u, 0u, 0u, 0u);  // +0 in bf16 and f16
      if (idx < total && row < L) r[i] = *reinterpret_cast<const uint4*>(src + int64_t(row) * row_stride + c);
    }
  }
  __device__ __forceinline__ static void put1(bf16* dst, const uint4& raw) {
    if constexpr (std::is_same_v<T, bf16>) {  // a plain copy
      *reinterpret_cast<uint4*>(dst) = raw;
    } else {
      float x[8];
      load8(x, reinterpret_cast<const T*>(&raw));
      store8(dst, x);
    }
  }
  // The same source arguments as fetch().
  __device__ __forceinline__ void put(bf16* dst, int ld, const T* __restrict__ src, int64_t row_stride, int L, int rows, int D) const {
    const int nv = D >> 3, total = rows * nv;
#pragma unroll
    for (int i = 0; i < NPF; ++i) {
      const int idx = int(threadIdx.x) + i * int(blockDim.x), row = idx / nv, c = (idx - row * nv) << 3;
      if (idx < total) put1(dst + row * ld + c, r[i]);
    }
    for (int idx = int(threadIdx.x) + NPF * int(blockDim.x); idx < total; idx += int(blockDim.x)) {
      const int row = idx / nv, c = (idx - row * nv) << 3;
      put1(dst + row * ld + c, row < L ? *reinterpret_cast<const uint4*>(src + int64_t(row) * row_stride + c) : make_uint4(0u, 0u, 0u, 0u));
    }
  }
};
// Pieces per thread: a chunk's 64 rows of 128 elements, or a 128 x 128 state, are 1024 / 2048 pieces.
template <int THREADS>
constexpr int kRowPf = 1024 / THREADS;
template <int THREADS>
constexpr int kStatePf = 2048 / THREADS;
// A chunk's [Dv][Dk] bf16 state (the state scan rounded it).
template <int THREADS>
using StateFetch = RowFetch<kStatePf<THREADS>, bf16>;
template <int NPF>
__device__ __forceinline__ void fetch_state(RowFetch<NPF, bf16>& f, const bf16* src, int Dv, int Dk) { f.fetch(src, Dk, Dv, Dv, Dk); }
template <int NPF>
__device__ __forceinline__ void put_state(const RowFetch<NPF, bf16>& f, bf16* dst, int ld, const bf16* src, int Dv, int Dk) {
  f.put(dst, ld, src, Dk, Dv, Dv, Dk);
}

// Inclusive cumulative log-decays over the chunk's rows (as linear_recurrence.cu's load_cumsum), 16 rows'
// loads issued together (C is a multiple of 16 here): a column's 64 loads are not 64 serial latencies.
__device__ __forceinline__ void load_cumsum(float* G, int ldg, const float* __restrict__ g, int64_t row_stride, int L, int C,
                                            int gw) {
  for (int c = threadIdx.x; c < gw; c += blockDim.x) {
    float acc = 0.f;
    for (int r0 = 0; r0 < C; r0 += 16) {
      float x[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) x[i] = r0 + i < L ? g[int64_t(r0 + i) * row_stride + c] : 0.f;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        acc += x[i];
        G[(r0 + i) * ldg + c] = acc;
      }
    }
  }
}

// The chunk a block owns (grid (N, H, B)): first token t0, valid rows L (<= C), the offsets of its first row in
// the [B, T, H, Dk] and [B, T, H, Dv] inputs (row strides rowk, rowv), and its index in the per-chunk buffers.
struct ChunkPos {
  int n, h, b, t0, L;
  int64_t rowk, rowv, offk, offv, bhn;
  __device__ explicit ChunkPos(const TcGeo& geo) {
    n = blockIdx.x;
    h = blockIdx.y;
    b = blockIdx.z;
    t0 = n * geo.C;
    L = geo.T - t0 < geo.C ? geo.T - t0 : geo.C;
    rowk = int64_t(geo.H) * geo.Dk;
    rowv = int64_t(geo.H) * geo.Dv;
    offk = (int64_t(b) * geo.T + t0) * rowk + int64_t(h) * geo.Dk;
    offv = (int64_t(b) * geo.T + t0) * rowv + int64_t(h) * geo.Dv;
    bhn = (int64_t(b) * geo.H + h) * geo.N + n;
  }
};

// The chunk's inclusive cumulative log decays into G (row stride ldg); nothing without decays (MODE 0).
// Two steps, as RowFetch: fetch() issues the global loads into registers, before a kernel's row loads are
// stored, so their latency overlaps those (load_cumsum after the rows cost four more serial latencies per
// CTA); put() forms the sums. Per head (MODE 1, one decay per row, C <= 64): warp 0 loads rows lane and
// lane + 32, stores them, and lane 0 sums them in row order (the same f32 sums as load_cumsum). Per channel
// (MODE 2): put() runs load_cumsum (one column per thread).
template <int MODE>
struct DecayFetch {
  float x[2];
  __device__ __forceinline__ static const float* src(const TcGeo& geo, const float* g, const ChunkPos& cp) {
    const int64_t rowg = int64_t(geo.H) * geo.gw;
    return g + (int64_t(cp.b) * geo.T + cp.t0) * rowg + int64_t(cp.h) * geo.gw;
  }
  __device__ __forceinline__ void fetch(const TcGeo& geo, const float* __restrict__ g, const ChunkPos& cp) {
    if constexpr (MODE == 1) {
      const int tid = int(threadIdx.x);
      if (tid < 32) {
        const float* s = src(geo, g, cp);
        const int64_t rowg = int64_t(geo.H) * geo.gw;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int r = tid + 32 * i;
          x[i] = r < cp.L ? s[int64_t(r) * rowg] : 0.f;
        }
      }
    }
  }
  __device__ __forceinline__ void put(float* G, int ldg, const TcGeo& geo, const float* __restrict__ g, const ChunkPos& cp) const {
    if constexpr (MODE == 1) {
      const int tid = int(threadIdx.x), C = geo.C;
      if (tid < 32) {
        const int nl = int(blockDim.x) < 32 ? int(blockDim.x) : 32;  // 1 in the one-thread CPU emulation
        const int64_t rowg = int64_t(geo.H) * geo.gw;
        const float* s = src(geo, g, cp);
        if (tid < C) G[tid * ldg] = x[0];
        if (tid + 32 < C) G[(tid + 32) * ldg] = x[1];
        for (int r = tid + nl; r < C; r += nl)  // rows fetch() did not cover (only with nl < 32)
          if (r != tid + 32) G[r * ldg] = r < cp.L ? s[int64_t(r) * rowg] : 0.f;
        __syncwarp();
        if (tid == 0) {
          float acc = 0.f;
          for (int r0 = 0; r0 < C; r0 += 16) {
            float v[16];
#pragma unroll
            for (int i = 0; i < 16; ++i) v[i] = G[(r0 + i) * ldg];
#pragma unroll
            for (int i = 0; i < 16; ++i) {
              acc += v[i];
              G[(r0 + i) * ldg] = acc;
            }
          }
        }
      }
    } else if constexpr (MODE == 2) {
      const int64_t rowg = int64_t(geo.H) * geo.gw;
      load_cumsum(G, ldg, src(geo, g, cp), rowg, cp.L, geo.C, geo.gw);
    }
  }
};

// q -> q exp(Gq), k -> k exp(-G) in place (rows < L; per-channel decays of a factorable chunk).
template <int MODE>
__device__ __forceinline__ void factor_qk(bf16* q, bf16* k, int ldk, const Decay<MODE>& dec, int L, int Dk) {
  for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
    const int t = idx / Dk, c = idx - t * Dk;
    q[t * ldk + c] = __float2bfloat16_rn(bf(q[t * ldk + c]) * __expf(dec.gq(t, c)));
    k[t * ldk + c] = __float2bfloat16_rn(bf(k[t * ldk + c]) * __expf(-dec.g(t, c)));
  }
}

// diag[t] = scale * sum_c q_tc k_tc w_c (raw q, k; w = u or 1), 0 for rows >= L. One thread per row, the
// column pairs rotated by t: the row stride is 4 banks, so lane t reads bank 5t + j (mod 32): no conflicts.
__device__ __forceinline__ void diag_qk(float* diag, const bf16* q, const bf16* k, int ldk, const float* u, int L, int C, int Dk,
                                        float scale) {
  const int np = Dk >> 1;
  for (int t = threadIdx.x; t < C; t += blockDim.x) {
    float s = 0.f;
    if (t < L) {
      int cp = t % np;
      for (int j = 0; j < np; ++j) {
        const int c = cp << 1;
        s += bf(q[t * ldk + c]) * bf(k[t * ldk + c]) * (u ? u[c] : 1.f) +
             bf(q[t * ldk + c + 1]) * bf(k[t * ldk + c + 1]) * (u ? u[c + 1] : 1.f);
        if (++cp == np) cp = 0;
      }
    }
    diag[t] = scale * s;
  }
}

// Lower-triangular tile index -> (ti, si) with si <= ti.
__device__ __forceinline__ void lower_tile(int tile, int& ti, int& si) {
  ti = 0;
  while ((ti + 1) * (ti + 2) / 2 <= tile) ++ti;
  si = tile - ti * (ti + 1) / 2;
}

// The chunk's A (C x C bf16, ld ldc): scale * decayed Q K^T below the diagonal, diag on it, 0 above it and
// outside [0, L)^2 (tiles wholly above the diagonal are left unwritten: never read). diag == nullptr (the
// product path only): 0 on the diagonal, for the caller to fill in once diag is complete. q, k hold the factored
// operands for a factored chunk; a per-channel chunk that is not factorable is done pairwise.
template <int MODE>
__device__ __forceinline__ void build_A(bf16* A, int ldc, const bf16* q, const bf16* k, int ldk, const Decay<MODE>& dec,
                                        const float* diag, int L, int C, int Dk, float scale, bool factored, float* sc,
                                        const Lanes& w) {
  if (MODE == 2 && !factored) {
    for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
      const int t = idx / C, s = idx - t * C;
      float val = 0.f;
      if (t < L && s < L) {
        if (s < t) {
          float acc = 0.f;
          for (int c = 0; c < Dk; ++c) acc += bf(q[t * ldk + c]) * bf(k[s * ldk + c]) * __expf(dec.gq(t, c) - dec.g(s, c));
          val = scale * acc;
        } else if (s == t) {
          val = diag[t];
        }
      }
      A[t * ldc + s] = __float2bfloat16_rn(val);
    }
    return;
  }
  const int nt = C >> 4;
  for (int tile = w.warp; tile < nt * (nt + 1) / 2; tile += w.nwarps) {
    int ti, si;
    lower_tile(tile, ti, si);
    FragC acc;
    fill(acc, 0.f);
    if (ti * 16 < L)
      for (int c0 = 0; c0 < Dk; c0 += 16) mma16<wm::row_major, wm::col_major>(acc, q + ti * 16 * ldk + c0, ldk, k + si * 16 * ldk + c0, ldk);
    through_scratch(sc, acc, [&] {
      for_pieces(w, [&](int r, int c0) {
        const int t = ti * 16 + r;
        float o[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int s = si * 16 + c0 + i;
          float val = 0.f;
          if (t < L && s < L) {
            if (s < t) {
              val = scale * sc[r * kScrLd + c0 + i];
              if constexpr (MODE == 1) val *= __expf(dec.gq(t, 0) - dec.g(s, 0));
            } else if (s == t && diag) {
              val = diag[t];
            }
          }
          o[i] = val;
        }
        store8(A + t * ldc + si * 16 + c0, o);
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------
// 1. out[n] ([Dv][Dk] bf16) = sum_t Y_t X_t^T  (forward X = k exp(G_last - G), Y = v; backward
//    X = scale q exp(Gq), Y = dout), and G_last per chunk (forward). The f32 accumulator is rounded to bf16
//    once (half the bytes of f32 written here and read by the scan; the scan still sums in f32).
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE, bool BWD>
__global__ void __launch_bounds__(kStateThreads)  // <= 80 registers (3 CTAs / SM; a min-blocks bound made ptxas spill)
    chunk_state_tc(TcGeo geo, const T* __restrict__ xsrc, const T* __restrict__ ysrc, const float* __restrict__ g,
                   bf16* __restrict__ out, float* __restrict__ glast) {
  TC_SMEM(smem);
  const Ld ld(geo);
  const StateLay sl(geo);
  bf16* X = reinterpret_cast<bf16*>(smem + sl.X);
  bf16* Y = reinterpret_cast<bf16*>(smem + sl.Y);
  float* G = reinterpret_cast<float*>(smem + sl.G);
  const ChunkPos cp(geo);
  const int L = cp.L, Dk = geo.Dk, Dv = geo.Dv, ldk = ld.ldk, ldv = ld.ldv;
  DecayFetch<MODE> df;
  df.fetch(geo, g, cp);
  {  // one array at a time: both at once would take this kernel past 85 registers (3 CTAs / SM)
    RowFetch<kRowPf<kStateThreads>, T> f;
    f.fetch(xsrc + cp.offk, cp.rowk, L, geo.C, Dk);
    f.put(X, ldk, xsrc + cp.offk, cp.rowk, L, geo.C, Dk);
    f.fetch(ysrc + cp.offv, cp.rowv, L, geo.C, Dv);
    f.put(Y, ldv, ysrc + cp.offv, cp.rowv, L, geo.C, Dv);
  }
  df.put(G, ld.ldg, geo, g, cp);
  __syncthreads();
  const Decay<MODE> dec{G, ld.ldg, geo.bonus};
  const int64_t bhn = cp.bhn;
  if constexpr (!BWD && MODE > 0) {
    for (int c = threadIdx.x; c < geo.gw; c += blockDim.x) glast[bhn * geo.gw + c] = dec.g(L - 1, c);
  }
  if (BWD || MODE > 0) {
    scale_tile(X, ldk, L, Dk, [&](int t, int c) {
      if constexpr (BWD) return geo.scale * (MODE > 0 ? __expf(dec.gq(t, c)) : 1.f);
      else return __expf(dec.g(L - 1, c) - dec.g(t, c));
    });
  }
  __syncthreads();  // G is dead from here: the scratch tiles overlay it
  const Lanes w = lanes();
  float* sc = reinterpret_cast<float*>(smem + sl.scr) + w.warp * kScrTile;
  const int ni = Dk >> 4, nj = Dv >> 4, kt = (L + 15) >> 4;
  bf16* o = out + bhn * int64_t(Dv) * Dk;
  for (int tile = w.warp; tile < ni * nj; tile += w.nwarps) {
    const int jt = tile / ni, it = tile - jt * ni;
    FragC acc;
    fill(acc, 0.f);
    for (int s = 0; s < kt; ++s)
      mma16<wm::col_major, wm::row_major>(acc, Y + s * 16 * ldv + jt * 16, ldv, X + s * 16 * ldk + it * 16, ldk);
    // rows d = jt * 16 + r (all < Dv), 8 columns per lane: one 16-byte store
    through_scratch(sc, acc, [&] { store_scratch_rows(o + it * 16, Dk, sc, jt * 16, Dv, w); });
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Forward output of one chunk: o = A V + Q~ S_n^T.
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE>
__global__ void __launch_bounds__(kFwdThreads, MODE == 2 ? 2 : 3)
    chunk_fwd_tc(TcGeo geo, const T* __restrict__ qg, const T* __restrict__ kg, const T* __restrict__ vg,
                 const float* __restrict__ g, const float* __restrict__ u, const bf16* __restrict__ states,
                 T* __restrict__ og) {
  TC_SMEM(smem);
  const Ld ld(geo);
  const FwdLay fl(geo);
  bf16* q = reinterpret_cast<bf16*>(smem + fl.q);
  bf16* k = reinterpret_cast<bf16*>(smem + fl.k);
  bf16* v = reinterpret_cast<bf16*>(smem + fl.v);
  bf16* A = reinterpret_cast<bf16*>(smem + fl.A);
  bf16* S = reinterpret_cast<bf16*>(smem + fl.S);
  float* diag = reinterpret_cast<float*>(smem + fl.diag);
  float* G = reinterpret_cast<float*>(smem + fl.G);
  const Lanes w = lanes();
  float* sc = reinterpret_cast<float*>(smem + fl.scr) + w.warp * kScrTile;
  const ChunkPos cp(geo);
  const int h = cp.h, L = cp.L;
  const int C = geo.C, Dk = geo.Dk, Dv = geo.Dv, ldk = ld.ldk, ldv = ld.ldv, ldc = ld.ldc;
  const int64_t rowk = cp.rowk, rowv = cp.rowv, offk = cp.offk, offv = cp.offv;
  const bf16* Sg = states + cp.bhn * int64_t(Dv) * Dk;
  // Per-channel decays (2 CTAs / SM, registers to spare): S_n's loads are issued here and stay in flight
  // until S is stored. Otherwise (3 CTAs / SM, <= 85 registers) they are issued where S is stored: the other
  // CTAs of the SM cover that latency.
  StateFetch<kFwdThreads> sf;
  if constexpr (MODE == 2) fetch_state(sf, Sg, Dv, Dk);
  DecayFetch<MODE> df;
  df.fetch(geo, g, cp);
  {
    RowFetch<kRowPf<kFwdThreads>, T> fq, fk, fv;
    fq.fetch(qg + offk, rowk, L, C, Dk);
    fk.fetch(kg + offk, rowk, L, C, Dk);
    fv.fetch(vg + offv, rowv, L, C, Dv);
    fq.put(q, ldk, qg + offk, rowk, L, C, Dk);
    fk.put(k, ldk, kg + offk, rowk, L, C, Dk);
    fv.put(v, ldv, vg + offv, rowv, L, C, Dv);
  }
  df.put(G, ld.ldg, geo, g, cp);
  __syncthreads();
  const Decay<MODE> dec{G, ld.ldg, geo.bonus};
  const bool factored = MODE == 2 && chunk_factorable(G, ld.ldg, C, geo.gw);
  diag_qk(diag, q, k, ldk, geo.bonus ? u + int64_t(h) * Dk : nullptr, L, C, Dk, geo.scale);  // raw q, k
  __syncthreads();
  if (factored) {
    factor_qk<MODE>(q, k, ldk, dec, L, Dk);
    __syncthreads();
  }
  build_A<MODE>(A, ldc, q, k, ldk, dec, diag, L, C, Dk, geo.scale, factored, sc, w);
  __syncthreads();
  // q -> scale * q * exp(Gq) for the inter-chunk term (a factored chunk's q already holds q exp(Gq))
  for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
    const int t = idx / Dk, c = idx - t * Dk;
    q[t * ldk + c] = __float2bfloat16_rn(bf(q[t * ldk + c]) * geo.scale * (MODE > 0 && !factored ? __expf(dec.gq(t, c)) : 1.f));
  }
  // pass 1: A V (reads A, v; q is rescaled meanwhile)
  const int nrt = (L + 15) >> 4, nj = Dv >> 4, ntile = nrt * nj;
  FragC acc[kFwdAcc];
#pragma unroll
  for (int j = 0; j < kFwdAcc; ++j) {
    const int tile = w.warp + j * w.nwarps;
    fill(acc[j], 0.f);
    if (tile < ntile) {
      const int ti = tile / nj, dj = tile - ti * nj;
      for (int si = 0; si <= ti; ++si)
        mma16<wm::row_major, wm::row_major>(acc[j], A + ti * 16 * ldc + si * 16, ldc, v + si * 16 * ldv + dj * 16, ldv);
    }
  }
  __syncthreads();  // k, v and G are dead from here: S overwrites them
  if constexpr (MODE != 2) fetch_state(sf, Sg, Dv, Dk);
  put_state(sf, S, ldk, Sg, Dv, Dk);
  __syncthreads();
  // pass 2: + Q~ S^T, and the output
  T* o = og + offv;
#pragma unroll
  for (int j = 0; j < kFwdAcc; ++j) {
    const int tile = w.warp + j * w.nwarps;
    if (tile < ntile) {
      const int ti = tile / nj, dj = tile - ti * nj;
      for (int c0 = 0; c0 < Dk; c0 += 16)
        mma16<wm::row_major, wm::col_major>(acc[j], q + ti * 16 * ldk + c0, ldk, S + dj * 16 * ldk + c0, ldk);
      through_scratch(sc, acc[j], [&] { store_scratch_rows(o + dj * 16, rowv, sc, ti * 16, L, w); });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Backward of one chunk: dq, dk, dv, and the per-chunk pieces of dg and du (as chunk_bwd_kernel).
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE>
__global__ void __launch_bounds__(kBwdThreads) chunk_bwd_tc(TcGeo geo, const T* __restrict__ qg, const T* __restrict__ kg,
                                                            const T* __restrict__ vg, const T* __restrict__ dog,
                                                            const float* __restrict__ g, const float* __restrict__ u,
                                                            const bf16* __restrict__ states, const bf16* __restrict__ dstates,
                                                            T* __restrict__ dqg, T* __restrict__ dkg, T* __restrict__ dvg,
                                                            TcBwdOut bo) {
  TC_SMEM(smem);
  const Ld ld(geo);
  const BwdLay bl(geo);
  bf16* q = reinterpret_cast<bf16*>(smem + bl.q);
  bf16* k = reinterpret_cast<bf16*>(smem + bl.k);
  bf16* v = reinterpret_cast<bf16*>(smem + bl.v);
  bf16* dO = reinterpret_cast<bf16*>(smem + bl.dO);
  bf16* A = reinterpret_cast<bf16*>(smem + bl.A);
  bf16* dA = reinterpret_cast<bf16*>(smem + bl.dA);
  bf16* SH = reinterpret_cast<bf16*>(smem + bl.SH);
  float* diagA = reinterpret_cast<float*>(smem + bl.diagA);
  float* dAd = reinterpret_cast<float*>(smem + bl.dAd);
  float* G = reinterpret_cast<float*>(smem + bl.G);
  const Lanes w = lanes();
  float* sc = reinterpret_cast<float*>(smem + bl.scr) + w.warp * 2 * kScrTile;
  float* sc2 = sc + kScrTile;
  const ChunkPos cp(geo);
  const int h = cp.h, L = cp.L;
  const int C = geo.C, Dk = geo.Dk, Dv = geo.Dv, ldk = ld.ldk, ldv = ld.ldv, ldc = ld.ldc;
  const float scale = geo.scale;
  const int64_t rowk = cp.rowk, rowv = cp.rowv, offk = cp.offk, offv = cp.offv;
  const bf16* Sg = states + cp.bhn * int64_t(Dv) * Dk;    // S_n
  const bf16* dHg = dstates + cp.bhn * int64_t(Dv) * Dk;  // dH_{n+1}
  StateFetch<kBwdThreads> sf;
  fetch_state(sf, Sg, Dv, Dk);  // in flight until S_n is stored after A
  DecayFetch<MODE> df;
  df.fetch(geo, g, cp);
  {
    RowFetch<kRowPf<kBwdThreads>, T> fq, fk, fv, fo;
    fq.fetch(qg + offk, rowk, L, C, Dk);
    fk.fetch(kg + offk, rowk, L, C, Dk);
    fv.fetch(vg + offv, rowv, L, C, Dv);
    fo.fetch(dog + offv, rowv, L, C, Dv);
    fq.put(q, ldk, qg + offk, rowk, L, C, Dk);
    fk.put(k, ldk, kg + offk, rowk, L, C, Dk);
    fv.put(v, ldv, vg + offv, rowv, L, C, Dv);
    fo.put(dO, ldv, dog + offv, rowv, L, C, Dv);
  }
  df.put(G, ld.ldg, geo, g, cp);
  __syncthreads();
  const Decay<MODE> dec{G, ld.ldg, geo.bonus};
  const float* uh = geo.bonus ? u + int64_t(h) * Dk : nullptr;
  const int64_t bhn = cp.bhn;
  const bool factored = MODE == 2 && chunk_factorable(G, ld.ldg, C, geo.gw);
  const bool mma_intra = !(MODE == 2 && !factored);  // intra-chunk dq / dk parts as products
  const int nt = C >> 4, nrt = (L + 15) >> 4;

  // dA (bf16): scale do_t . v_s for s < t (times exp(Gq_t - G_s) for a per-head decay), 0 elsewhere;
  // dAd[t] = scale do_t . v_t.
  for (int tile = w.warp; tile < nt * (nt + 1) / 2; tile += w.nwarps) {
    int ti, si;
    lower_tile(tile, ti, si);
    FragC acc;
    fill(acc, 0.f);
    if (ti * 16 < L)
      for (int d0 = 0; d0 < Dv; d0 += 16)
        mma16<wm::row_major, wm::col_major>(acc, dO + ti * 16 * ldv + d0, ldv, v + si * 16 * ldv + d0, ldv);
    through_scratch(sc, acc, [&] {
      for_pieces(w, [&](int r, int c0) {
        const int t = ti * 16 + r;
        float o[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int s = si * 16 + c0 + i;
          const float a = sc[r * kScrLd + c0 + i];
          float val = 0.f;
          if (t < L && s < t) {
            val = scale * a;
            if constexpr (MODE == 1) val *= __expf(dec.gq(t, 0) - dec.g(s, 0));
          }
          if (s == t) dAd[t] = t < L ? scale * a : 0.f;
          o[i] = val;
        }
        store8(dA + t * ldc + si * 16 + c0, o);
      });
    });
  }
  diag_qk(diagA, q, k, ldk, uh, L, C, Dk, scale);  // raw q, k
  if constexpr (MODE < 2) {
    // No per-channel decay: A needs no factored operands, so it is built in this phase too (one barrier
    // fewer, 2 C/16 (C/16 + 1)/2 tiles over the warps together), its diagonal below once diagA is complete.
    build_A<MODE>(A, ldc, q, k, ldk, dec, nullptr, L, C, Dk, scale, false, sc, w);  // read by dv only
    put_state(sf, SH, ldk, Sg, Dv, Dk);  // S_n
  }
  __syncthreads();
  if constexpr (MODE < 2) {
    for (int t = threadIdx.x; t < C; t += blockDim.x) A[t * ldc + t] = __float2bfloat16_rn(diagA[t]);  // 0 for t >= L
  } else {
    if (factored) {  // from here on q, k hold q exp(Gq), k exp(-G)
      factor_qk<MODE>(q, k, ldk, dec, L, Dk);
      __syncthreads();
    }
    build_A<MODE>(A, ldc, q, k, ldk, dec, diagA, L, C, Dk, scale, factored, sc, w);  // read by dv only
    put_state(sf, SH, ldk, Sg, Dv, Dk);  // S_n
    __syncthreads();
  }
  fetch_state(sf, dHg, Dv, Dk);  // dH_{n+1}, in flight during dq

  const T* qraw = qg + offk;
  const T* kraw = kg + offk;
  // bf16 inputs: shared q, k hold the raw values (exact copies) until the factoring / k's rescale for dv, so
  // the epilogues read them there instead of from global memory (a latency per tile).
  const bool raw_smem = std::is_same_v<T, bf16> && !(MODE == 2 && factored);
  float* rbuf = bo.r ? bo.r + offk : nullptr;
  float* pbuf = bo.p ? bo.p + offk : nullptr;
  const int nc = Dk >> 4;

  // dq = [dA K] + scale e^Gq (dO S) + dA_tt w k_t
  T* dq = dqg + offk;
  for (int tile = w.warp; tile < nrt * nc; tile += w.nwarps) {
    const int ti = tile / nc, cj = tile - ti * nc;
    FragC a1, a2;
    fill(a1, 0.f);
    fill(a2, 0.f);
    if (mma_intra)
      for (int si = 0; si <= ti; ++si)
        mma16<wm::row_major, wm::row_major>(a1, dA + ti * 16 * ldc + si * 16, ldc, k + si * 16 * ldk + cj * 16, ldk);
    for (int d0 = 0; d0 < Dv; d0 += 16)
      mma16<wm::row_major, wm::row_major>(a2, dO + ti * 16 * ldv + d0, ldv, SH + d0 * ldk + cj * 16, ldk);
    through_scratch(sc, a1, sc2, a2, [&] {
      for_pieces(w, [&](int r, int c0) {
        const int t = ti * 16 + r;
        if (t >= L) return;
        const int64_t gi = int64_t(t) * rowk + cj * 16 + c0;
        float qr[8], kr[8], val[8], rv[8], pv[8];
        if (raw_smem) {
          load8(qr, q + t * ldk + cj * 16 + c0);
          load8(kr, k + t * ldk + cj * 16 + c0);
        } else {
          load8(qr, qraw + gi);
          load8(kr, kraw + gi);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int c = cj * 16 + c0 + i;
          const float eq = MODE > 0 ? __expf(dec.gq(t, c)) : 1.f;
          float intra;
          if (MODE == 2 && factored) {
            intra = sc[r * kScrLd + c0 + i] * eq;
          } else if (MODE == 2) {  // pairwise: sum_{s<t} dA_ts k_sc exp(Gq_tc - G_sc)
            intra = 0.f;
            for (int s = 0; s < t; ++s) intra += bf(dA[t * ldc + s]) * bf(k[s * ldk + c]) * __expf(dec.gq(t, c) - dec.g(s, c));
          } else {
            intra = sc[r * kScrLd + c0 + i];
          }
          float dst = intra + scale * sc2[r * kScrLd + c0 + i] * eq;
          float x;
          if (uh) x = dst + dAd[t] * uh[c] * kr[i];
          else dst = x = dst + dAd[t] * kr[i];
          val[i] = x;
          rv[i] = qr[i] * x;
          pv[i] = qr[i] * dst;
        }
        store8(dq + gi, val);
        if (rbuf) store8f(rbuf + gi, rv);
        if (pbuf) store8f(pbuf + gi, pv);
      });
    });
  }
  __syncthreads();  // rbuf rows are written (read-modify-write below); SH is free
  put_state(sf, SH, ldk, dHg, Dv, Dk);  // dH_{n+1}
  __syncthreads();

  // dk = [dA^T Q] + e^(G_last - G) (V dH) + dA_ss w q_s
  T* dk = dkg + offk;
  for (int tile = w.warp; tile < nrt * nc; tile += w.nwarps) {
    const int si = tile / nc, cj = tile - si * nc;
    FragC a1, a2;
    fill(a1, 0.f);
    fill(a2, 0.f);
    if (mma_intra)
      for (int ti = si; ti < nrt; ++ti)
        mma16<wm::col_major, wm::row_major>(a1, dA + ti * 16 * ldc + si * 16, ldc, q + ti * 16 * ldk + cj * 16, ldk);
    for (int d0 = 0; d0 < Dv; d0 += 16)
      mma16<wm::row_major, wm::row_major>(a2, v + si * 16 * ldv + d0, ldv, SH + d0 * ldk + cj * 16, ldk);
    through_scratch(sc, a1, sc2, a2, [&] {
      for_pieces(w, [&](int r, int c0) {
        const int s = si * 16 + r;
        if (s >= L) return;
        const int64_t gi = int64_t(s) * rowk + cj * 16 + c0;
        float qr[8], kr[8], val[8], rv[8];
        if (raw_smem) {
          load8(qr, q + s * ldk + cj * 16 + c0);
          load8(kr, k + s * ldk + cj * 16 + c0);
        } else {
          load8(qr, qraw + gi);
          load8(kr, kraw + gi);
        }
        if (rbuf) load8f(rv, rbuf + gi);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int c = cj * 16 + c0 + i;
          const float carry = sc2[r * kScrLd + c0 + i] * (MODE > 0 ? __expf(dec.g(L - 1, c) - dec.g(s, c)) : 1.f);
          float intra;
          if (MODE == 2 && factored) {
            intra = sc[r * kScrLd + c0 + i] * __expf(-dec.g(s, c));
          } else if (MODE == 2) {  // pairwise: sum_{t>s} dA_ts q_tc exp(Gq_tc - G_sc)
            intra = 0.f;
            for (int t = s + 1; t < L; ++t) intra += bf(dA[t * ldc + s]) * bf(q[t * ldk + c]) * __expf(dec.gq(t, c) - dec.g(s, c));
          } else {
            intra = sc[r * kScrLd + c0 + i];
          }
          const float x = intra + carry + dAd[s] * (uh ? uh[c] : 1.f) * qr[i];
          val[i] = x;
          if (rbuf) rv[i] -= kr[i] * x;
        }
        store8(dk + gi, val);
        if (rbuf) store8f(rbuf + gi, rv);
      });
    });
  }
  // du (bonus): per-chunk sum of dA_tt q_tc k_tc (raw values from global memory)
  if (bo.du) {
    for (int c = threadIdx.x; c < Dk; c += blockDim.x) {
      float s = 0.f;
      if (raw_smem)
        for (int t = 0; t < L; ++t) s += dAd[t] * bf(q[t * ldk + c]) * bf(k[t * ldk + c]);
      else
        for (int t = 0; t < L; ++t) s += dAd[t] * tof(qraw[int64_t(t) * rowk + c]) * tof(kraw[int64_t(t) * rowk + c]);
      bo.du[bhn * Dk + c] = s;
    }
  }
  if constexpr (MODE == 2) {
    __syncthreads();
    // k -> k exp(G_last - G) for the carried term of dv; chunk sums of r for dg
    scale_tile(k, ldk, L, Dk, [&](int t, int c) { return __expf(dec.g(L - 1, c) - (factored ? 0.f : dec.g(t, c))); });
    if (bo.ctot) chunk_column_sums(bo.ctot + bhn * Dk, rbuf, rowk, L, Dk);
    __syncthreads();
  } else if (bo.ctot) {  // no per-channel decay: dv reads nothing the dk phase writes (k stays raw; a per-head
    __syncthreads();     // decay is a per-row factor in dv's epilogue), so warps go on to dv without a barrier
    chunk_column_sums(bo.ctot + bhn * Dk, rbuf, rowk, L, Dk);  // (but for other threads' rbuf rows)
  }

  // dv = A^T dO + K~ dH^T (per-head decay: K~ dH^T = e^(G_last - G_s) (K dH^T), the factor applied in f32 here)
  T* dv = dvg + offv;
  const int nj = Dv >> 4;
  for (int tile = w.warp; tile < nrt * nj; tile += w.nwarps) {
    const int si = tile / nj, dj = tile - si * nj;
    FragC acc;
    fill(acc, 0.f);
    if constexpr (MODE == 1) {  // K dH^T first, parked in the second scratch tile (one accumulator live)
      for (int c0 = 0; c0 < Dk; c0 += 16)
        mma16<wm::row_major, wm::col_major>(acc, k + si * 16 * ldk + c0, ldk, SH + dj * 16 * ldk + c0, ldk);
      store_acc(sc2, acc, kScrLd);  // read after through_scratch's __syncwarp
      fill(acc, 0.f);
    }
    for (int ti = si; ti < nrt; ++ti)
      mma16<wm::col_major, wm::row_major>(acc, A + ti * 16 * ldc + si * 16, ldc, dO + ti * 16 * ldv + dj * 16, ldv);
    if constexpr (MODE != 1)
      for (int c0 = 0; c0 < Dk; c0 += 16)
        mma16<wm::row_major, wm::col_major>(acc, k + si * 16 * ldk + c0, ldk, SH + dj * 16 * ldk + c0, ldk);
    if constexpr (MODE == 1) {
      through_scratch(sc, acc, [&] {
        for_pieces(w, [&](int r, int c0) {
          const int s = si * 16 + r;
          if (s >= L) return;
          const float f = __expf(dec.g(L - 1, 0) - dec.g(s, 0));
          float x[8];
#pragma unroll
          for (int i = 0; i < 8; ++i) x[i] = sc[r * kScrLd + c0 + i] + f * sc2[r * kScrLd + c0 + i];
          store8(dv + int64_t(s) * rowv + dj * 16 + c0, x);
        });
      });
    } else {
      through_scratch(sc, acc, [&] { store_scratch_rows(dv + dj * 16, rowv, sc, si * 16, L, w); });
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
bool env_enabled() {
  const char* e = std::getenv("SEQMIX_LR_TC");
  return !(e && e[0] == '0' && e[1] == '\0');
}

bool shape_ok(const TcGeo& g) {
  auto ok16 = [](int d, int hi) { return d >= 16 && d <= hi && d % 16 == 0; };
  return ok16(g.Dk, 128) && ok16(g.Dv, 128) && ok16(g.C, 64);
}

size_t smem_state(const TcGeo& g) { return StateLay(g).total; }
size_t smem_fwd(const TcGeo& g) { return FwdLay(g).total; }
size_t smem_bwd(const TcGeo& g) { return BwdLay(g).total; }

#ifndef SEQMIX_LR_EMULATE
namespace {

template <typename K>
void set_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <class F>
void with_type(Elem e, F&& f) {
  if (e == Elem::BF16) f.template operator()<bf16>();
  else f.template operator()<__half>();
}
template <class F>
void with_mode(int mode, F&& f) {
  switch (mode) {
    case 0: f.template operator()<0>(); break;
    case 1: f.template operator()<1>(); break;
    default: f.template operator()<2>(); break;
  }
}

}  // namespace

void chunk_state(Elem e, int mode, bool bwd, const TcGeo& g, const void* x, const void* y, const float* gdec, void* out,
                 float* glast, cudaStream_t st) {
  const dim3 grid(unsigned(g.N), unsigned(g.H), unsigned(g.B));
  const size_t sb = smem_state(g);
  with_type(e, [&]<typename T>() {
    with_mode(mode, [&]<int MODE>() {
      auto kern = bwd ? chunk_state_tc<T, MODE, true> : chunk_state_tc<T, MODE, false>;
      set_smem(kern, sb);
      kern<<<grid, kStateThreads, sb, st>>>(g, static_cast<const T*>(x), static_cast<const T*>(y), gdec, static_cast<bf16*>(out),
                                            glast);
      SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence chunk_state_tc");
    });
  });
}

void chunk_fwd(Elem e, int mode, const TcGeo& g, const void* q, const void* k, const void* v, const float* gdec,
               const float* u, const void* states, void* o, cudaStream_t st) {
  const dim3 grid(unsigned(g.N), unsigned(g.H), unsigned(g.B));
  const size_t sb = smem_fwd(g);
  with_type(e, [&]<typename T>() {
    with_mode(mode, [&]<int MODE>() {
      auto kern = chunk_fwd_tc<T, MODE>;
      set_smem(kern, sb);
      kern<<<grid, kFwdThreads, sb, st>>>(g, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), gdec,
                                          u, static_cast<const bf16*>(states), static_cast<T*>(o));
      SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence chunk_fwd_tc");
    });
  });
}

void chunk_bwd(Elem e, int mode, const TcGeo& g, const void* q, const void* k, const void* v, const void* dout,
               const float* gdec, const float* u, const void* states, const void* dstates, void* dq, void* dk, void* dv,
               TcBwdOut bo, cudaStream_t st) {
  const dim3 grid(unsigned(g.N), unsigned(g.H), unsigned(g.B));
  const size_t sb = smem_bwd(g);
  with_type(e, [&]<typename T>() {
    with_mode(mode, [&]<int MODE>() {
      auto kern = chunk_bwd_tc<T, MODE>;
      set_smem(kern, sb);
      kern<<<grid, kBwdThreads, sb, st>>>(g, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                                          static_cast<const T*>(dout), gdec, u, static_cast<const bf16*>(states),
                                          static_cast<const bf16*>(dstates), static_cast<T*>(dq),
                                          static_cast<T*>(dk), static_cast<T*>(dv), bo);
      SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence chunk_bwd_tc");
    });
  });
}
#endif  // SEQMIX_LR_EMULATE

}  // namespace seqmix::mixers::lr_tc
