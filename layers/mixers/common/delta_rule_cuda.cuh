// Kernel bodies and launch sequences of the fused chunked delta rule (the algorithm and the gradient
// derivation are in delta_rule_cuda.cu's header comment). Included by delta_rule_cuda.cu and, with
// DELTA_EMULATE defined, by the CPU emulation harness scripts/delta_emulate.cc (scripts/emulate/cuda_host.h
// supplies the CUDA built-ins, tc_tiles.cuh nvcuda::wmma on whole 16 x 16 tiles, the harness emu_launch).
// The tensor-core tile helpers shared with the linear recurrence's tensor-core kernels are in tc_tiles.cuh.
// No spdlog / fmt here.
//
// Element types: IN is the type of q, k, v, o and their gradients (bf16, f16 or f32); OP the type of the
// matmul operands in shared memory: bf16 (tensor cores, m16n8k16 mma.sync, f32 accumulation) or float (plain
// f32 FFMA products, for f32 inputs whose shared memory fits, and for the emulation's tight checks).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "layers/mixers/common/tc_tiles.cuh"

#ifndef DELTA_EMULATE
#include "core/cuda/cuda_check.h"
#else
#include <atomic>
#include <cstring>
#include <functional>
#endif

namespace seqmix::mixers::delta_cuda {

#ifdef DELTA_EMULATE
void emu_launch(dim3 grid, int threads, size_t smem, const std::function<void()>& body);  // the harness's
#endif

// The tile helpers shared with the linear recurrence's tensor-core kernels (tc_tiles.cuh).
using tc::align128;
using tc::bf16;
using tc::fromf;
using tc::kScrLd;  // per-warp f32 epilogue tile: 16 rows, stride kScrLd; kScrTile floats per warp
using tc::kScrTile;
using tc::tof;
namespace wm = nvcuda::wmma;

constexpr int kThreads = 256;
// The generalized rule's kernels that hold one CTA per SM (fwd_out, bwd_val, bwd_key; dplr_cuda.cuh) run this many
// threads: twice the warps to hide the operand loads' and the mma chains' latencies.
constexpr int kWideThreads = 512;

struct Geo {
  int B, T, H, Dk, Dv, C, N;
  int DVT;      // Dv columns per CTA of the two sequential kernels
  float scale;  // output scale
  float eps;    // L2-normalization epsilon
  bool gated;   // g given (else the log decays are 0)
};

// Every global pointer of the forward and the backward. Padded per-head buffers ("hp" layout) are
// [B, H, N * C, D]; states [B, H, N, Dk, Dv]; gC (cumulative log decay at each chunk's end) [B, H, N].
template <class IN, class OP>
struct Ptrs {
  const IN *q, *k, *v, *dout;
  const float *beta, *g, *s0, *dfinal;
  OP *W, *Kd, *Qg;              // hp: W = T diag(b e^G) K, Kd = diag(e^(G_C - G)) K, Qg = diag(e^G) Q
  OP *Tm;                       // hp [.., C]: each chunk's T = (I + A)^{-1} (fwd_prep saves it for bwd_wy; may be null
                                // in a forward without backward)
  float *U;                     // hp [.., Dv]: U = T diag(b) V (f32: fwd_state subtracts W S_n from it)
  OP *Un;                       // hp [.., Dv]: U' = U - W S_n, rounded to OP (every later use is an operand)
  OP *states;                   // [B, H, N, Dk, Dv]: S_n rounded to OP (only ever an operand after fwd_state)
  float *gC, *final_s;
  float *dU;                    // hp [.., Dv]: P^T dO (f32: bwd_state adds Kd dS_{n+1} to it)
  OP *dUn;                      // hp [.., Dv]: dU' = P^T dO + Kd dS_{n+1}, rounded to OP
  OP *dH;                       // [B, H, N, Dk, Dv]: dS_{n+1}, the gradient of the state leaving chunk n, rounded to OP
  float *dqh, *dkh;             // hp [.., Dk]: gradients of the normalized q, k
  float *dGp;                   // hp [..]: dL/dG (cumulative log decay) from the WY part
  IN *o, *dq, *dk, *dv;
  float *dbeta, *dg, *ds0;      // [B, T, H], [B, T, H], [B, H, Dk, Dv]
};

// The chunked generalized delta rule (rwkv7's time mix; dplr_cuda.cuh) reuses the two sequential kernels with these
// extra pointers. Base fields there: Kd holds Bd = diag(e^{G_C - G}) B (the key of the state's U' write), Qg holds
// Qe = diag(e^G) Q, W = -T Ae; gC is unused (per-key decays in gCk).
template <class IN, class OP>
struct DplrPtrs : Ptrs<IN, OP> {
  const IN *a, *b;                // [B, T, H, Dk] (b: the b of the rule, not beta)
  const float* lw;                // [B, T, H, Dk] log decays
  OP *Kv, *Ae, *Bi, *Ki;          // hp [.., Dk]: Kv = diag(e^{G_C - G}) K (the V write's key), Ae = diag(e^{G_{t-1}}) A,
                                  // Bi = diag(e^{-G}) B, Ki = diag(e^{-G}) K
  float* gCk;                     // [B, H, N, Dk]: G_C per key (the chunk's log decay)
  OP* dX;                         // hp [.., Dv]: T^T dU'
  OP* dL;                         // [B, H, N, 4, C, C]: dP_b, dP_k, dL_ab, dL_ak
  float *dBt, *dKt;               // hp [.., Dk]: bwd_val's parts of the gradients of Bi (Bd's), Ki (Kv's)
  float* dGC;                     // [B, H, N, Dk]: dL/dG_C from the state leaving the chunk
  IN *da, *db;                    // [B, T, H, Dk]
  float* dlw;                     // [B, T, H, Dk]
};

struct Bump {
  size_t o = 0;
  __host__ __device__ size_t take(size_t bytes) {
    const size_t r = o;
    o = align128(o + bytes);
    return r;
  }
};

// Row strides of the operand tiles in shared memory: + 8 elements (16 bytes for bf16) so that the 8 rows of an
// ldmatrix fall on different banks; multiples of 8 (16-byte rows, as ldmatrix requires).
// vf: the f32 [.., DVT] tiles of the sequential kernels (state, U / dU columns): + 4 floats, so that the 8 rows of
// a quarter warp's 16-byte accesses down a column (and the accumulator rows) fall on different banks.
struct Ld {
  int k, v, c, vt, cf, vf;
  __host__ __device__ explicit Ld(const Geo& g)
      : k(g.Dk + 8), v(g.Dv + 8), c(g.C + 8), vt(g.DVT + 8), cf(g.C + 1), vf(g.DVT + 4) {}
};

// ---- shared-memory layouts (byte offsets), used by the kernels and by the host for the sizes ----
template <class OP>
struct LayPrep {  // fwd_prep
  size_t K, Y, A, T, scr, rk, G, b, total;
  __host__ __device__ explicit LayPrep(const Geo& g) {
    const Ld l(g);
    Bump m;
    K = m.take(size_t(g.C) * l.k * sizeof(OP));
    const size_t a = size_t(g.C) * l.cf * 4, y = size_t(g.C) * l.v * sizeof(OP);
    A = m.take(a > y ? a : y);
    Y = A;  // Y = diag(b) V loads once T is formed from A
    T = m.take(size_t(g.C) * l.c * sizeof(OP));
    scr = m.take(size_t(kThreads / 32) * kScrTile * 4);
    rk = m.take(size_t(g.C) * 4);
    G = m.take(size_t(g.C) * 4);
    b = m.take(size_t(g.C) * 4);
    total = m.o;
  }
};
template <class OP>
struct LaySeq {  // fwd_state and bwd_state: one f32 state tile [Dk, DVT], three C x Dk operands, two C x DVT,
                // the step's f32 U / dU columns [C, DVT]
  size_t S, Sop, M1, M2, M3, X1, X2, Uf, scr, dec, total;  // dec: the generalized rule's Dk per-key decays
  __host__ __device__ explicit LaySeq(const Geo& g) {
    const Ld l(g);
    Bump m;
    S = m.take(size_t(g.Dk) * l.vf * 4);
    Sop = m.take(size_t(g.Dk) * l.vt * sizeof(OP));
    M1 = m.take(size_t(g.C) * l.k * sizeof(OP));
    M2 = m.take(size_t(g.C) * l.k * sizeof(OP));
    M3 = m.take(size_t(g.C) * l.k * sizeof(OP));
    X1 = m.take(size_t(g.C) * l.vt * sizeof(OP));
    X2 = m.take(size_t(g.C) * l.vt * sizeof(OP));
    Uf = m.take(size_t(g.C) * l.vf * 4);
    scr = m.take(size_t(kThreads / 32) * kScrTile * 4);
    dec = m.take(size_t(g.Dk) * 4);
    total = m.o;
  }
};
// fwd_out: Q (then Qg), K, P and two buffers for a piece of w value columns of S_n and U' (Dk x w, then C x w;
// w = 32, or 16 when Dv is not a multiple of 32); the second buffer takes K's space (free once P is formed). O goes
// out a column piece at a time, so that three CTAs fit on an H100 SM at Dk = Dv = 128 (whole S_n and U': two).
template <class OP>
struct LayFwdOut {
  size_t Q, K, P, B0, scr, rq, rk, G, total;
  int w, ldw;  // piece width and row stride (+ 8 elements, as Ld)
  __host__ __device__ explicit LayFwdOut(const Geo& g) {
    const Ld l(g);
    Bump m;
    w = g.Dv % 32 == 0 ? 32 : 16;
    ldw = w + 8;
    const size_t piece = size_t(g.Dk + g.C) * ldw * sizeof(OP), k = size_t(g.C) * l.k * sizeof(OP);
    Q = m.take(size_t(g.C) * l.k * sizeof(OP));
    K = m.take(k > piece ? k : piece);
    P = m.take(size_t(g.C) * l.c * sizeof(OP));
    B0 = m.take(piece);
    scr = m.take(size_t(kThreads / 32) * kScrTile * 4);
    rq = m.take(size_t(g.C) * 4);
    rk = m.take(size_t(g.C) * 4);
    G = m.take(size_t(g.C) * 4);
    total = m.o;
  }
};
enum class OutKind { BwdPrep, BwdOut };
// bwd_prep (Q, K, P, dO), bwd_out (Q, K, F, U' / S_n / dS', dO / U'): Q, K, a C x C operand, the Dk x Dv state
// when needed (bwd_out: max(Dk, C) rows, U' before S_n), one C x Dv operand (unused buffers take no space).
// bwd_prep's dO takes K's space once P is formed, so that four of its CTAs fit on an SM at Dk = Dv = 128.
template <class OP>
struct LayOut {
  size_t Q, K, P, S, V1, scr, rq, rk, G, dG, y, red, total;
  __host__ __device__ LayOut(const Geo& g, OutKind kind) {
    const Ld l(g);
    Bump m;
    const bool prep = kind == OutKind::BwdPrep;
    const size_t k = size_t(g.C) * l.k * sizeof(OP), v = size_t(g.C) * l.v * sizeof(OP);
    Q = m.take(k);
    K = m.take(prep && v > k ? v : k);
    P = m.take(size_t(g.C) * l.c * sizeof(OP));
    const int srows = prep ? 0 : g.C > g.Dk ? g.C : g.Dk;
    S = m.take(size_t(srows) * l.v * sizeof(OP));
    V1 = prep ? K : m.take(v);
    scr = m.take(size_t(kThreads / 32) * kScrTile * 4);
    rq = m.take(size_t(g.C) * 4);
    rk = m.take(size_t(g.C) * 4);
    G = m.take(size_t(g.C) * 4);
    dG = m.take(size_t(g.C) * 4);
    y = m.take(size_t(g.C) * 4);
    red = m.take(size_t(kThreads / 32) * 4);
    total = m.o;
  }
};
// bwd_wy: K, T (then E) and the reduction rows for the whole kernel; four C x D slots (a slot also holds a C x C
// f32 tile) whose contents follow the phases (S2 and S3 are contiguous and first hold S_n):
//     S1: dU'                          S2: S_n | W | Y, then dY
//     S4: dW | P = dX W^T (f32)        S3: S_n | dX | U
template <class OP>
struct LayWy {
  size_t K, T, S1, S2, S3, S4, scr, rk, G, b, db, dG, total;
  int ldp;  // row stride (floats) of P: a multiple of 4 (accumulator loads)
  __host__ __device__ explicit LayWy(const Geo& g) {
    const Ld l(g);
    Bump m;
    ldp = g.C + 4;
    size_t sz = size_t(g.C) * (l.k > l.v ? l.k : l.v) * sizeof(OP);
    const size_t f = size_t(g.C) * (l.cf > ldp ? l.cf : ldp) * 4;
    sz = align128(sz > f ? sz : f);
    const size_t s = size_t(g.Dk) * l.v * sizeof(OP);
    K = m.take(size_t(g.C) * l.k * sizeof(OP));
    T = m.take(size_t(g.C) * l.c * sizeof(OP));
    S1 = m.take(sz);
    S2 = m.take(s > 2 * sz ? s : 2 * sz);
    S3 = S2 + sz;
    S4 = m.take(sz);
    scr = m.take(size_t(kThreads / 32) * kScrTile * 4);
    rk = m.take(size_t(g.C) * 4);
    G = m.take(size_t(g.C) * 4);
    b = m.take(size_t(g.C) * 4);
    db = m.take(size_t(g.C) * 4);
    dG = m.take(size_t(g.C) * 4);
    total = m.o;
  }
};

__device__ __forceinline__ float dr_exp(float x) { return expf(x); }
__device__ __forceinline__ float dr_rsqrt(float x) {
#ifdef DELTA_EMULATE
  return 1.f / std::sqrt(x);
#else
  return rsqrtf(x);
#endif
}
__device__ __forceinline__ void dr_atomic_add(float* p, float v) {
#ifdef DELTA_EMULATE
  std::atomic_ref<float>(*p).fetch_add(v);
#else
  atomicAdd(p, v);
#endif
}

// The sum of v over the lanes of the calling warp, returned to every lane (all lanes of the warp call it, in
// converged code). GPU: butterfly shuffles. Emulation: through a per-warp exchange row between __syncwarp()s
// (one thread per block: v itself).
#ifdef DELTA_EMULATE
inline float emu_xch[kWideThreads / 32][32];
#endif
__device__ __forceinline__ float warp_sum(float v, const tc::Lanes& w) {
#ifdef DELTA_EMULATE
  if (w.nlanes == 1) return v;
  __syncwarp();
  emu_xch[w.warp][w.lane] = v;
  __syncwarp();
  float s = 0.f;
  for (int i = 0; i < w.nlanes; ++i) s += emu_xch[w.warp][i];
  __syncwarp();
  return s;
#else
  (void)w;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
#endif
}

// The inclusive prefix sum of v over the lanes of the calling warp (lane i gets v_0 + .. + v_i; all lanes call
// it, in converged code). GPU: shuffles up. Emulation: through the exchange row.
__device__ __forceinline__ float warp_incl_scan(float v, const tc::Lanes& w) {
#ifdef DELTA_EMULATE
  if (w.nlanes == 1) return v;
  __syncwarp();
  emu_xch[w.warp][w.lane] = v;
  __syncwarp();
  float s = 0.f;
  for (int i = 0; i <= w.lane; ++i) s += emu_xch[w.warp][i];
  __syncwarp();
  return s;
#else
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, v, o);
    if (w.lane >= o) v += y;
  }
  return v;
#endif
}

// 16-byte global loads into registers (the emulation copies). The tile loads issue kLdBatch of them per thread
// before their shared-memory stores, so that their latencies overlap: one round trip per batch instead of one per
// piece (the compiler does not move a global load across a store through a generic pointer).
constexpr int kLdBatch = 4;
__device__ __forceinline__ uint4 ld16(const void* src) {
#ifdef DELTA_EMULATE
  uint4 v;
  std::memcpy(&v, src, 16);
  return v;
#else
  return *reinterpret_cast<const uint4*>(src);
#endif
}
// A float's bits as unsigned and back: memcpy, a register move on the GPU that the emulation compiles as well.
__device__ __forceinline__ float u2f(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
__device__ __forceinline__ unsigned f2u(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}

__device__ __forceinline__ void st16(void* dst, const uint4& v) {
#ifdef DELTA_EMULATE
  std::memcpy(dst, &v, 16);
#else
  *reinterpret_cast<uint4*>(dst) = v;
#endif
}
// x[0 .. 3] rounded to OP into dst[0 .. 3] in one store (bf16: 8 bytes, dst 8-byte aligned; float: 16 bytes).
template <class OP>
__device__ __forceinline__ void st4op(OP* dst, const float (&x)[4]) {
#ifdef DELTA_EMULATE
  for (int i = 0; i < 4; ++i) dst[i] = fromf<OP>(x[i]);
#else
  if constexpr (std::is_same_v<OP, bf16>) {
    const __nv_bfloat162 a = __floats2bfloat162_rn(x[0], x[1]), b = __floats2bfloat162_rn(x[2], x[3]);
    uint2 u;
    u.x = *reinterpret_cast<const unsigned*>(&a);
    u.y = *reinterpret_cast<const unsigned*>(&b);
    *reinterpret_cast<uint2*>(dst) = u;
  } else if constexpr (std::is_same_v<OP, float>) {
    *reinterpret_cast<float4*>(dst) = make_float4(x[0], x[1], x[2], x[3]);
  } else {
    for (int i = 0; i < 4; ++i) dst[i] = fromf<OP>(x[i]);
  }
#endif
}

// x[0 .. 3] = src[0 .. 3] as f32 in one load (bf16: 8 bytes, src 8-byte aligned; float: 16 bytes).
template <class T>
__device__ __forceinline__ void ld4f(const T* src, float (&x)[4]) {
#ifdef DELTA_EMULATE
  for (int i = 0; i < 4; ++i) x[i] = tof(src[i]);
#else
  if constexpr (std::is_same_v<T, bf16>) {
    const uint2 u = *reinterpret_cast<const uint2*>(src);
    x[0] = __uint_as_float(u.x << 16), x[1] = __uint_as_float(u.x & 0xffff0000u);
    x[2] = __uint_as_float(u.y << 16), x[3] = __uint_as_float(u.y & 0xffff0000u);
  } else if constexpr (std::is_same_v<T, float>) {
    const float4 u = *reinterpret_cast<const float4*>(src);
    x[0] = u.x, x[1] = u.y, x[2] = u.z, x[3] = u.w;
  } else {
    for (int i = 0; i < 4; ++i) x[i] = tof(src[i]);
  }
#endif
}

// threadIdx.x read where it is used: keeps the compiler from hoisting the walks' divisions out of the sequential
// kernels' chunk loops into registers held across the whole loop (the loops are short of registers).
__device__ __forceinline__ int dr_tid() {
#ifdef DELTA_EMULATE
  return int(threadIdx.x);
#else
  unsigned t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return int(t);
#endif
}
__device__ __forceinline__ int dr_ctz(int v) {  // v > 0
#ifdef DELTA_EMULATE
  return __builtin_ctz(unsigned(v));
#else
  return __ffs(v) - 1;
#endif
}
// q = e / d, r = e % d: shifts and a mask where d is a power of two (every shape with power-of-two head dims; the
// branch is uniform), else the division (a runtime division is some twenty instructions).
__device__ __forceinline__ void divmod(int e, int d, int& q, int& r) {
  if ((d & (d - 1)) == 0) {
    q = e >> dr_ctz(d);
    r = e & (d - 1);
  } else {
    q = e / d;
    r = e - q * d;
  }
}
// The origin (i0, j0) of tile number `tile` in a walk over 16 x 16 tiles with tn tiles per row.
__device__ __forceinline__ void tile_origin(int tile, int tn, int& i0, int& j0) {
  divmod(tile, tn, i0, j0);
  i0 *= 16;
  j0 *= 16;
}
// ---- block-level products on shared-memory operands ----
// A term of a product: sum_k A(i, k) B(k, j) with A(i, k) = TA ? a[k * lda + i] : a[i * lda + k] and
// B(k, j) = TB ? b[j * ldb + k] : b[k * ldb + j] (so TB reads B^T of a row-major matrix).
template <bool TA, bool TB, class OP>
struct Term {
  const OP* a;
  int lda;
  const OP* b;
  int ldb;
  int K;
};
template <bool TA, bool TB, class OP>
__device__ __forceinline__ Term<TA, TB, OP> term(const OP* a, int lda, const OP* b, int ldb, int K) {
  return {a, lda, b, ldb, K};
}

// The operand walks of term t for output tile (i0, j0): A's rows i0.., B's columns j0.. (+ 16 jd), along k.
template <bool TA, bool TB>
__device__ __forceinline__ tc::AWalk<std::conditional_t<TA, wm::col_major, wm::row_major>> a_walk(const Term<TA, TB, bf16>& t,
                                                                                                   int i0) {
  return {TA ? t.a + i0 : t.a + size_t(i0) * t.lda, t.lda};
}
template <bool TA, bool TB>
__device__ __forceinline__ tc::BWalk<std::conditional_t<TB, wm::col_major, wm::row_major>> b_walk(const Term<TA, TB, bf16>& t,
                                                                                                   int j0) {
  return {TB ? t.b + size_t(j0) * t.ldb : t.b + j0, t.ldb};
}

// acc += the term's product for output tile (i0, j0). U > 0: the k steps unrolled U times (bwd_state's update: fewer
// operand fragments in registers at once); U = 0: the compiler's choice.
template <int U = 0, bool TA, bool TB>
__device__ __forceinline__ void mma_term(tc::FragC& acc, const Term<TA, TB, bf16>& t, int i0, int j0) {
  auto wa = a_walk(t, i0);
  auto wb = b_walk(t, j0);
  auto step = [&] {
    tc::FragA<std::conditional_t<TA, wm::col_major, wm::row_major>> fa;
    tc::FragB<std::conditional_t<TB, wm::col_major, wm::row_major>> fb;
    wa.load(fa);
    wb.load(fb);
    tc::mma(acc, fa, fb);
    wa.next();
    wb.next();
  };
  if constexpr (U == 0) {
    for (int kk = 0; kk < t.K; kk += 16) step();
  } else {
#pragma unroll U
    for (int kk = 0; kk < t.K; kk += 16) step();
  }
}

// Two horizontally adjacent output tiles (i0, j0) and (i0, j0 + 16) of one term: A's fragment is loaded once per k
// step for both, and the two accumulators' mma chains interleave instead of each waiting on its own previous step.
template <bool TA, bool TB>
__device__ __forceinline__ void mma_term2(tc::FragC& acc0, tc::FragC& acc1, const Term<TA, TB, bf16>& t, int i0, int j0) {
  auto wa = a_walk(t, i0);
  auto wb0 = b_walk(t, j0);
  auto wb1 = b_walk(t, j0 + 16);
  for (int kk = 0; kk < t.K; kk += 16) {
    tc::FragA<std::conditional_t<TA, wm::col_major, wm::row_major>> fa;
    tc::FragB<std::conditional_t<TB, wm::col_major, wm::row_major>> fb0, fb1;
    wa.load(fa);
    wb0.load(fb0);
    wb1.load(fb1);
    tc::mma(acc0, fa, fb0);
    tc::mma(acc1, fa, fb1);
    wa.next();
    wb0.next();
    wb1.next();
  }
}
// Whether a warp walk with Pair = true takes its tiles in horizontal pairs (mma_term2): an even number of tile columns,
// and at least one pair for every warp. Pair is a template flag of the walks (mm*, mm_vec4*, mm_pieces_ab), set where it
// measured faster: bwd_out (1.35 -> 1.28 ms at B=4 T=4096 H=16 D=128 on the H100); bwd_wy was slower with it (1.28 ->
// 1.38 ms), and the kernels with tighter register bounds would spill.
__device__ __forceinline__ bool pair_tiles(int tn, int ntiles, const tc::Lanes& w) {
  return tn % 2 == 0 && ntiles >= 2 * w.nwarps;
}

template <bool TA, bool TB>
__device__ __forceinline__ float dot_term(const Term<TA, TB, float>& t, int i, int j) {
  float s = 0.f;
  for (int k = 0; k < t.K; ++k) s += (TA ? t.a[k * t.lda + i] : t.a[i * t.lda + k]) * (TB ? t.b[j * t.ldb + k] : t.b[k * t.ldb + j]);
  return s;
}

// The walk shared by mm and mm_pieces: out(i, j) = sum over the terms, for i < M, j < N (multiples of 16).
// bf16: a warp owns whole 16 x 16 tiles; tile_epi(w, i0, j0, s, acc) gets the accumulator and the warp's f32 scratch s
// (16 x kScrLd) for an epilogue that goes through it. float: one element per thread, f32 FFMA, elem(i, j, value).
// init (f32 in shared memory, row stride ldi: even), if not null, is the starting value of the sums (the
// accumulator loaded from it: a product continued from a stored partial one gives the same f32 result).
// No __syncthreads inside.
template <class OP, bool Pair = false, class TileEpi, class ElemFn, class... Terms>
__device__ __forceinline__ void mm_walk_init(int M, int N, float* scr, const float* init, int ldi, TileEpi&& tile_epi,
                                             ElemFn&& elem, const Terms&... terms) {
  if constexpr (std::is_same_v<OP, bf16>) {
    const tc::Lanes w = tc::lanes();
    const int tn = N / 16, ntiles = (M / 16) * tn;
    float* s = scr + w.warp * kScrTile;
    auto start = [&](tc::FragC& acc, int i0, int j0) {
      if (init == nullptr) tc::fill(acc, 0.f);
      else tc::load_acc(acc, init + size_t(i0) * ldi + j0, ldi);
    };
    if (Pair && pair_tiles(tn, ntiles, w)) {
      for (int tile = 2 * w.warp; tile < ntiles; tile += 2 * w.nwarps) {
        int i0, j0;
        tile_origin(tile, tn, i0, j0);
        tc::FragC acc0, acc1;
        start(acc0, i0, j0);
        start(acc1, i0, j0 + 16);
        (mma_term2(acc0, acc1, terms, i0, j0), ...);
        tile_epi(w, i0, j0, s, acc0);
        tile_epi(w, i0, j0 + 16, s, acc1);
      }
      return;
    }
    for (int tile = w.warp; tile < ntiles; tile += w.nwarps) {
      int i0, j0;
      tile_origin(tile, tn, i0, j0);
      tc::FragC acc;
      start(acc, i0, j0);
      (mma_term(acc, terms, i0, j0), ...);
      tile_epi(w, i0, j0, s, acc);
    }
  } else {
    (void)scr;
    const int nthr = int(blockDim.x), tid = int(threadIdx.x);
    for (int e = tid; e < M * N; e += nthr) {
      const int i = e / N, j = e % N;
      float v = init == nullptr ? 0.f : init[i * ldi + j];
      ((v += dot_term(terms, i, j)), ...);
      elem(i, j, v);
    }
  }
}
template <class OP, bool Pair = false, class TileEpi, class ElemFn, class... Terms>
__device__ __forceinline__ void mm_walk(int M, int N, float* scr, TileEpi&& tile_epi, ElemFn&& elem, const Terms&... terms) {
  mm_walk_init<OP, Pair>(M, N, scr, nullptr, 0, tile_epi, elem, terms...);
}

// out(i, j) = sum over the terms, for i < M, j < N (multiples of 16); epi(i, j, value) is called exactly
// once per element. bf16: a warp owns whole 16 x 16 tiles, the accumulator goes through its f32 scratch
// and its lanes run the epilogue. float: one element per thread, f32 FFMA. No __syncthreads inside.
template <class OP, bool Pair = false, class Epi, class... Terms>
__device__ __forceinline__ void mm(int M, int N, float* scr, Epi&& epi, const Terms&... terms) {
  mm_walk<OP, Pair>(
      M, N, scr,
      [&](const tc::Lanes& w, int i0, int j0, float* s, const tc::FragC& acc) {
        tc::through_scratch(s, acc, [&] { tc::for_elems(w, [&](int r, int c) { epi(i0 + r, j0 + c, s[r * kScrLd + c]); }); });
      },
      [&](int i, int j, float v) { epi(i, j, v); }, terms...);
}

// As mm, with the epilogue on pieces of a row: piece(i, j, v, n) gets v[0 .. n) = out(i, j .. j + n)
// (bf16: n = 4, tc::for_quads_rows' pieces straight from the accumulator; float: n = 1), may rewrite v, and returns
// the row contribution of the piece; rowfn(i, sum) gets the sum of the contributions of row i over each 16-column
// tile (bf16: once per tile row, so that rowfn's shared-memory atomics are 16 times fewer) or over each element
// (float).
template <class OP, bool Pair = false, class Piece, class RowFn, class... Terms>
__device__ __forceinline__ void mm_pieces(int M, int N, float* scr, Piece&& piece, RowFn&& rowfn, const Terms&... terms) {
  mm_walk<OP, Pair>(
      M, N, scr,
      [&](const tc::Lanes&, int i0, int j0, float* s, const tc::FragC& acc) {
        tc::for_quads_rows(
            acc, s, [&](int r, int c, float* x) { return piece(i0 + r, j0 + c, x, 4); },
            [&](int r, float a) { rowfn(i0 + r, a); });
      },
      [&](int i, int j, float v) { rowfn(i, piece(i, j, &v, 1)); }, terms...);
}

// Two products a (term ta) and b (term tb) of the same shape, whose sum goes to one epilogue while their row
// dots stay apart (dk^ gets a + b; dG gets the k-dot of each with its own sign): one pass over the output, one
// global read-modify-write per element, instead of two products with a barrier between them.
// dotk(i, j, v, n) = sum_c v[c] k(i, j + c); piece(i, j, v, n) as in mm_pieces, on v = a + b, returns its k-dot;
// rowa(i, sa) gets the k-dot of a, rowb(i, sb) that of b, computed as k.(a + b) - k.a (bf16: per 16-column tile
// row; float: per element). bf16: the accumulator continues from a into a + b; a's row dots wait in a register of
// the lane that owns the row (the emulation: in the scratch tile's spare column 16, 17 for the second tile of a pair;
// tc::store_acc writes columns 0 .. 15 only). No __syncthreads inside.
static_assert(kScrLd >= 18, "mm_pieces_ab's emulation keeps row sums in columns 16 and 17 of the scratch tile");
template <class OP, bool Pair = false, class DotK, class Piece, class RowA, class RowB, class TA, class TB>
__device__ __forceinline__ void mm_pieces_ab(int M, int N, float* scr, DotK&& dotk, Piece&& piece, RowA&& rowa, RowB&& rowb,
                                             const TA& ta, const TB& tb) {
  if constexpr (std::is_same_v<OP, bf16>) {
    const tc::Lanes w = tc::lanes();
    const int tn = N / 16, ntiles = (M / 16) * tn;
    float* s = scr + w.warp * kScrTile;
#ifdef DELTA_EMULATE
    auto keep = [&](float&, int r, int col, float v) { s[r * kScrLd + col] = v; };
    auto kept = [&](const float&, int r, int col) { return s[r * kScrLd + col]; };
#else
    auto keep = [](float& slot, int, int, float v) { slot = v; };  // for_quads_rows: the same lane owns row r in both
    auto kept = [](const float& slot, int, int) { return slot; };
#endif
    // a's part of tile (i0, j0): its k-dots to rowa and to the slot (col: the emulation's scratch column)
    auto a_part = [&](const tc::FragC& acc, int i0, int j0, float& slot, int col) {
      tc::for_quads_rows(
          acc, s, [&](int r, int c, float* x) { return dotk(i0 + r, j0 + c, x, 4); },
          [&](int r, float sa) {
            keep(slot, r, col, sa);
            rowa(i0 + r, sa);
          });
    };
    auto ab_part = [&](const tc::FragC& acc, int i0, int j0, const float& slot, int col) {
      tc::for_quads_rows(
          acc, s, [&](int r, int c, float* x) { return piece(i0 + r, j0 + c, x, 4); },
          [&](int r, float sab) { rowb(i0 + r, sab - kept(slot, r, col)); });
    };
    if (Pair && pair_tiles(tn, ntiles, w)) {  // two tiles (mma_term2), two slots
      for (int tile = 2 * w.warp; tile < ntiles; tile += 2 * w.nwarps) {
        int i0, j0;
        tile_origin(tile, tn, i0, j0);
        tc::FragC acc0, acc1;
        tc::fill(acc0, 0.f);
        tc::fill(acc1, 0.f);
        float sa0 = 0.f, sa1 = 0.f;
        mma_term2(acc0, acc1, ta, i0, j0);
        a_part(acc0, i0, j0, sa0, 16);
        a_part(acc1, i0, j0 + 16, sa1, 17);
        mma_term2(acc0, acc1, tb, i0, j0);
        ab_part(acc0, i0, j0, sa0, 16);
        ab_part(acc1, i0, j0 + 16, sa1, 17);
      }
      return;
    }
    for (int tile = w.warp; tile < ntiles; tile += w.nwarps) {
      int i0, j0;
      tile_origin(tile, tn, i0, j0);
      tc::FragC acc;
      tc::fill(acc, 0.f);
      float sa = 0.f;
      mma_term(acc, ta, i0, j0);
      a_part(acc, i0, j0, sa, 16);
      mma_term(acc, tb, i0, j0);
      ab_part(acc, i0, j0, sa, 16);
    }
  } else {
    (void)scr;
    const int nthr = int(blockDim.x), tid = int(threadIdx.x);
    for (int e = tid; e < M * N; e += nthr) {
      const int i = e / N, j = e % N;
      float a = dot_term(ta, i, j);
      const float sa = dotk(i, j, &a, 1);
      rowa(i, sa);
      float v = a + dot_term(tb, i, j);
      rowb(i, piece(i, j, &v, 1) - sa);
    }
  }
}

// k-dot for mm_pieces_ab: sum_c v[c] * k[c].
template <class OP>
__device__ __forceinline__ float dot_rows(const float* v, int n, const OP* k) {
  if (n == 4) {  // k's piece in one 8-byte (bf16) shared-memory load
    float kk[4];
    ld4f(k, kk);
    return (v[0] * kk[0] + v[1] * kk[1]) + (v[2] * kk[2] + v[3] * kk[3]);
  }
  float r = 0.f;
#pragma unroll
  for (int c = 0; c < 8; ++c)
    if (c < n) r += v[c] * tof(k[c]);
  return r;
}

// piece for mm_pieces: dst[0 .. n) += v (f32 global, loaded together first; n = 4: one 16-byte load and store, dst
// 16-byte aligned); returns sum_c v[c] * k[c].
// v[0 .. n) into dst (f32; n = 4: one 16-byte store, dst 16-byte aligned) and, rounded to OP, into op (n = 4:
// one store, op 8-byte aligned for bf16).
__device__ __forceinline__ void st_f32n(float* dst, const float* v, int n) {
  if (n == 4) st16(dst, uint4{f2u(v[0]), f2u(v[1]), f2u(v[2]), f2u(v[3])});
  else
    for (int c = 0; c < n; ++c) dst[c] = v[c];
}
template <class OP>
__device__ __forceinline__ void st_opn(OP* dst, const float* v, int n) {
  if (n == 4) {
    const float x[4] = {v[0], v[1], v[2], v[3]};
    st4op(dst, x);
  } else {
    for (int c = 0; c < n; ++c) dst[c] = fromf<OP>(v[c]);
  }
}

template <class OP>
__device__ __forceinline__ float add_rows_dot(float* dst, const float* v, int n, const OP* k) {
  if (n == 4) {
    const uint4 o = ld16(dst);
    st16(dst, uint4{f2u(u2f(o.x) + v[0]), f2u(u2f(o.y) + v[1]), f2u(u2f(o.z) + v[2]), f2u(u2f(o.w) + v[3])});
    return dot_rows(v, 4, k);
  }
  float old[8];
#pragma unroll
  for (int c = 0; c < 8; ++c)
    if (c < n) old[c] = dst[c];
  float r = 0.f;
#pragma unroll
  for (int c = 0; c < 8; ++c)
    if (c < n) {
      dst[c] = old[c] + v[c];
      r += v[c] * tof(k[c]);
    }
  return r;
}

// Element i (a constant after unrolling) of a 16-byte piece of T, as f32; shifts on the piece's words, so that
// the piece stays in registers.
__device__ __forceinline__ unsigned word16(const uint4& v, int w) { return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w; }
template <class T>
__device__ __forceinline__ float elem16(const uint4& v, int i) {
#ifdef DELTA_EMULATE
  T e[16 / sizeof(T)];
  std::memcpy(e, &v, 16);
  return tof(e[i]);
#else
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(word16(v, i));
  } else {
    const unsigned short bits = (unsigned short)(word16(v, i >> 1) >> (16 * (i & 1)));
    if constexpr (std::is_same_v<T, bf16>) return __uint_as_float(unsigned(bits) << 16);
    else return __half2float(__ushort_as_half(bits));
  }
#endif
}

// ---- per-chunk loads ----
struct Chunk {
  int b, h, n, t0, L;  // batch, head, chunk, first token, valid tokens (<= C)
};
__device__ __forceinline__ Chunk chunk_at(const Geo& g, int b, int h, int n) {
  return Chunk{b, h, n, n * g.C, g.T - n * g.C < g.C ? g.T - n * g.C : g.C};
}
// The chunk of a per-chunk kernel's CTA (grid (N, H, B)).
__device__ __forceinline__ Chunk chunk_of(const Geo& g) { return chunk_at(g, int(blockIdx.z), int(blockIdx.y), int(blockIdx.x)); }
__device__ __forceinline__ int64_t tok(const Geo& g, int b, int t, int h) { return (int64_t(b) * g.T + t) * g.H + h; }
__device__ __forceinline__ int64_t hp_row(const Geo& g, int b, int h, int n, int t) {
  return (int64_t(b * g.H + h) * g.N + n) * g.C + t;
}
__device__ __forceinline__ int64_t state_off(const Geo& g, int b, int h, int n) {
  return (int64_t(b * g.H + h) * g.N + n) * g.Dk * g.Dv;
}
// Row n of a per-chunk, per-key buffer [B, H, N, Dk] (the generalized rule's G_C and dG_C).
__device__ __forceinline__ int64_t key_row(const Geo& g, int b, int h, int n) { return (int64_t(b * g.H + h) * g.N + n) * g.Dk; }

// x / sqrt(|x|^2 + eps) per row into dst (OP, stride ld); rows >= L are zeros; r[row] = 1 / sqrt(|x|^2 + eps).
// A warp per row (coalesced loads, the sum of squares through warp_sum). Each warp loads kNormRows rows (kNormElems
// consecutive elements per lane, one 8-byte (bf16) / 16-byte (f32) load where aligned: C = 64, D <= 128 with 8 warps:
// the whole tile) into registers before any sum, so that one round trip covers them; with fewer lanes (the
// emulation) the row goes in blocks, read again for the stores. No __syncthreads inside.
constexpr int kNormRows = 4, kNormElems = 4;
// x[0 .. 3] = src[0 .. 3] as f32 (zeros where !ok): one load where vec (src aligned for ld4f), else four.
template <class T>
__device__ __forceinline__ void ld4f_or_zero(const T* src, bool ok, bool vec, float (&x)[4]) {
  if (!ok) {
    x[0] = x[1] = x[2] = x[3] = 0.f;
  } else if (vec) {
    ld4f(src, x);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) x[e] = tof(src[e]);
  }
}
static_assert(kNormElems == 4, "the row walks load 4 consecutive elements per lane (ld4f_or_zero)");
template <class IN, class OP>
__device__ __forceinline__ void load_normalized(OP* dst, int ld, float* r, const IN* x, const Geo& g, const Chunk& c, int D) {
  const tc::Lanes w = tc::lanes();
  const int span = kNormElems * w.nlanes, nb = (D + span - 1) / span;  // element blocks per row: 1 on the GPU
  for (int t0 = w.warp; t0 < g.C; t0 += kNormRows * w.nwarps) {
    float xv[kNormRows][kNormElems], rn[kNormRows];
    const IN* row0 = x + tok(g, c.b, c.t0 + t0, c.h) * D;  // row t0 + q nwarps at q rstride further
    const int rstride = w.nwarps * g.H * D;
    const bool vec = reinterpret_cast<uintptr_t>(x) % (4 * sizeof(IN)) == 0;  // D is a multiple of 16
    auto load_block = [&](int jb) {
#pragma unroll
      for (int q = 0; q < kNormRows; ++q) {
        const int t = t0 + q * w.nwarps, j = jb * span + w.lane * kNormElems;
        ld4f_or_zero(row0 + q * rstride + j, t < c.L && j < D, vec, xv[q]);
      }
    };
#pragma unroll
    for (int q = 0; q < kNormRows; ++q) rn[q] = 0.f;
    for (int jb = 0; jb < nb; ++jb) {
      load_block(jb);
#pragma unroll
      for (int q = 0; q < kNormRows; ++q)
#pragma unroll
        for (int i = 0; i < kNormElems; ++i) rn[q] += xv[q][i] * xv[q][i];
    }
#pragma unroll
    for (int q = 0; q < kNormRows; ++q) {
      const float ss = warp_sum(rn[q], w);  // every lane of the warp, uniform
      rn[q] = t0 + q * w.nwarps < c.L ? dr_rsqrt(ss + g.eps) : 0.f;
    }
    for (int jb = 0; jb < nb; ++jb) {
      if (nb > 1) load_block(jb);
#pragma unroll
      for (int q = 0; q < kNormRows; ++q) {
        const int t = t0 + q * w.nwarps, j = jb * span + w.lane * kNormElems;
        if (t >= g.C) continue;
        if (j < D) {  // ld (a multiple of 8) and j (of 4): an 8-byte aligned bf16 store
          const float y[4] = {xv[q][0] * rn[q], xv[q][1] * rn[q], xv[q][2] * rn[q], xv[q][3] * rn[q]};
          st4op(dst + t * ld + j, y);
        }
        if (jb == 0 && w.lane == 0) r[t] = rn[q];
      }
    }
  }
}

// load_rows with element loads (the fallback of load_rows and load_cols for inputs not 16-byte aligned).
template <class IN, class OP>
__device__ __forceinline__ void load_rows_elems(OP* dst, int ld, const IN* x, const Geo& g, const Chunk& c, int D, int col0,
                                                int ncol, float mul, const float* rowmul = nullptr) {
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  for (int e = tid; e < g.C * ncol; e += nthr) {
    const int t = e / ncol, j = e % ncol;
    const float m = rowmul ? mul * rowmul[t] : mul;
    dst[t * ld + j] = fromf<OP>(t < c.L ? m * tof(x[tok(g, c.b, c.t0 + t, c.h) * D + col0 + j]) : 0.f);
  }
}
// Rows of an [.., D] input, columns col0 .. col0 + ncol - 1, times mul (and rowmul[t] when given) into dst;
// rows >= L zeros. 16-byte loads (ncol, col0 multiples of 16 / sizeof(IN)), kLdBatch per thread issued before
// their stores; element loads if x is not 16-byte aligned.
template <class IN, class OP>
__device__ __forceinline__ void load_rows(OP* dst, int ld, const IN* x, const Geo& g, const Chunk& c, int D, int col0, int ncol,
                                          float mul, const float* rowmul = nullptr) {
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    load_rows_elems(dst, ld, x, g, c, D, col0, ncol, mul, rowmul);
    return;
  }
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  constexpr int per = 16 / int(sizeof(IN));
  const int vc = ncol / per, total = g.C * vc;
  for (int e0 = tid; e0 < total; e0 += kLdBatch * nthr) {
    uint4 v[kLdBatch];
#pragma unroll
    for (int k = 0; k < kLdBatch; ++k) {
      const int e = e0 + k * nthr;
      int t, q;
      divmod(e, vc, t, q);
      if (e < total) v[k] = t < c.L ? ld16(x + tok(g, c.b, c.t0 + t, c.h) * D + col0 + q * per) : uint4{0u, 0u, 0u, 0u};
    }
#pragma unroll
    for (int k = 0; k < kLdBatch; ++k) {
      const int e = e0 + k * nthr;
      if (e < total) {
        int t, j;
        divmod(e, vc, t, j);
        j *= per;
        const float m = t < c.L ? (rowmul ? mul * rowmul[t] : mul) : 0.f;  // v is zeros past L
#pragma unroll
        for (int i0 = 0; i0 < per; i0 += 4) {  // 8-byte (bf16) stores instead of 2-byte ones
          const float y[4] = {m * elem16<IN>(v[k], i0), m * elem16<IN>(v[k], i0 + 1), m * elem16<IN>(v[k], i0 + 2),
                              m * elem16<IN>(v[k], i0 + 3)};
          st4op(dst + t * ld + j + i0, y);
        }
      }
    }
  }
}

// G (inclusive cumulative log decay inside the chunk; zeros without g) and beta (0 on padded rows), without a
// barrier: warp 0 loads g (two loads per lane in flight) and scans it with shuffles, nlanes at a time with the
// carry between blocks (the same order of f32 sums in every kernel), while the other warps go on to their own
// loads. The caller syncs before reading G or beta.
__device__ __forceinline__ void load_gb(float* G, float* bb, const float* gptr, const float* beta, const Geo& g,
                                        const Chunk& c) {
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  if (bb)
    for (int t = tid; t < g.C; t += nthr) bb[t] = t < c.L ? beta[tok(g, c.b, c.t0 + t, c.h)] : 0.f;
  const tc::Lanes w = tc::lanes();
  if (w.warp != 0) return;
  for (int t = w.lane; t < g.C; t += 2 * w.nlanes) {
    const int t2 = t + w.nlanes;
    const float x1 = gptr && t < c.L ? gptr[tok(g, c.b, c.t0 + t, c.h)] : 0.f;
    const float x2 = gptr && t2 < c.L ? gptr[tok(g, c.b, c.t0 + t2, c.h)] : 0.f;
    G[t] = x1;
    if (t2 < g.C) G[t2] = x2;
  }
  __syncwarp();
  float carry = 0.f;
  for (int t0 = 0; t0 < g.C; t0 += w.nlanes) {
    const int t = t0 + w.lane;
    const float x = warp_incl_scan(t < g.C ? G[t] : 0.f, w);
    __syncwarp();
    if (t < g.C) G[t] = carry + x;
    __syncwarp();
    carry = G[(t0 + w.nlanes < g.C ? t0 + w.nlanes : g.C) - 1];
  }
}

// A block-strided walk over the pieces of a tile with vc pieces per row, consecutive threads on consecutive
// pieces of a row (coalesced): this thread's first piece (r0, pc) and the row step between its pieces, one
// division per walk instead of one per piece (exact when vc divides the block; else fast is false). P2: shifts
// and masks instead of the division, fast only for vc a power of two (the sequential kernels and the batched tile
// loads).
template <bool P2 = false>
struct PieceWalk {
  int r0, pc, rstep;
  bool fast;
  __device__ __forceinline__ explicit PieceWalk(int vc) {
    const int nthr = int(blockDim.x), tid = dr_tid();
    if constexpr (P2) {
      const int sh = dr_ctz(vc);
      fast = (vc & (vc - 1)) == 0 && (nthr & (vc - 1)) == 0;
      r0 = tid >> sh;
      pc = tid & (vc - 1);
      rstep = nthr >> sh;
    } else {
      fast = nthr % vc == 0;
      r0 = tid / vc;
      pc = tid - r0 * vc;
      rstep = nthr / vc;
    }
  }
};
// The batched walk of the tile loads below: the pieces (r, q) of rows r < rows with vc pieces each, R of them loaded per
// thread (load(r, q), a uint4) before their stores (store(r, q, v)), so that one global round trip covers a batch.
// Where vc is a power of two that divides the block (PieceWalk<true>), a thread's pieces are one column q of rows
// r0 + k rstep: shifts instead of a division per piece (a third of bwd_state's instructions were such divisions).
template <int R = kLdBatch, class Load, class Store>
__device__ __forceinline__ void batched_pieces(int rows, int vc, Load&& load, Store&& store) {
  const PieceWalk<true> w(vc);
  if (w.fast) {
    for (int r0 = w.r0; r0 < rows; r0 += R * w.rstep) {
      uint4 v[R];
#pragma unroll
      for (int k = 0; k < R; ++k)
        if (r0 + k * w.rstep < rows) v[k] = load(r0 + k * w.rstep, w.pc);
#pragma unroll
      for (int k = 0; k < R; ++k)
        if (r0 + k * w.rstep < rows) store(r0 + k * w.rstep, w.pc, v[k]);
    }
    return;
  }
  const int nthr = int(blockDim.x), tid = int(threadIdx.x), total = rows * vc;
  for (int e0 = tid; e0 < total; e0 += R * nthr) {
    uint4 v[R];
#pragma unroll
    for (int k = 0; k < R; ++k) {
      const int e = e0 + k * nthr;
      if (e < total) v[k] = load(e / vc, e % vc);
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
      const int e = e0 + k * nthr;
      if (e < total) store(e / vc, e % vc, v[k]);
    }
  }
}

// OP [rows, cols] (row stride srcld) -> OP tile (stride ld), element (r, j) = conv(r, value) rounded to OP.
// 16-byte pieces (16 / sizeof(OP) elements): cols and srcld multiples of that, src 16-byte aligned.
template <class OP, class Conv>
__device__ __forceinline__ void load_op_rows(OP* dst, int ld, const OP* src, int64_t srcld, int rows, int cols, Conv&& conv) {
  constexpr int per = 16 / int(sizeof(OP));
  batched_pieces(
      rows, cols / per, [&](int r, int q) { return ld16(src + int64_t(r) * srcld + q * per); },
      [&](int r, int q, const uint4& v) {
        const int j = q * per;
#pragma unroll
        for (int h = 0; h < per; h += 4) {
          const float x[4] = {conv(r, elem16<OP>(v, h)), conv(r, elem16<OP>(v, h + 1)), conv(r, elem16<OP>(v, h + 2)),
                              conv(r, elem16<OP>(v, h + 3))};
          st4op(dst + r * ld + j + h, x);
        }
      });
}
// Rows of an OP tile copied by cp.async (16-byte pieces: cols and ld multiples of 8 elements, src and dst 16-byte
// aligned; no registers): the copies stay in flight until tc::cp_wait_all() (then a barrier), so that
// several tiles' copies and the loads that go through registers overlap instead of one round trip each.
template <class OP>
__device__ __forceinline__ void copy_rows_async(OP* dst, int ld, const OP* src, int rows, int cols, int64_t srcld = -1) {
  if (srcld < 0) srcld = cols;
  constexpr int per = 16 / int(sizeof(OP));
  for_pieces_block<true>(rows, cols / per,
                         [&](int r, int q) { tc::cp16(dst + r * ld + q * per, src + int64_t(r) * srcld + q * per); });
}

// A tile copied one 16-byte piece at a time through registers (the sequential kernels' fallback: their registers are
// scarce).
template <class OP>
__device__ __forceinline__ void copy_rows_plain(OP* dst, int ld, const OP* src, int rows, int cols, int64_t srcld) {
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  if (srcld < 0) srcld = cols;
  constexpr int per = 16 / int(sizeof(OP));
  const int vc = cols / per;
  for (int e = tid; e < rows * vc; e += nthr) {
    const int r = e / vc, j = (e % vc) * per;
#ifdef DELTA_EMULATE
    std::memcpy(dst + r * ld + j, src + int64_t(r) * srcld + j, 16);
#else
    *reinterpret_cast<uint4*>(dst + r * ld + j) = *reinterpret_cast<const uint4*>(src + int64_t(r) * srcld + j);
#endif
  }
}

// f(r, q) for the pieces q (< vc) of rows r < rows, block-strided as PieceWalk.
template <bool P2 = false, class F>
__device__ __forceinline__ void for_pieces_block(int rows, int vc, F&& f) {
  const PieceWalk<P2> pw(vc);
  if (pw.fast) {
    for (int r = pw.r0; r < rows; r += pw.rstep) f(r, pw.pc);
  } else {
    const int nthr = int(blockDim.x), tid = int(threadIdx.x);
    for (int e = tid; e < rows * vc; e += nthr) f(e / vc, e % vc);
  }
}
// A tile copy in two halves for the sequential kernels: load() issues the next chunk's 16-byte global loads into
// registers (R per thread) before the current chunk's products, store() writes them into shared memory after the
// barrier that frees the buffer. Shapes with more than R pieces per thread: store() is a plain copy_rows_plain.
// Piece k of a thread is row r0 + k rstep (PieceWalk) when the row's pieces divide the block, so that the
// addresses need no division per piece.
template <class OP, int R, bool P2 = false>
struct RowPrefetch {
  uint4 v[R];
  __device__ __forceinline__ static bool fits(int rows, int cols) {
    return rows * (cols / (16 / int(sizeof(OP)))) <= R * int(blockDim.x);
  }
  __device__ __forceinline__ void load(const OP* src, int rows, int cols, int64_t srcld = -1) {
    if (!fits(rows, cols)) return;
    if (srcld < 0) srcld = cols;
    const int nthr = int(blockDim.x), tid = int(threadIdx.x);
    constexpr int per = 16 / int(sizeof(OP));
    const int vc = cols / per, total = rows * vc;
    const PieceWalk<P2> w(vc);
    if (w.fast) {
      const OP* s = src + int64_t(w.r0) * srcld + w.pc * per;
      const int64_t step = int64_t(w.rstep) * srcld;
#pragma unroll
      for (int k = 0; k < R; ++k)
        if (w.r0 + k * w.rstep < rows) v[k] = ld16(s + k * step);
      return;
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
      const int e = tid + k * nthr;
      if (e < total) v[k] = ld16(src + int64_t(e / vc) * srcld + (e % vc) * per);
    }
  }
  __device__ __forceinline__ void store(OP* dst, int ld, const OP* src, int rows, int cols, int64_t srcld = -1) const {
    if (!fits(rows, cols)) {
      copy_rows_plain(dst, ld, src, rows, cols, srcld);
      return;
    }
    const int nthr = int(blockDim.x), tid = int(threadIdx.x);
    constexpr int per = 16 / int(sizeof(OP));
    const int vc = cols / per, total = rows * vc;
    const PieceWalk<P2> w(vc);
    if (w.fast) {
      OP* d = dst + w.r0 * ld + w.pc * per;
      const int step = w.rstep * ld;
#pragma unroll
      for (int k = 0; k < R; ++k)
        if (w.r0 + k * w.rstep < rows) st16(d + k * step, v[k]);
      return;
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
      const int e = tid + k * nthr;
      if (e < total) st16(dst + (e / vc) * ld + (e % vc) * per, v[k]);
    }
  }
};
constexpr int kPrefetchR = 4;  // C = 64, Dk = 128, bf16: 1024 pieces of 16 bytes = 4 per thread
constexpr int kPrefetchRU = 2;  // the f32 U / dU columns of a step: C = 64, DVT = 32: 512 pieces = 2 per thread

// The f32 state tile S [Dk, DVT] (row stride lds) of a sequential kernel: columns j0 .. j0 + DVT - 1 of a [Dk, Dv]
// f32 state (src null: zeros), and back to a global [Dk, Dv] state in f32 or rounded to OP (also into an OP operand
// copy of stride ldop when op is given, from the same read of S). 16-byte pieces, consecutive threads along a row (element accesses where the global state is
// not 16-byte aligned).
template <bool P2 = false>
__device__ __forceinline__ void state_cols_in(float* S, int lds, const float* src, const Geo& g, int j0) {
  const bool vec = reinterpret_cast<uintptr_t>(src) % 16 == 0;
  for_pieces_block<P2>(g.Dk, g.DVT / 4, [&](int i, int q) {
    const int j = q * 4;
    float* d = S + i * lds + j;
    if (src == nullptr) {
      st16(d, uint4{0u, 0u, 0u, 0u});
    } else if (vec) {
      st16(d, ld16(src + int64_t(i) * g.Dv + j0 + j));
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) d[e] = src[int64_t(i) * g.Dv + j0 + j + e];
    }
  });
}
template <bool P2 = false, class D, class OP>
__device__ __forceinline__ void state_cols_out(D* dst, OP* op, int ldop, const float* S, int lds, const Geo& g, int j0) {
  const bool vec = reinterpret_cast<uintptr_t>(dst) % (4 * sizeof(D)) == 0;
  for_pieces_block<P2>(g.Dk, g.DVT / 4, [&](int i, int q) {
    const int j = q * 4;
    const uint4 v = ld16(S + i * lds + j);
    D* d = dst + int64_t(i) * g.Dv + j0 + j;
    if constexpr (std::is_same_v<D, float>) {
      if (vec) st16(d, v);
      else d[0] = u2f(v.x), d[1] = u2f(v.y), d[2] = u2f(v.z), d[3] = u2f(v.w);
    } else {  // the saved states: rounded to D (= OP), 8 bytes for bf16
      const float x[4] = {u2f(v.x), u2f(v.y), u2f(v.z), u2f(v.w)};
      if (vec) st4op(d, x);
      else
        for (int e = 0; e < 4; ++e) d[e] = fromf<D>(x[e]);
    }
    if (op) {
      const float x[4] = {u2f(v.x), u2f(v.y), u2f(v.z), u2f(v.w)};
      st4op(op + i * ldop + j, x);
    }
  });
}

// out = sum over the terms (M x N, multiples of 16) with the epilogue on row pieces of 4: epi4(i, j, x) gets
// x[0 .. 3] = out(i, j .. j + 3). bf16: mm_walk's tiles, the pieces straight from the accumulator (tc::for_quads);
// ViaScratch: through the warp's scratch instead, lane l on rows (l & 7) (+ 8) and columns 4 (l >> 3), so that a
// warp's 16-byte accesses cover 8 whole 64-byte row segments (for kernels short of registers).
// float: a piece per thread. No __syncthreads inside.
template <class OP, bool Pair = false, bool ViaScratch = false, class Epi4, class... Terms>
__device__ __forceinline__ void mm_vec4(int M, int N, float* scr, Epi4&& epi4, const Terms&... terms) {
  if constexpr (std::is_same_v<OP, bf16>) {
    mm_walk<OP, Pair>(
        M, N, scr,
        [&](const tc::Lanes& w, int i0, int j0, float* s, const tc::FragC& acc) {
          if constexpr (ViaScratch) {  // the accumulator's registers are free before the epilogue (fewer live at once)
            tc::through_scratch(s, acc, [&] {
              for (int q = w.lane; q < 64; q += w.nlanes) {
                const int r = (q & 7) + ((q >> 5) << 3), c = ((q >> 3) & 3) << 2;
                const uint4 v = ld16(s + r * kScrLd + c);
                const float x[4] = {u2f(v.x), u2f(v.y), u2f(v.z), u2f(v.w)};
                epi4(i0 + r, j0 + c, x);
              }
            });
          } else {
            tc::for_quads(acc, s, [&](int r, int c, const float (&x)[4]) { epi4(i0 + r, j0 + c, x); });
          }
        },
        [](int, int, float) {}, terms...);  // elem: the float path below
  } else {
    (void)scr;
    for_pieces_block(M, N / 4, [&](int i, int q) {
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        x[e] = 0.f;
        ((x[e] += dot_term(terms, i, q * 4 + e)), ...);
      }
      epi4(i, q * 4, x);
    });
  }
}

// mm_vec4 for bf16 operands; float operands: mm with the element epilogue epi1(i, j, value) (bwd_wy's f32 build:
// its register allocation spills with mm_vec4's 4-element float walk).
template <class OP, bool Pair = false, class Epi4, class Epi1, class... Terms>
__device__ __forceinline__ void mm_vec4_or(int M, int N, float* scr, Epi4&& epi4, Epi1&& epi1, const Terms&... terms) {
  if constexpr (std::is_same_v<OP, bf16>) mm_vec4<OP, Pair>(M, N, scr, epi4, terms...);
  else mm<OP, Pair>(M, N, scr, epi1, terms...);
}

// X(t, c) *= f(t) for t < rows, c < cols (OP, row stride ld, cols a multiple of 4): 4 elements a step, one f(t)
// (an exp) per piece instead of per element, one 8-byte (bf16) load and store.
template <class OP, class F>
__device__ __forceinline__ void scale_rows4(OP* X, int ld, int rows, int cols, F&& f) {
  for_pieces_block(rows, cols / 4, [&](int t, int q) {
    OP* x = X + t * ld + q * 4;
    const float m = f(t);
    const float y[4] = {m * tof(x[0]), m * tof(x[1]), m * tof(x[2]), m * tof(x[3])};
    st4op(x, y);
  });
}

// The state update S = decay S + sum over the terms (S f32 [M, N], row stride lds: a multiple of 4, 32-byte
// aligned tiles). bf16: each tile's accumulator is loaded from S, scaled, continued by the products and stored back
// (a warp owns its tiles: no scratch pass, no element loop); U > 0: the k steps unrolled U times (U = 0: fully).
// float: an element per thread. No __syncthreads inside.
// decay: a float (every row), or a pointer to M per-row factors (the generalized rule's per-key decays).
template <class OP, int U = 0, class Dec, class... Terms>
__device__ __forceinline__ void state_update(float* S, int lds, int M, int N, Dec decay, const Terms&... terms) {
  constexpr bool kRows = std::is_pointer_v<Dec>;
  if constexpr (std::is_same_v<OP, bf16>) {
    const tc::Lanes w = tc::lanes();
    const int tn = N / 16, ntiles = (M / 16) * tn;
    for (int tile = w.warp; tile < ntiles; tile += w.nwarps) {
      int i0, j0;
      tile_origin(tile, tn, i0, j0);
      float* st = S + i0 * lds + j0;
      tc::FragC acc;
      tc::load_acc(acc, st, lds);
      if constexpr (kRows) tc::scale_rows(acc, decay + i0);
      else tc::scale(acc, decay);
      (mma_term<U>(acc, terms, i0, j0), ...);
      tc::store_acc(st, acc, lds);
    }
  } else {
    const int nthr = int(blockDim.x), tid = int(threadIdx.x);
    for (int e = tid; e < M * N; e += nthr) {
      const int i = e / N, j = e % N;
      float v = 0.f;
      ((v += dot_term(terms, i, j)), ...);
      float d;
      if constexpr (kRows) d = decay[i];
      else d = decay;
      S[i * lds + j] = d * S[i * lds + j] + v;
    }
  }
}

// Whether columns col0 .. col0 + ncol of an [.., D] input x split into 16-byte aligned pieces on every row.
template <class IN>
__device__ __forceinline__ bool cols16_ok(const IN* x, int D, int col0, int ncol) {
  constexpr int per = 16 / int(sizeof(IN));
  return reinterpret_cast<uintptr_t>(x) % 16 == 0 && (int64_t(D) * int(sizeof(IN))) % 16 == 0 && col0 % per == 0 &&
         ncol % per == 0;
}
// C rows x ncol columns (from col0) of an [.., D] input times mul into dst (OP, stride ld), rows >= L zeros: a
// 16-byte piece per thread and walk step, consecutive threads along a row (element loads where x or the columns are
// not 16-byte aligned).
template <class IN, class OP>
__device__ __forceinline__ void load_cols(OP* dst, int ld, const IN* x, const Geo& g, const Chunk& c, int D, int col0, int ncol,
                                          float mul) {
  constexpr int per = 16 / int(sizeof(IN));
  if (!cols16_ok(x, D, col0, ncol)) {
    load_rows_elems(dst, ld, x, g, c, D, col0, ncol, mul);
    return;
  }
  const IN* x0 = x + tok(g, c.b, c.t0, c.h) * D + col0;  // row t at t H D further
  const int64_t rs = int64_t(g.H) * D;
  for_pieces_block(g.C, ncol / per, [&](int t, int q) {
    const uint4 v = t < c.L ? ld16(x0 + t * rs + q * per) : uint4{0u, 0u, 0u, 0u};
#pragma unroll
    for (int i0 = 0; i0 < per; i0 += 4) {
      const float y[4] = {mul * elem16<IN>(v, i0), mul * elem16<IN>(v, i0 + 1), mul * elem16<IN>(v, i0 + 2),
                          mul * elem16<IN>(v, i0 + 3)};
      st4op(dst + t * ld + q * per + i0, y);
    }
  });
}

// load_cols / load_rows in two halves (bwd_state's next dO columns, bwd_wy's V rows): load() issues the 16-byte
// global loads into registers (R per thread) before a product, store() converts and writes them (times mul, and
// rowmul[t] when given, as load_rows) after the barrier that frees the buffer. Shapes with more than R pieces per
// thread, or unaligned ones: store() is a plain load_cols / load_rows.
template <class IN, int R>
struct ColPrefetch {
  static constexpr int per = 16 / int(sizeof(IN));
  uint4 v[R];
  __device__ __forceinline__ static bool fits(const IN* x, const Geo& g, int D, int col0, int ncol) {
    return cols16_ok(x, D, col0, ncol) && g.C * (ncol / per) <= R * int(blockDim.x);
  }
  __device__ __forceinline__ void load(const IN* x, const Geo& g, const Chunk& c, int D, int col0, int ncol) {
    if (!fits(x, g, D, col0, ncol)) return;
    const int nthr = int(blockDim.x), tid = int(threadIdx.x), vc = ncol / per;
    const IN* x0 = x + tok(g, c.b, c.t0, c.h) * D + col0;  // row t at t H D further
    const int64_t rs = int64_t(g.H) * D;
    const PieceWalk<true> w(vc);
    if (w.fast) {  // piece k: row r0 + k rstep, column pc (no division per piece)
#pragma unroll
      for (int k = 0; k < R; ++k) {
        const int t = w.r0 + k * w.rstep;
        v[k] = t < c.L && t < g.C ? ld16(x0 + t * rs + w.pc * per) : uint4{0u, 0u, 0u, 0u};
      }
      return;
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
      const int e = tid + k * nthr, t = e / vc;
      v[k] = t < c.L && e < g.C * vc ? ld16(x0 + t * rs + (e % vc) * per) : uint4{0u, 0u, 0u, 0u};
    }
  }
  template <class OP>
  __device__ __forceinline__ void store(OP* dst, int ld, const IN* x, const Geo& g, const Chunk& c, int D, int col0, int ncol,
                                        float mul, const float* rowmul = nullptr) const {
    if (!fits(x, g, D, col0, ncol)) {
      if (rowmul) load_rows(dst, ld, x, g, c, D, col0, ncol, mul, rowmul);
      else load_cols(dst, ld, x, g, c, D, col0, ncol, mul);
      return;
    }
    const int nthr = int(blockDim.x), tid = int(threadIdx.x), vc = ncol / per;
    auto put = [&](int t, int q, const uint4& u) {
      const float m = rowmul ? (t < c.L ? mul * rowmul[t] : 0.f) : mul;  // u is zeros past L
#pragma unroll
      for (int i0 = 0; i0 < per; i0 += 4) {
        const float y[4] = {m * elem16<IN>(u, i0), m * elem16<IN>(u, i0 + 1), m * elem16<IN>(u, i0 + 2),
                            m * elem16<IN>(u, i0 + 3)};
        st4op(dst + t * ld + q * per + i0, y);
      }
    };
    const PieceWalk<true> w(vc);
    if (w.fast) {
#pragma unroll
      for (int k = 0; k < R; ++k)
        if (w.r0 + k * w.rstep < g.C) put(w.r0 + k * w.rstep, w.pc, v[k]);
      return;
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
      const int e = tid + k * nthr;
      if (e >= g.C * vc) break;
      put(e / vc, e % vc, v[k]);
    }
  }
};
// bwd_state's dO columns: C = 64, DVT = 32: 256 pieces of 16-bit inputs = 1 per thread (f32 inputs, 512 pieces: a
// plain load_cols; two registers' worth spills there)
constexpr int kPrefetchRO = 1;

// A (f32, strictly lower, stride lda) -> (I + A)^{-1} in place (unit diagonal and zero upper part implied).
// C = 64 (kInvC): blocked over 16 x 16 blocks, 8 barriers in all. (1) each diagonal block inverted by forward
// substitution, a thread per column (independent triangular solves, the column in registers), written in place
// after a barrier; (2) by block distance d = 1, 2, 3: M = sum_{j <= m < i} A_im T_mj, then T_ij = -T_ii M, every
// element of the distance's blocks in parallel (f32 FFMA), the off-diagonal T blocks in `part` (which needs
// kInvPart floats) until (3) they are copied over A's (A's own blocks are read until the last distance).
// Other C: the row-by-row substitution below.
constexpr int kInvC = 64, kInvB = kInvC / 16, kInvLd = 17;
constexpr int kInvOff = kInvB * (kInvB - 1) / 2;            // off-diagonal blocks
constexpr int kInvPart = (kInvOff + kInvB - 1) * 16 * kInvLd;  // those, and M for the blocks of one distance
static_assert(kInvPart <= (kThreads / 32) * kScrTile, "the blocked inverse's buffers must fit in the scratch tiles");

__device__ __forceinline__ void unit_lower_inverse_blocked(float* A, int lda, float* part) {
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  constexpr int nb = kInvB, bs = 16 * kInvLd;
  float* Toff = part;                  // block (bi, bj), bi > bj, at slot bi (bi - 1) / 2 + bj
  float* M = part + kInvOff * bs;      // block (bi, bi - d) of the current distance at slot bi - d
  // (1) diagonal blocks: column jl of block b solves (I + A_bb) x = e_jl; x_i = -sum_{m<i} A_im x_m for i > jl
  auto solve_col = [&](int col, float (&x)[16]) {
    const int r0 = (col / 16) * 16, jl = col % 16;
    const float* Ab = A + r0 * lda + r0;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      float s = 0.f;
#pragma unroll
      for (int m = 0; m < i; ++m) s += Ab[i * lda + m] * x[m];
      x[i] = i < jl ? 0.f : (i == jl ? 1.f : -s);
    }
  };
  auto write_col = [&](int col, const float (&x)[16]) {
    const int r0 = (col / 16) * 16, jl = col % 16;
#pragma unroll
    for (int i = 0; i < 16; ++i)
      if (i > jl) A[(r0 + i) * lda + col] = x[i];
  };
  // all solves of a round before its writes (a column reads the columns to its right in its block; the ones
  // to its left, written by earlier rounds, only times x_m = 0): one round with >= 64 threads
  for (int c0 = 0; c0 < kInvC; c0 += nthr) {
    const int col = c0 + tid;
    float x[16];
    if (col < kInvC) solve_col(col, x);
    __syncthreads();
    if (col < kInvC) write_col(col, x);
  }
  __syncthreads();
  // (2) off-diagonal blocks by distance. M's sum over m = bj uses T_jj (unit lower, in A's diagonal block: element
  // (k, c) is A's for k > c, 1 for k = c, 0 above), then the T_mj blocks in Toff; unrolled, with selects instead of
  // a branch per element (the same sums in the same order: the zero terms add exact zeros).
  for (int d = 1; d < nb; ++d) {
    const int nblk = nb - d;
    for (int e = tid; e < nblk * 256; e += nthr) {
      const int bj = e / 256, r = (e / 16) % 16, c = e % 16, bi = bj + d;
      const float* Arow = A + (bi * 16 + r) * lda;
      const float* Ad = Arow + bj * 16;
      const float* Tjj = A + (bj * 16) * lda + bj * 16 + c;
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        const float tv = Tjj[k * lda];
        s += Ad[k] * (k > c ? tv : (k == c ? 1.f : 0.f));
      }
      for (int bm = bj + 1; bm < bi; ++bm) {
        const float* Am = Arow + bm * 16;
        const float* Tb = Toff + (bm * (bm - 1) / 2 + bj) * bs + c;
#pragma unroll
        for (int k = 0; k < 16; ++k) s += Am[k] * Tb[k * kInvLd];
      }
      M[bj * bs + r * kInvLd + c] = s;
    }
    __syncthreads();
    for (int e = tid; e < nblk * 256; e += nthr) {
      const int bj = e / 256, r = (e / 16) % 16, c = e % 16, bi = bj + d;
      const float* Arow = A + (bi * 16 + r) * lda + bi * 16;  // T_ii row r: A (k < r), 1 (k = r)
      const float* Mb = M + bj * bs;
      float s = Mb[r * kInvLd + c];
      for (int k = 0; k < r; ++k) s += Arow[k] * Mb[k * kInvLd + c];
      Toff[(bi * (bi - 1) / 2 + bj) * bs + r * kInvLd + c] = -s;
    }
    __syncthreads();
  }
  // (3) the off-diagonal T blocks over A's
  for (int e = tid; e < kInvOff * 256; e += nthr) {
    const int blk = e / 256, r = (e / 16) % 16, c = e % 16;
    int bi = 1;
    while ((bi + 1) * bi / 2 <= blk) ++bi;
    const int bj = blk - bi * (bi - 1) / 2;
    A[(bi * 16 + r) * lda + bj * 16 + c] = Toff[blk * bs + r * kInvLd + c];
  }
  __syncthreads();
}

// Other C: forward substitution row by row: T_ij = -(A_ij + sum_{j<m<i} A_im T_mj). Every read of row i is of columns
// > j, so a pass writes only after all of its reads (two barriers per row). With at least 4 C threads, four
// threads share a column's sum (partial sums through `part`, 4 C floats); otherwise one thread per column.
__device__ __forceinline__ void unit_lower_inverse(float* A, int lda, int C, float* part) {
  if (C == kInvC) {
    unit_lower_inverse_blocked(A, lda, part);
    return;
  }
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  if (nthr >= 4 * C) {
    const int j = tid / 4, r = tid % 4;
    for (int i = 1; i < C; ++i) {
      float v = 0.f;
      if (j < i)
        for (int m = j + 1 + r; m < i; m += 4) v -= A[i * lda + m] * A[m * lda + j];
      if (tid < 4 * C) part[tid] = v;
      __syncthreads();
      if (r == 0 && j < i) A[i * lda + j] = part[tid] + part[tid + 1] + part[tid + 2] + part[tid + 3] - A[i * lda + j];
      __syncthreads();
    }
    return;
  }
  for (int i = 1; i < C; ++i) {
    for (int j0 = 0; j0 < i; j0 += nthr) {
      const int j = j0 + tid;
      float v = 0.f;
      if (j < i) {
        v = -A[i * lda + j];
        for (int m = j + 1; m < i; ++m) v -= A[i * lda + m] * A[m * lda + j];
      }
      __syncthreads();
      if (j < i) A[i * lda + j] = v;
      __syncthreads();
    }
  }
}
// The inverse (unit diagonal, zero upper part) as an OP operand, and into gT ([C, C], dense) when given.
template <class OP>
__device__ __forceinline__ void tri_to_op(OP* T, int ldt, const float* A, int lda, int C, OP* gT = nullptr) {
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  for (int e = tid; e < C * C; e += nthr) {
    int i, j;
    divmod(e, C, i, j);
    const OP v = fromf<OP>(j < i ? A[i * lda + j] : (j == i ? 1.f : 0.f));
    T[i * ldt + j] = v;
    if (gT) gT[e] = v;
  }
}

// dec[j] = e^{G_C[j]} of chunk n (gCk: [B, H, N, Dk] log decays), for every key j.
__device__ __forceinline__ void key_decays(float* dec, const float* gCk, const Geo& g, int b, int h, int n) {
  const float* x = gCk + key_row(g, b, h, n);
  for (int j = dr_tid(); j < g.Dk; j += int(blockDim.x)) dec[j] = dr_exp(x[j]);
}
// load_cols(dst, .., mul = 1) by cp.async where the input is already the operand type and 16-byte aligned (no
// conversion on the way), the rows past the chunk's end zeroed by plain stores; false (nothing issued) otherwise.
template <class OP, class IN>
__device__ __forceinline__ bool cols_async_ok(const IN* x, int D, int col0, int ncol) {
  return std::is_same_v<IN, OP> && cols16_ok(x, D, col0, ncol);
}
template <class OP, class IN>
__device__ __forceinline__ bool load_cols_async(OP* dst, int ld, const IN* x, const Geo& g, const Chunk& c, int D, int col0,
                                                int ncol) {
  if (!cols_async_ok<OP>(x, D, col0, ncol)) return false;
  constexpr int per = 16 / int(sizeof(IN));
  const IN* x0 = x + tok(g, c.b, c.t0, c.h) * D + col0;
  const int64_t rs = int64_t(g.H) * D;
  for_pieces_block(g.C, ncol / per, [&](int t, int q) {
    if (t < c.L) tc::cp16(dst + t * ld + q * per, x0 + t * rs + q * per);
    else st16(dst + t * ld + q * per, uint4{0u, 0u, 0u, 0u});
  });
  return true;
}
// The generalized rule's extra operands of fwd_state's chunk n (DplrPtrs): Kv into M3, V's DVT columns into X2 (both
// by cp.async where they can, in flight during the U' product; the caller waits before the state update), the
// per-key decays e^{G_C} into dec.
template <class IN, class OP>
__device__ __forceinline__ void gen_state_operands(unsigned char* smem, const LaySeq<OP>& lay, const Ld& ld, const Geo& g,
                                                   const DplrPtrs<IN, OP>& p, int b, int h, int n, int j0) {
  const int64_t row0 = hp_row(g, b, h, n, 0);
  OP* X2 = reinterpret_cast<OP*>(smem + lay.X2);
  const Chunk c = chunk_at(g, b, h, n);
  copy_rows_async(reinterpret_cast<OP*>(smem + lay.M3), ld.k, p.Kv + row0 * g.Dk, g.C, g.Dk);
  const bool async_v = load_cols_async(X2, ld.vt, p.v, g, c, g.Dv, j0, g.DVT);
  tc::cp_commit();
  if (!async_v) load_cols(X2, ld.vt, p.v, g, c, g.Dv, j0, g.DVT, 1.f);
  key_decays(reinterpret_cast<float*>(smem + lay.dec), p.gCk, g, b, h, n);
}

// ===================================== forward =====================================

// (1) per chunk: A, T = (I + A)^{-1} (saved), W = T diag(b e^G) K, U = T diag(b) V, Kd = diag(e^(G_C - G)) K, gC.
// Y (V's rows issued before the inversion) goes into A's space once T is formed; launch bounds 256 x 4: 64
// registers (no spills), four CTAs per SM at Dk = Dv = 128.
template <class IN, class OP>
__global__ void __launch_bounds__(kThreads, 4) fwd_prep(Geo g, Ptrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayPrep<OP> lay(g);
  const Ld ld(g);
  OP* K = reinterpret_cast<OP*>(smem + lay.K);
  OP* Y = reinterpret_cast<OP*>(smem + lay.Y);
  float* A = reinterpret_cast<float*>(smem + lay.A);
  OP* T = reinterpret_cast<OP*>(smem + lay.T);
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  float* rk = reinterpret_cast<float*>(smem + lay.rk);
  float* G = reinterpret_cast<float*>(smem + lay.G);
  float* bb = reinterpret_cast<float*>(smem + lay.b);
  const Chunk c = chunk_of(g);
  const int tid = int(threadIdx.x);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv;

  load_gb(G, bb, g.gated ? p.g : nullptr, p.beta, g, c);
  load_normalized(K, ld.k, rk, p.k, g, c, Dk);
  __syncthreads();
  mm<OP>(C, C, scr,
         [&](int t, int s, float x) { A[t * ld.cf + s] = s < t ? bb[t] * x * dr_exp(G[t] - G[s]) : 0.f; },
         term<false, true>(K, ld.k, K, ld.k, Dk));
  __syncthreads();
  // V's rows in flight during the inversion (Y's buffer is A's); f32 inputs (twice the pieces): load_rows
  ColPrefetch<IN, sizeof(IN) == 4 ? 1 : kPrefetchR> pv;
  pv.load(p.v, g, c, Dv, 0, Dv);
  unit_lower_inverse(A, ld.cf, C, scr);  // scr is free between products
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);
  // T also to global (when a backward will run): bwd_wy loads it instead of inverting again
  tri_to_op(T, ld.c, A, ld.cf, C, p.Tm ? p.Tm + row0 * C : nullptr);
  // Kd to global, then K -> X = diag(b e^G) K in place (each element read and written by one thread)
  const float GC = G[C - 1];
  for_pieces_block(C, Dk / 4, [&](int t, int q) {  // 4 elements a step: one exp pair, 8-byte stores
    const int j = q * 4;
    const float ed = dr_exp(GC - G[t]), ex = bb[t] * dr_exp(G[t]);
    OP* kr = K + t * ld.k + j;
    const float kv[4] = {tof(kr[0]), tof(kr[1]), tof(kr[2]), tof(kr[3])};
    const float kd[4] = {kv[0] * ed, kv[1] * ed, kv[2] * ed, kv[3] * ed};
    const float kx[4] = {kv[0] * ex, kv[1] * ex, kv[2] * ex, kv[3] * ex};
    st4op(p.Kd + (row0 + t) * Dk + j, kd);
    st4op(kr, kx);
  });
  if (tid == 0) p.gC[int64_t(c.b * g.H + c.h) * g.N + c.n] = GC;
  __syncthreads();  // A is dead: Y takes its space while W = T X runs
  pv.store(Y, ld.v, p.v, g, c, Dv, 0, Dv, 1.f, bb);  // Y = diag(b) V
  mm_vec4<OP>(C, Dk, scr, [&](int t, int j, const float (&x)[4]) { st4op(p.W + (row0 + t) * Dk + j, x); },
              term<false, false>(T, ld.c, K, ld.k, C));
  __syncthreads();
  mm_vec4<OP>(C, Dv, scr, [&](int t, int j, const float (&x)[4]) { st4op(p.U + (row0 + t) * Dv + j, x); },
              term<false, false>(T, ld.c, Y, ld.v, C));
}

// (2) sequential over chunks per (batch, head, DVT columns): S_n kept in f32; U' = U - W S_n;
// S_{n+1} = e^{G_C} S_n + Kd^T U'. Stores every S_n and the final state.
// Generalized rule (P = DplrPtrs): S_{n+1} = diag(e^{G_C}) S_n + Bd^T U' + Kv^T V, V's DVT columns loaded per chunk.
template <class IN, class OP, class P = Ptrs<IN, OP>>
__global__ void __launch_bounds__(kThreads, 2) fwd_state(Geo g, P p) {
  constexpr bool kGen = !std::is_same_v<P, Ptrs<IN, OP>>;
  TC_SMEM(smem);
  const LaySeq<OP> lay(g);
  const Ld ld(g);
  float* S = reinterpret_cast<float*>(smem + lay.S);
  OP* Sop = reinterpret_cast<OP*>(smem + lay.Sop);
  OP* Wt = reinterpret_cast<OP*>(smem + lay.M1);
  OP* Kd = reinterpret_cast<OP*>(smem + lay.M2);
  OP* Up = reinterpret_cast<OP*>(smem + lay.X1);
  float* Uf = reinterpret_cast<float*>(smem + lay.Uf);
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  const int j0 = int(blockIdx.x) * g.DVT, h = int(blockIdx.y), b = int(blockIdx.z);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv, DVT = g.DVT;
  const int64_t bh = int64_t(b * g.H + h);
  state_cols_in<true>(S, ld.vf, p.s0 ? p.s0 + bh * Dk * Dv : nullptr, g, j0);
  RowPrefetch<OP, kPrefetchR, true> pw, pk;  // chunk n + 1's W, Kd, U columns in flight during chunk n's products
  RowPrefetch<float, kPrefetchRU, true> pu;
  pw.load(p.W + hp_row(g, b, h, 0, 0) * Dk, C, Dk);
  pk.load(p.Kd + hp_row(g, b, h, 0, 0) * Dk, C, Dk);
  pu.load(p.U + hp_row(g, b, h, 0, 0) * Dv + j0, C, DVT, Dv);
  for (int n = 0; n < g.N; ++n) {
    float eC = 1.f;
    if constexpr (!kGen) eC = dr_exp(p.gC[bh * g.N + n]);
    __syncthreads();
    state_cols_out<true>(p.states + state_off(g, b, h, n), Sop, ld.vt, S, ld.vf, g, j0);
    const int64_t row0 = hp_row(g, b, h, n, 0);
    pw.store(Wt, ld.k, p.W + row0 * Dk, C, Dk);
    pk.store(Kd, ld.k, p.Kd + row0 * Dk, C, Dk);
    pu.store(Uf, ld.vf, p.U + row0 * Dv + j0, C, DVT, Dv);
    if constexpr (kGen) gen_state_operands(smem, lay, ld, g, p, b, h, n, j0);
    __syncthreads();
    if (n + 1 < g.N) {
      pw.load(p.W + (row0 + C) * Dk, C, Dk);
      pk.load(p.Kd + (row0 + C) * Dk, C, Dk);
      pu.load(p.U + (row0 + C) * Dv + j0, C, DVT, Dv);
    }
    // U' = U - W S_n: pieces of U' rounded to OP to global and to the operand tile
    mm_vec4<OP>(C, DVT, scr,
                [&](int t, int j, const float (&x)[4]) {
                  const uint4 o = ld16(Uf + t * ld.vf + j);
                  const float up[4] = {u2f(o.x) - x[0], u2f(o.y) - x[1], u2f(o.z) - x[2], u2f(o.w) - x[3]};
                  st4op(p.Un + (row0 + t) * Dv + j0 + j, up);
                  st4op(Up + t * ld.vt + j, up);
                },
                term<false, false>(Wt, ld.k, Sop, ld.vt, Dk));
    if constexpr (kGen) tc::cp_wait_all();
    __syncthreads();
    if constexpr (kGen)
      state_update<OP>(S, ld.vf, Dk, DVT, reinterpret_cast<const float*>(smem + lay.dec),
                       term<true, false>(Kd, ld.k, Up, ld.vt, C),
                       term<true, false>(reinterpret_cast<const OP*>(smem + lay.M3), ld.k,
                                         reinterpret_cast<const OP*>(smem + lay.X2), ld.vt, C));
    else
      state_update<OP>(S, ld.vf, Dk, DVT, eC, term<true, false>(Kd, ld.k, Up, ld.vt, C));
  }
  __syncthreads();
  state_cols_out<true>(p.final_s + bh * Dk * Dv, static_cast<OP*>(nullptr), 0, S, ld.vf, g, j0);
}

// P = (Q K^T) (.) Gamma (.) lower-inclusive into P (OP), from the chunk's normalized Q, K and G.
template <class OP>
__device__ __forceinline__ void form_p(OP* P, int ldp, const OP* Q, const OP* K, int ldk, const float* G, const Geo& g,
                                       float* scr) {
  mm_vec4_or<OP>(
      g.C, g.C, scr,
      [&](int t, int s, const float (&x)[4]) {
        const float gt = G[t];
        float y[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) y[e] = s + e <= t ? x[e] * dr_exp(gt - G[s + e]) : 0.f;
        st4op(P + t * ldp + s, y);
      },
      [&](int t, int s, float x) { P[t * ldp + s] = fromf<OP>(s <= t ? x * dr_exp(G[t] - G[s]) : 0.f); },
      term<false, true>(Q, ldk, K, ldk, g.Dk));
}

// (3) per chunk: O = scale (diag(e^G) Q S_n + P U'), w value columns at a time (LayFwdOut): the piece after the
// current one loads into the other buffer while the current one's product runs (one barrier per piece). Launch
// bounds 256 x 3: 80 registers (no spills), so that registers, like shared memory, allow three CTAs per SM.
template <class IN, class OP>
__global__ void __launch_bounds__(kThreads, 3) fwd_out(Geo g, Ptrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayFwdOut<OP> lay(g);
  const Ld ld(g);
  OP* Q = reinterpret_cast<OP*>(smem + lay.Q);
  OP* K = reinterpret_cast<OP*>(smem + lay.K);
  OP* P = reinterpret_cast<OP*>(smem + lay.P);
  OP* const buf[2] = {reinterpret_cast<OP*>(smem + lay.B0), K};
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  float* rq = reinterpret_cast<float*>(smem + lay.rq);
  float* rk = reinterpret_cast<float*>(smem + lay.rk);
  float* G = reinterpret_cast<float*>(smem + lay.G);
  const Chunk c = chunk_of(g);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv, w = lay.w, ldw = lay.ldw, npieces = Dv / w;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);
  const OP* Sn = p.states + state_off(g, c.b, c.h, c.n);
  const OP* Up = p.Un + row0 * Dv;
  // piece i: S_n's columns [i w, (i + 1) w) in rows 0 .. Dk - 1 of its buffer, U''s in the C rows after them
  auto load_piece = [&](int i) {
    OP* b = buf[i & 1];
    copy_rows_async(b, ldw, Sn + i * w, Dk, w, Dv);
    copy_rows_async(b + Dk * ldw, ldw, Up + i * w, C, w, Dv);
  };
  load_gb(G, nullptr, g.gated ? p.g : nullptr, p.beta, g, c);
  load_normalized(Q, ld.k, rq, p.q, g, c, Dk);
  load_normalized(K, ld.k, rk, p.k, g, c, Dk);
  load_piece(0);
  tc::cp_wait_all();
  __syncthreads();
  form_p(P, ld.c, Q, K, ld.k, G, g, scr);
  __syncthreads();
  scale_rows4(Q, ld.k, C, Dk, [&](int t) { return dr_exp(G[t]); });
  // 4 columns per lane: one 8-byte (bf16) / 16-byte (f32) store where o is aligned for it
  const bool ovec = reinterpret_cast<uintptr_t>(p.o) % (4 * sizeof(IN)) == 0;
  for (int i = 0; i < npieces; ++i) {
    // piece i is loaded and Q scaled; every warp is done with piece i - 1 (and with K, for i = 0), whose buffer
    // piece i + 1 takes (by cp.async: in flight during piece i's product)
    tc::cp_wait_all();
    __syncthreads();
    if (i + 1 < npieces) load_piece(i + 1);
    const OP* b = buf[i & 1];
    mm_vec4<OP>(C, w, scr,
                [&](int t, int j, const float (&x)[4]) {
                  if (t >= c.L) return;
                  IN* o = p.o + tok(g, c.b, c.t0 + t, c.h) * Dv + i * w + j;
                  const float y[4] = {g.scale * x[0], g.scale * x[1], g.scale * x[2], g.scale * x[3]};
                  if (ovec) st4op(o, y);
                  else
                    for (int e = 0; e < 4; ++e) o[e] = fromf<IN>(y[e]);
                },
                term<false, false>(Q, ld.k, b, ldw, Dk), term<false, false>(P, ld.c, b + Dk * ldw, ldw, C));
  }
}

// ===================================== backward =====================================

// (1) per chunk: dU = P^T (scale dO) (the intra-chunk part of dU'), Qg = diag(e^G) Q. dO loads into K's space
// once P is formed; launch bounds 256 x 4: 64 registers (no spills), four CTAs per SM at Dk = Dv = 128.
template <class IN, class OP>
__global__ void __launch_bounds__(kThreads, 4) bwd_prep(Geo g, Ptrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayOut<OP> lay(g, OutKind::BwdPrep);
  const Ld ld(g);
  OP* Q = reinterpret_cast<OP*>(smem + lay.Q);
  OP* K = reinterpret_cast<OP*>(smem + lay.K);
  OP* P = reinterpret_cast<OP*>(smem + lay.P);
  OP* dO = reinterpret_cast<OP*>(smem + lay.V1);  // K's space
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  float* rq = reinterpret_cast<float*>(smem + lay.rq);
  float* rk = reinterpret_cast<float*>(smem + lay.rk);
  float* G = reinterpret_cast<float*>(smem + lay.G);
  const Chunk c = chunk_of(g);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);
  load_gb(G, nullptr, g.gated ? p.g : nullptr, p.beta, g, c);
  load_normalized(Q, ld.k, rq, p.q, g, c, Dk);
  load_normalized(K, ld.k, rk, p.k, g, c, Dk);
  __syncthreads();
  form_p(P, ld.c, Q, K, ld.k, G, g, scr);
  // dO's rows in flight during Qg's stores and the barrier (f32 inputs, twice the pieces: load_rows)
  ColPrefetch<IN, sizeof(IN) == 4 ? 1 : kPrefetchR> po;
  po.load(p.dout, g, c, Dv, 0, Dv);
  for_pieces_block(C, Dk / 4, [&](int t, int q) {  // 4 elements a step: one exp, one 8-byte (bf16) store
    const int j = q * 4;
    const OP* qr = Q + t * ld.k + j;
    const float m = dr_exp(G[t]);
    const float y[4] = {m * tof(qr[0]), m * tof(qr[1]), m * tof(qr[2]), m * tof(qr[3])};
    st4op(p.Qg + (row0 + t) * Dk + j, y);
  });
  __syncthreads();  // K is dead: dO takes its space
  po.store(dO, ld.v, p.dout, g, c, Dv, 0, Dv, g.scale);
  __syncthreads();
  mm_vec4_or<OP>(
      C, Dv, scr, [&](int t, int j, const float (&x)[4]) { st4op(p.dU + (row0 + t) * Dv + j, x); },
      [&](int t, int j, float x) { p.dU[(row0 + t) * Dv + j] = x; }, term<true, false>(P, ld.c, dO, ld.v, C));
}

// (2) sequential over chunks backwards per (batch, head, DVT columns), from dS_N = d final state:
// dU' = P^T dO + Kd dS_{n+1};  dS_n = e^{G_C} dS_{n+1} + Qg^T dO - W^T dU'. Stores dS_{n+1} per chunk and
// d initial state.
// Generalized rule (P = DplrPtrs): the same with Kd = Bd, Qg = Qe and the per-key decays diag(e^{G_C}).
template <class IN, class OP, class P = Ptrs<IN, OP>>
__global__ void __launch_bounds__(kThreads, 2) bwd_state(Geo g, P p) {
  constexpr bool kGen = !std::is_same_v<P, Ptrs<IN, OP>>;
  TC_SMEM(smem);
  const LaySeq<OP> lay(g);
  const Ld ld(g);
  float* dS = reinterpret_cast<float*>(smem + lay.S);
  OP* dSop = reinterpret_cast<OP*>(smem + lay.Sop);
  OP* Kd = reinterpret_cast<OP*>(smem + lay.M1);
  OP* Qg = reinterpret_cast<OP*>(smem + lay.M2);
  OP* Wt = reinterpret_cast<OP*>(smem + lay.M3);
  OP* dO = reinterpret_cast<OP*>(smem + lay.X1);
  OP* ndU = reinterpret_cast<OP*>(smem + lay.X2);
  float* Uf = reinterpret_cast<float*>(smem + lay.Uf);  // P^T dO columns of the step
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  const int j0 = int(blockIdx.x) * g.DVT, h = int(blockIdx.y), b = int(blockIdx.z);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv, DVT = g.DVT;
  const int64_t bh = int64_t(b * g.H + h);
  state_cols_in<true>(dS, ld.vf, p.dfinal ? p.dfinal + bh * Dk * Dv : nullptr, g, j0);
  RowPrefetch<OP, kPrefetchR, true> pk, pq, pw;  // chunk n - 1's Kd, Qg, W, dU columns in flight during chunk n's products
  RowPrefetch<float, kPrefetchRU, true> pu;
  {
    const int64_t last = hp_row(g, b, h, g.N - 1, 0);
    pu.load(p.dU + last * Dv + j0, C, DVT, Dv);
    pk.load(p.Kd + last * Dk, C, Dk);
    pq.load(p.Qg + last * Dk, C, Dk);
    pw.load(p.W + last * Dk, C, Dk);
  }
  const auto chunk = [&](int n) { return chunk_at(g, b, h, n); };
  ColPrefetch<IN, kPrefetchRO> po;  // and chunk n - 1's dO columns (was a load exposed after the first barrier)
  po.load(p.dout, g, chunk(g.N - 1), Dv, j0, DVT);
  float* dec = reinterpret_cast<float*>(smem + lay.dec);
  for (int n = g.N - 1; n >= 0; --n) {
    float eC = 1.f;
    if constexpr (!kGen) eC = dr_exp(p.gC[bh * g.N + n]);
    __syncthreads();
    if constexpr (kGen)
      key_decays(dec, p.gCk, g, b, h, n);
    state_cols_out<true>(p.dH + state_off(g, b, h, n), dSop, ld.vt, dS, ld.vf, g, j0);
    const int64_t row0 = hp_row(g, b, h, n, 0);
    pk.store(Kd, ld.k, p.Kd + row0 * Dk, C, Dk);
    pq.store(Qg, ld.k, p.Qg + row0 * Dk, C, Dk);
    pw.store(Wt, ld.k, p.W + row0 * Dk, C, Dk);
    pu.store(Uf, ld.vf, p.dU + row0 * Dv + j0, C, DVT, Dv);
    po.store(dO, ld.vt, p.dout, g, chunk(n), Dv, j0, DVT, g.scale);
    __syncthreads();
    if (n > 0) {
      po.load(p.dout, g, chunk(n - 1), Dv, j0, DVT);
      pu.load(p.dU + (row0 - C) * Dv + j0, C, DVT, Dv);
      pk.load(p.Kd + (row0 - C) * Dk, C, Dk);
      pq.load(p.Qg + (row0 - C) * Dk, C, Dk);
      pw.load(p.W + (row0 - C) * Dk, C, Dk);
    }
    // dU' = P^T dO + Kd dS_{n+1}: pieces of dU' rounded to OP to global and of -dU' to the operand tile (through the
    // scratch tile: the register epilogue spills here, with four prefetches in flight)
    mm_vec4<OP, false, true>(C, DVT, scr,
                [&](int t, int j, const float (&x)[4]) {
                  const uint4 o = ld16(Uf + t * ld.vf + j);
                  const float du[4] = {u2f(o.x) + x[0], u2f(o.y) + x[1], u2f(o.z) + x[2], u2f(o.w) + x[3]};
                  st4op(p.dUn + (row0 + t) * Dv + j0 + j, du);
                  const float nd[4] = {-du[0], -du[1], -du[2], -du[3]};
                  st4op(ndU + t * ld.vt + j, nd);
                },
                term<false, false>(Kd, ld.k, dSop, ld.vt, Dk));
    __syncthreads();
    // k steps unrolled twice: four prefetches in flight leave no registers for all eight operand pairs at once
    if constexpr (kGen)
      state_update<OP, 2>(dS, ld.vf, Dk, DVT, static_cast<const float*>(dec), term<true, false>(Qg, ld.k, dO, ld.vt, C),
                          term<true, false>(Wt, ld.k, ndU, ld.vt, C));
    else
      state_update<OP, 2>(dS, ld.vf, Dk, DVT, eC, term<true, false>(Qg, ld.k, dO, ld.vt, C),
                          term<true, false>(Wt, ld.k, ndU, ld.vt, C));
  }
  __syncthreads();
  state_cols_out<true>(p.ds0 + bh * Dk * Dv, static_cast<OP*>(nullptr), 0, dS, ld.vf, g, j0);
}

// (3) per chunk, the WY part: T and W as fwd_prep saved them, U = T diag(b) V again; dW = -dU' S_n^T;
// dX = T^T dW; dY = T^T dU'; dA = -(dX W^T + dY U^T) (strictly lower); E = dA (.) diag(b) Gamma. Writes
// dv = b dY, dbeta (complete), and starts dk^ (b e^G dX + E K + E^T K) and dG (the + / - decay sides of those terms).
template <class IN, class OP>
__global__ void __launch_bounds__(kThreads) bwd_wy(Geo g, Ptrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayWy<OP> lay(g);
  const Ld ld(g);
  const int ldp = lay.ldp;
  OP* K = reinterpret_cast<OP*>(smem + lay.K);
  OP* T = reinterpret_cast<OP*>(smem + lay.T);  // T, then E
  OP* dU = reinterpret_cast<OP*>(smem + lay.S1);
  OP* S = reinterpret_cast<OP*>(smem + lay.S2);  // S_n over S2 and S3
  OP* Wt = reinterpret_cast<OP*>(smem + lay.S2);
  OP* Y = reinterpret_cast<OP*>(smem + lay.S2);  // Y, then dY
  OP* X = reinterpret_cast<OP*>(smem + lay.S3);  // X, then dX
  OP* Ut = reinterpret_cast<OP*>(smem + lay.S3);
  OP* dW = reinterpret_cast<OP*>(smem + lay.S4);
  float* P = reinterpret_cast<float*>(smem + lay.S4);  // dX W^T, then dA (before the sign)
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  float* rk = reinterpret_cast<float*>(smem + lay.rk);
  float* G = reinterpret_cast<float*>(smem + lay.G);
  float* bb = reinterpret_cast<float*>(smem + lay.b);
  float* db = reinterpret_cast<float*>(smem + lay.db);
  float* dG = reinterpret_cast<float*>(smem + lay.dG);
  const Chunk c = chunk_of(g);
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);

  // dU', S_n and fwd_prep's T (the same values an inversion here would give) by cp.async, in flight during the rest
  copy_rows_async(dU, ld.v, p.dUn + row0 * Dv, C, Dv);
  copy_rows_async(S, ld.v, p.states + state_off(g, c.b, c.h, c.n), Dk, Dv);
  copy_rows_async(T, ld.c, p.Tm + row0 * C, C, C);
  load_gb(G, bb, g.gated ? p.g : nullptr, p.beta, g, c);
  for (int t = tid; t < C; t += nthr) db[t] = dG[t] = 0.f;
  load_normalized(K, ld.k, rk, p.k, g, c, Dk);
  tc::cp_wait_all();
  __syncthreads();
  RowPrefetch<OP, kPrefetchR, true> pw;  // the saved W in flight during dW = -dU' S_n^T (its buffer holds S_n until then)
  pw.load(p.W + row0 * Dk, C, Dk);
  mm_vec4_or<OP>(
      C, Dk, scr,
      [&](int t, int j, const float (&x)[4]) {
        const float y[4] = {-x[0], -x[1], -x[2], -x[3]};
        st4op(dW + t * ld.k + j, y);
      },
      [&](int t, int j, float x) { dW[t * ld.k + j] = fromf<OP>(-x); }, term<false, true>(dU, ld.v, S, ld.v, Dv));
  __syncthreads();  // S_n is dead: the saved W takes S2 while dX goes to S3
  pw.store(Wt, ld.k, p.W + row0 * Dk, C, Dk);
  // dX = T^T dW over X: dk^ = b e^G dX, dbeta += e^G dX.k, dG += b e^G dX.k (X = diag(b e^G) K)
  mm_pieces<OP>(C, Dk, scr,
                [&](int t, int j, float* x, int n) {
                  st_opn(X + t * ld.k + j, x, n);
                  const float eg = dr_exp(G[t]), s = bb[t] * eg;
                  float d[4];
                  for (int e = 0; e < n; ++e) d[e] = s * x[e];
                  st_f32n(p.dkh + (row0 + t) * Dk + j, d, n);
                  return eg * dot_rows(x, n, K + t * ld.k + j);
                },
                [&](int t, float r) {
                  dr_atomic_add(&db[t], r);
                  dr_atomic_add(&dG[t], bb[t] * r);
                },
                term<true, false>(T, ld.c, dW, ld.k, C));
  __syncthreads();  // dW is dead: P = dX W^T (f32) takes S4, the first half of dA = -(dX W^T + dY U^T)
  // V's rows in flight during that product (Y's buffer holds W until then); f32 inputs (twice the pieces): load_rows
  ColPrefetch<IN, sizeof(IN) == 4 ? 1 : kPrefetchR> pv;
  pv.load(p.v, g, c, Dv, 0, Dv);
  mm_vec4_or<OP>(
      C, C, scr, [&](int t, int s, const float (&x)[4]) { st4op(P + t * ldp + s, x); },
      [&](int t, int s, float x) { P[t * ldp + s] = x; }, term<false, true>(X, ld.k, Wt, ld.k, Dk));
  __syncthreads();  // dX and W are dead: Y takes S2, U S3
  pv.store(Y, ld.v, p.v, g, c, Dv, 0, Dv, 1.f, bb);
  __syncthreads();
  mm_vec4_or<OP>(
      C, Dv, scr, [&](int t, int j, const float (&x)[4]) { st4op(Ut + t * ld.v + j, x); },
      [&](int t, int j, float x) { Ut[t * ld.v + j] = fromf<OP>(x); }, term<false, false>(T, ld.c, Y, ld.v, C));
  __syncthreads();
  // dY = T^T dU' over Y: dv = b dY, dbeta += dY.v (Y = diag(b) V)
  const bool vvec = (reinterpret_cast<uintptr_t>(p.v) | reinterpret_cast<uintptr_t>(p.dv)) % (4 * sizeof(IN)) == 0;
  mm_pieces<OP>(C, Dv, scr,
                [&](int t, int j, const float* x, int n) {
                  st_opn(Y + t * ld.v + j, x, n);
                  if (t >= c.L) return 0.f;
                  const int64_t o = tok(g, c.b, c.t0 + t, c.h) * Dv + j;
                  if (n == 4 && vvec) {  // one 8-byte (bf16) load of v and store of dv
                    float vv[4];
                    ld4f(p.v + o, vv);
                    const float bt = bb[t], y[4] = {bt * x[0], bt * x[1], bt * x[2], bt * x[3]};
                    st4op(p.dv + o, y);
                    return x[0] * vv[0] + x[1] * vv[1] + x[2] * vv[2] + x[3] * vv[3];
                  }
                  float vv[8];
#pragma unroll
                  for (int e = 0; e < 8; ++e)
                    if (e < n) vv[e] = tof(p.v[o + e]);
                  float r = 0.f;
#pragma unroll
                  for (int e = 0; e < 8; ++e)
                    if (e < n) {
                      p.dv[o + e] = fromf<IN>(bb[t] * x[e]);
                      r += x[e] * vv[e];
                    }
                  return r;
                },
                [&](int t, float r) { dr_atomic_add(&db[t], r); }, term<true, false>(T, ld.c, dU, ld.v, C));
  __syncthreads();
  // dA = -(dX W^T + dY U^T), strictly lower (the sums continue from P: the same f32 values as one product);
  // A_ts = b_t (k_t.k_s) e^{G_t - G_s}: E = dA (.) diag(b) Gamma over T, P keeps the sums for dbeta
  // bf16: 4 columns per lane (one 16-byte P store, one 8-byte T store, b_t and G_t read once per piece)
  mm_walk_init<OP>(
      C, C, scr, P, ldp,
      [&](const tc::Lanes&, int i0, int j0, float* sc, const tc::FragC& acc) {
        tc::for_quads(acc, sc, [&](int r, int cc, const float (&x)[4]) {
          const int t = i0 + r, s = j0 + cc;
          st16(P + t * ldp + s, uint4{f2u(x[0]), f2u(x[1]), f2u(x[2]), f2u(x[3])});  // this tile's own elements
          const float mb = -bb[t], gt = G[t];
          float y[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) y[e] = s + e < t ? x[e] * mb * dr_exp(gt - G[s + e]) : 0.f;
          st4op(T + t * ld.c + s, y);
        });
      },
      [&](int t, int s, float x) {
        P[t * ldp + s] = x;
        T[t * ld.c + s] = fromf<OP>(s < t ? -x * bb[t] * dr_exp(G[t] - G[s]) : 0.f);
      },
      term<false, true>(Y, ld.v, Ut, ld.v, Dv));
  __syncthreads();
  // dbeta_t += sum_{s<t} dA_ts (k_t.k_s) Gamma_ts (K K^T again, in f32, as A's)
  mm_pieces<OP>(C, C, scr,
                [&](int t, int s, const float* x, int n) {  // n = 4: P's piece in one 16-byte load
                  float pv[4];
                  if (n == 4) {
                    const uint4 u = ld16(P + t * ldp + s);
                    pv[0] = u2f(u.x), pv[1] = u2f(u.y), pv[2] = u2f(u.z), pv[3] = u2f(u.w);
                  } else {
                    pv[0] = P[t * ldp + s];
                  }
                  const float gt = G[t];
                  float r = 0.f;
                  for (int e = 0; e < n; ++e)
                    if (s + e < t) r -= pv[e] * x[e] * dr_exp(gt - G[s + e]);
                  return r;
                },
                [&](int t, float r) { dr_atomic_add(&db[t], r); }, term<false, true>(K, ld.k, K, ld.k, Dk));
  // k_t enters A_ts (row, + G_t) and A_st (column, - G_s): dk^ += E K + E^T K in one pass
  mm_pieces_ab<OP>(
      C, Dk, scr, [&](int t, int j, const float* x, int n) { return dot_rows(x, n, K + t * ld.k + j); },
      [&](int t, int j, const float* x, int n) { return add_rows_dot(p.dkh + (row0 + t) * Dk + j, x, n, K + t * ld.k + j); },
      [&](int t, float r) { dr_atomic_add(&dG[t], r); }, [&](int t, float r) { dr_atomic_add(&dG[t], -r); },
      term<false, false>(T, ld.c, K, ld.k, C), term<true, false>(T, ld.c, K, ld.k, C));
  __syncthreads();
  for (int t = tid; t < C; t += nthr) {
    p.dGp[row0 + t] = dG[t];
    if (t < c.L) p.dbeta[tok(g, c.b, c.t0 + t, c.h)] = db[t];
  }
}

// (4) per chunk, the output / state part and the finish: F = (dO U'^T) (.) Gamma (.) lower-inclusive;
// dq^ = e^G (dO S_n^T) + F K; dk^ += F^T Q + diag(e^{G_C - G}) U' dS_{n+1}^T; dG += q^.dq^ - k^.(those);
// dG_{C-1} += the G_C terms; then dq, dk through the L2 normalization and dg = reverse cumsum of dG.
template <class IN, class OP>
__global__ void __launch_bounds__(kThreads) bwd_out(Geo g, Ptrs<IN, OP> p) {
  TC_SMEM(smem);
  const LayOut<OP> lay(g, OutKind::BwdOut);
  const Ld ld(g);
  OP* Q = reinterpret_cast<OP*>(smem + lay.Q);
  OP* K = reinterpret_cast<OP*>(smem + lay.K);
  OP* F = reinterpret_cast<OP*>(smem + lay.P);
  OP* S = reinterpret_cast<OP*>(smem + lay.S);  // U', then S_n, then dS_{n+1}
  OP* Up = S;
  OP* dO = reinterpret_cast<OP*>(smem + lay.V1);  // dO, then diag(e^{G_C - G}) U'
  float* scr = reinterpret_cast<float*>(smem + lay.scr);
  float* rq = reinterpret_cast<float*>(smem + lay.rq);
  float* rk = reinterpret_cast<float*>(smem + lay.rk);
  float* G = reinterpret_cast<float*>(smem + lay.G);
  float* dG = reinterpret_cast<float*>(smem + lay.dG);
  float* yrow = reinterpret_cast<float*>(smem + lay.y);
  float* red = reinterpret_cast<float*>(smem + lay.red);
  const Chunk c = chunk_of(g);
  const int nthr = int(blockDim.x), tid = int(threadIdx.x);
  const int C = g.C, Dk = g.Dk, Dv = g.Dv;
  const int64_t row0 = hp_row(g, c.b, c.h, c.n, 0);
  const tc::Lanes w = tc::lanes();

  copy_rows_async(Up, ld.v, p.Un + row0 * Dv, C, Dv);  // in flight during the loads below
  load_gb(G, nullptr, g.gated ? p.g : nullptr, p.beta, g, c);
  for (int t = tid; t < C; t += nthr) dG[t] = p.dGp[row0 + t];
  load_normalized(Q, ld.k, rq, p.q, g, c, Dk);
  load_normalized(K, ld.k, rk, p.k, g, c, Dk);
  load_rows(dO, ld.v, p.dout, g, c, Dv, 0, Dv, g.scale);
  tc::cp_wait_all();
  __syncthreads();
  mm_vec4_or<OP, true>(
      C, C, scr,
      [&](int t, int s, const float (&x)[4]) {
        const float gt = G[t];
        float y[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) y[e] = s + e <= t ? x[e] * dr_exp(gt - G[s + e]) : 0.f;
        st4op(F + t * ld.c + s, y);
      },
      [&](int t, int s, float x) { F[t * ld.c + s] = fromf<OP>(s <= t ? x * dr_exp(G[t] - G[s]) : 0.f); },
      term<false, true>(dO, ld.v, Up, ld.v, Dv));
  __syncthreads();
  // dO -> diag(e^G) dO and S_n over U' (F^T Q waits for the last product, which shares its dk^ pass)
  scale_rows4(dO, ld.v, C, Dv, [&](int t) { return dr_exp(G[t]); });
  const OP* Hn = p.dH + state_off(g, c.b, c.h, c.n);
  const OP* Sn = p.states + state_off(g, c.b, c.h, c.n);
  // G_C (= G_{C-1}) scales S_n in S_{n+1} = e^{G_C} S_n + Kd^T U' and appears in Kd = diag(e^{G_C - G}) K:
  // dG_{C-1} += e^{G_C} <dS_{n+1}, S_n> (both as saved, in OP) + sum_t y_t and dG_t -= y_t with y_t = k_t . dKs_t,
  // the same rounded y on both sides so that they cancel where they should (dg = 0 at T = 1 without S_0).
  // S_n (dense [Dk, Dv]) is read once for both: kLdBatch 16-byte pieces of S_n and of dS' in flight per thread.
  float part = 0.f;
  {
    constexpr int per = 16 / int(sizeof(OP));
    const int vc = Dv / per, total = Dk * vc;
    for (int e0 = tid; e0 < total; e0 += kLdBatch * nthr) {
      uint4 sv[kLdBatch], hv[kLdBatch];
#pragma unroll
      for (int k = 0; k < kLdBatch; ++k) {
        const int e = e0 + k * nthr;
        if (e < total) {
          sv[k] = ld16(Sn + int64_t(e) * per);
          hv[k] = ld16(Hn + int64_t(e) * per);
        }
      }
#pragma unroll
      for (int k = 0; k < kLdBatch; ++k) {
        const int e = e0 + k * nthr;
        if (e < total) {
          int r, q;
          divmod(e, vc, r, q);
          st16(S + r * ld.v + q * per, sv[k]);
#pragma unroll
          for (int i = 0; i < per; ++i) part += elem16<OP>(hv[k], i) * elem16<OP>(sv[k], i);
        }
      }
    }
  }
  part = warp_sum(part, w);
  if (w.lane == 0) red[w.warp] = part;
  for (int t = tid; t < C; t += nthr) yrow[t] = 0.f;
  __syncthreads();
  mm_pieces<OP, true>(C, Dk, scr,
                [&](int t, int j, const float* x, int n) {
                  st_f32n(p.dqh + (row0 + t) * Dk + j, x, n);
                  return dot_rows(x, n, Q + t * ld.k + j);
                },
                [&](int t, float r) { dr_atomic_add(&dG[t], r); }, term<false, true>(dO, ld.v, S, ld.v, Dv),
                term<false, false>(F, ld.c, K, ld.k, C));
  __syncthreads();
  const float GC = G[C - 1];
  // dS_{n+1} replaces S_n; diag(e^{G_C - G}) U' replaces dO (U' rounded to OP first, as in F and the forward)
  copy_rows_async(S, ld.v, Hn, Dk, Dv);
  load_op_rows(dO, ld.v, p.Un + row0 * Dv, Dv, C, Dv, [&](int t, float x) { return x * dr_exp(GC - G[t]); });
  tc::cp_wait_all();
  __syncthreads();
  // dk^ += F^T Q + diag(e^{G_C - G}) U' dS'^T in one pass: k_s enters F_ts through Gamma_ts with - G_s (dG), and
  // the second product's k-dots are the y above
  mm_pieces_ab<OP, true>(
      C, Dk, scr, [&](int t, int j, const float* x, int n) { return dot_rows(x, n, K + t * ld.k + j); },
      [&](int t, int j, const float* x, int n) { return add_rows_dot(p.dkh + (row0 + t) * Dk + j, x, n, K + t * ld.k + j); },
      [&](int t, float r) { dr_atomic_add(&dG[t], -r); }, [&](int t, float r) { dr_atomic_add(&yrow[t], r); },
      term<true, false>(F, ld.c, Q, ld.k, C), term<false, true>(dO, ld.v, S, ld.v, Dv));
  __syncthreads();
  if (w.warp == 0) {  // one warp: dG_t -= y_t, dG_{C-1} += e^{G_C} <dS', S_n> + sum_t y_t
    float ys = 0.f;
    for (int t = w.lane; t < C; t += w.nlanes) {
      ys += yrow[t];
      dG[t] -= yrow[t];
    }
    ys = warp_sum(ys, w);
    __syncwarp();
    if (w.lane == 0) {
      float s = 0.f;
      for (int i = 0; i < w.nwarps; ++i) s += red[i];
      dG[C - 1] += dr_exp(GC) * s + ys;
    }
  }
  __syncthreads();
  // L2 normalization backward: dx = r (dx^ - x^ (x^.dx^)), with x^ = x r in f32 from the input; a warp per row
  // (rows 0 .. L - 1 of q, then of k), kNormRows of them loaded before their sums as in load_normalized
  {
    const int span = kNormElems * w.nlanes, nb = (Dk + span - 1) / span;  // element blocks per row: 1 on the GPU
    const bool xvec = (reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.k) | reinterpret_cast<uintptr_t>(p.dq) |
                       reinterpret_cast<uintptr_t>(p.dk)) % (4 * sizeof(IN)) == 0;
    for (int t0 = w.warp; t0 < 2 * c.L; t0 += kNormRows * w.nwarps) {
      float xv[kNormRows][kNormElems], dv[kNormRows][kNormElems], dot[kNormRows], rnv[kNormRows];
#pragma unroll
      for (int q = 0; q < kNormRows; ++q) {
        const int t = t0 + q * w.nwarps;
        rnv[q] = t < c.L ? rq[t] : t < 2 * c.L ? rk[t - c.L] : 0.f;
        dot[q] = 0.f;
      }
      auto load_block = [&](int jb) {
#pragma unroll
        for (int q = 0; q < kNormRows; ++q) {
          const int t = t0 + q * w.nwarps, r = t < c.L ? t : t - c.L, j = jb * span + w.lane * kNormElems;
          const bool in = t < 2 * c.L, ok = in && j < Dk;
          const IN* x = (t < c.L ? p.q : p.k) + (in ? tok(g, c.b, c.t0 + r, c.h) * Dk : 0);
          const float* dx = (t < c.L ? p.dqh : p.dkh) + (in ? (row0 + r) * Dk : 0);
          ld4f_or_zero(x + j, ok, xvec, xv[q]);
          ld4f_or_zero(dx + j, ok, true, dv[q]);  // dq^, dk^: ours, 16-byte aligned rows
#pragma unroll
          for (int i = 0; i < kNormElems; ++i) xv[q][i] *= rnv[q];
        }
      };
      for (int jb = 0; jb < nb; ++jb) {
        load_block(jb);
#pragma unroll
        for (int q = 0; q < kNormRows; ++q)
#pragma unroll
          for (int i = 0; i < kNormElems; ++i) dot[q] += xv[q][i] * dv[q][i];
      }
#pragma unroll
      for (int q = 0; q < kNormRows; ++q) dot[q] = warp_sum(dot[q], w);
      for (int jb = 0; jb < nb; ++jb) {
        if (nb > 1) load_block(jb);
#pragma unroll
        for (int q = 0; q < kNormRows; ++q) {
          const int t = t0 + q * w.nwarps, r = t < c.L ? t : t - c.L;
          if (t >= 2 * c.L) continue;
          IN* out = (t < c.L ? p.dq : p.dk) + tok(g, c.b, c.t0 + r, c.h) * Dk;
          const int j = jb * span + w.lane * kNormElems;
          if (j < Dk) {
            float y[4];
#pragma unroll
            for (int i = 0; i < kNormElems; ++i) y[i] = rnv[q] * (dv[q][i] - xv[q][i] * dot[q]);
            if (xvec) st4op(out + j, y);
            else
              for (int i = 0; i < kNormElems; ++i) out[j + i] = fromf<IN>(y[i]);
          }
        }
      }
    }
  }
  if (g.gated && tid == 0) {  // G_t = sum_{s<=t} g_s inside the chunk: dg_t = sum_{t'>=t} dG_t'
    float acc = 0.f;
    for (int t = C - 1; t >= 0; --t) {
      acc += dG[t];
      if (t < c.L) p.dg[tok(g, c.b, c.t0 + t, c.h)] = acc;
    }
  }
}

// ===================================== launch sequences =====================================

// DR_LAUNCH_T: a kernel of `threads` threads per CTA; DR_LAUNCH: kThreads.
#ifdef DELTA_EMULATE
#define DR_LAUNCH_T(name, kern, grid, threads, smem, st, ...) \
  ::seqmix::mixers::delta_cuda::emu_launch(grid, threads, smem, [&] { kern(__VA_ARGS__); })
#else
#define DR_LAUNCH_T(name, kern, grid, threads, smem, st, ...)                                                     \
  do {                                                                                                             \
    auto* dr_k_ = kern;                                                                                            \
    if ((smem) > 48 * 1024)                                                                                        \
      SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(dr_k_, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));     \
    dr_k_<<<grid, threads, smem, st>>>(__VA_ARGS__);                                                               \
    SEQMIX_CUDA_CHECK_LAUNCH(name);                                                                                \
  } while (0)
#endif
#define DR_LAUNCH(name, kern, grid, smem, st, ...) DR_LAUNCH_T(name, kern, grid, kThreads, smem, st, __VA_ARGS__)

template <class OP>
inline size_t max_smem(const Geo& g) {
  size_t m = LayPrep<OP>(g).total;
  const size_t s[] = {LaySeq<OP>(g).total, LayFwdOut<OP>(g).total, LayOut<OP>(g, OutKind::BwdPrep).total,
                      LayOut<OP>(g, OutKind::BwdOut).total, LayWy<OP>(g).total};
  for (size_t x : s) m = x > m ? x : m;
  return m;
}

// Forward: p.q, k, v, beta, g (if gated), s0 (or null) in; W, Kd, Tm, U, states, gC, final_s, o out.
template <class IN, class OP>
void forward(const Geo& g, const Ptrs<IN, OP>& p, cudaStream_t st) {
  const dim3 chunks(unsigned(g.N), unsigned(g.H), unsigned(g.B));
  const dim3 cols(unsigned(g.Dv / g.DVT), unsigned(g.H), unsigned(g.B));
  DR_LAUNCH("delta_rule fwd_prep", (fwd_prep<IN, OP>), chunks, LayPrep<OP>(g).total, st, g, p);
  DR_LAUNCH("delta_rule fwd_state", (fwd_state<IN, OP>), cols, LaySeq<OP>(g).total, st, g, p);
  DR_LAUNCH("delta_rule fwd_out", (fwd_out<IN, OP>), chunks, LayFwdOut<OP>(g).total, st, g, p);
}

// Backward: the forward's buffers (U holding U') plus dout, dfinal (or null) in; dU, Qg, dH, dqh, dkh, dGp as
// scratch; dq, dk, dv, dbeta, dg (if gated), ds0 out.
template <class IN, class OP>
void backward(const Geo& g, const Ptrs<IN, OP>& p, cudaStream_t st) {
  const dim3 chunks(unsigned(g.N), unsigned(g.H), unsigned(g.B));
  const dim3 cols(unsigned(g.Dv / g.DVT), unsigned(g.H), unsigned(g.B));
  DR_LAUNCH("delta_rule bwd_prep", (bwd_prep<IN, OP>), chunks, LayOut<OP>(g, OutKind::BwdPrep).total, st, g, p);
  DR_LAUNCH("delta_rule bwd_state", (bwd_state<IN, OP>), cols, LaySeq<OP>(g).total, st, g, p);
  DR_LAUNCH("delta_rule bwd_wy", (bwd_wy<IN, OP>), chunks, LayWy<OP>(g).total, st, g, p);
  DR_LAUNCH("delta_rule bwd_out", (bwd_out<IN, OP>), chunks, LayOut<OP>(g, OutKind::BwdOut).total, st, g, p);
}

}  // namespace seqmix::mixers::delta_cuda
