// Kernel bodies and launches of the fused recurrent generalized delta rule (rwkv7's time mix; the algorithm and
// the gradients are in generalized_delta_cuda.cu's header comment). Included by generalized_delta_cuda.cu and,
// with GDR_EMULATE defined, by the CPU emulation scripts/gdr_emulate.cc (scripts/emulate/cuda_host.h supplies
// the CUDA built-ins, one std::thread per CUDA thread). No spdlog / fmt here.
//
// IN is the element type of q, k, v, a, b, o and their gradients (bf16, f16 or f32); lw, the initial / final
// state, the checkpoints and every accumulation are f32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "layers/mixers/common/tc_tiles.cuh"

#ifndef GDR_EMULATE
#include "core/cuda/cuda_check.h"
#else
#include <cstring>
#include <functional>
#endif

namespace seqmix::mixers::gdr_cuda {

#ifdef GDR_EMULATE
void emu_launch(dim3 grid, int threads, size_t smem, const std::function<void()>& body);  // the harness's
#endif

__host__ __device__ constexpr size_t align128(size_t x) { return (x + 127) & ~size_t(127); }
using tc::fromf;
using tc::tof;

constexpr int kCh = 16;  // tokens per shared-memory chunk, and the checkpoint interval of the state
constexpr int kVs = 32;  // value columns per CTA
// The forward and the backward's value-major pass: a thread holds VT value columns x KT keys of the state (so
// each key element read from shared memory feeds VT columns); P = Dk / KT lanes share a column group; a CTA
// has NT = (kVs / VT) * P threads. A KT-key part of a work row takes KT + 4 floats, so that the parts' float4
// reads hit distinct banks. Layouts (KT x VT): 16 x 2 (default), 8 x 2, 8 x 4, 32 x 1 (Geo::kt / vt).

struct Geo {
  int B, T, H, Dk, Dv;
  int nch;      // chunks of kCh tokens: ceil(T / kCh)
  int kt, vt, kt_bwd, vt_bwd;  // thread layouts (KT x VT) of the forward and of the backward's value-major pass
  float scale;  // applied to o
};

template <class IN>
struct Ptrs {
  const IN *q, *k, *v, *a, *b;  // [B, T, H, Dk] (v: Dv)
  const float* lw;              // [B, T, H, Dk] log decays
  const float* s0;              // [B, H, Dk, Dv] or null
  IN* o;                        // [B, T, H, Dv]
  float* sa;                    // [B, T, H, Dv]: a_t . S_{t-1} per value column (null: not kept)
  float* ckpt;                  // [B, H, nch, Dk, Dv]: the state after each chunk (null: not kept)
  float* final_s;               // [B, H, Dk, Dv] or null
  const IN* dout;               // [B, T, H, Dv]
  float* dsa;                   // [B, T, H, Dv]: dL/dsa_t (backward scratch)
  float* gck;                   // [B, H, nch, Dk, Dv]: dL/dS at each chunk's last token from the tokens after it
  const float* dfinal;          // [B, H, Dk, Dv] or null
  unsigned char* part;          // per value slice (Dv / kVs): dq, dk, da, db [B, T, H, Dk] in PartT<IN>, dlw in f32
  IN* dv;                       // [B, T, H, Dv]
  float* ds0;                   // [B, H, Dk, Dv] or null
  IN *dq, *dk, *da, *db;        // [B, T, H, Dk]
  float* dlw;                   // [B, T, H, Dk]
};

// asynchronous 16-byte copies global -> shared (tc_tiles.cuh)
using tc::cp16;
using tc::cp_commit;
using tc::cp_wait_all;

__device__ __forceinline__ float shfl_xor(float x, int m) {
#ifdef GDR_EMULATE
  return emu_shfl_xor(x, m);
#else
  return __shfl_xor_sync(0xffffffffu, x, m);
#endif
}
// Sums over the P adjacent lanes that hold one column group's key parts (kVT sums interleaved).
template <int P, int VT>
__device__ __forceinline__ void part_sums(float (&x)[VT]) {
#pragma unroll
  for (int m = 1; m < P; m <<= 1)
#pragma unroll
    for (int v = 0; v < VT; ++v) x[v] += shfl_xor(x[v], m);
}
// The VT x 4 partial sums of a column group, added per column.
template <int VT>
__device__ __forceinline__ void fold4(const float (&acc)[VT][4], float (&out)[VT]) {
#pragma unroll
  for (int v = 0; v < VT; ++v) out[v] = (acc[v][0] + acc[v][1]) + (acc[v][2] + acc[v][3]);
}

// ---- shared memory: f32 work rows of the current chunk, and two raw slots the next chunk copies into ----
template <class IN, int DK, bool BWD, int KT, int VT>
struct Lay {
  static constexpr int PAD = KT + 4;    // floats per KT-key part of a work row
  static constexpr int P = DK / KT;     // key parts (one per lane of a column group)
  static constexpr int NT = (kVs / VT) * P;  // threads
  static constexpr int KP = P * PAD;    // padded work row of DK keys
  static_assert(P <= 32 && NT % 32 == 0 && NT <= 1024, "layout");
  // work: q, k, w, a, b [kCh][KP]; the value row [kCh][kVs]: v (bwd: do * scale)
  static constexpr size_t work = size_t(5 * kCh * KP + kCh * kVs) * 4;
  // raw slot: q, k, a, b [kCh][DK] IN; lw [kCh][DK] f32; v (bwd: do) [kCh][kVs] IN
  static constexpr size_t rkey = size_t(kCh) * DK * sizeof(IN), rlw = size_t(kCh) * DK * 4;
  static constexpr size_t rval = size_t(kCh) * kVs * sizeof(IN);
  static constexpr size_t slot = align128(4 * rkey + rlw + rval);
  static constexpr size_t total = align128(work) + 2 * slot;
};

// The element type of the value slices' partial per-key gradients: 16-bit inputs keep them in their own type
// (their sum is rounded to it anyway; half the bytes of the largest scratch buffer), f32 inputs in f32. dlw's
// partials are f32 always.
template <class IN>
using PartT = std::conditional_t<sizeof(IN) == 2, IN, float>;
// Byte offset of plane m (0 dq, 1 dk, 2 da, 3 db, 4 dlw) of value slice q, n elements per plane.
template <class IN>
__host__ __device__ __forceinline__ int64_t part_offset(int q, int m, int64_t n) {
  return (int64_t(q) * (4 * sizeof(PartT<IN>) + 4) + int64_t(m) * sizeof(PartT<IN>)) * n;
}

__device__ __forceinline__ int64_t tok(const Geo& g, int b, int t, int h) { return (int64_t(b) * g.T + t) * g.H + h; }
__device__ __forceinline__ int imin(int x, int y) { return x < y ? x : y; }

// Issues the copies of chunk c (tokens c * kCh .. + n) into a raw slot: q, k, a, b, lw rows of the head, the
// CTA's value columns of v (bwd: of dout).
template <class IN, int DK, bool BWD, int KT, int VT>
__device__ __forceinline__ void issue_chunk(const Geo& g, const Ptrs<IN>& p, unsigned char* slot, int b, int h, int v0,
                                            int c) {
  using L = Lay<IN, DK, BWD, KT, VT>;
  const int t0 = c * kCh, n = imin(kCh, g.T - t0);
  constexpr int kk = int(DK * sizeof(IN) / 16), kl = DK * 4 / 16, kv = int(kVs * sizeof(IN) / 16);
  const IN* keys[4] = {p.q, p.k, p.a, p.b};
  for (int e = int(threadIdx.x); e < n * kk; e += L::NT) {
    const int t = e / kk, pc = e % kk;
    const int64_t src = tok(g, b, t0 + t, h) * DK;
#pragma unroll
    for (int m = 0; m < 4; ++m)
      cp16(slot + m * L::rkey + size_t(t) * DK * sizeof(IN) + pc * 16,
           reinterpret_cast<const unsigned char*>(keys[m] + src) + pc * 16);
  }
  for (int e = int(threadIdx.x); e < n * kl; e += L::NT) {
    const int t = e / kl, pc = e % kl;
    cp16(slot + 4 * L::rkey + size_t(t) * DK * 4 + pc * 16, p.lw + tok(g, b, t0 + t, h) * DK + pc * 4);
  }
  unsigned char* vs = slot + 4 * L::rkey + L::rlw;
  const IN* vsrc = BWD ? p.dout : p.v;
  for (int e = int(threadIdx.x); e < n * kv; e += L::NT) {
    const int t = e / kv, pc = e % kv;
    const int64_t src = tok(g, b, t0 + t, h) * g.Dv + v0;
    cp16(vs + size_t(t) * kVs * sizeof(IN) + pc * 16, reinterpret_cast<const unsigned char*>(vsrc + src) + pc * 16);
  }
  cp_commit();
}

// Converts a landed raw slot (n tokens) to the f32 work rows: w = e^{lw}, do scaled by g.scale.
template <class IN, int DK, bool BWD, int KT, int VT>
__device__ __forceinline__ void convert_chunk(const Geo& g, const unsigned char* slot, float* work, int n) {
  using L = Lay<IN, DK, BWD, KT, VT>;
  const IN* rk[4] = {reinterpret_cast<const IN*>(slot), reinterpret_cast<const IN*>(slot + L::rkey),
                     reinterpret_cast<const IN*>(slot + 2 * L::rkey), reinterpret_cast<const IN*>(slot + 3 * L::rkey)};
  const float* rlw = reinterpret_cast<const float*>(slot + 4 * L::rkey);
  // work rows: 0 q, 1 k, 2 w, 3 a, 4 b
  for (int e = int(threadIdx.x); e < n * DK; e += L::NT) {
    const int t = e / DK, j = e % DK, col = t * L::KP + (j / KT) * L::PAD + j % KT;
    work[col] = tof(rk[0][e]);
    work[kCh * L::KP + col] = tof(rk[1][e]);
    work[2 * kCh * L::KP + col] = __expf(rlw[e]);
    work[3 * kCh * L::KP + col] = tof(rk[2][e]);
    work[4 * kCh * L::KP + col] = tof(rk[3][e]);
  }
  const IN* rv = reinterpret_cast<const IN*>(slot + 4 * L::rkey + L::rlw);
  float* wv = work + 5 * kCh * L::KP;
  for (int e = int(threadIdx.x); e < n * kVs; e += L::NT) wv[e] = BWD ? tof(rv[e]) * g.scale : tof(rv[e]);
}

// A thread's KT x VT block of a [Dk, Dv] f32 matrix m (its rows p*KT + jj, columns i0 + v), read (zeros when
// m is null) or written.
template <int KT, int VT>
__device__ __forceinline__ void load_block(float (&x)[VT][KT], const float* m, int Dv, int pp, int i0) {
#pragma unroll
  for (int jj = 0; jj < KT; ++jj)
#pragma unroll
    for (int v = 0; v < VT; ++v) x[v][jj] = m ? m[int64_t(pp * KT + jj) * Dv + i0 + v] : 0.f;
}
template <int KT, int VT>
__device__ __forceinline__ void store_block(const float (&x)[VT][KT], float* m, int Dv, int pp, int i0) {
#pragma unroll
  for (int jj = 0; jj < KT; ++jj)
#pragma unroll
    for (int v = 0; v < VT; ++v) m[int64_t(pp * KT + jj) * Dv + i0 + v] = x[v][jj];
}

// ================================ forward ================================
// CTA (value slice, head, batch), NT threads: thread (column group c = tid / P, part p = tid % P) holds
// S[p*kKT + jj][v0 + c*kVT + v], jj < kKT, v < kVT, in registers; per token: sa = a . S (P-lane sums),
// S = w S + b sa + k v, o = scale q . S.
template <class IN, int DK, int KT, int VT>
__global__ void __launch_bounds__((kVs / VT) * (DK / KT)) gdr_fwd(Geo g, Ptrs<IN> p) {
  using L = Lay<IN, DK, false, KT, VT>;
  constexpr int P = L::P, KP = L::KP, kKT = KT, kVT = VT, kPad = L::PAD;
  TC_SMEM(smem);
  float* work = reinterpret_cast<float*>(smem);
  unsigned char* slots = smem + align128(L::work);
  const int sl = int(blockIdx.x), h = int(blockIdx.y), b = int(blockIdx.z), v0 = sl * kVs;
  const int tid = int(threadIdx.x), i0 = (tid / P) * kVT, pp = tid % P;
  const int64_t bh = int64_t(b) * g.H + h;
  const int64_t mat = int64_t(DK) * g.Dv;  // one [Dk, Dv] state
  float S[kVT][kKT];
  load_block<kKT, kVT>(S, p.s0 ? p.s0 + bh * mat + v0 : nullptr, g.Dv, pp, i0);
  issue_chunk<IN, DK, false, KT, VT>(g, p, slots, b, h, v0, 0);
  for (int c = 0; c < g.nch; ++c) {
    const int t0 = c * kCh, n = imin(kCh, g.T - t0);
    cp_wait_all();
    __syncthreads();  // chunk c landed for every thread; chunk c - 1's reads of the work rows are done
    convert_chunk<IN, DK, false, KT, VT>(g, slots + (c & 1) * L::slot, work, n);
    __syncthreads();
    if (c + 1 < g.nch) issue_chunk<IN, DK, false, KT, VT>(g, p, slots + ((c + 1) & 1) * L::slot, b, h, v0, c + 1);
    for (int tt = 0; tt < n; ++tt) {
      const float* row = work + tt * KP + pp * kPad;
      const float *qr = row, *kr = row + kCh * KP, *wr = row + 2 * kCh * KP, *ar = row + 3 * kCh * KP,
                  *br = row + 4 * kCh * KP;
      float acc[kVT][4] = {}, sa[kVT], o[kVT], vi[kVT];
#pragma unroll
      for (int jj = 0; jj < kKT; jj += 4) {
        const float4 a4 = *reinterpret_cast<const float4*>(ar + jj);
        const float av[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int v = 0; v < kVT; ++v) acc[v][u] = fmaf(av[u], S[v][jj + u], acc[v][u]);
      }
      fold4(acc, sa);
      part_sums<P, kVT>(sa);
#pragma unroll
      for (int v = 0; v < kVT; ++v) {
        vi[v] = work[5 * kCh * KP + tt * kVs + i0 + v];
#pragma unroll
        for (int u = 0; u < 4; ++u) acc[v][u] = 0.f;
      }
#pragma unroll
      for (int jj = 0; jj < kKT; jj += 4) {
        const float4 w4 = *reinterpret_cast<const float4*>(wr + jj), b4 = *reinterpret_cast<const float4*>(br + jj),
                     k4 = *reinterpret_cast<const float4*>(kr + jj), q4 = *reinterpret_cast<const float4*>(qr + jj);
        const float wv[4] = {w4.x, w4.y, w4.z, w4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w}, kv[4] = {k4.x, k4.y, k4.z, k4.w},
                    qv[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int v = 0; v < kVT; ++v) {
            S[v][jj + u] = fmaf(S[v][jj + u], wv[u], fmaf(sa[v], bv[u], vi[v] * kv[u]));
            acc[v][u] = fmaf(qv[u], S[v][jj + u], acc[v][u]);
          }
      }
      fold4(acc, o);
      part_sums<P, kVT>(o);
      if (pp == 0) {
        const int64_t at = tok(g, b, t0 + tt, h) * g.Dv + v0 + i0;
#pragma unroll
        for (int v = 0; v < kVT; ++v) {
          p.o[at + v] = fromf<IN>(o[v] * g.scale);
          if (p.sa) p.sa[at + v] = sa[v];
        }
      }
    }
    if (p.ckpt) store_block<kKT, kVT>(S, p.ckpt + (bh * g.nch + c) * mat + v0, g.Dv, pp, i0);
  }
  if (p.final_s) store_block<kKT, kVT>(S, p.final_s + bh * mat + v0, g.Dv, pp, i0);
}

// ================================ backward ================================
// Two kernels. G = dL/dS_t (after o_t's term); G_T = d final state.
// gdr_bwd_seq, CTA (value slice, head, batch), chunks in reverse, G value-major as the forward's S
//   (G[p*kKT + jj][v0 + c*kVT + v]): per token (reverse) G += q do_i; dsa_i = b . G, dv_i = k . G (P-lane sums);
//   G = w G + a dsa_i. Writes dsa, dv, and G as it enters each chunk's last token (gck): the sequential part.
// gdr_bwd_keys, CTA (chunk, value slice, head, batch), all chunks at once: thread j holds G[j][v0 + i] (from gck)
//   and S[j][v0 + i] (from the checkpoint), i < 32, and walks the chunk backwards:
//     G += q_j do;  dq_j = S_t . do;  S_{t-1} = (S_t - b_j sa - k_j v) / w_j;  dw_j = G . S_{t-1};
//     db_j = G . sa;  dk_j = G . v;  da_j = S_{t-1} . dsa;  G = w_j G + a_j dsa
//   writing the slice's dq, dk, da, db, dlw = w dw to `part` (gdr_finish sums the slices). At the chunk's first
//   token S_{t-1} is the exact state before the chunk (a checkpoint, the initial state or 0), so inverted steps
//   never drift across chunks; chunk 0's last G is d initial state.
template <class IN, int DK, int KT, int VT>
__global__ void __launch_bounds__((kVs / VT) * (DK / KT)) gdr_bwd_seq(Geo g, Ptrs<IN> p) {
  using L = Lay<IN, DK, true, KT, VT>;
  constexpr int P = L::P, KP = L::KP, kKT = KT, kVT = VT, kPad = L::PAD;
  TC_SMEM(smem);
  float* work = reinterpret_cast<float*>(smem);
  const float* wdo = work + 5 * kCh * KP;  // do * scale
  unsigned char* slots = smem + align128(L::work);
  const int sl = int(blockIdx.x), h = int(blockIdx.y), b = int(blockIdx.z), v0 = sl * kVs;
  const int tid = int(threadIdx.x), i0 = (tid / P) * kVT, pp = tid % P;
  const int64_t bh = int64_t(b) * g.H + h;
  const int64_t mat = int64_t(DK) * g.Dv;  // one [Dk, Dv] state
  float Gv[kVT][kKT];
  load_block<kKT, kVT>(Gv, p.dfinal ? p.dfinal + bh * mat + v0 : nullptr, g.Dv, pp, i0);
  issue_chunk<IN, DK, true, KT, VT>(g, p, slots, b, h, v0, g.nch - 1);
  for (int c = g.nch - 1, it = 0; c >= 0; --c, ++it) {
    const int t0 = c * kCh, n = imin(kCh, g.T - t0);
    store_block<kKT, kVT>(Gv, p.gck + (bh * g.nch + c) * mat + v0, g.Dv, pp, i0);  // G entering the chunk's last token
    cp_wait_all();
    __syncthreads();  // chunk c landed; chunk c + 1's reads of the work rows are done
    convert_chunk<IN, DK, true, KT, VT>(g, slots + (it & 1) * L::slot, work, n);
    __syncthreads();
    if (c > 0) issue_chunk<IN, DK, true, KT, VT>(g, p, slots + ((it + 1) & 1) * L::slot, b, h, v0, c - 1);
    for (int tt = n - 1; tt >= 0; --tt) {
      const float* row = work + tt * KP + pp * kPad;
      const float *qr = row, *kr = row + kCh * KP, *wr = row + 2 * kCh * KP, *ar = row + 3 * kCh * KP,
                  *br = row + 4 * kCh * KP;
      float doi[kVT], dsa[kVT], dvi[kVT], ds[kVT][4] = {}, dvp[kVT][4] = {};
#pragma unroll
      for (int v = 0; v < kVT; ++v) doi[v] = wdo[tt * kVs + i0 + v];
#pragma unroll
      for (int jj = 0; jj < kKT; jj += 4) {
        const float4 q4 = *reinterpret_cast<const float4*>(qr + jj), b4 = *reinterpret_cast<const float4*>(br + jj),
                     k4 = *reinterpret_cast<const float4*>(kr + jj);
        const float qv[4] = {q4.x, q4.y, q4.z, q4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w}, kv[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int v = 0; v < kVT; ++v) {
            Gv[v][jj + u] = fmaf(doi[v], qv[u], Gv[v][jj + u]);
            ds[v][u] = fmaf(bv[u], Gv[v][jj + u], ds[v][u]);
            dvp[v][u] = fmaf(kv[u], Gv[v][jj + u], dvp[v][u]);
          }
      }
      fold4(ds, dsa);
      fold4(dvp, dvi);
      part_sums<P, kVT>(dsa);
      part_sums<P, kVT>(dvi);
#pragma unroll
      for (int jj = 0; jj < kKT; jj += 4) {
        const float4 w4 = *reinterpret_cast<const float4*>(wr + jj), a4 = *reinterpret_cast<const float4*>(ar + jj);
        const float wq[4] = {w4.x, w4.y, w4.z, w4.w}, av[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int v = 0; v < kVT; ++v) Gv[v][jj + u] = fmaf(wq[u], Gv[v][jj + u], av[u] * dsa[v]);
      }
      if (pp == 0) {
        const int64_t at = tok(g, b, t0 + tt, h) * g.Dv + v0 + i0;
#pragma unroll
        for (int v = 0; v < kVT; ++v) {
          p.dsa[at + v] = dsa[v];
          p.dv[at + v] = fromf<IN>(dvi[v]);
        }
      }
    }
  }
}

// Shared memory of gdr_bwd_keys: v, do * scale, sa, dsa rows of the chunk [kCh][kVs], then q, k, w, a, b
// [kCh][DK], all f32.
template <int DK>
constexpr size_t kKeysSmem = size_t(4 * kCh * kVs + 5 * kCh * DK) * 4;

template <class IN, int DK>
__global__ void __launch_bounds__(DK, 4) gdr_bwd_keys(Geo g, Ptrs<IN> p) {
  TC_SMEM(smem);
  float* vals = reinterpret_cast<float*>(smem);
  const int nsl = g.Dv / kVs;
  const int c = int(blockIdx.x) / nsl, sl = int(blockIdx.x) % nsl, h = int(blockIdx.y), b = int(blockIdx.z);
  const int v0 = sl * kVs, t0 = c * kCh, n = imin(kCh, g.T - t0), j = int(threadIdx.x);
  const int64_t bh = int64_t(b) * g.H + h, BTHK = int64_t(g.B) * g.T * g.H * DK;
  // The chunk's v, do * scale, sa, dsa columns and this thread's key of every token: all loads of a batch are
  // issued (into registers) before any is stored, so the CTA waits for one memory round trip, not one per token.
  {
    constexpr int per = 4 * kCh * kVs / DK;  // value elements per thread; the row r of element q is q / (per / 4)
    float x[per];
#pragma unroll
    for (int q = 0; q < per; ++q) {
      const int e = j + q * DK, r = q / (per / 4), t = (e / kVs) % kCh, i = e % kVs;
      const int64_t at = tok(g, b, t0 + imin(t, n - 1), h) * g.Dv + v0 + i;
      x[q] = r == 0 ? tof(p.v[at]) : r == 1 ? tof(p.dout[at]) * g.scale : r == 2 ? p.sa[at] : p.dsa[at];
    }
#pragma unroll
    for (int q = 0; q < per; ++q) vals[j + q * DK] = x[q];
  }
  float* keys = vals + 4 * kCh * kVs;  // [5][kCh][DK]: q, k, w, a, b
  {
    float x[5][kCh];
#pragma unroll
    for (int t = 0; t < kCh; ++t) {
      const int64_t at = tok(g, b, t0 + imin(t, n - 1), h) * DK + j;
      x[0][t] = tof(p.q[at]);
      x[1][t] = tof(p.k[at]);
      x[2][t] = p.lw[at];
      x[3][t] = tof(p.a[at]);
      x[4][t] = tof(p.b[at]);
    }
#pragma unroll
    for (int t = 0; t < kCh; ++t)
#pragma unroll
      for (int m = 0; m < 5; ++m) keys[(m * kCh + t) * DK + j] = m == 2 ? __expf(x[m][t]) : x[m][t];
  }
  float G[kVs], S[kVs];
  auto load_row = [&](float (&dst)[kVs], const float* src) {  // row j of a [Dk, Dv] f32 matrix, the CTA's columns
#pragma unroll
    for (int u = 0; u < kVs; u += 4) {
      const float4 x = *reinterpret_cast<const float4*>(src + int64_t(j) * g.Dv + v0 + u);
      dst[u] = x.x;
      dst[u + 1] = x.y;
      dst[u + 2] = x.z;
      dst[u + 3] = x.w;
    }
  };
  load_row(G, p.gck + (bh * g.nch + c) * int64_t(DK) * g.Dv);
  load_row(S, p.ckpt + (bh * g.nch + c) * int64_t(DK) * g.Dv);
  __syncthreads();
  PartT<IN>* part = reinterpret_cast<PartT<IN>*>(p.part + part_offset<IN>(sl, 0, BTHK));  // dq, dk, da, db planes
  float* part_dlw = reinterpret_cast<float*>(p.part + part_offset<IN>(sl, 4, BTHK));
  auto key_step = [&](int tt, const float* exact, bool zero) {
    const int64_t at = tok(g, b, t0 + tt, h) * DK + j;
    const float qj = keys[tt * DK + j], kj = keys[(kCh + tt) * DK + j], wj = keys[(2 * kCh + tt) * DK + j],
                aj = keys[(3 * kCh + tt) * DK + j], bj = keys[(4 * kCh + tt) * DK + j];
    const float rw = 1.f / wj;
    const float *vr = vals + tt * kVs, *dor = vals + (kCh + tt) * kVs, *sar = vals + (2 * kCh + tt) * kVs,
                *dsr = vals + (3 * kCh + tt) * kVs;
    float dq = 0.f, dk = 0.f, dw = 0.f, da = 0.f, db = 0.f;
#pragma unroll
    for (int u0 = 0; u0 < kVs; u0 += 4) {
      const float4 v4 = *reinterpret_cast<const float4*>(vr + u0), d4 = *reinterpret_cast<const float4*>(dor + u0),
                   s4 = *reinterpret_cast<const float4*>(sar + u0), z4 = *reinterpret_cast<const float4*>(dsr + u0);
      const float vv[4] = {v4.x, v4.y, v4.z, v4.w}, dd[4] = {d4.x, d4.y, d4.z, d4.w}, ss[4] = {s4.x, s4.y, s4.z, s4.w},
                  zz[4] = {z4.x, z4.y, z4.z, z4.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int x = u0 + u;
        G[x] = fmaf(qj, dd[u], G[x]);
        dq = fmaf(S[x], dd[u], dq);
        const float sp = exact ? exact[x] : zero ? 0.f : fmaf(-kj, vv[u], fmaf(-bj, ss[u], S[x])) * rw;
        dw = fmaf(G[x], sp, dw);
        db = fmaf(G[x], ss[u], db);
        dk = fmaf(G[x], vv[u], dk);
        da = fmaf(sp, zz[u], da);
        G[x] = fmaf(wj, G[x], aj * zz[u]);
        S[x] = sp;
      }
    }
    part[at] = fromf<PartT<IN>>(dq);
    part[BTHK + at] = fromf<PartT<IN>>(dk);
    part[2 * BTHK + at] = fromf<PartT<IN>>(da);
    part[3 * BTHK + at] = fromf<PartT<IN>>(db);
    part_dlw[at] = dw * wj;
  };
  for (int tt = n - 1; tt >= 1; --tt) key_step(tt, nullptr, false);
  const float* exact = c > 0    ? p.ckpt + (bh * g.nch + c - 1) * int64_t(DK) * g.Dv + int64_t(j) * g.Dv + v0
                       : p.s0 ? p.s0 + (bh * DK + j) * g.Dv + v0
                              : nullptr;
  key_step(0, exact, exact == nullptr);
  if (c == 0 && p.ds0) {
#pragma unroll
    for (int u = 0; u < kVs; u += 4)
      *reinterpret_cast<float4*>(p.ds0 + (bh * DK + j) * g.Dv + v0 + u) = make_float4(G[u], G[u + 1], G[u + 2], G[u + 3]);
  }
}

// Sums the value slices' per-key gradients: dq, dk, da, db in IN, dlw in f32 (fixed order: deterministic).
template <class IN>
__global__ void gdr_finish(int64_t n, int nsl, Ptrs<IN> p) {
#ifdef GDR_EMULATE
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
#else
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
#endif
    float s[5] = {0.f, 0.f, 0.f, 0.f, 0.f};
    for (int q = 0; q < nsl; ++q) {
#pragma unroll
      for (int m = 0; m < 4; ++m) s[m] += tof(reinterpret_cast<const PartT<IN>*>(p.part + part_offset<IN>(q, m, n))[e]);
      s[4] += reinterpret_cast<const float*>(p.part + part_offset<IN>(q, 4, n))[e];
    }
    p.dq[e] = fromf<IN>(s[0]);
    p.dk[e] = fromf<IN>(s[1]);
    p.da[e] = fromf<IN>(s[2]);
    p.db[e] = fromf<IN>(s[3]);
    p.dlw[e] = s[4];
  }
}

// ================================ launches ================================
#ifdef GDR_EMULATE
#define GDR_LAUNCH(name, kern, grid, threads, smem, st, ...) \
  ::seqmix::mixers::gdr_cuda::emu_launch(grid, threads, smem, [&] { kern(__VA_ARGS__); })
#else
#define GDR_LAUNCH(name, kern, grid, threads, smem, st, ...)                                                     \
  do {                                                                                                           \
    auto* gk_ = kern;                                                                                            \
    if ((smem) > 48 * 1024)                                                                                      \
      SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(gk_, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));     \
    gk_<<<grid, threads, smem, st>>>(__VA_ARGS__);                                                               \
    SEQMIX_CUDA_CHECK_LAUNCH(name);                                                                              \
  } while (0)
#endif

// The most shared memory any layout takes (KT = 8 pads its rows the most).
template <class IN>
inline size_t max_smem(int Dk) {
  switch (Dk) {
    case 32: return Lay<IN, 32, true, 8, 4>::total;
    case 64: return Lay<IN, 64, true, 8, 4>::total;
    default: return Lay<IN, 128, true, 8, 4>::total;
  }
}

template <class IN, int DK, int KT, int VT>
void forward_dk(const Geo& g, const Ptrs<IN>& p, cudaStream_t st) {
  using L = Lay<IN, DK, false, KT, VT>;
  const dim3 grid(unsigned(g.Dv / kVs), unsigned(g.H), unsigned(g.B));
  GDR_LAUNCH("generalized_delta fwd", (gdr_fwd<IN, DK, KT, VT>), grid, L::NT, L::total, st, g, p);
}

template <class IN, int DK, int KT, int VT>
void backward_dk(const Geo& g, const Ptrs<IN>& p, cudaStream_t st) {
  using L = Lay<IN, DK, true, KT, VT>;
  const dim3 grid(unsigned(g.Dv / kVs), unsigned(g.H), unsigned(g.B));
  GDR_LAUNCH("generalized_delta bwd_seq", (gdr_bwd_seq<IN, DK, KT, VT>), grid, L::NT, L::total, st, g, p);
  const dim3 cgrid(unsigned(int64_t(g.nch) * (g.Dv / kVs)), unsigned(g.H), unsigned(g.B));
  GDR_LAUNCH("generalized_delta bwd_keys", (gdr_bwd_keys<IN, DK>), cgrid, DK, kKeysSmem<DK>, st, g, p);
  const int64_t n = int64_t(g.B) * g.T * g.H * DK;
#ifdef GDR_EMULATE
  const dim3 fg(1, 1, 1);
#else
  const dim3 fg(unsigned((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096), 1, 1);
#endif
  GDR_LAUNCH("generalized_delta finish", (gdr_finish<IN>), fg, 256, size_t(0), st, n, g.Dv / kVs, p);
}

// Calls f.template operator()<DK, KT, VT>() for g.Dk and the layout kt x vt (16 x 2 when not one of the four).
template <class F>
void dispatch_shape(const Geo& g, int kt, int vt, F&& f) {
  auto by_layout = [&]<int DK>() {
    if (kt == 8 && vt == 2) f.template operator()<DK, 8, 2>();
    else if (kt == 8 && vt == 4) f.template operator()<DK, 8, 4>();
    else if (kt == 32 && vt == 1) f.template operator()<DK, 32, 1>();
    else f.template operator()<DK, 16, 2>();
  };
  if (g.Dk == 32) by_layout.template operator()<32>();
  else if (g.Dk == 64) by_layout.template operator()<64>();
  else by_layout.template operator()<128>();
}

// Forward: q, k, v, a, b, lw, s0 (or null) in; o, final_s, and for the backward sa and ckpt out.
template <class IN>
void forward(const Geo& g, const Ptrs<IN>& p, cudaStream_t st) {
  dispatch_shape(g, g.kt, g.vt, [&]<int DK, int KT, int VT>() { forward_dk<IN, DK, KT, VT>(g, p, st); });
}

// Backward: the forward's inputs, sa, ckpt, dout and dfinal (or null) in; dsa, gck and part as scratch; dq, dk,
// dv, da, db, dlw, ds0 (or null) out.
template <class IN>
void backward(const Geo& g, const Ptrs<IN>& p, cudaStream_t st) {
  dispatch_shape(g, g.kt_bwd, g.vt_bwd, [&]<int DK, int KT, int VT>() { backward_dk<IN, DK, KT, VT>(g, p, st); });
}

}  // namespace seqmix::mixers::gdr_cuda
