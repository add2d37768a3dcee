// CUDA attention: fused flash-style forward and backward (FlashAttention-2's algorithm, own code).
//
// Layout: q [B, Tq, H, D], k / v [B, Tk, Hkv, D] with unit last-dim stride (other strides free), o and the
// gradients contiguous in the same layout, lse / D-vector [B, H, Tq]. Causal, bottom-right aligned
// (query i sees keys j <= i + off, off = Tk - Tq), optional window (keys j > i + off - window). Query head
// h reads kv head h / group.
//
// 1. Tensor-core path (bf16, D in {64, 128}; rows whose strides are not multiples of 8 elements are
//    copied first):
//
//   forward  flash_fwd_kernel<D>: one CTA of 4 warps per (b, h, 128-query tile); each warp owns 32 query
//            rows (two m16 tiles, so every K / V fragment read from shared memory feeds two mma). Q stays
//            in shared memory; K / V tiles (64 keys for D = 64, 32 for D = 128 to stay within 255
//            registers) stream through a 2-stage cp.async double buffer (tile n-1 loads while tile n is
//            computed). S = Q K^T with mma.sync m16n8k16 (bf16 in, f32 accumulate; fragments by
//            ldmatrix), masking only on tiles that cross the diagonal / window edge / sequence end, online
//            softmax in the log2 domain with f32 row max and sum (quad shuffles, ex2.approx), P converted
//            in registers to the bf16 A-fragment of O += P V (V fragments by ldmatrix.trans). KV tiles
//            outside the causal / window range are skipped; the longest query tiles are scheduled first.
//            Writes O (bf16) and the natural-log lse (f32). Shared-memory rows are XOR-swizzled in
//            16-byte chunks (chunk ^ (row & 7)): ldmatrix and cp.async are bank-conflict free.
//   backward (FA2): (a) dot_do_o_kernel: D_i = rowsum(dO_i * O_i) in f32; dq_accum (f32) zeroed.
//            (b) flash_bwd_kernel<D>: one CTA of 8 warps per (b, kv head, 128-key tile), looping over the
//            query heads of the group and the 64-query tiles that can see the key tile (causal / window
//            block skipping). K, V stay in shared memory; Q / dO / lse / D_i tiles stream through a
//            cp.async double buffer. Per query tile: S^T = K Q^T and dP^T = V dO^T (keys as mma rows, so
//            P^T and dS^T come out directly), P^T = exp(S^T - lse), dS^T = P^T (dP^T - D), both stored
//            as bf16 in shared memory; then dV += P^T dO and dK += dS^T Q, accumulated in registers over
//            the whole loop (no atomics for dK / dV, GQA included), and dQ_tile = dS K added to dq_accum
//            with f32 atomics (float2 atomics on sm_90). Every warp tile is 32 x 32 (S^T, dP^T, dQ) or
//            32 x D/2 (dK, dV).
//            (c) dq_convert_kernel: dq = dq_accum * scale in the input dtype.
//            Recomputed in backward: S and P (from lse). Nothing T x T is ever stored.
//
//   Next speed steps, in expected order of payoff: (1) sm_90a: wgmma with TMA loads and producer /
//   consumer warp specialization (FlashAttention-3 style), the only way to cuDNN's 2.19 ms; (2) within
//   mma.sync: fewer address registers (XOR the swizzled base address per k-step instead of holding one
//   register per fragment address) to afford 64-key forward tiles at D = 128 and a 3-stage pipeline;
//   (3) K / V in separate cp.async groups so S = Q K^T starts before V lands; (4) stage the O / dK / dV
//   epilogues through shared memory for 16-byte coalesced stores; (5) a dQ pass without atomics
//   (deterministic) if atomics show up in profiles.
//
//   Variants (flash_attention_variants.cuh), picked at run time by SEQMIX_ATTN_FWD / SEQMIX_ATTN_BWD (read
//   once; 0: the kernels above; unset: the measured fastest, see fwd_variant(); scripts/attn_variants.sh
//   runs the tests and the benchmark for each).
//
// 2. SIMT path (f32, f64, f16, and bf16 with other head dims, D <= 256): one warp per row, exact same
//    math with f32 (f64) accumulation; lanes hold D / 32 columns, scores are computed 32 keys at a time
//    (one per lane) and broadcast by shuffles. Correct, not fast: meant for tests, f32 debugging and odd
//    head dims.
//
// No spdlog / fmt here (nvcc with C++20 cannot compile them).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "core/cuda/cuda_check.h"
#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"
#include "layers/mixers/attention/attention_op.h"

namespace seqmix::mixers::attention_impl {

namespace {

using bf16_t = __nv_bfloat16;
using ::seqmix::cuda::acc_t;
using ::seqmix::cuda::load_acc;
using ::seqmix::cuda::store_acc;
using ::seqmix::cuda::warp_reduce_max;
using ::seqmix::cuda::warp_reduce_sum;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Element strides of a [B, T, H, D] tensor (the last dim has unit stride).
struct Strides {
  int64_t b = 0, t = 0, h = 0;
};
Strides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// Problem geometry as the kernels see it.
struct Geometry {
  int B, H, Hkv, group, Tq, Tk, D;
  int off;     // Tk - Tq: query i's diagonal key is i + off
  int window;  // 0: unlimited
};

// ============================================================================================
// PTX wrappers: cp.async, ldmatrix, mma.sync
// ============================================================================================

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; pred false zero-fills the destination (reads nothing).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  int bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
// 4 bytes (for the f32 lse / D-vector tiles, whose rows need not be 16-byte aligned).
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool pred) {
  int bytes = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8, row l % 8. Register r[m] of
// lane l holds matrix m's (row l / 4, cols 2 (l % 4) + {0, 1}); with .trans, (rows 2 (l % 4) + {0, 1}, col l / 4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a (16x16, row) * b (16x8, col), bf16 inputs, f32 accumulators.
// Fragments (g = lane / 4, c = 2 (lane % 4)):
//   a: a[0] = A[g][c..c+1], a[1] = A[g+8][c..c+1], a[2] = A[g][c+8..c+9], a[3] = A[g+8][c+8..c+9]
//   b: b0 = B[c..c+1][g], b1 = B[c+8..c+9][g]
//   d: d[0..1] = D[g][c..c+1], d[2..3] = D[g+8][c..c+1]
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x with the hardware approximation (max relative error 2^-22; ex2(-inf) = +0), as the softmax needs it.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats -> packed bf16x2 (lo in the low half: the lower column index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Shared-memory tile of rows of W bf16 elements: 16-byte chunk `ch` of row r lives at chunk (ch ^ (r & 7)).
// Any 8 consecutive rows at one logical chunk hit 8 distinct bank groups (conflict-free ldmatrix).
template <int W>
__device__ __forceinline__ int swz(int r, int ch) {
  static_assert(W % 64 == 0, "swizzled rows must hold a multiple of 8 chunks");
  return r * W + ((ch ^ (r & 7)) << 3);
}

// cp.async of rows [row0, row0 + ROWS) of a [T, D] slice (row stride `stride` elements) into a swizzled
// tile; rows >= nrows are zero-filled.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(bf16_t* tile, const bf16_t* g, int64_t stride, int row0, int nrows,
                                          int tid) {
  constexpr int kChunks = D / 8;
  static_assert((ROWS * kChunks) % THREADS == 0, "tile chunks must divide among the threads");
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / THREADS; ++it) {
    int c = it * THREADS + tid;
    int r = c / kChunks, ch = c % kChunks;
    int row = row0 + r;
    bool ok = row < nrows;
    const bf16_t* src = ok ? g + int64_t(row) * stride + ch * 8 : g;
    cp_async16(smem_addr(tile + swz<D>(r, ch)), src, ok);
  }
}

// ============================================================================================
// Tensor-core forward
// ============================================================================================

struct FwdParams {
  const bf16_t* q;
  const bf16_t* k;
  const bf16_t* v;
  bf16_t* o;
  float* lse;
  Strides sq, sk, sv, so;
  Geometry g;
  float scale_log2;  // scale * log2(e)
};

constexpr int kFwdWarps = 4;
constexpr int kFwdMT = 2;                           // 16-row m-tiles per warp (32 query rows)
constexpr int kFwdBr = 16 * kFwdMT * kFwdWarps;     // 128 queries per CTA
// Keys per tile: 64 for D = 64; 32 for D = 128, where 32 rows x (128 O + 64 S) f32 accumulators per warp
// would otherwise spill (ptxas: 255 registers + 160 bytes of spills at 64).
template <int D>
constexpr int fwd_bc() {
  return D >= 128 ? 32 : 64;
}

template <int D>
constexpr int fwd_smem_bytes() {
  return (kFwdBr * D + 4 * fwd_bc<D>() * D) * int(sizeof(bf16_t));  // Q + 2 x K + 2 x V
}

template <int D>
__global__ void __launch_bounds__(kFwdWarps * 32, 2) flash_fwd_kernel(FwdParams p) {
  constexpr int kThreads = kFwdWarps * 32;
  constexpr int Br = kFwdBr, Bc = fwd_bc<D>(), MT = kFwdMT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sK = sQ + Br * D;      // [2][Bc * D]
  bf16_t* sV = sK + 2 * Bc * D;  // [2][Bc * D]

  const Geometry& g = p.g;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m_block = int(gridDim.y) - 1 - int(blockIdx.y);  // longest (latest) query tiles first
  const int bh = blockIdx.x;
  const int b = bh / g.H, h = bh % g.H, hk = h / g.group;
  const int q0 = m_block * Br;
  const int q_end = min(q0 + Br, g.Tq);

  // Keys any row of the tile can see: [j_lo, j_hi].
  const int j_hi = min(g.Tk - 1, q_end - 1 + g.off);
  const int j_lo = g.window > 0 ? max(0, q0 + g.off - g.window + 1) : 0;
  const int n_hi = j_hi >= j_lo ? j_hi / Bc : -1;
  const int n_lo = j_hi >= j_lo ? j_lo / Bc : 0;

  const bf16_t* qg = p.q + b * p.sq.b + h * p.sq.h;
  const bf16_t* kg = p.k + b * p.sk.b + hk * p.sk.h;
  const bf16_t* vg = p.v + b * p.sv.b + hk * p.sv.h;

  if (n_hi >= n_lo) {
    load_tile<D, Br, kThreads>(sQ, qg, p.sq.t, q0, g.Tq, tid);
    load_tile<D, Bc, kThreads>(sK, kg, p.sk.t, n_hi * Bc, g.Tk, tid);
    load_tile<D, Bc, kThreads>(sV, vg, p.sv.t, n_hi * Bc, g.Tk, tid);
  }
  cp_async_commit();

  float o_acc[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o_acc[mt][i][0] = o_acc[mt][i][1] = o_acc[mt][i][2] = o_acc[mt][i][3] = 0.f;
  float m_run[MT][2], l_run[MT][2];  // log2-domain row max (rows g, g + 8 of each m-tile); partial row sums
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m_run[mt][0] = m_run[mt][1] = -INFINITY, l_run[mt][0] = l_run[mt][1] = 0.f;

  const int row_base = q0 + warp * 16 * MT + (lane >> 2);  // m-tile mt's rows: row_base + 16 mt + {0, 8}

  for (int n = n_hi, it = 0; n >= n_lo; --n, ++it) {
    const int buf = it & 1;
    cp_async_wait_all();
    __syncthreads();  // tile n has landed, and every warp is done with tile n + 1 (buffer buf ^ 1)
    if (n - 1 >= n_lo) {
      load_tile<D, Bc, kThreads>(sK + (buf ^ 1) * Bc * D, kg, p.sk.t, (n - 1) * Bc, g.Tk, tid);
      load_tile<D, Bc, kThreads>(sV + (buf ^ 1) * Bc * D, vg, p.sv.t, (n - 1) * Bc, g.Tk, tid);
    }
    cp_async_commit();
    const bf16_t* sKb = sK + buf * Bc * D;
    const bf16_t* sVb = sV + buf * Bc * D;

    // S = Q K^T for this warp's 32 rows x Bc keys; each K fragment feeds both m-tiles.
    float s[MT][Bc / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < Bc / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4(qa[mt], smem_addr(sQ + swz<D>(warp * 16 * MT + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                  kk * 2 + (lane >> 4))));
#pragma unroll
      for (int nn = 0; nn < Bc / 16; ++nn) {
        uint32_t kf[4];
        ldmatrix_x4(kf, smem_addr(sKb + swz<D>(nn * 16 + (lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * nn], qa[mt], kf[0], kf[1]);
          mma_bf16(s[mt][2 * nn + 1], qa[mt], kf[2], kf[3]);
        }
      }
    }

    // Scale into the log2 domain, then mask where the tile crosses a boundary.
    const int k0 = n * Bc;
    const bool need_mask = k0 + Bc - 1 > q0 + g.off || k0 + Bc > g.Tk ||
                           (g.window > 0 && k0 <= q0 + Br - 1 + g.off - g.window);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int i = 0; i < Bc / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][i][e] *= p.scale_log2;
      if (need_mask) {
#pragma unroll
        for (int i = 0; i < Bc / 8; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = row_base + mt * 16 + (e >= 2 ? 8 : 0);
            const int col = k0 + i * 8 + (lane & 3) * 2 + (e & 1);
            const bool visible =
                col <= row + g.off && col < g.Tk && (g.window <= 0 || col > row + g.off - g.window);
            if (!visible) s[mt][i][e] = -INFINITY;
          }
      }

      // Online softmax: new row max (over the quad that shares a row), rescale, exponentiate.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = m_run[mt][r];
#pragma unroll
        for (int i = 0; i < Bc / 8; ++i) mx = fmaxf(mx, fmaxf(s[mt][i][2 * r], s[mt][i][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_use = mx == -INFINITY ? 0.f : mx;  // a row with nothing visible yet: no NaN
        const float corr = fast_exp2(m_run[mt][r] - m_use);
        m_run[mt][r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < Bc / 8; ++i) {
          s[mt][i][2 * r] = fast_exp2(s[mt][i][2 * r] - m_use);
          s[mt][i][2 * r + 1] = fast_exp2(s[mt][i][2 * r + 1] - m_use);
          sum += s[mt][i][2 * r] + s[mt][i][2 * r + 1];
        }
        l_run[mt][r] = l_run[mt][r] * corr + sum;
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
          o_acc[mt][i][2 * r] *= corr;
          o_acc[mt][i][2 * r + 1] *= corr;
        }
      }
    }

    // O += P V: the S accumulators of two adjacent 8-key blocks form one 16-key A-fragment; each V
    // fragment feeds both m-tiles.
#pragma unroll
    for (int t = 0; t < Bc / 16; ++t) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack_bf16(s[mt][2 * t][0], s[mt][2 * t][1]);
        pa[mt][1] = pack_bf16(s[mt][2 * t][2], s[mt][2 * t][3]);
        pa[mt][2] = pack_bf16(s[mt][2 * t + 1][0], s[mt][2 * t + 1][1]);
        pa[mt][3] = pack_bf16(s[mt][2 * t + 1][2], s[mt][2 * t + 1][3]);
      }
#pragma unroll
      for (int dd = 0; dd < D / 16; ++dd) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, smem_addr(sVb + swz<D>(t * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dd * 2 + (lane >> 4))));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(o_acc[mt][2 * dd], pa[mt], vf[0], vf[1]);
          mma_bf16(o_acc[mt][2 * dd + 1], pa[mt], vf[2], vf[3]);
        }
      }
    }
  }

  // Epilogue: O / l and lse (natural log). A row that saw no key: O = 0, lse = +inf.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = l_run[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int row = row_base + mt * 16 + r * 8;
      if (row < g.Tq) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        bf16_t* orow = p.o + b * p.so.b + int64_t(row) * p.so.t + h * p.so.h + (lane & 3) * 2;
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
          *reinterpret_cast<__nv_bfloat162*>(orow + i * 8) =
              __floats2bfloat162_rn(o_acc[mt][i][2 * r] * inv, o_acc[mt][i][2 * r + 1] * inv);
        if ((lane & 3) == 0)
          p.lse[(int64_t(b) * g.H + h) * g.Tq + row] = l > 0.f ? (m_run[mt][r] + log2f(l)) * kLn2 : INFINITY;
      }
    }
  }
}

// ============================================================================================
// Tensor-core backward
// ============================================================================================

struct BwdParams {
  const bf16_t* q;
  const bf16_t* k;
  const bf16_t* v;
  const bf16_t* dout;
  const float* lse;
  const float* dvec;  // D_i = rowsum(dO_i * O_i), [B, H, Tq]
  float* dq_acc;      // [B, Tq, H, D] f32, zeroed; receives dS K (unscaled)
  bf16_t* dk;         // [B, Tk, Hkv, D] contiguous
  bf16_t* dv;
  Strides sq, sk, sv, sdo, sdk;
  Geometry g;
  float scale, scale_log2;
};

constexpr int kBwdWarps = 8;
constexpr int kBwdThreads = kBwdWarps * 32;
constexpr int kBwdBc = 128;  // keys per CTA
constexpr int kBwdBr = 64;   // queries per tile

template <int D>
constexpr int bwd_smem_bytes() {
  // K, V, 2 x Q, 2 x dO, P^T, dS^T (bf16) + 2 x lse, 2 x D (f32)
  return (2 * kBwdBc * D + 4 * kBwdBr * D + 2 * kBwdBc * kBwdBr) * int(sizeof(bf16_t)) +
         4 * kBwdBr * int(sizeof(float));
}

// Warp tiling (8 warps, wr = warp & 3, wc = warp >> 2, wq = warp & 1, wd = warp >> 1):
//   S^T, dP^T [128 keys x 64 queries]: keys 32 wr + [0, 32), queries 32 wc + [0, 32)
//   dV, dK    [128 keys x D]:          keys 32 wr + [0, 32), columns (D/2) wc + [0, D/2)
//   dQ        [64 queries x D]:        queries 32 wq + [0, 32), columns (D/4) wd + [0, D/4)
// Every warp tile is 32 rows (two m16 tiles), so each B fragment read from shared memory feeds two mma.
template <int D>
__global__ void __launch_bounds__(kBwdThreads, 1) flash_bwd_kernel(BwdParams p) {
  constexpr int Bc = kBwdBc, Br = kBwdBr;
  constexpr int kNB = D / 16;   // 8-column blocks per warp in dK / dV (D/2 columns)
  constexpr int kQNB = D / 32;  // 8-column blocks per warp in dQ (D/4 columns)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sV = sK + Bc * D;
  bf16_t* sQ = sV + Bc * D;       // [2][Br * D]
  bf16_t* sdO = sQ + 2 * Br * D;  // [2][Br * D]
  bf16_t* sP = sdO + 2 * Br * D;  // P^T  [Bc][Br]
  bf16_t* sdS = sP + Bc * Br;     // dS^T [Bc][Br]
  float* sL = reinterpret_cast<float*>(sdS + Bc * Br);  // [2][Br]
  float* sDv = sL + 2 * Br;                              // [2][Br]

  const Geometry& g = p.g;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2, wq = warp & 1, wd = warp >> 1;
  const int n_block = blockIdx.y;  // blockIdx.x (fastest) runs over heads: the early, longest key tiles go first
  const int b = blockIdx.x / g.Hkv, hk = blockIdx.x % g.Hkv;
  const int k0 = n_block * Bc;
  const int k_end = min(k0 + Bc, g.Tk);

  // Queries that can see some key of the tile: [i_lo, i_hi].
  const int i_lo = max(0, k0 - g.off);
  int i_hi = g.Tq - 1;
  if (g.window > 0) i_hi = min(i_hi, k_end - 1 - g.off + g.window - 1);
  const int m_lo = i_hi >= i_lo ? i_lo / Br : 0;
  const int n_m = i_hi >= i_lo ? i_hi / Br - m_lo + 1 : 0;
  const int total = n_m * g.group;

  float dk_acc[2][kNB][4], dv_acc[2][kNB][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < kNB; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk_acc[mt][i][e] = dv_acc[mt][i][e] = 0.f;

  const bf16_t* kg = p.k + b * p.sk.b + hk * p.sk.h;
  const bf16_t* vg = p.v + b * p.sv.b + hk * p.sv.h;

  auto load_q_tile = [&](int it, int buf) {
    const int h = hk * g.group + it / n_m;
    const int q0 = (m_lo + it % n_m) * Br;
    load_tile<D, Br, kBwdThreads>(sQ + buf * Br * D, p.q + b * p.sq.b + h * p.sq.h, p.sq.t, q0, g.Tq, tid);
    load_tile<D, Br, kBwdThreads>(sdO + buf * Br * D, p.dout + b * p.sdo.b + h * p.sdo.h, p.sdo.t, q0, g.Tq, tid);
    const int64_t rowbase = (int64_t(b) * g.H + h) * g.Tq;
    if (tid < Br) {
      const int row = q0 + tid;
      const bool ok = row < g.Tq;
      cp_async4(smem_addr(sL + buf * Br + tid), p.lse + rowbase + (ok ? row : 0), ok);
    } else if (tid < 2 * Br) {
      const int row = q0 + tid - Br;
      const bool ok = row < g.Tq;
      cp_async4(smem_addr(sDv + buf * Br + tid - Br), p.dvec + rowbase + (ok ? row : 0), ok);
    }
  };

  if (total > 0) {
    load_tile<D, Bc, kBwdThreads>(sK, kg, p.sk.t, k0, g.Tk, tid);
    load_tile<D, Bc, kBwdThreads>(sV, vg, p.sv.t, k0, g.Tk, tid);
    load_q_tile(0, 0);
    cp_async_commit();
  }

  for (int it = 0; it < total; ++it) {
    const int buf = it & 1;
    const int h = hk * g.group + it / n_m;
    const int q0 = (m_lo + it % n_m) * Br;
    cp_async_wait_all();
    __syncthreads();  // tile `it` has landed; every warp is done with tile it - 1 (buffers buf ^ 1, sP, sdS)
    if (it + 1 < total) load_q_tile(it + 1, buf ^ 1);
    cp_async_commit();

    const bf16_t* sQb = sQ + buf * Br * D;
    const bf16_t* sdOb = sdO + buf * Br * D;
    const float* sLb = sL + buf * Br;
    const float* sDvb = sDv + buf * Br;

    // (1) S^T = K Q^T and (2) dP^T = V dO^T: this warp's 32 keys x 32 queries.
    float st[2][4][4], dpt[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[mt][i][e] = dpt[mt][i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[2][4], va[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int a_off = swz<D>(wr * 32 + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, kk * 2 + (lane >> 4));
        ldmatrix_x4(ka[mt], smem_addr(sK + a_off));
        ldmatrix_x4(va[mt], smem_addr(sV + a_off));
      }
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
        uint32_t qb[4], ob[4];
        const int b_off = swz<D>(wc * 32 + nn * 16 + (lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1));
        ldmatrix_x4(qb, smem_addr(sQb + b_off));
        ldmatrix_x4(ob, smem_addr(sdOb + b_off));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_bf16(st[mt][2 * nn], ka[mt], qb[0], qb[1]);
          mma_bf16(st[mt][2 * nn + 1], ka[mt], qb[2], qb[3]);
          mma_bf16(dpt[mt][2 * nn], va[mt], ob[0], ob[1]);
          mma_bf16(dpt[mt][2 * nn + 1], va[mt], ob[2], ob[3]);
        }
      }
    }

    // (3) P^T = exp(S^T scale - lse) (masked), dS^T = P^T (dP^T - D); both to shared memory as bf16.
    const bool need_mask = k0 + Bc - 1 > q0 + g.off || q0 + Br > g.Tq || k0 + Bc > g.Tk ||
                           (g.window > 0 && k0 <= q0 + Br - 1 + g.off - g.window);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key_l = wr * 32 + mt * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
          const int q_l = wc * 32 + i * 8 + (lane & 3) * 2 + (e & 1);
          float pv = fast_exp2(st[mt][i][e] * p.scale_log2 - sLb[q_l] * kLog2e);
          if (need_mask) {
            const int key = k0 + key_l, q = q0 + q_l;
            const bool visible = key <= q + g.off && q < g.Tq && key < g.Tk &&
                                 (g.window <= 0 || key > q + g.off - g.window);
            if (!visible) pv = 0.f;
          }
          st[mt][i][e] = pv;
          dpt[mt][i][e] = pv * (dpt[mt][i][e] - sDvb[q_l]);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = wr * 32 + mt * 16 + (lane >> 2) + r * 8;
          const int col = wc * 32 + i * 8 + (lane & 3) * 2;
          const int off = swz<Br>(row, col >> 3) + (col & 7);
          *reinterpret_cast<uint32_t*>(sP + off) = pack_bf16(st[mt][i][2 * r], st[mt][i][2 * r + 1]);
          *reinterpret_cast<uint32_t*>(sdS + off) = pack_bf16(dpt[mt][i][2 * r], dpt[mt][i][2 * r + 1]);
        }
      }
    }
    __syncthreads();

    // (4) dV += P^T dO and (5) dK += dS^T Q: this warp's 32 keys x D/2 columns, k-dim = 64 queries.
#pragma unroll
    for (int t = 0; t < Br / 16; ++t) {
      uint32_t pa[2][4], sa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int a_off = swz<Br>(wr * 32 + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, t * 2 + (lane >> 4));
        ldmatrix_x4(pa[mt], smem_addr(sP + a_off));
        ldmatrix_x4(sa[mt], smem_addr(sdS + a_off));
      }
#pragma unroll
      for (int dd = 0; dd < kNB / 2; ++dd) {
        uint32_t ob[4], qb[4];
        const int b_off = swz<D>(t * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, wc * (D / 16) + dd * 2 + (lane >> 4));
        ldmatrix_x4_trans(ob, smem_addr(sdOb + b_off));
        ldmatrix_x4_trans(qb, smem_addr(sQb + b_off));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_bf16(dv_acc[mt][2 * dd], pa[mt], ob[0], ob[1]);
          mma_bf16(dv_acc[mt][2 * dd + 1], pa[mt], ob[2], ob[3]);
          mma_bf16(dk_acc[mt][2 * dd], sa[mt], qb[0], qb[1]);
          mma_bf16(dk_acc[mt][2 * dd + 1], sa[mt], qb[2], qb[3]);
        }
      }
    }

    // (6) dQ_tile = dS K: this warp's 32 queries x D/4 columns, k-dim = 128 keys; the A operand
    // (dS^T)^T comes from ldmatrix.trans of the stored dS^T.
    float dq[2][kQNB][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < kQNB; ++i) dq[mt][i][0] = dq[mt][i][1] = dq[mt][i][2] = dq[mt][i][3] = 0.f;
#pragma unroll
    for (int t = 0; t < Bc / 16; ++t) {
      uint32_t da[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        ldmatrix_x4_trans(da[mt], smem_addr(sdS + swz<Br>(t * 16 + (lane & 7) + (lane >> 4) * 8,
                                                          wq * 4 + mt * 2 + ((lane >> 3) & 1))));
#pragma unroll
      for (int dd = 0; dd < kQNB / 2; ++dd) {
        uint32_t kb[4];
        ldmatrix_x4_trans(kb, smem_addr(sK + swz<D>(t * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                    wd * (D / 32) + dd * 2 + (lane >> 4))));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_bf16(dq[mt][2 * dd], da[mt], kb[0], kb[1]);
          mma_bf16(dq[mt][2 * dd + 1], da[mt], kb[2], kb[3]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int q = q0 + wq * 32 + mt * 16 + (lane >> 2) + r * 8;
        if (q < g.Tq) {
          float* dst = p.dq_acc + ((int64_t(b) * g.Tq + q) * g.H + h) * D + wd * (D / 4) + (lane & 3) * 2;
#pragma unroll
          for (int i = 0; i < kQNB; ++i) atomic_add2(dst + i * 8, dq[mt][i][2 * r], dq[mt][i][2 * r + 1]);
        }
      }
    }
  }

  // dK = scale * dS^T Q, dV = P^T dO for this CTA's keys (zero when no query sees them).
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = k0 + wr * 32 + mt * 16 + (lane >> 2) + r * 8;
      if (key < g.Tk) {
        const int64_t base = b * p.sdk.b + int64_t(key) * p.sdk.t + hk * p.sdk.h + wc * (D / 2) + (lane & 3) * 2;
#pragma unroll
        for (int i = 0; i < kNB; ++i) {
          *reinterpret_cast<__nv_bfloat162*>(p.dk + base + i * 8) =
              __floats2bfloat162_rn(dk_acc[mt][i][2 * r] * p.scale, dk_acc[mt][i][2 * r + 1] * p.scale);
          *reinterpret_cast<__nv_bfloat162*>(p.dv + base + i * 8) =
              __floats2bfloat162_rn(dv_acc[mt][i][2 * r], dv_acc[mt][i][2 * r + 1]);
        }
      }
    }
  }
}

#include "layers/mixers/attention/flash_attention_variants.cuh"

// dq = dq_accum * scale, converted to the output dtype (both contiguous [B, Tq, H, D]).
template <typename T>
__global__ void dq_convert_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t n, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_acc(dq + i, acc[i] * scale);
}

// ============================================================================================
// Shared by both paths: D_i = rowsum(dO_i * O_i), one warp per (b, i, h) row.
// ============================================================================================

template <typename T, typename A>
__global__ void dot_do_o_kernel(const T* __restrict__ dout, Strides sdo, const T* __restrict__ o, Strides so,
                                A* __restrict__ dvec, int B, int Tq, int H, int D) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= int64_t(B) * Tq * H) return;
  const int h = int(row % H);
  const int i = int((row / H) % Tq);
  const int b = int(row / (int64_t(H) * Tq));
  const T* gr = dout + b * sdo.b + int64_t(i) * sdo.t + h * sdo.h;
  const T* orow = o + b * so.b + int64_t(i) * so.t + h * so.h;
  A s = 0;
  for (int d = lane; d < D; d += 32) s += A(load_acc(gr + d)) * A(load_acc(orow + d));
  s = warp_reduce_sum(s);
  if (lane == 0) dvec[(int64_t(b) * H + h) * Tq + i] = s;
}

// ============================================================================================
// SIMT path: one warp per row, any float dtype, D <= 256
// ============================================================================================

constexpr int kSimtWarps = 4;
constexpr int kSimtMaxD = 256;
constexpr int kSimtCols = kSimtMaxD / 32;  // columns per lane

template <typename A>
__device__ __forceinline__ A exp_acc(A x) {
  if constexpr (sizeof(A) == 8) return exp(x);
  else return expf(x);
}
template <typename A>
__device__ __forceinline__ A log_acc(A x) {
  if constexpr (sizeof(A) == 8) return log(x);
  else return logf(x);
}

template <typename T, typename A>
struct SimtParams {
  const T* q;
  const T* k;
  const T* v;
  const T* dout;
  const A* lse;
  const A* dvec;
  T* o;      // contiguous
  A* lse_out;
  T* dq;     // contiguous
  T* dk;     // contiguous
  T* dv;     // contiguous
  Strides sq, sk, sv, sdo, so, sdk;
  Geometry g;
  A scale;
};

// Dot product of a shared-memory row with a global row of D elements (one lane).
template <typename T, typename A>
__device__ __forceinline__ A row_dot(const A* s, const T* gl, int D) {
  A acc = 0;
  for (int d = 0; d < D; ++d) acc += s[d] * A(load_acc(gl + d));
  return acc;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kSimtWarps * 32) simt_fwd_kernel(SimtParams<T, A> p) {
  __shared__ A sq[kSimtWarps][kSimtMaxD];
  const Geometry& g = p.g;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kSimtWarps + warp;
  if (row >= int64_t(g.B) * g.H * g.Tq) return;  // warp-uniform; no block-level sync below
  const int i = int(row % g.Tq);
  const int bh = int(row / g.Tq);
  const int b = bh / g.H, h = bh % g.H, hk = h / g.group;
  const T* qi = p.q + b * p.sq.b + int64_t(i) * p.sq.t + h * p.sq.h;
  for (int d = lane; d < g.D; d += 32) sq[warp][d] = A(load_acc(qi + d));
  __syncwarp();
  const int diag = i + g.off;
  const int hi = min(g.Tk - 1, diag);
  const int lo = g.window > 0 ? max(0, diag - g.window + 1) : 0;
  const T* kg = p.k + b * p.sk.b + hk * p.sk.h;
  const T* vg = p.v + b * p.sv.b + hk * p.sv.h;
  A acc[kSimtCols];
#pragma unroll
  for (int c = 0; c < kSimtCols; ++c) acc[c] = 0;
  A m = -INFINITY, l = 0;
  for (int j0 = lo; j0 <= hi; j0 += 32) {
    const int j = j0 + lane;
    A s = -INFINITY;
    if (j <= hi) s = row_dot(sq[warp], kg + int64_t(j) * p.sk.t, g.D) * p.scale;
    const A mn = max(m, warp_reduce_max(s));  // finite: lane 0's key is visible
    const A corr = exp_acc(m - mn);
    const A pj = j <= hi ? exp_acc(s - mn) : A(0);
    l = l * corr + warp_reduce_sum(pj);
#pragma unroll
    for (int c = 0; c < kSimtCols; ++c) acc[c] *= corr;
    const int nj = min(32, hi - j0 + 1);
    for (int jj = 0; jj < nj; ++jj) {
      const A pb = __shfl_sync(0xffffffffu, pj, jj);
      const T* vj = vg + int64_t(j0 + jj) * p.sv.t;
#pragma unroll
      for (int c = 0; c < kSimtCols; ++c) {
        const int d = lane + 32 * c;
        if (d < g.D) acc[c] += pb * A(load_acc(vj + d));
      }
    }
    m = mn;
  }
  const A inv = l > A(0) ? A(1) / l : A(0);
  T* orow = p.o + b * p.so.b + int64_t(i) * p.so.t + h * p.so.h;
#pragma unroll
  for (int c = 0; c < kSimtCols; ++c) {
    const int d = lane + 32 * c;
    if (d < g.D) store_acc(orow + d, acc[c] * inv);
  }
  if (lane == 0) p.lse_out[(int64_t(b) * g.H + h) * g.Tq + i] = l > A(0) ? m + log_acc(l) : A(INFINITY);
}

// dq_i = scale sum_j p_ij (dO_i.v_j - D_i) k_j: one warp per (b, h, i).
template <typename T, typename A>
__global__ void __launch_bounds__(kSimtWarps * 32) simt_bwd_dq_kernel(SimtParams<T, A> p) {
  __shared__ A sq[kSimtWarps][kSimtMaxD];
  __shared__ A sg[kSimtWarps][kSimtMaxD];
  const Geometry& g = p.g;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kSimtWarps + warp;
  if (row >= int64_t(g.B) * g.H * g.Tq) return;
  const int i = int(row % g.Tq);
  const int bh = int(row / g.Tq);
  const int b = bh / g.H, h = bh % g.H, hk = h / g.group;
  const T* qi = p.q + b * p.sq.b + int64_t(i) * p.sq.t + h * p.sq.h;
  const T* gi = p.dout + b * p.sdo.b + int64_t(i) * p.sdo.t + h * p.sdo.h;
  for (int d = lane; d < g.D; d += 32) {
    sq[warp][d] = A(load_acc(qi + d));
    sg[warp][d] = A(load_acc(gi + d));
  }
  __syncwarp();
  const int64_t li = (int64_t(b) * g.H + h) * g.Tq + i;
  const A lse = p.lse[li], Di = p.dvec[li];
  const int diag = i + g.off;
  const int hi = min(g.Tk - 1, diag);
  const int lo = g.window > 0 ? max(0, diag - g.window + 1) : 0;
  const T* kg = p.k + b * p.sk.b + hk * p.sk.h;
  const T* vg = p.v + b * p.sv.b + hk * p.sv.h;
  A acc[kSimtCols];
#pragma unroll
  for (int c = 0; c < kSimtCols; ++c) acc[c] = 0;
  for (int j0 = lo; j0 <= hi; j0 += 32) {
    const int j = j0 + lane;
    A ds = 0;
    if (j <= hi) {
      const A s = row_dot(sq[warp], kg + int64_t(j) * p.sk.t, g.D) * p.scale;
      const A dp = row_dot(sg[warp], vg + int64_t(j) * p.sv.t, g.D);
      ds = exp_acc(s - lse) * (dp - Di);
    }
    const int nj = min(32, hi - j0 + 1);
    for (int jj = 0; jj < nj; ++jj) {
      const A db = __shfl_sync(0xffffffffu, ds, jj);
      const T* kj = kg + int64_t(j0 + jj) * p.sk.t;
#pragma unroll
      for (int c = 0; c < kSimtCols; ++c) {
        const int d = lane + 32 * c;
        if (d < g.D) acc[c] += db * A(load_acc(kj + d));
      }
    }
  }
  T* dqrow = p.dq + ((int64_t(b) * g.Tq + i) * g.H + h) * g.D;
#pragma unroll
  for (int c = 0; c < kSimtCols; ++c) {
    const int d = lane + 32 * c;
    if (d < g.D) store_acc(dqrow + d, acc[c] * p.scale);
  }
}

// dk_j = scale sum_{h in group, i} ds_ij q_i, dv_j = sum p_ij dO_i: one warp per (b, kv head, j).
template <typename T, typename A>
__global__ void __launch_bounds__(kSimtWarps * 32) simt_bwd_dkdv_kernel(SimtParams<T, A> p) {
  __shared__ A sk[kSimtWarps][kSimtMaxD];
  __shared__ A sv[kSimtWarps][kSimtMaxD];
  const Geometry& g = p.g;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kSimtWarps + warp;
  if (row >= int64_t(g.B) * g.Hkv * g.Tk) return;
  const int j = int(row % g.Tk);
  const int bk = int(row / g.Tk);
  const int b = bk / g.Hkv, hk = bk % g.Hkv;
  const T* kj = p.k + b * p.sk.b + int64_t(j) * p.sk.t + hk * p.sk.h;
  const T* vj = p.v + b * p.sv.b + int64_t(j) * p.sv.t + hk * p.sv.h;
  for (int d = lane; d < g.D; d += 32) {
    sk[warp][d] = A(load_acc(kj + d));
    sv[warp][d] = A(load_acc(vj + d));
  }
  __syncwarp();
  const int ilo = max(0, j - g.off);
  const int ihi = g.window > 0 ? min(g.Tq - 1, j - g.off + g.window - 1) : g.Tq - 1;
  A adk[kSimtCols], adv[kSimtCols];
#pragma unroll
  for (int c = 0; c < kSimtCols; ++c) adk[c] = adv[c] = 0;
  for (int h = hk * g.group; h < (hk + 1) * g.group; ++h) {
    const T* qg = p.q + b * p.sq.b + h * p.sq.h;
    const T* gg = p.dout + b * p.sdo.b + h * p.sdo.h;
    const int64_t lrow = (int64_t(b) * g.H + h) * g.Tq;
    for (int i0 = ilo; i0 <= ihi; i0 += 32) {
      const int i = i0 + lane;
      A pi = 0, ds = 0;
      if (i <= ihi) {
        const A s = row_dot(sk[warp], qg + int64_t(i) * p.sq.t, g.D) * p.scale;
        const A dp = row_dot(sv[warp], gg + int64_t(i) * p.sdo.t, g.D);
        pi = exp_acc(s - p.lse[lrow + i]);
        ds = pi * (dp - p.dvec[lrow + i]);
      }
      const int ni = min(32, ihi - i0 + 1);
      for (int ii = 0; ii < ni; ++ii) {
        const A pb = __shfl_sync(0xffffffffu, pi, ii);
        const A db = __shfl_sync(0xffffffffu, ds, ii);
        const T* qr = qg + int64_t(i0 + ii) * p.sq.t;
        const T* gr = gg + int64_t(i0 + ii) * p.sdo.t;
#pragma unroll
        for (int c = 0; c < kSimtCols; ++c) {
          const int d = lane + 32 * c;
          if (d < g.D) {
            adv[c] += pb * A(load_acc(gr + d));
            adk[c] += db * A(load_acc(qr + d));
          }
        }
      }
    }
  }
  const int64_t out = ((int64_t(b) * g.Tk + j) * g.Hkv + hk) * g.D;
#pragma unroll
  for (int c = 0; c < kSimtCols; ++c) {
    const int d = lane + 32 * c;
    if (d < g.D) {
      store_acc(p.dk + out + d, adk[c] * p.scale);
      store_acc(p.dv + out + d, adv[c]);
    }
  }
}

// ============================================================================================
// Host side
// ============================================================================================

Geometry geometry_of(const Dims& d) {
  // Sequence tiles run along gridDim.y (at most 65535 tiles of >= 64 rows); heads along gridDim.x.
  SEQMIX_CHECK(d.Tq <= (int64_t(1) << 22) && d.Tk <= (int64_t(1) << 22), "attention (cuda): sequence length ",
               std::max(d.Tq, d.Tk), " is above the supported 4M");
  SEQMIX_CHECK(d.B * d.H < (int64_t(1) << 31) && d.B * d.H * d.Tq < (int64_t(1) << 40), "attention (cuda): batch x heads ",
               d.B * d.H, " is too large");
  Geometry g;
  g.B = int(d.B);
  g.H = int(d.H);
  g.Hkv = int(d.Hkv);
  g.group = int(d.H / d.Hkv);
  g.Tq = int(d.Tq);
  g.Tk = int(d.Tk);
  g.D = int(d.D);
  g.off = int(d.Tk - d.Tq);
  g.window = d.window > 0 ? int(std::min<int64_t>(d.window, int64_t(1) << 30)) : 0;
  return g;
}

// A tensor the tensor-core kernels can read with 16-byte cp.async: unit last-dim stride, the other
// strides multiples of 8 elements, 16-byte aligned start.
bool rows_aligned(const Tensor& t) {
  return t.stride(3) == 1 && t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0 &&
         (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15u) == 0;
}
Tensor aligned_rows(const Tensor& t) { return rows_aligned(t) ? t : t.clone(); }

bool flash_supported(const Dims& d, DType dt) { return dt == DType::BF16 && (d.D == 64 || d.D == 128); }

// Opt in to more than 48 KB of dynamic shared memory, once per (kernel, device).
template <typename Kernel>
void set_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& done) {
  const int dev = ::seqmix::cuda::current_device();
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit, std::memory_order_acq_rel);
}

template <int D>
void launch_flash_fwd(const FwdParams& p) {
  static std::atomic<uint64_t> done{0};
  constexpr int smem = fwd_smem_bytes<D>();
  set_smem(flash_fwd_kernel<D>, smem, done);
  dim3 grid(unsigned(p.g.B * p.g.H), unsigned((p.g.Tq + kFwdBr - 1) / kFwdBr));
  flash_fwd_kernel<D><<<grid, kFwdWarps * 32, smem, ::seqmix::cuda::current_stream()>>>(p);
  SEQMIX_CUDA_CHECK_LAUNCH("attention flash_fwd_kernel");
}

// Kernel variants (flash_attention_variants.cuh), chosen once per process by SEQMIX_ATTN_FWD /
// SEQMIX_ATTN_BWD; 0 selects the kernels above. Unset: variant 10 for both, the fastest measured on the
// H100 (B=4, T=4096, H=16, D=128: 3.59 ms fwd+bwd against 3.95 for the kernels above; docs/PERF.md).
constexpr int kDefaultFwdVariant = 10, kDefaultBwdVariant = 10;
int env_variant(const char* name, int fallback) {
  const char* s = std::getenv(name);
  return s && *s ? std::atoi(s) : fallback;
}
int fwd_variant() {
  static const int v = env_variant("SEQMIX_ATTN_FWD", kDefaultFwdVariant);
  return v;
}
int bwd_variant() {
  static const int v = env_variant("SEQMIX_ATTN_BWD", kDefaultBwdVariant);
  return v;
}

template <int D, int Bc, bool kLazy, int kUnroll, int MT = 2, bool kSmemEpi = false>
void launch_flash_fwd_v(const FwdParams& p) {
  static std::atomic<uint64_t> done{0};
  constexpr int smem = fwd_v_smem_bytes<D, Bc>();
  auto kernel = flash_fwd_v_kernel<D, Bc, kLazy, kUnroll, MT, kSmemEpi>;
  const bool first = !(done.load(std::memory_order_acquire) & (uint64_t(1) << (::seqmix::cuda::current_device() & 63)));
  set_smem(kernel, smem, done);
  if (first)  // two CTAs per SM: ask for the whole shared-memory carveout (a hint; the default may pick less)
    SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           int(cudaSharedmemCarveoutMaxShared)));
  dim3 grid(unsigned(p.g.B * p.g.H), unsigned((p.g.Tq + kFwdBr - 1) / kFwdBr));
  kernel<<<grid, 128 / MT * 2, smem, ::seqmix::cuda::current_stream()>>>(p);
  SEQMIX_CUDA_CHECK_LAUNCH("attention flash_fwd_v_kernel");
}

// 1: 64-key tiles, folded scale, rolled QK^T k-loop at D = 128; 2: 1 + lazy rescale; 3: fwd_bc<D> keys +
// folded scale + masked-warp skip + lazy rescale; 4: 3 without the lazy rescale; 5: 1 with the k-loop
// unrolled (spills at D = 128); 6: 8 warps of 16 rows (two CTAs of 256 threads per SM, <= 128 registers),
// fwd_bc<D> keys, lazy rescale; 7: 6 with 64-key tiles and the rolled k-loop at D = 128; 8: 2 with the
// k-loop unrolled by 2 (ptxas: 16 bytes of spill at D = 128); 9: 2 with the O epilogue through shared
// memory (16-byte stores); 10: 8 with it. Anything else: the default kernel.
template <int D>
void launch_flash_fwd_variant(const FwdParams& p, int variant) {
  constexpr int kRolled = D >= 128 ? 1 : 0;
  switch (variant) {
    case 1: launch_flash_fwd_v<D, 64, false, kRolled>(p); return;
    case 2: launch_flash_fwd_v<D, 64, true, kRolled>(p); return;
    case 3: launch_flash_fwd_v<D, fwd_bc<D>(), true, 0>(p); return;
    case 4: launch_flash_fwd_v<D, fwd_bc<D>(), false, 0>(p); return;
    case 5: launch_flash_fwd_v<D, 64, false, 0>(p); return;
    case 6: launch_flash_fwd_v<D, fwd_bc<D>(), true, 0, 1>(p); return;
    case 7: launch_flash_fwd_v<D, 64, true, kRolled, 1>(p); return;
    case 8: launch_flash_fwd_v<D, 64, true, D >= 128 ? 2 : 0>(p); return;
    case 9: launch_flash_fwd_v<D, 64, true, kRolled, 2, true>(p); return;
    case 10: launch_flash_fwd_v<D, 64, true, D >= 128 ? 2 : 0, 2, true>(p); return;
    default: launch_flash_fwd<D>(p); return;
  }
}

template <int D, int NWR, bool kLean = false, bool kRollS = false, bool kStepSkip = true>
void launch_flash_bwd_v(const BwdParams& p) {
  static std::atomic<uint64_t> done{0};
  constexpr int smem = bwd_v_smem_bytes<D, NWR>();
  const bool first = !(done.load(std::memory_order_acquire) & (uint64_t(1) << (::seqmix::cuda::current_device() & 63)));
  auto kernel = flash_bwd_v_kernel<D, NWR, kLean, kRollS, kStepSkip>;
  set_smem(kernel, smem, done);
  if (first && NWR < 4)  // two CTAs per SM need the whole shared-memory carveout
    SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           int(cudaSharedmemCarveoutMaxShared)));
  dim3 grid(unsigned(p.g.B * p.g.Hkv), unsigned((p.g.Tk + 32 * NWR - 1) / (32 * NWR)));
  kernel<<<grid, 64 * NWR, smem, ::seqmix::cuda::current_stream()>>>(p);
  SEQMIX_CUDA_CHECK_LAUNCH("attention flash_bwd_v_kernel");
}

template <int D>
void launch_flash_bwd(const BwdParams& p);

// Main kernels: 1: the default tiling (8 warps, 128 keys) + register lse / D, folded scale, masked-block
// skipping; 2: the same with 4 warps and 64 keys per CTA (two CTAs per SM); 3: 1 + lean ldmatrix
// addresses; 4: 2 + lean addresses; 5: 3 + rolled S^T / dP^T k-loop; 6: 4 + rolled k-loop.
// SEQMIX_ATTN_BWD = v in 1..2 runs main kernel v with the default pre / post passes; v in 3..8 runs main
// kernel v - 2 with the 16-byte pre / post passes (cuda_backward); 9: the default main kernel with the
// 16-byte passes; 10: main kernel 3 without the per-k-step skips (main 8), with the 16-byte passes.
// Anything else: the default kernel.
template <int D>
void launch_flash_bwd_variant(const BwdParams& p, int variant) {
  switch (variant) {
    case 1: launch_flash_bwd_v<D, 4>(p); return;
    case 2: launch_flash_bwd_v<D, 2>(p); return;
    case 3: launch_flash_bwd_v<D, 4, true>(p); return;
    case 4: launch_flash_bwd_v<D, 2, true>(p); return;
    case 5: launch_flash_bwd_v<D, 4, true, true>(p); return;
    case 6: launch_flash_bwd_v<D, 2, true, true>(p); return;
    case 8: launch_flash_bwd_v<D, 4, true, false, false>(p); return;
    default: launch_flash_bwd<D>(p); return;
  }
}

template <int D>
void launch_flash_bwd(const BwdParams& p) {
  static std::atomic<uint64_t> done{0};
  constexpr int smem = bwd_smem_bytes<D>();
  set_smem(flash_bwd_kernel<D>, smem, done);
  dim3 grid(unsigned(p.g.B * p.g.Hkv), unsigned((p.g.Tk + kBwdBc - 1) / kBwdBc));
  flash_bwd_kernel<D><<<grid, kBwdThreads, smem, ::seqmix::cuda::current_stream()>>>(p);
  SEQMIX_CUDA_CHECK_LAUNCH("attention flash_bwd_kernel");
}

template <typename T>
const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

void check_device(const char* what, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts) {
    SEQMIX_CHECK(t->is_cuda(), what, ": expected CUDA tensors");
    SEQMIX_CHECK(t->size(3) <= 1 || t->stride(3) == 1, what, ": the last dim must have unit stride");
  }
}

// Calls f.template operator()<T, A>() with the device element type and its compute type.
template <typename F>
void dispatch_simt(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::F64: f.template operator()<double, double>(); return;
    case DType::F32: f.template operator()<float, float>(); return;
    case DType::BF16: f.template operator()<__nv_bfloat16, float>(); return;
    case DType::F16: f.template operator()<__half, float>(); return;
    default: SEQMIX_FAIL(what, ": dtype ", dtype_name(dt), " is not supported (floating types only)");
  }
}

unsigned simt_blocks(int64_t rows) { return unsigned((rows + kSimtWarps - 1) / kSimtWarps); }

}  // namespace

bool cuda_uses_flash(const Dims& d, const Tensor& q, const Tensor&, const Tensor&) {
  return flash_supported(d, q.dtype());
}

void cuda_forward(const Dims& d, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& o,
                  const Tensor& lse) {
  check_device("attention (cuda)", {&q_in, &k_in, &v_in, &o});
  SEQMIX_CHECK(o.is_contiguous() && lse.is_contiguous(), "attention (cuda): outputs must be contiguous");
  const Geometry g = geometry_of(d);
  if (o.numel() == 0) return;
  cudaStream_t stream = ::seqmix::cuda::current_stream();
  if (flash_supported(d, q_in.dtype())) {
    SEQMIX_CHECK(lse.dtype() == DType::F32, "attention (cuda): lse must be f32");
    Tensor q = aligned_rows(q_in), k = aligned_rows(k_in), v = aligned_rows(v_in);
    FwdParams p{};
    p.q = cptr<bf16_t>(q);
    p.k = cptr<bf16_t>(k);
    p.v = cptr<bf16_t>(v);
    p.o = mptr<bf16_t>(o);
    p.lse = mptr<float>(lse);
    p.sq = strides_of(q);
    p.sk = strides_of(k);
    p.sv = strides_of(v);
    p.so = strides_of(o);
    p.g = g;
    p.scale_log2 = float(d.scale) * kLog2e;
    const int variant = d.scale > 0 ? fwd_variant() : 0;  // the variants fold a positive scale into the max
    if (d.D == 64) launch_flash_fwd_variant<64>(p, variant);
    else launch_flash_fwd_variant<128>(p, variant);
    return;
  }
  SEQMIX_CHECK(d.D <= kSimtMaxD, "attention (cuda): head dim ", d.D, " is not supported (at most ", kSimtMaxD,
               "; the tensor-core path takes bf16 with D = 64 or 128)");
  dispatch_simt(q_in.dtype(), "attention (cuda)", [&]<typename T, typename A>() {
    SEQMIX_CHECK(lse.dtype() == (sizeof(A) == 8 ? DType::F64 : DType::F32), "attention (cuda): wrong lse dtype");
    SimtParams<T, A> p{};
    p.q = cptr<T>(q_in);
    p.k = cptr<T>(k_in);
    p.v = cptr<T>(v_in);
    p.o = mptr<T>(o);
    p.lse_out = mptr<A>(lse);
    p.sq = strides_of(q_in);
    p.sk = strides_of(k_in);
    p.sv = strides_of(v_in);
    p.so = strides_of(o);
    p.g = g;
    p.scale = A(d.scale);
    simt_fwd_kernel<T, A><<<simt_blocks(d.B * d.H * d.Tq), kSimtWarps * 32, 0, stream>>>(p);
    SEQMIX_CUDA_CHECK_LAUNCH("attention simt_fwd_kernel");
  });
}

void cuda_backward(const Dims& d, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& o,
                   const Tensor& lse, const Tensor& dout_in, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  check_device("attention backward (cuda)", {&q_in, &k_in, &v_in, &o, &dout_in, &dq, &dk, &dv});
  SEQMIX_CHECK(dq.is_contiguous() && dk.is_contiguous() && dv.is_contiguous() && lse.is_contiguous(),
               "attention backward (cuda): gradients and lse must be contiguous");
  const Geometry g = geometry_of(d);
  cudaStream_t stream = ::seqmix::cuda::current_stream();
  const int64_t rows = d.B * d.Tq * d.H;
  const DType acc_dt = q_in.dtype() == DType::F64 ? DType::F64 : DType::F32;
  SEQMIX_CHECK(lse.dtype() == acc_dt, "attention backward (cuda): wrong lse dtype");
  Tensor dvec = Tensor::empty({d.B, d.H, d.Tq}, acc_dt, q_in.device());

  if (flash_supported(d, q_in.dtype())) {
    Tensor q = aligned_rows(q_in), k = aligned_rows(k_in), v = aligned_rows(v_in), dout = aligned_rows(dout_in);
    // SEQMIX_ATTN_BWD >= 3: 16-byte pre / post passes (D_i with the dq_acc zeroing fused in; dq conversion),
    // then the main kernel of variant (variant - 2).
    const int variant = bwd_variant();
    const bool fast_passes = variant >= 3 && rows_aligned(o);
    Tensor dq_acc = Tensor::empty({d.B, d.Tq, d.H, d.D}, DType::F32, q_in.device());
    if (fast_passes) {
      const unsigned blocks = unsigned((rows * (d.D / 8) + 255) / 256);
      if (d.D == 64)
        dot_do_o_zero_kernel<64><<<blocks, 256, 0, stream>>>(cptr<bf16_t>(dout), strides_of(dout), cptr<bf16_t>(o),
                                                            strides_of(o), mptr<float>(dvec), mptr<float>(dq_acc),
                                                            g.B, g.Tq, g.H);
      else
        dot_do_o_zero_kernel<128><<<blocks, 256, 0, stream>>>(cptr<bf16_t>(dout), strides_of(dout), cptr<bf16_t>(o),
                                                             strides_of(o), mptr<float>(dvec), mptr<float>(dq_acc),
                                                             g.B, g.Tq, g.H);
      SEQMIX_CUDA_CHECK_LAUNCH("attention dot_do_o_zero_kernel");
    } else {
      dot_do_o_kernel<bf16_t, float><<<simt_blocks(rows), kSimtWarps * 32, 0, stream>>>(
          cptr<bf16_t>(dout), strides_of(dout), cptr<bf16_t>(o), strides_of(o), mptr<float>(dvec), g.B, g.Tq, g.H, g.D);
      SEQMIX_CUDA_CHECK_LAUNCH("attention dot_do_o_kernel");
      SEQMIX_CUDA_CHECK(cudaMemsetAsync(dq_acc.data_ptr(), 0, dq_acc.nbytes(), stream));
    }
    BwdParams p{};
    p.q = cptr<bf16_t>(q);
    p.k = cptr<bf16_t>(k);
    p.v = cptr<bf16_t>(v);
    p.dout = cptr<bf16_t>(dout);
    p.lse = cptr<float>(lse);
    p.dvec = cptr<float>(dvec);
    p.dq_acc = mptr<float>(dq_acc);
    p.dk = mptr<bf16_t>(dk);
    p.dv = mptr<bf16_t>(dv);
    p.sq = strides_of(q);
    p.sk = strides_of(k);
    p.sv = strides_of(v);
    p.sdo = strides_of(dout);
    p.sdk = strides_of(dk);
    p.g = g;
    p.scale = float(d.scale);
    p.scale_log2 = float(d.scale) * kLog2e;
    const int main_variant = variant >= 3 ? variant - 2 : variant;
    if (d.D == 64) launch_flash_bwd_variant<64>(p, main_variant);
    else launch_flash_bwd_variant<128>(p, main_variant);
    const int64_t n = dq.numel();
    if (fast_passes) {
      dq_convert8_kernel<<<::seqmix::cuda::grid_for(n / 8, 256, 8), 256, 0, stream>>>(
          cptr<float>(dq_acc), mptr<bf16_t>(dq), n / 8, float(d.scale));
    } else {
      dq_convert_kernel<bf16_t><<<::seqmix::cuda::grid_for(n, 256, 8), 256, 0, stream>>>(
          cptr<float>(dq_acc), mptr<bf16_t>(dq), n, float(d.scale));
    }
    SEQMIX_CUDA_CHECK_LAUNCH("attention dq_convert_kernel");
    return;
  }

  SEQMIX_CHECK(d.D <= kSimtMaxD, "attention backward (cuda): head dim ", d.D, " is not supported (at most ",
               kSimtMaxD, ")");
  dispatch_simt(q_in.dtype(), "attention backward (cuda)", [&]<typename T, typename A>() {
    dot_do_o_kernel<T, A><<<simt_blocks(rows), kSimtWarps * 32, 0, stream>>>(
        cptr<T>(dout_in), strides_of(dout_in), cptr<T>(o), strides_of(o), mptr<A>(dvec), g.B, g.Tq, g.H, g.D);
    SEQMIX_CUDA_CHECK_LAUNCH("attention dot_do_o_kernel");
    SimtParams<T, A> p{};
    p.q = cptr<T>(q_in);
    p.k = cptr<T>(k_in);
    p.v = cptr<T>(v_in);
    p.dout = cptr<T>(dout_in);
    p.lse = cptr<A>(lse);
    p.dvec = cptr<A>(dvec);
    p.dq = mptr<T>(dq);
    p.dk = mptr<T>(dk);
    p.dv = mptr<T>(dv);
    p.sq = strides_of(q_in);
    p.sk = strides_of(k_in);
    p.sv = strides_of(v_in);
    p.sdo = strides_of(dout_in);
    p.g = g;
    p.scale = A(d.scale);
    simt_bwd_dq_kernel<T, A><<<simt_blocks(rows), kSimtWarps * 32, 0, stream>>>(p);
    SEQMIX_CUDA_CHECK_LAUNCH("attention simt_bwd_dq_kernel");
    simt_bwd_dkdv_kernel<T, A><<<simt_blocks(d.B * d.Hkv * d.Tk), kSimtWarps * 32, 0, stream>>>(p);
    SEQMIX_CUDA_CHECK_LAUNCH("attention simt_bwd_dkdv_kernel");
  });
}

}  // namespace seqmix::mixers::attention_impl
