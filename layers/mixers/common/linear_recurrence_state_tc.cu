// Fused sequential state pass of the tensor-core linear recurrence (interface in linear_recurrence_tc.cuh;
// notation of linear_recurrence.cu's header), OPT-IN (SEQMIX_LR_FUSED_STATE=1). It replaces the two kernels
// chunk_state_tc (U_n per chunk, bf16, to global memory) + state_scan_kernel (reads U_n back, writes S_n as
// bf16 over it): here U_n never leaves the SM (~200 MB per direction at B=4 T=4096 H=16 D=128 instead of ~400).
// Measured on the H100 it is nevertheless SLOWER than the pair (then with f32 U_n), fwd + bwd at B=4 T=4096
// H=16 D=128: gla 3.769 vs 3.482 ms, retnet 2.143 vs 2.020, linear_attention 1.894 vs 1.859; at B=1 T=65536
// about 2x slower (linear_attention 13.77 vs 6.94 ms): its walk over the N chunks is sequential with only
// B * H * 4 CTAs, where the pair spreads chunk_state over N * B * H CTAs. Kept for comparison.
//
// One CTA of 128 threads (4 warps) per (b, h, key tile, value tile) holds its f32 state tile S[BV][BK] in
// shared memory (transposed, as the states buffer: [Dv][Dk]) and walks the N chunks in order (backward: in
// reverse). Per chunk n: the chunk's rows of x, y (and decays) arrive by cp.async, issued one chunk ahead
// (double-buffered) so their latency overlaps the current chunk; the cumulative decays G are summed per key
// column (as load_cumsum: one thread per column, rows in order), X is scaled and rounded to bf16 in place
// exactly as chunk_state_tc does (forward X = k e^(G_last - G), Y = v; backward X = scale q e^(Gq),
// Y = dout), then each warp forms its 16 x 16 tiles of U_n = Y^T X with WMMA in the same order as
// chunk_state_tc, and its lanes store the current state as bf16 to out16[n] (forward S_n, backward dH_{n+1})
// and update S = fmaf(e^(G_last,n), S, bf16(U_n)) (the scan's arithmetic on chunk_state_tc's rounding of
// U_n): every value equals the two-kernel path's bit for bit (the emulation checks it). A warp owns the same tiles (and a lane the same elements)
// in every chunk, so the state needs no barrier of its own. The edges: edge_in (initial state / d final
// state, may be null) and edge_out (final state / d initial state) are f32 [B, H, Dk, Dv].
//
// Tiles: BK = Dk / 2 when Dk > 64 and that is a multiple of 16, else Dk (same for BV): 64 x 64 at D = 128,
// B * H * 4 CTAs (256 at B = 4, H = 16: all resident at once on 132 SMs at 2-3 CTAs / SM); a tile of
// 64 x 64 gives each warp 4 output tiles per chunk (their products interleaved: 4 accumulators, <= 120
// registers) and keeps the f32 state at 17 KB. The k / q rows are read
// Dv / BV times and v / dout rows Dk / BK times (L2 absorbs most of it). Shared memory at C = 64, 64 x 64
// tiles: 92 KB with per-channel decays (raw g tile double-buffered, summed in place), 59 KB otherwise.
// The forward writes G_last ([B, H, N, gw]: the key tile's columns from the CTAs of value tile 0) for the
// backward and dg kernels; the backward recomputes the same sums from g.
// CPU emulation: compiles for the host with SEQMIX_LR_EMULATE (scripts/lr_tc_emulate.cc: cp.async becomes
// an immediate copy). No spdlog / fmt here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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
namespace fs {  // a namespace of its own: the emulation includes this file beside linear_recurrence_tc.cu

using namespace ::seqmix::mixers::tc;  // bf16, wm, kScrLd / kScrTile, align128, tof / fromf, Lanes, FragC, mma16, ...
using ::seqmix::mixers::lr_cuda::Decay;

constexpr int kThreads = 128;
constexpr int kGroup = 4;  // accumulators a warp holds at once (a 64 x 64 tile: all 4 of its 16 x 16 tiles)

// The state tile along a head dim D (a multiple of 16 in [16, 128]).
__host__ __device__ inline int tile_of(int D) { return D > 64 && (D / 2) % 16 == 0 ? D / 2 : D; }

// Shared memory (byte offsets, 128-byte aligned), shared by the host (size) and the kernel. X, Y, G are
// double-buffered (chunk i computes while chunk i + 1 lands); rows padded by 8 bf16 (ldmatrix phases on
// distinct banks) / 4 f32 (16-byte rows for cp.async).
struct Lay {
  int BK, BV, ldx, ldy, ldg, lds, gcols;
  size_t X[2], Y[2], G[2], egl, S, scr, total;
  __host__ __device__ explicit Lay(const TcGeo& g) {
    BK = tile_of(g.Dk);
    BV = tile_of(g.Dv);
    ldx = BK + 8;
    ldy = BV + 8;
    gcols = g.gw > 1 ? BK : g.gw;  // decay columns held: the key tile's (per channel), 1 (per head), 0 (none)
    ldg = g.gw > 1 ? BK + 4 : g.gw;
    lds = BK + 4;
    size_t o = 0;
    for (int i = 0; i < 2; ++i) {
      X[i] = o;
      o = align128(o + size_t(g.C) * ldx * 2);
    }
    for (int i = 0; i < 2; ++i) {
      Y[i] = o;
      o = align128(o + size_t(g.C) * ldy * 2);
    }
    for (int i = 0; i < 2; ++i) {
      G[i] = o;
      o = align128(o + size_t(g.C) * ldg * 4);
    }
    egl = o;
    o = align128(o + size_t(gcols > 0 ? gcols : 1) * 4);
    S = o;
    o = align128(o + size_t(BV) * lds * 4);
    scr = o;
    o = align128(o + size_t(kThreads / 32) * kScrTile * 4);
    total = o;
  }
};

// ---- cp.async (16 or 4 bytes; an invalid source zero-fills the destination and is not read) ----
#ifdef SEQMIX_TC_EMULATE
inline void cp16(void* dst, const void* src, bool valid) {
  if (valid) std::memcpy(dst, src, 16);
  else std::memset(dst, 0, 16);
}
inline void cp4(void* dst, const void* src, bool valid) {
  if (valid) std::memcpy(dst, src, 4);
  else std::memset(dst, 0, 4);
}
inline void cp_commit() {}
inline void cp_wait_all() {}
#else
__device__ __forceinline__ void cp16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp4(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
#endif

// The CTA's place: batch b, head h, key columns ck0 .. ck0 + BK, value rows dv0 .. dv0 + BV.
struct Pos {
  int b, h, kt, vt, ck0, dv0;
  int64_t bh;
};

// Columns col0 .. col0 + cols of the C rows of a chunk, from a [B * T, H, D] source (row0: the chunk's first
// token row) into shared rows of stride ld, by cp.async in 16-byte pieces; rows >= L zero-filled.
template <typename E>
__device__ __forceinline__ void issue_rows(E* dst, int ld, const E* __restrict__ src, int64_t row0, int H, int h, int D,
                                           int col0, int cols, int C, int L) {
  constexpr int kPiece = 16 / int(sizeof(E));
  const int pieces = cols / kPiece;
  for (int idx = int(threadIdx.x); idx < C * pieces; idx += int(blockDim.x)) {
    const int r = idx / pieces, q = idx - r * pieces;
    const bool ok = r < L;
    cp16(dst + r * ld + q * kPiece, ok ? src + ((row0 + r) * H + h) * int64_t(D) + col0 + q * kPiece : src, ok);
  }
}

// Issues the cp.async copies of chunk n's rows of x (key tile), y (value tile) and the decays into buffer j
// (rows past the sequence zero-filled), and commits them as one group.
template <typename T, int MODE>
__device__ __forceinline__ void issue_chunk(const TcGeo& geo, const Lay& lay, unsigned char* smem, const Pos& p, int n, int j,
                                            const T* __restrict__ xsrc, const T* __restrict__ ysrc,
                                            const float* __restrict__ g) {
  const int t0 = n * geo.C, L = geo.T - t0 < geo.C ? geo.T - t0 : geo.C;
  const int tid = int(threadIdx.x), nth = int(blockDim.x);
  const int64_t row0 = int64_t(p.b) * geo.T + t0;  // first token row of the chunk in [B, T, ...]
  auto at = [&](const size_t (&off)[2]) { return smem + (j ? off[1] : off[0]); };  // buffer j (a select, no indexing)
  issue_rows(reinterpret_cast<T*>(at(lay.X)), lay.ldx, xsrc, row0, geo.H, p.h, geo.Dk, p.ck0, lay.BK, geo.C, L);
  issue_rows(reinterpret_cast<T*>(at(lay.Y)), lay.ldy, ysrc, row0, geo.H, p.h, geo.Dv, p.dv0, lay.BV, geo.C, L);
  if constexpr (MODE == 2) {
    issue_rows(reinterpret_cast<float*>(at(lay.G)), lay.ldg, g, row0, geo.H, p.h, geo.gw, p.ck0, lay.BK, geo.C, L);
  } else if constexpr (MODE == 1) {
    float* G = reinterpret_cast<float*>(at(lay.G));
    for (int r = tid; r < geo.C; r += nth) {
      const bool ok = r < L;
      cp4(G + r, ok ? g + (row0 + r) * geo.H + p.h : g, ok);
    }
  }
  cp_commit();
}

// ---------------------------------------------------------------------------------------------
// The state pass. Forward (BWD = false): x = k, y = v, chunks 0 .. N-1, edge_in = s0, out16[n] = S_n,
// edge_out = final state, glast written. Backward: x = q, y = dout, chunks N-1 .. 0, edge_in = d final state,
// out16[n] = dH_{n+1}, edge_out = d initial state.
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE, bool BWD>
__global__ void __launch_bounds__(kThreads) state_pass_tc(TcGeo geo, const T* __restrict__ xsrc, const T* __restrict__ ysrc,
                                                          const float* __restrict__ g, const float* __restrict__ edge_in,
                                                          float* __restrict__ edge_out, bf16* __restrict__ out16,
                                                          float* __restrict__ glast) {
  TC_SMEM(smem);
  const Lay lay(geo);
  const int BK = lay.BK, BV = lay.BV, lds = lay.lds, ldx = lay.ldx, ldy = lay.ldy;
  const int Dk = geo.Dk, Dv = geo.Dv, C = geo.C, N = geo.N;
  Pos p;
  {
    const int nkt = Dk / BK;
    p.kt = int(blockIdx.x) % nkt;
    p.vt = int(blockIdx.x) / nkt;
    p.h = int(blockIdx.y);
    p.b = int(blockIdx.z);
    p.ck0 = p.kt * BK;
    p.dv0 = p.vt * BV;
    p.bh = int64_t(p.b) * geo.H + p.h;
  }
  const int tid = int(threadIdx.x), nth = int(blockDim.x);
  float* S = reinterpret_cast<float*>(smem + lay.S);
  float* egl = reinterpret_cast<float*>(smem + lay.egl);
  const Lanes w = lanes();
  float* sc = reinterpret_cast<float*>(smem + lay.scr) + w.warp * kScrTile;
  auto chunk_of = [&](int i) { return BWD ? N - 1 - i : i; };

  issue_chunk<T, MODE>(geo, lay, smem, p, chunk_of(0), 0, xsrc, ysrc, g);
  // S[d][c] = edge_in[c][d] (consecutive threads along d: the contiguous dim of edge_in)
  for (int idx = tid; idx < BK * BV; idx += nth) {
    const int c = idx / BV, d = idx - c * BV;
    S[d * lds + c] = edge_in ? edge_in[(p.bh * Dk + p.ck0 + c) * Dv + p.dv0 + d] : 0.f;
  }
  const int ni = BK >> 4, nj = BV >> 4;
  for (int i = 0; i < N; ++i) {
    const int n = chunk_of(i), j = i & 1;
    const int L = geo.T - n * C < C ? geo.T - n * C : C;
    cp_wait_all();
    __syncthreads();  // chunk i has landed for every thread; every warp is past chunk i - 1 (buffer j ^ 1 is free)
    if (i + 1 < N) issue_chunk<T, MODE>(geo, lay, smem, p, chunk_of(i + 1), j ^ 1, xsrc, ysrc, g);
    bf16* X = reinterpret_cast<bf16*>(smem + lay.X[0] + (j ? lay.X[1] - lay.X[0] : 0));
    bf16* Y = reinterpret_cast<bf16*>(smem + lay.Y[0] + (j ? lay.Y[1] - lay.Y[0] : 0));
    float* G = reinterpret_cast<float*>(smem + lay.G[0] + (j ? lay.G[1] - lay.G[0] : 0));
    if constexpr (MODE > 0) {
      // cumulative log decays in place, one thread per column, rows in order (load_cumsum's f32 sums)
      for (int c = tid; c < lay.gcols; c += nth) {
        float acc = 0.f;
        for (int r0 = 0; r0 < C; r0 += 16) {
          float x[16];
#pragma unroll
          for (int r = 0; r < 16; ++r) x[r] = r0 + r < L ? G[(r0 + r) * lay.ldg + c] : 0.f;
#pragma unroll
          for (int r = 0; r < 16; ++r) {
            acc += x[r];
            G[(r0 + r) * lay.ldg + c] = acc;
          }
        }
        egl[c] = __expf(acc);  // the scan's decay factor of the state
        if (!BWD && p.vt == 0 && (MODE == 2 || p.kt == 0))
          glast[(p.bh * N + n) * geo.gw + (MODE == 2 ? p.ck0 : 0) + c] = acc;
      }
      __syncthreads();
    }
    constexpr bool convert = !std::is_same_v<T, bf16>;
    if (BWD || MODE > 0 || convert) {
      // X = bf16(bf16(x) * f) as chunk_state_tc (RowFetch's bf16 copy, then scale_tile); f16 Y -> bf16. Rows >= L
      // are zero (the same bits in f16 and bf16). In place: each element read and written by one thread.
      // 8 consecutive columns (one 16-byte piece) per step.
      const Decay<MODE> dec{G, lay.ldg, geo.bonus};
      const int pk = BK >> 3;
      for (int idx = tid; idx < L * pk; idx += nth) {
        const int t = idx / pk, c0 = (idx - t * pk) << 3;
        float x[8];
        load8(x, reinterpret_cast<const T*>(X + t * ldx + c0));  // raw T until converted here
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int c = c0 + e;
          float f;
          if constexpr (BWD) f = geo.scale * (MODE > 0 ? __expf(dec.gq(t, c)) : 1.f);
          else f = MODE > 0 ? __expf(dec.g(L - 1, c) - dec.g(t, c)) : 1.f;
          x[e] = tof(fromf<bf16>(x[e])) * f;
        }
        store8(X + t * ldx + c0, x);
      }
      if constexpr (convert) {
        const int pv = BV >> 3;
        for (int idx = tid; idx < L * pv; idx += nth) {
          const int t = idx / pv, d0 = (idx - t * pv) << 3;
          float y[8];
          load8(y, reinterpret_cast<const T*>(Y + t * ldy + d0));
          store8(Y + t * ldy + d0, y);
        }
      }
      __syncthreads();
    }
    // U = Y^T X per 16 x 16 tile (chunk_state_tc's products in its order), then per element: out16[n] = bf16(S),
    // S = fmaf(e^G_last, S, U).
    bf16* o16 = out16 + ((p.bh * N + n) * Dv + p.dv0) * int64_t(Dk) + p.ck0;
    const int kts = (L + 15) >> 4;
    // A warp's tiles go in groups of kGroup (tile, tile + nwarps, ...), their products interleaved for ILP; each
    // tile's accumulation order over s is chunk_state_tc's.
    const int ntiles = ni * nj;
    for (int tile0 = w.warp; tile0 < ntiles; tile0 += kGroup * w.nwarps) {
      FragC acc[kGroup];
#pragma unroll
      for (int k = 0; k < kGroup; ++k) fill(acc[k], 0.f);
      for (int s = 0; s < kts; ++s) {
#pragma unroll
        for (int k = 0; k < kGroup; ++k) {
          const int tile = tile0 + k * w.nwarps;
          if (tile >= ntiles) break;
          const int jt = tile / ni, it = tile - jt * ni;
          mma16<wm::col_major, wm::row_major>(acc[k], Y + s * 16 * ldy + jt * 16, ldy, X + s * 16 * ldx + it * 16, ldx);
        }
      }
#pragma unroll
      for (int k = 0; k < kGroup; ++k) {
        const int tile = tile0 + k * w.nwarps;
        if (tile >= ntiles) break;
        const int jt = tile / ni, it = tile - jt * ni;
        through_scratch(sc, acc[k], [&] {
          for_pieces(w, [&](int r, int c0) {
            const int d = jt * 16 + r, c = it * 16 + c0;
            float* sp = S + d * lds + c;
            float st[8];
            load8f(st, sp);
            store8(o16 + int64_t(d) * Dk + c, st);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
              const float a = MODE == 0 ? 1.f : MODE == 1 ? egl[0] : egl[c + e];
              st[e] = fmaf(a, st[e], tof(fromf<bf16>(sc[r * kScrLd + c0 + e])));  // U_n rounded as chunk_state_tc
            }
            store8f(sp, st);
          });
        });
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < BK * BV; idx += nth) {
    const int c = idx / BV, d = idx - c * BV;
    edge_out[(p.bh * Dk + p.ck0 + c) * Dv + p.dv0 + d] = S[d * lds + c];
  }
}

// One CTA per (key tile, value tile), head, batch.
inline dim3 grid_of(const TcGeo& g) {
  const Lay l(g);
  return dim3(unsigned((g.Dk / l.BK) * (g.Dv / l.BV)), unsigned(g.H), unsigned(g.B));
}

}  // namespace fs
}  // namespace

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
bool fused_state_enabled() {  // opt-in: slower than chunk_state_tc + scan on the H100 (header)
  const char* e = std::getenv("SEQMIX_LR_FUSED_STATE");
  return e && e[0] == '1' && e[1] == '\0';
}

size_t smem_state_pass(const TcGeo& g) { return fs::Lay(g).total; }

#ifndef SEQMIX_LR_EMULATE
void state_pass(Elem e, int mode, bool bwd, const TcGeo& g, const void* x, const void* y, const float* gdec,
                const float* edge_in, float* edge_out, void* out16, float* glast, cudaStream_t st) {
  const size_t sb = smem_state_pass(g);
  const dim3 grid = fs::grid_of(g);
  auto launch = [&]<typename T, int MODE, bool BWD>() {
    auto kern = fs::state_pass_tc<T, MODE, BWD>;
    if (sb > 48 * 1024) SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sb)));
    kern<<<grid, fs::kThreads, sb, st>>>(g, static_cast<const T*>(x), static_cast<const T*>(y), gdec, edge_in, edge_out,
                                         static_cast<__nv_bfloat16*>(out16), glast);
    SEQMIX_CUDA_CHECK_LAUNCH(BWD ? "linear_recurrence state_pass_tc (backward)" : "linear_recurrence state_pass_tc");
  };
  auto with_dir = [&]<typename T, int MODE>() {
    if (bwd) launch.template operator()<T, MODE, true>();
    else launch.template operator()<T, MODE, false>();
  };
  auto with_mode = [&]<typename T>() {
    switch (mode) {
      case 0: with_dir.template operator()<T, 0>(); break;
      case 1: with_dir.template operator()<T, 1>(); break;
      default: with_dir.template operator()<T, 2>(); break;
    }
  };
  if (e == Elem::BF16) with_mode.template operator()<__nv_bfloat16>();
  else with_mode.template operator()<__half>();
}
#endif  // SEQMIX_LR_EMULATE

}  // namespace seqmix::mixers::lr_tc
