// Kernel bodies and launch sequences of the chunked generalized delta rule (rwkv7's time mix; the algorithm and the
// gradients are in generalized_delta_chunked.cu's header comment). Built on the delta rule's tiles, walks and
// loads (delta_rule_cuda.cuh), whose two sequential kernels it reuses (fwd_state / bwd_state with DplrPtrs).
// Included by generalized_delta_chunked.cu and, with DELTA_EMULATE defined, by the CPU emulation
// scripts/dplr_emulate.cc.
//
// Shapes: C = 64; G is the inclusive cumulative log decay inside a chunk, per key (f32, row stride Dk + 4). The
// decay bound lw >= -0.61 keeps every e^{+-G} inside [e^-39.1, e^39.1], so the pairwise decays e^{G_t - G_s} are
// formed as products of an e^{+G} and an e^{-G} side (no sub-chunks), in f32 or bf16 (both have f32's exponent range).
#pragma once
#include "layers/mixers/common/delta_rule_cuda.cuh"

namespace seqmix::mixers::delta_cuda {

// ---- shared-memory layouts (bytes) ----
__host__ __device__ inline size_t gen_cumlog_bytes(const Geo& g) { return size_t(g.C) * (g.Dk + 4) * 4; }
// The kWideThreads kernels (fwd_out, bwd_val, bwd_key) take the tiles of their C x D products in horizontal pairs
// (mm_vec4<OP, true>: A's fragments loaded once for two tiles, two mma chains interleaved; rwkv7 fwd+bwd 4.14 -> 4.08 ms
// at B=4 T=4096 H=16 D=128 on the H100). Their per-warp f32 scratch tiles: on the GPU every epilogue of
// theirs runs from the registers (tc::for_quads), so only the emulation's epilogues go through them and take the space.
__host__ __device__ inline size_t emu_scratch(Bump& m) {
#ifdef DELTA_EMULATE
  return m.take(size_t(kWideThreads / 32) * kScrTile * 4);
#else
  (void)m;
  return 0;
#endif
}

template <class OP>
struct LayGenPrep {  // G, then A (f32; then M = T L_ak), T, L_ak in its space; Ae, Bi (then V), Ki
  size_t G, Ae, Bi, Ki, A, T, L, scr, total;
  __host__ __device__ explicit LayGenPrep(const Geo& g) {
    const Ld l(g);
    Bump m;
    const size_t kb = size_t(g.C) * l.k * sizeof(OP), vb = size_t(g.C) * l.v * sizeof(OP);
    const size_t af = size_t(g.C) * l.cf * 4, mb = size_t(g.C) * l.c * sizeof(OP);
    Bump a;  // A, T, L_ak: formed once G is dead (two CTAs per SM at Dk = Dv = 128)
    A = a.take(af > mb ? af : mb);
    T = a.take(mb);
    L = a.take(mb);
    G = m.take(gen_cumlog_bytes(g) > a.o ? gen_cumlog_bytes(g) : a.o);
    Ae = m.take(kb);
    Bi = m.take(kb > vb ? kb : vb);
    Ki = m.take(kb);
    scr = m.take(size_t(kThreads / 32) * kScrTile * 4);
    total = m.o;
  }
};
template <class OP>
struct LayGenOut {  // fwd_out: G, Qe, Bi, Ki, P_b, P_k, S_n, U', V
  size_t G, Qe, Bi, Ki, Pb, Pk, Sn, Up, V, scr, total;
  __host__ __device__ explicit LayGenOut(const Geo& g) {
    const Ld l(g);
    Bump m;
    const size_t kb = size_t(g.C) * l.k * sizeof(OP), vb = size_t(g.C) * l.v * sizeof(OP), cb = size_t(g.C) * l.c * sizeof(OP);
    G = m.take(gen_cumlog_bytes(g));
    Qe = m.take(kb);
    Bi = m.take(kb);
    Ki = m.take(kb);
    Pb = m.take(cb);
    Pk = m.take(cb);
    Sn = m.take(size_t(g.Dk) * l.v * sizeof(OP));
    Up = m.take(vb);
    V = m.take(vb);
    scr = emu_scratch(m);
    total = m.o;
  }
};
template <class OP>
struct LayGenBwdPrep {  // Qe, Bi, P_b, dO
  size_t Qe, Bi, Pb, dO, scr, total;
  __host__ __device__ explicit LayGenBwdPrep(const Geo& g) {
    const Ld l(g);
    Bump m;
    Qe = m.take(size_t(g.C) * l.k * sizeof(OP));
    Bi = m.take(size_t(g.C) * l.k * sizeof(OP));
    Pb = m.take(size_t(g.C) * l.c * sizeof(OP));
    dO = m.take(size_t(g.C) * l.v * sizeof(OP));
    scr = m.take(size_t(kThreads / 32) * kScrTile * 4);
    total = m.o;
  }
};
template <class OP>
struct LayGenVal {  // bwd_val: T, dU', dX, Qe then dO, Ae then U', Ki, V, dS', P_k and L_ak then Bi, e^{G_C}
  size_t T, dU, dX, QO, AU, Ki, V, dS, Pk, Lak, gam, gacc, prod, scr, total;
  __host__ __device__ explicit LayGenVal(const Geo& g) {
    const Ld l(g);
    Bump m;
    const size_t kb = size_t(g.C) * l.k * sizeof(OP), vb = size_t(g.C) * l.v * sizeof(OP), cb = size_t(g.C) * l.c * sizeof(OP);
    T = m.take(cb);
    dU = m.take(vb);
    dX = m.take(vb);
    QO = m.take(kb > vb ? kb : vb);
    AU = m.take(kb > vb ? kb : vb);
    Ki = m.take(kb);
    V = m.take(vb);
    dS = m.take(size_t(g.Dk) * l.v * sizeof(OP));
    Pk = m.take(2 * cb > kb ? 2 * cb : kb);
    Lak = Pk + cb;
    gam = m.take(size_t(g.Dk) * 4);
    gacc = m.take(size_t(g.Dk) * 4);
    prod = m.take(size_t(g.C) * (g.Dk + 4) * 4);
    scr = emu_scratch(m);
    total = m.o;
  }
};
template <class OP>
struct LayGenKey {  // bwd_key: dP_b, dP_k, dL_ab, dL_ak, Qe, Ae, Bi, Ki, S_n, dO then dX, G, dG (f32)
  size_t dL, Qe, Ae, Bi, Ki, Sn, dOX, G, dG, scr, total;
  __host__ __device__ explicit LayGenKey(const Geo& g) {
    const Ld l(g);
    Bump m;
    const size_t kb = size_t(g.C) * l.k * sizeof(OP), vb = size_t(g.C) * l.v * sizeof(OP);
    dL = m.take(4 * size_t(g.C) * l.c * sizeof(OP));
    Qe = m.take(kb);
    Ae = m.take(kb);
    Bi = m.take(kb);
    Ki = m.take(kb);
    Sn = m.take(size_t(g.Dk) * l.v * sizeof(OP));
    dOX = m.take(vb);
    G = m.take(gen_cumlog_bytes(g));
    dG = m.take(gen_cumlog_bytes(g));
    scr = emu_scratch(m);  // (the 10 KB that are not taken on the GPU let it fit at Dk = Dv = 128)
    total = m.o;
  }
};

// ---- helpers ----
// G[t][j] = sum_{s <= t} lw_s[j] inside chunk c (tokens past the end count 0: they leave the state alone), in two
// steps so that the lw rows travel with the kernel's other copies: issue_cumlog puts the chunk's lw rows into G (by
// cp.async when lw is 16-byte aligned: complete after the caller's tc::cp_commit / cp_wait_all; else plain loads, done
// on return) and, after a barrier, scan_cumlog sums down each key's column (a thread per key; the caller's next barrier
// publishes the sums). Every kernel forms G the same way (the same sums in the same order).
__device__ __forceinline__ void issue_cumlog(float* G, const float* lw, const Geo& g, const Chunk& c) {
  const int ldg = g.Dk + 4;
  const float* x0 = lw + tok(g, c.b, c.t0, c.h) * g.Dk;
  const int64_t rs = int64_t(g.H) * g.Dk;
  if (reinterpret_cast<uintptr_t>(lw) % 16 == 0) {
    for_pieces_block(g.C, g.Dk / 4, [&](int t, int q) {
      if (t < c.L) tc::cp16(G + t * ldg + q * 4, x0 + t * rs + q * 4);
      else st16(G + t * ldg + q * 4, uint4{0u, 0u, 0u, 0u});
    });
  } else {
    for_pieces_block(g.C, g.Dk / 4, [&](int t, int q) {
      for (int e = 0; e < 4; ++e) G[t * ldg + q * 4 + e] = t < c.L ? x0[t * rs + q * 4 + e] : 0.f;
    });
  }
}
// scan_cumlog also writes G_C to gC[j] when gC is not null. A column goes 16 rows at a time through registers: 16 loads
// in flight at once instead of a chain of 64 load - add - store steps (C is a multiple of 16).
__device__ __forceinline__ void scan_cumlog(float* G, const Geo& g, float* gC = nullptr) {
  const int ldg = g.Dk + 4;
  for (int j = dr_tid(); j < g.Dk; j += int(blockDim.x)) {
    float s = 0.f;
    for (int t0 = 0; t0 < g.C; t0 += 16) {
      float v[16];
#pragma unroll
      for (int u = 0; u < 16; ++u) v[u] = G[(t0 + u) * ldg + j];
#pragma unroll
      for (int u = 0; u < 16; ++u) {
        s += v[u];
        v[u] = s;
      }
#pragma unroll
      for (int u = 0; u < 16; ++u) G[(t0 + u) * ldg + j] = v[u];
    }
    if (gC) gC[j] = s;
  }
}
// The chunk's C x Dk rows of NA key inputs copied as they are into the shared tiles dst[a] (row stride ld; rows past the
// end zeroed) by cp.async, where every input is the operand type and 16-byte aligned (complete after the caller's
// cp_commit / cp_wait_all and barrier); false (nothing issued) otherwise.
template <class OP, class IN, int NA>
__device__ __forceinline__ bool stage_keys(OP* const (&dst)[NA], int ld, const IN* const (&xs)[NA], const Geo& g, const Chunk& c) {
  for (int a = 0; a < NA; ++a)
    if (!cols_async_ok<OP>(xs[a], g.Dk, 0, g.Dk)) return false;
  for (int a = 0; a < NA; ++a) load_cols_async(dst[a], ld, xs[a], g, c, g.Dk, 0, g.Dk);
  return true;
}
// 4 consecutive key elements of token row t (zeros past the chunk's end).
template <class IN>
__device__ __forceinline__ void key4(const IN* x, const Geo& g, const Chunk& c, int t, int j, float (&v)[4]) {
  const bool vec = reinterpret_cast<uintptr_t>(x) % (4 * sizeof(IN)) == 0;
  ld4f_or_zero(t < c.L ? x + tok(g, c.b, c.t0 + t, c.h) * g.Dk + j : x, t < c.L, vec, v);
}
// The chunk's C x Dk key rows of NA inputs in pieces of 4 elements: f(t, j, v) with v[a][0 .. 3] = xs[a][t][j ..]
// (zeros past the end); the loads of R pieces per thread are issued before their work (one global round trip per
// batch: the compiler keeps loads behind the stores of the work before them).
template <int R, int NA, class IN, class F>
__device__ __forceinline__ void key_pieces(const IN* const (&xs)[NA], const Geo& g, const Chunk& c, F&& f) {
  const int nthr = int(blockDim.x), tid = dr_tid(), vc = g.Dk / 4, total = g.C * vc;
  for (int e0 = tid; e0 < total; e0 += R * nthr) {
    float v[R][NA][4];
#pragma unroll
    for (int u = 0; u < R; ++u) {
      int t, q;
      divmod(e0 + u * nthr < total ? e0 + u * nthr : 0, vc, t, q);
#pragma unroll
      for (int a = 0; a < NA; ++a) key4(xs[a], g, c, t, q * 4, v[u][a]);
    }
#pragma unroll
    for (int u = 0; u < R; ++u) {
      const int e = e0 + u * nthr;
      if (e >= total) break;
      int t, q;
      divmod(e, vc, t, q);
      f(t, q * 4, v[u]);
    }
  }
}
// key_pieces over the tiles staged by stage_keys when `staged` (f may overwrite its piece there in place), else over
// the inputs in global memory.
template <int R, int NA, class OP, class IN, class F>
__device__ __forceinline__ void key_pieces_staged(bool staged, OP* const (&st)[NA], int ld, const IN* const (&xs)[NA],
                                                  const Geo& g, const Chunk& c, F&& f) {
  if (!staged) {
    key_pieces<R>(xs, g, c, f);
    return;
  }
  for_pieces_block(g.C, g.Dk / 4, [&](int t, int q) {
    float v[NA][4];
#pragma unroll
    for (int a = 0; a < NA; ++a) ld4f(st[a] + t * ld + q * 4, v[a]);
    f(t, q * 4, v);
  });
}
// An output [B, T, H, D] of IN (D a multiple of 4): put(g, c, t, j, y) writes y[0 .. 3] rounded to IN into token row t,
// columns j .. j + 3 (j a multiple of 4; nothing past the chunk's end), in one store where x is aligned for it.
template <class IN>
struct TokOut {
  IN* x;
  int D;
  bool vec;
  __device__ __forceinline__ TokOut(IN* x_, int D_) : x(x_), D(D_), vec(reinterpret_cast<uintptr_t>(x_) % (4 * sizeof(IN)) == 0) {}
  __device__ __forceinline__ void put(const Geo& g, const Chunk& c, int t, int j, const float (&y)[4]) const {
    if (t >= c.L) return;
    IN* d = x + tok(g, c.b, c.t0 + t, c.h) * D + j;
    if (vec) st4op(d, y);
    else
      for (int e = 0; e < 4; ++e) d[e] = fromf<IN>(y[e]);
  }
};
// mul times a C x C product into dst (OP, row stride ldd) with the causal mask: s <= t (Incl) or s < t.
template <bool Incl, class OP, class... Terms>
__device__ __forceinline__ void mm_masked_mul(OP* dst, int ldd, const Geo& g, float* scr, float mul, const Terms&... terms) {
  mm_vec4_or<OP>(
      g.C, g.C, scr,
      [&](int t, int s, const float (&x)[4]) {
        float y[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) y[e] = (Incl ? s + e <= t : s + e < t) ? mul * x[e] : 0.f;
        st4op(dst + t * ldd + s, y);
      },
      [&](int t, int s, float x) { dst[t * ldd + s] = fromf<OP>((Incl ? s <= t : s < t) ? mul * x : 0.f); }, terms...);
}
template <bool Incl, class OP, class... Terms>
__device__ __forceinline__ void mm_masked(OP* dst, int ldd, const Geo& g, float* scr, const Terms&... terms) {
  mm_masked_mul<Incl>(dst, ldd, g, scr, 1.f, terms...);
}

// mm_vec4 whose epilogue also gets pv = part(i, j .. j + 3) of an f32 M x N tile in global memory (row stride ldp):
// epi(i, j, x, pv). On the GPU with bf16 operands each lane issues the loads of its two pieces of a tile (tc::for_quads'
// pieces: row g or g + 8, columns 8 h + 2 (t & ~1)) before the tile's products, so that they are in flight during the
// mma chain instead of stalling the epilogue; elsewhere the epilogue loads them.
template <class OP, class Epi, class... Terms>
__device__ __forceinline__ void mm_vec4_part(int M, int N, float* scr, const float* part, int ldp, Epi&& epi,
                                             const Terms&... terms) {
#ifndef DELTA_EMULATE
  if constexpr (std::is_same_v<OP, bf16>) {
    const tc::Lanes w = tc::lanes();
    const int tn = N / 16, ntiles = (M / 16) * tn, tq = w.lane & 3, c0 = 2 * (tq & ~1);
    const bool odd = (tq & 1) != 0;
    const int r = odd ? (w.lane >> 2) + 8 : w.lane >> 2;
    for (int tile = w.warp; tile < ntiles; tile += w.nwarps) {
      int i0, j0;
      tile_origin(tile, tn, i0, j0);
      float pv[2][4];
#pragma unroll
      for (int h = 0; h < 2; ++h) ld4f(part + int64_t(i0 + r) * ldp + j0 + 8 * h + c0, pv[h]);
      tc::FragC acc;
      tc::fill(acc, 0.f);
      (mma_term(acc, terms, i0, j0), ...);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float q[4];
        tc::quad_piece(acc, h, odd, q);
        epi(i0 + r, j0 + 8 * h + c0, q, pv[h]);
      }
    }
    return;
  }
#endif
  mm_vec4<OP>(
      M, N, scr,
      [&](int i, int j, const float (&x)[4]) {
        float pv[4];
        ld4f(part + int64_t(i) * ldp + j, pv);
        epi(i, j, x, pv);
      },
      terms...);
}

// ===================================== forward =====================================

// (1) per chunk: G; Ae, Bi, Ki (to global for fwd_out and the backward), Bd (in Kd), Kv, G_C; A = -L_ab (f32),
// L_ak; T = (I - L_ab)^{-1} (saved); W = -T Ae; U = (T L_ak) V (f32).
template <class IN, class OP>
__global__ void __launch_bounds__(kThreads, 2) gen_fwd_prep(Geo g, DplrPtrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayGenPrep<OP> lay(g);
  const Ld ld(g);
  float* G = reinterpret_cast<float*>(smem + lay.G);
  OP* Ae = reinterpret_cast<OP*>(smem + lay.Ae);
  OP* Bi = reinterpret_cast<OP*>(smem + lay.Bi);
  OP* Ki = reinterpret_cast<OP*>(smem + lay.Ki);
  float* A = reinterpret_cast<float*>(smem + lay.A);
  OP* T = reinterpret_cast<OP*>(smem + lay.T);
  OP* L = reinterpret_cast<OP*>(smem + lay.L);
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  OP* V = Bi;                                     // once A and L_ak are formed
  OP* M = reinterpret_cast<OP*>(smem + lay.A);    // once T is formed
  const Chunk c = chunk_of(g);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv, ldg = Dk + 4;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);
  const IN* const abk[3] = {p.a, p.b, p.k};
  OP* const abk_s[3] = {Ae, Bi, Ki};  // a, b, k as given, then (in place) Ae, Bi, Ki
  issue_cumlog(G, p.lw, g, c);
  const bool staged = stage_keys(abk_s, ld.k, abk, g, c);
  tc::cp_commit();
  tc::cp_wait_all();
  __syncthreads();
  scan_cumlog(G, g, p.gCk + key_row(g, c.b, c.h, c.n));
  __syncthreads();
  key_pieces_staged<4>(staged, abk_s, ld.k, abk, g, c, [&](int t, int j, const float (&x)[3][4]) {
    const float(&av)[4] = x[0];
    const float(&bv)[4] = x[1];
    const float(&kv)[4] = x[2];
    float ae[4], bi[4], ki[4], bd[4], kd[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float gt = G[t * ldg + j + e], gp = t > 0 ? G[(t - 1) * ldg + j + e] : 0.f, gc = G[(C - 1) * ldg + j + e];
      const float ea = dr_exp(gp), ei = dr_exp(-gt), ed = dr_exp(gc - gt);
      ae[e] = av[e] * ea, bi[e] = bv[e] * ei, ki[e] = kv[e] * ei, bd[e] = bv[e] * ed, kd[e] = kv[e] * ed;
    }
    st4op(Ae + t * ld.k + j, ae);
    st4op(Bi + t * ld.k + j, bi);
    st4op(Ki + t * ld.k + j, ki);
    const int64_t o = (row0 + t) * Dk + j;
    if (p.Ae) st4op(p.Ae + o, ae);
    st4op(p.Bi + o, bi);
    st4op(p.Ki + o, ki);
    st4op(p.Kd + o, bd);
    st4op(p.Kv + o, kd);
  });
  __syncthreads();
  mm<OP>(C, C, scr, [&](int t, int s, float x) { A[t * ld.cf + s] = s < t ? -x : 0.f; },
         term<false, true>(Ae, ld.k, Bi, ld.k, Dk));
  mm_masked<false>(L, ld.c, g, scr, term<false, true>(Ae, ld.k, Ki, ld.k, Dk));
  __syncthreads();
  load_rows(V, ld.v, p.v, g, c, Dv, 0, Dv, 1.f);
  unit_lower_inverse(A, ld.cf, C, scr);
  tri_to_op(T, ld.c, A, ld.cf, C, p.Tm ? p.Tm + row0 * C : nullptr);
  __syncthreads();
  mm_vec4_or<OP>(
      C, C, scr, [&](int t, int s, const float (&x)[4]) { st4op(M + t * ld.c + s, x); },
      [&](int t, int s, float x) { M[t * ld.c + s] = fromf<OP>(x); }, term<false, false>(T, ld.c, L, ld.c, C));
  mm_vec4<OP>(C, Dk, scr,
              [&](int t, int j, const float (&x)[4]) {
                const float y[4] = {-x[0], -x[1], -x[2], -x[3]};
                st4op(p.W + (row0 + t) * Dk + j, y);
              },
              term<false, false>(T, ld.c, Ae, ld.k, C));
  __syncthreads();
  mm_vec4<OP>(C, Dv, scr, [&](int t, int j, const float (&x)[4]) { st4op(p.U + (row0 + t) * Dv + j, x); },
              term<false, false>(M, ld.c, V, ld.v, C));
}

// (3) per chunk: O = scale (Qe S_n + P_b U' + P_k V), P_b = (Qe Bi^T) lower-inclusive, P_k = (Qe Ki^T) the same;
// Qe to global (p.Qg, when a backward will run).
template <class IN, class OP>
__global__ void __launch_bounds__(kWideThreads) gen_fwd_out(Geo g, DplrPtrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayGenOut<OP> lay(g);
  const Ld ld(g);
  float* G = reinterpret_cast<float*>(smem + lay.G);
  OP* Qe = reinterpret_cast<OP*>(smem + lay.Qe);
  OP* Bi = reinterpret_cast<OP*>(smem + lay.Bi);
  OP* Ki = reinterpret_cast<OP*>(smem + lay.Ki);
  OP* Pb = reinterpret_cast<OP*>(smem + lay.Pb);
  OP* Pk = reinterpret_cast<OP*>(smem + lay.Pk);
  OP* Sn = reinterpret_cast<OP*>(smem + lay.Sn);
  OP* Up = reinterpret_cast<OP*>(smem + lay.Up);
  OP* V = reinterpret_cast<OP*>(smem + lay.V);
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  const Chunk c = chunk_of(g);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv, ldg = Dk + 4;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);
  copy_rows_async(Sn, ld.v, p.states + state_off(g, c.b, c.h, c.n), Dk, Dv);
  copy_rows_async(Up, ld.v, p.Un + row0 * Dv, C, Dv);
  copy_rows_async(Bi, ld.k, p.Bi + row0 * Dk, C, Dk);
  copy_rows_async(Ki, ld.k, p.Ki + row0 * Dk, C, Dk);
  issue_cumlog(G, p.lw, g, c);
  const IN* const qs[1] = {p.q};
  OP* const qs_s[1] = {Qe};  // q as given, then (in place) Qe
  const bool staged = stage_keys(qs_s, ld.k, qs, g, c);
  const bool v_async = load_cols_async(V, ld.v, p.v, g, c, Dv, 0, Dv);
  tc::cp_commit();
  if (!v_async) load_rows(V, ld.v, p.v, g, c, Dv, 0, Dv, 1.f);
  tc::cp_wait_all();
  __syncthreads();
  scan_cumlog(G, g);
  __syncthreads();
  key_pieces_staged<4>(staged, qs_s, ld.k, qs, g, c, [&](int t, int j, const float (&v)[1][4]) {
    float x[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) x[e] = v[0][e] * dr_exp(G[t * ldg + j + e]);
    st4op(Qe + t * ld.k + j, x);
    if (p.Qg) st4op(p.Qg + (row0 + t) * Dk + j, x);
  });
  __syncthreads();
  mm_masked<true>(Pb, ld.c, g, scr, term<false, true>(Qe, ld.k, Bi, ld.k, Dk));
  mm_masked<true>(Pk, ld.c, g, scr, term<false, true>(Qe, ld.k, Ki, ld.k, Dk));
  __syncthreads();
  const TokOut<IN> o(p.o, Dv);
  mm_vec4<OP, true>(C, Dv, scr,
              [&](int t, int j, const float (&x)[4]) {
                const float y[4] = {g.scale * x[0], g.scale * x[1], g.scale * x[2], g.scale * x[3]};
                o.put(g, c, t, j, y);
              },
              term<false, false>(Qe, ld.k, Sn, ld.v, Dk), term<false, false>(Pb, ld.c, Up, ld.v, C),
              term<false, false>(Pk, ld.c, V, ld.v, C));
}

// ===================================== backward =====================================

// (1) per chunk: dU = P_b^T (scale dO) (the intra-chunk part of dU'), f32.
template <class IN, class OP>
__global__ void __launch_bounds__(kThreads) gen_bwd_prep(Geo g, DplrPtrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayGenBwdPrep<OP> lay(g);
  const Ld ld(g);
  OP* Qe = reinterpret_cast<OP*>(smem + lay.Qe);
  OP* Bi = reinterpret_cast<OP*>(smem + lay.Bi);
  OP* Pb = reinterpret_cast<OP*>(smem + lay.Pb);
  OP* dO = reinterpret_cast<OP*>(smem + lay.dO);
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  const Chunk c = chunk_of(g);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);
  copy_rows_async(Qe, ld.k, p.Qg + row0 * Dk, C, Dk);
  copy_rows_async(Bi, ld.k, p.Bi + row0 * Dk, C, Dk);
  tc::cp_commit();
  load_rows(dO, ld.v, p.dout, g, c, Dv, 0, Dv, g.scale);
  tc::cp_wait_all();
  __syncthreads();
  mm_masked<true>(Pb, ld.c, g, scr, term<false, true>(Qe, ld.k, Bi, ld.k, Dk));
  __syncthreads();
  mm_vec4<OP>(C, Dv, scr, [&](int t, int j, const float (&x)[4]) { st4op(p.dU + (row0 + t) * Dv + j, x); },
              term<true, false>(Pb, ld.c, dO, ld.v, C));
}

// (3) per chunk, the value side: dX = T^T dU'; dS'g = diag(e^{G_C}) dS' (rounded to OP, in place);
// dv = P_k^T dO + Ki dS'g + L_ak^T dX (complete); dP_b = dO U'^T, dP_k = dO V^T (lower-inclusive),
// dL_ab = dX U'^T, dL_ak = dX V^T (strictly lower) to global; dBg = U' dS'g^T and dKg = V dS'g^T (the S_{n+1}
// parts of dBi, dKi) start dBt, dKt; dG_C = <dS'g, S_n> + sum_t (dBg.Bi + dKg.Ki)_t per key (= <dS', S_{n+1}>,
// formed from the rounded values the products use, so that at the chunk's last token it cancels the -b.db - k.dk
// parts of the same products in bwd_key to rounding, as it does exactly: dlw = 0 at T = 1 without S_0).
// The later operands are copied while earlier products run: dO (as given, when it is the operand type: the scale
// then goes into P_k and dP_b, dP_k) and U' during the dS'g pass, Bi during the dL products.
template <class IN, class OP>
__global__ void __launch_bounds__(kWideThreads) gen_bwd_val(Geo g, DplrPtrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayGenVal<OP> lay(g);
  const Ld ld(g);
  OP* T = reinterpret_cast<OP*>(smem + lay.T);
  OP* dU = reinterpret_cast<OP*>(smem + lay.dU);
  OP* dX = reinterpret_cast<OP*>(smem + lay.dX);
  OP* QO = reinterpret_cast<OP*>(smem + lay.QO);  // Qe, then dO
  OP* AU = reinterpret_cast<OP*>(smem + lay.AU);  // Ae, then U'
  OP* Ki = reinterpret_cast<OP*>(smem + lay.Ki);
  OP* V = reinterpret_cast<OP*>(smem + lay.V);
  OP* dS = reinterpret_cast<OP*>(smem + lay.dS);
  OP* Pk = reinterpret_cast<OP*>(smem + lay.Pk);
  OP* Lak = reinterpret_cast<OP*>(smem + lay.Lak);
  OP* Bi = Pk;  // once dv is done
  float* gam = reinterpret_cast<float*>(smem + lay.gam);
  float* gacc = reinterpret_cast<float*>(smem + lay.gacc);
  float* prod = reinterpret_cast<float*>(smem + lay.prod);  // [C][Dk + 4]: dBg (.) Bi + dKg (.) Ki
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  const Chunk c = chunk_of(g);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0), bh = int64_t(c.b * g.H + c.h);
  const bool raw_dO = cols_async_ok<OP>(p.dout, Dv, 0, Dv);
  const float so = raw_dO ? g.scale : 1.f;  // the output scale still to apply to the products with dO
  copy_rows_async(T, ld.c, p.Tm + row0 * C, C, C);
  copy_rows_async(dU, ld.v, p.dUn + row0 * Dv, C, Dv);
  copy_rows_async(QO, ld.k, p.Qg + row0 * Dk, C, Dk);
  copy_rows_async(AU, ld.k, p.Ae + row0 * Dk, C, Dk);
  copy_rows_async(Ki, ld.k, p.Ki + row0 * Dk, C, Dk);
  copy_rows_async(dS, ld.v, p.dH + state_off(g, c.b, c.h, c.n), Dk, Dv);
  const bool v_async = load_cols_async(V, ld.v, p.v, g, c, Dv, 0, Dv);
  tc::cp_commit();
  if (!v_async) load_rows(V, ld.v, p.v, g, c, Dv, 0, Dv, 1.f);
  key_decays(gam, p.gCk, g, c.b, c.h, c.n);
  tc::cp_wait_all();
  __syncthreads();
  mm_vec4<OP, true>(C, Dv, scr,
              [&](int t, int j, const float (&x)[4]) {
                st4op(dX + t * ld.v + j, x);
                st4op(p.dX + (row0 + t) * Dv + j, x);
              },
              term<true, false>(T, ld.c, dU, ld.v, C));
  mm_masked_mul<true>(Pk, ld.c, g, scr, so, term<false, true>(QO, ld.k, Ki, ld.k, Dk));
  mm_masked<false>(Lak, ld.c, g, scr, term<false, true>(AU, ld.k, Ki, ld.k, Dk));
  __syncthreads();
  copy_rows_async(AU, ld.v, p.Un + row0 * Dv, C, Dv);
  if (raw_dO) load_cols_async(QO, ld.v, p.dout, g, c, Dv, 0, Dv);
  tc::cp_commit();
  if (!raw_dO) load_rows(QO, ld.v, p.dout, g, c, Dv, 0, Dv, g.scale);
  {  // dS' -> dS'g in place, and gacc[i] = <dS'g, S_n> for key row i: a warp per row, 4 elements per lane (Dv <= 128: one
     // piece each), the row sum by shuffles (deterministic); the S_n loads of kRows rows per warp issued together
    constexpr int kRows = 8;
    const tc::Lanes w = tc::lanes();
    const OP* sn = p.states + state_off(g, c.b, c.h, c.n);
    for (int i0 = w.warp; i0 < Dk; i0 += kRows * w.nwarps) {
      float dot[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) dot[r] = 0.f;
      for (int j = 4 * w.lane; j < Dv; j += 4 * w.nlanes) {
        float sv[kRows][4];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (i0 + r * w.nwarps < Dk) ld4f(sn + int64_t(i0 + r * w.nwarps) * Dv + j, sv[r]);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int i = i0 + r * w.nwarps;
          if (i >= Dk) break;
          float d[4];
          ld4f(dS + i * ld.v + j, d);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            d[e] = tof(fromf<OP>(d[e] * gam[i]));
            dot[r] += d[e] * sv[r][e];
          }
          st4op(dS + i * ld.v + j, d);
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float sum = warp_sum(dot[r], w);
        if (w.lane == 0 && i0 + r * w.nwarps < Dk) gacc[i0 + r * w.nwarps] = sum;
      }
    }
  }
  tc::cp_wait_all();
  __syncthreads();
  const TokOut<IN> dv(p.dv, Dv);
  mm_vec4<OP, true>(C, Dv, scr, [&](int t, int j, const float (&x)[4]) { dv.put(g, c, t, j, x); },
              term<true, false>(Pk, ld.c, QO, ld.v, C), term<false, false>(Ki, ld.k, dS, ld.v, Dk),
              term<true, false>(Lak, ld.c, dX, ld.v, C));
  __syncthreads();
  copy_rows_async(Bi, ld.k, p.Bi + row0 * Dk, C, Dk);
  tc::cp_commit();
  OP* dL = p.dL + (bh * g.N + c.n) * 4 * C * C;
  mm_masked_mul<true>(dL, C, g, scr, so, term<false, true>(QO, ld.v, AU, ld.v, Dv));
  mm_masked_mul<true>(dL + C * C, C, g, scr, so, term<false, true>(QO, ld.v, V, ld.v, Dv));
  mm_masked<false>(dL + 2 * C * C, C, g, scr, term<false, true>(dX, ld.v, AU, ld.v, Dv));
  mm_masked<false>(dL + 3 * C * C, C, g, scr, term<false, true>(dX, ld.v, V, ld.v, Dv));
  tc::cp_wait_all();
  __syncthreads();
  // dG_C's sums over t: the elementwise products into `prod` (a piece per lane), then a thread per key sums its column
  const int ldp = Dk + 4;
  mm_vec4<OP, true>(C, Dk, scr,
              [&](int t, int j, const float (&x)[4]) {
                float bi[4];
                ld4f(Bi + t * ld.k + j, bi);
                float* d = prod + t * ldp + j;
                d[0] = x[0] * bi[0], d[1] = x[1] * bi[1], d[2] = x[2] * bi[2], d[3] = x[3] * bi[3];
                st4op(p.dBt + (row0 + t) * Dk + j, x);
              },
              term<false, true>(AU, ld.v, dS, ld.v, Dv));
  mm_vec4<OP, true>(C, Dk, scr,
              [&](int t, int j, const float (&x)[4]) {
                float ki[4];
                ld4f(Ki + t * ld.k + j, ki);
                float* d = prod + t * ldp + j;
                d[0] += x[0] * ki[0], d[1] += x[1] * ki[1], d[2] += x[2] * ki[2], d[3] += x[3] * ki[3];
                st4op(p.dKt + (row0 + t) * Dk + j, x);
              },
              term<false, true>(V, ld.v, dS, ld.v, Dv));
  __syncthreads();
  for (int j = dr_tid(); j < Dk; j += int(blockDim.x)) {
    float s = gacc[j];
    for (int t = 0; t < C; ++t) s += prod[t * ldp + j];
    p.dGC[key_row(g, c.b, c.h, c.n) + j] = s;
  }
}

// (4) per chunk, the key side, and the per-key gradients complete:
//     dQe = dO S_n^T + dP_b Bi + dP_k Ki -> dq = e^{G_t} dQe,     dKt += dP_k^T Qe + dL_ak^T Ae -> dk = e^{-G_t} dKt,
//     dBt += dP_b^T Qe + dL_ab^T Ae -> db = e^{-G_t} dBt,         dAe = dX S_n^T + dL_ab Bi + dL_ak Ki -> da = e^{G_{t-1}} dAe;
// dG_t = Qe.dQe - Bi.dBt - Ki.dKt + Ae_{t+1}.dAe_{t+1} (the operands as the products saw them, rounded to OP) in
// shared memory: Qe.dQe, then after a barrier Bi.dBt and Ki.dKt (one walk shape, so the same thread owns (t, j) in both
// and needs no barrier between them), then after another the a-terms, shifted a row (each row written by one thread);
// then a thread per key: dlw_t = dG_C + sum_{t' >= t} dG_t'.
// dX takes dO's place once dQe is done, its copy in flight behind the dBt / dKt products.
template <class IN, class OP>
__global__ void __launch_bounds__(kWideThreads) gen_bwd_key(Geo g, DplrPtrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayGenKey<OP> lay(g);
  const Ld ld(g);
  OP* dL = reinterpret_cast<OP*>(smem + lay.dL);
  OP* Qe = reinterpret_cast<OP*>(smem + lay.Qe);
  OP* Ae = reinterpret_cast<OP*>(smem + lay.Ae);
  OP* Bi = reinterpret_cast<OP*>(smem + lay.Bi);
  OP* Ki = reinterpret_cast<OP*>(smem + lay.Ki);
  OP* Sn = reinterpret_cast<OP*>(smem + lay.Sn);
  OP* dOX = reinterpret_cast<OP*>(smem + lay.dOX);  // dO, then dX
  float* G = reinterpret_cast<float*>(smem + lay.G);
  float* dG = reinterpret_cast<float*>(smem + lay.dG);
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  const Chunk c = chunk_of(g);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv, ldg = Dk + 4;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0), bh = int64_t(c.b * g.H + c.h);
  const OP* dLg = p.dL + (bh * g.N + c.n) * 4 * C * C;
  for (int m = 0; m < 4; ++m) copy_rows_async(dL + m * C * ld.c, ld.c, dLg + m * C * C, C, C);
  copy_rows_async(Qe, ld.k, p.Qg + row0 * Dk, C, Dk);
  copy_rows_async(Ae, ld.k, p.Ae + row0 * Dk, C, Dk);
  copy_rows_async(Bi, ld.k, p.Bi + row0 * Dk, C, Dk);
  copy_rows_async(Ki, ld.k, p.Ki + row0 * Dk, C, Dk);
  copy_rows_async(Sn, ld.v, p.states + state_off(g, c.b, c.h, c.n), Dk, Dv);
  issue_cumlog(G, p.lw, g, c);
  const bool raw_dO = load_cols_async(dOX, ld.v, p.dout, g, c, Dv, 0, Dv);  // then scaled in place
  tc::cp_commit();
  if (!raw_dO) load_rows(dOX, ld.v, p.dout, g, c, Dv, 0, Dv, g.scale);
  tc::cp_wait_all();
  __syncthreads();
  scan_cumlog(G, g);
  if (raw_dO) tc::scale_tile(dOX, ld.v, C, Dv, [&](int, int) { return g.scale; });
  __syncthreads();
  const OP *dPb = dL, *dPk = dL + C * ld.c, *dLab = dL + 2 * C * ld.c, *dLak = dL + 3 * C * ld.c;
  const TokOut<IN> dq(p.dq, Dk), da(p.da, Dk), db(p.db, Dk), dk(p.dk, Dk);
  mm_vec4<OP, true>(C, Dk, scr,
              [&](int t, int j, const float (&x)[4]) {
                float qe[4], y[4], s[4];
                ld4f(Qe + t * ld.k + j, qe);
#pragma unroll
                for (int e = 0; e < 4; ++e) y[e] = x[e] * dr_exp(G[t * ldg + j + e]), s[e] = qe[e] * x[e];
                st16(dG + t * ldg + j, uint4{f2u(s[0]), f2u(s[1]), f2u(s[2]), f2u(s[3])});
                dq.put(g, c, t, j, y);
              },
              term<false, true>(dOX, ld.v, Sn, ld.v, Dv), term<false, false>(dPb, ld.c, Bi, ld.k, C),
              term<false, false>(dPk, ld.c, Ki, ld.k, C));
  __syncthreads();
  copy_rows_async(dOX, ld.v, p.dX + row0 * Dv, C, Dv);
  tc::cp_commit();
  // dBt / dKt: bwd_val's parts plus these, then db / dk and their dG terms (same walk, same owner of (t, j))
  auto finish_key = [&](const OP* xi, const TokOut<IN>& out) {
    return [=](int t, int j, const float (&x)[4], const float (&part)[4]) {
      float d[4] = {part[0], part[1], part[2], part[3]}, xs[4], y[4];
      ld4f(xi + t * ld.k + j, xs);
      float* gd = dG + t * ldg + j;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        d[e] += x[e];
        y[e] = d[e] * dr_exp(-G[t * ldg + j + e]);
        gd[e] -= xs[e] * d[e];
      }
      out.put(g, c, t, j, y);
    };
  };
  mm_vec4_part<OP>(C, Dk, scr, p.dBt + row0 * Dk, Dk, finish_key(Bi, db), term<true, false>(dPb, ld.c, Qe, ld.k, C),
                   term<true, false>(dLab, ld.c, Ae, ld.k, C));
  mm_vec4_part<OP>(C, Dk, scr, p.dKt + row0 * Dk, Dk, finish_key(Ki, dk), term<true, false>(dPk, ld.c, Qe, ld.k, C),
                   term<true, false>(dLak, ld.c, Ae, ld.k, C));
  tc::cp_wait_all();
  __syncthreads();
  mm_vec4<OP, true>(C, Dk, scr,
              [&](int t, int j, const float (&x)[4]) {
                float ae[4], y[4];
                ld4f(Ae + t * ld.k + j, ae);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  y[e] = t > 0 ? x[e] * dr_exp(G[(t - 1) * ldg + j + e]) : x[e];
                  if (t > 0) dG[(t - 1) * ldg + j + e] += ae[e] * x[e];  // a_t.da_t is G_{t-1}'s
                }
                da.put(g, c, t, j, y);
              },
              term<false, true>(dOX, ld.v, Sn, ld.v, Dv), term<false, false>(dLab, ld.c, Bi, ld.k, C),
              term<false, false>(dLak, ld.c, Ki, ld.k, C));
  __syncthreads();
  for (int j = dr_tid(); j < Dk; j += int(blockDim.x)) {
    float s = p.dGC[key_row(g, c.b, c.h, c.n) + j];
    for (int t = c.L - 1; t >= 0; --t) {
      s += dG[t * ldg + j];
      p.dlw[tok(g, c.b, c.t0 + t, c.h) * Dk + j] = s;
    }
  }
}

// ===================================== launch sequences =====================================

template <class OP>
inline size_t gen_max_smem(const Geo& g) {
  const size_t s[] = {LayGenPrep<OP>(g).total, LaySeq<OP>(g).total,    LayGenOut<OP>(g).total, LayGenBwdPrep<OP>(g).total,
                      LayGenVal<OP>(g).total,  LayGenKey<OP>(g).total};
  size_t m = 0;
  for (size_t x : s) m = x > m ? x : m;
  return m;
}

// Forward: p.q, k, v, a, b, lw, s0 (or null) in; W, Kd (Bd), Kv, Ae (or null: no backward), Bi, Ki, Tm (or null), U,
// Un, states, gCk, Qg (Qe; or null), final_s, o out.
template <class IN, class OP>
void gen_forward(const Geo& g, const DplrPtrs<IN, OP>& p, cudaStream_t st) {
  const dim3 chunks(unsigned(g.N), unsigned(g.H), unsigned(g.B));
  const dim3 cols(unsigned(g.Dv / g.DVT), unsigned(g.H), unsigned(g.B));
  DR_LAUNCH("generalized_delta fwd_prep", (gen_fwd_prep<IN, OP>), chunks, LayGenPrep<OP>(g).total, st, g, p);
  DR_LAUNCH("generalized_delta fwd_state", (fwd_state<IN, OP, DplrPtrs<IN, OP>>), cols, LaySeq<OP>(g).total, st, g, p);
  DR_LAUNCH_T("generalized_delta fwd_out", (gen_fwd_out<IN, OP>), chunks, kWideThreads, LayGenOut<OP>(g).total, st, g, p);
}

// Backward: the forward's buffers plus dout, dfinal (or null) in; dU, dUn, dH, dX, dL, dBt, dKt, dGC as
// scratch; dq, dk, dv, da, db, dlw, ds0 out.
template <class IN, class OP>
void gen_backward(const Geo& g, const DplrPtrs<IN, OP>& p, cudaStream_t st) {
  const dim3 chunks(unsigned(g.N), unsigned(g.H), unsigned(g.B));
  const dim3 cols(unsigned(g.Dv / g.DVT), unsigned(g.H), unsigned(g.B));
  DR_LAUNCH("generalized_delta bwd_prep", (gen_bwd_prep<IN, OP>), chunks, LayGenBwdPrep<OP>(g).total, st, g, p);
  DR_LAUNCH("generalized_delta bwd_state", (bwd_state<IN, OP, DplrPtrs<IN, OP>>), cols, LaySeq<OP>(g).total, st, g, p);
  DR_LAUNCH_T("generalized_delta bwd_val", (gen_bwd_val<IN, OP>), chunks, kWideThreads, LayGenVal<OP>(g).total, st, g, p);
  DR_LAUNCH_T("generalized_delta bwd_key", (gen_bwd_key<IN, OP>), chunks, kWideThreads, LayGenKey<OP>(g).total, st, g, p);
}

}  // namespace seqmix::mixers::delta_cuda
