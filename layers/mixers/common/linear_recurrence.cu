// CUDA chunked kernel of the shared gated linear recurrence (semantics in linear_recurrence.h):
//     S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t
//     (bonus u: o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T q_t)
//
// Algorithm (the chunked form of GLA / flash-linear-attention's chunk kernels, own code). Time is cut into
// chunks of C (64) tokens; S_n is the state entering chunk n (S_0 = initial state). Within a chunk, with
// G_t the inclusive cumulative log-decay from the chunk start (f32, never a product of decays) and
// Gq_t = G_t (no bonus) or G_{t-1} (bonus; G_{-1} = 0):
//     A_ts  = scale * sum_c q_tc k_sc exp(Gq_tc - G_sc)       s < t (every exponent <= 0: no overflow)
//     A_tt  = scale * sum_c q_tc k_tc w_c                      w = 1, or u with a bonus
//     o_t   = sum_{s<=t} A_ts v_s + scale * (q_t * exp(Gq_t))^T S_n
//     S_n+1 = diag(exp(G_last)) S_n + sum_s (k_s * exp(G_last - G_s)) v_s^T
// The intra-chunk decays are exponentials of pairwise differences (per channel: inside the product; per head
// or none: one factor per (t, s)), so no exp(-G) is ever formed and strong decays cannot overflow.
//
// Forward, three kernels:
//   1. chunk_state_kernel:  U_n = sum_s (k_s exp(G_last - G_s)) v_s^T per chunk (parallel over chunks) and
//                           G_last per chunk.
//   2. state_scan_kernel:   S_{n+1} = exp(G_last,n) S_n + U_n, sequential over chunks, one thread per 4 state
//                           elements (1 when Dk % 4 != 0), the loads of 8 chunks issued before their
//                           FMAs and stores; stores S_n (the state entering chunk n) over U_n and the final state.
//   3. chunk_fwd_kernel:    A, then o (parallel over chunks).
// Backward (the states S_n are kept from the forward, [B, H, N, Dv, Dk]: O(T / C * Dk * Dv); f32, or bf16 for
// the tensor-core kernels, see below):
//   1. chunk_state_kernel:  dU_n = scale * sum_t (q_t exp(Gq_t)) do_t^T.
//   2. state_scan_kernel:   dH_n = exp(G_last,n) dH_{n+1} + dU_n backwards from dH_N = d final_state;
//                           stores dH_{n+1} (the gradient of the state leaving chunk n) and d initial_state.
//   3. chunk_bwd_kernel:    recomputes A and dA_ts = scale do_t . v_s, then
//        dq_tc = sum_{s<t} dA_ts k_sc e^(Gq_tc - G_sc) + dA_tt w_c k_tc + scale e^(Gq_tc) (S_n do_t)_c
//        dk_sc = sum_{t>s} dA_ts q_tc e^(Gq_tc - G_sc) + dA_ss w_c q_sc + e^(G_last,c - G_sc) (dH_{n+1} v_s)_c
//        dv_s  = sum_{t>=s} A_ts do_t + (k_s e^(G_last - G_s))^T dH_{n+1}
//        du_c  = sum_t dA_tt q_tc k_tc
//      and, for the decays, R_t = q_t dq_t - k_t dk_t and P_t = q_t dq_t^state (dq without the bonus term).
//   4. dg: with Gamma the global cumulative log-decay, the loss depends on Gamma only through
//      q~ = q e^(Gamma_q), k~ = k e^(-Gamma) and the final state e^(Gamma_T)(...), so
//        dGamma_t = q dq^state (at the token whose query sees Gamma_t) - k dk^state, + sum_d dS_T * S_T at T-1,
//      and dg_t = sum_{t' >= t} dGamma_t'. Since the bonus parts of q dq and k dk are equal, this is
//        dg_t = sum_{t' >= t} R_t' - P_t + F,   P = 0 without a bonus (then q pairs with Gamma_t itself).
//      dg_suffix_kernel turns per-chunk sums of R into suffix sums (plus F); dg_kernel finishes each chunk.
//      A per-head decay sums dg over the channels.
//
// All products are f32 SIMT (FFMA), register-tiled (linear_recurrence.cuh: 4x4 micro-tiles for the C x C
// products, 8x8 / 4x8 for the state-sized ones when the head dims are >= 128), with the chunk's q, k, v, do, G
// in shared memory (f32, odd row strides: conflict-free) and the states read from global memory as
// warp-broadcast loads. One CTA of 256 threads per (chunk, head, batch); 198 KB of shared memory for the
// backward at Dk = Dv = 128 (one CTA per SM). Any Dk, Dv: the chunk shrinks (64 -> 32 -> 16) when a chunk's
// shared memory would not fit. f32, bf16 and f16 inputs (one kernel, templated on the element type).
//
// Per-channel decays: a chunk whose cumulative log-decays all satisfy |G| <= 60 ("factored") replaces q, k in
// shared memory by q exp(Gq) and k exp(-G) once, so A, dq and dk are plain products (the exponentials of
// the differences are then formed implicitly, both factors within [e^-60, e^60], exact in f32 relative
// terms); any other chunk takes the pairwise path, one exp(Gq_t - G_s) per term inside the product (never
// overflows). The choice is per chunk and uniform over the CTA. Per-head decays fold one factor per (t, s).
//
// Tensor cores: linear_recurrence_tc.cu has the same three chunk kernels with every product on WMMA (bf16
// operands, f32 accumulation), the default for bf16 / f16 inputs (SEQMIX_LR_TC=0 forces FFMA; verified on the H100 and in CPU
// emulation, scripts/lr_tc_emulate.sh). Their operands are bf16, so on that path the per-chunk U_n / dU_n
// are written as bf16 (rounded once from the f32 accumulator) and the state scans read them, sum in f32 and
// write S_n / dH_{n+1} as bf16 over them: one bf16 buffer per direction, ~400 MB moved per direction at B=4
// T=4096 H=16 D=128 instead of ~670 MB with f32 U_n. SEQMIX_LR_FUSED_STATE=1 (opt-in) runs one fused state
// pass instead (linear_recurrence_state_tc.cu: one CTA per (b, h, state tile) walks the chunks with its
// state on chip; bit-identical, but slower on the H100: fwd + bwd at B=4 T=4096 gla 3.769 vs 3.482 ms,
// linear_attention 1.894 vs 1.859, and ~2x slower at B=1 T=65536: too few CTAs for a sequential walk).
// CPU emulation used during development: every kernel body compiles for the
// host with SEQMIX_LR_EMULATE defined: with one thread per block (syncs as no-ops) it matched a double-precision
// token-by-token forward + BPTT to 1e-5 over 69 shape / decay / bonus / chunk cases, and with 256 std::threads
// per block (__syncthreads as a std::barrier) under ThreadSanitizer it reported no data race.
// No spdlog / fmt here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <type_traits>

#include "autograd/function.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"
#include "core/ops.h"
#include "layers/mixers/common/kernel_grads.h"
#include "layers/mixers/common/linear_recurrence.cuh"
#include "layers/mixers/common/linear_recurrence_cuda.h"
#include "layers/mixers/common/linear_recurrence_tc.cuh"

namespace seqmix::mixers {

namespace lr_cuda {
namespace {

using ::seqmix::cuda::to_float;
using ::seqmix::cuda::from_float;

constexpr int kThreads = 256;
constexpr int TM = 4, TN = 4;

struct Geo {
  int B, T, H, Dk, Dv, C, N;
  int gw;  // width of a G row: Dk (per-channel decay), 1 (per head), 0 (none)
  float scale;
  bool bonus;
};

__host__ __device__ inline int odd_ld(int d) { return d | 1; }

// Shared-memory layout of one chunk (f32 elements).
struct Smem {
  int ldk, ldv, ldc, ldg;
  __host__ __device__ Smem(const Geo& g) : ldk(odd_ld(g.Dk)), ldv(odd_ld(g.Dv)), ldc(odd_ld(g.C)), ldg(g.gw > 1 ? odd_ld(g.gw) : g.gw) {}
};

template <typename T>
__device__ __forceinline__ void load_rows(float* dst, int ld, const T* src, int64_t row_stride, int L, int C, int D) {
  for (int idx = threadIdx.x; idx < C * D; idx += blockDim.x) {
    const int r = idx / D, c = idx - r * D;
    dst[r * ld + c] = r < L ? to_float(src[int64_t(r) * row_stride + c]) : 0.f;
  }
}

// Inclusive cumulative sum of the log-decays over the chunk's rows: G[t][c] (gw columns).
__device__ __forceinline__ void load_cumsum(float* G, int ldg, const float* g, int64_t row_stride, int L, int C, int gw) {
  for (int c = threadIdx.x; c < gw; c += blockDim.x) {
    float acc = 0.f;
    for (int r = 0; r < C; ++r) {
      if (r < L) acc += g[int64_t(r) * row_stride + c];
      G[r * ldg + c] = acc;
    }
  }
}

// q -> q exp(Gq), k -> k exp(-G) in place (rows < L), for a factorable chunk with per-channel decays.
template <int MODE>
__device__ __forceinline__ void factor_qk(float* q, float* k, int ldk, const Decay<MODE>& dec, int L, int Dk) {
  for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
    const int t = idx / Dk, c = idx - t * Dk;
    q[t * ldk + c] *= __expf(dec.gq(t, c));
    k[t * ldk + c] *= __expf(-dec.g(t, c));
  }
}

// The chunk's A (C x C, ld ldc): strictly-lower part with decays (entries on and above the diagonal are not
// written here: the diagonal is diag_A's, the upper part is never read). factored (per-channel decays only):
// q and k hold q exp(Gq) and k exp(-G) (factor_qk), so A is a plain product.
template <int MODE>
__device__ __forceinline__ void compute_A_lower(float* A, int ldc, const float* q, const float* k, int ldk,
                                                const Decay<MODE>& dec, int L, int Dk, float scale, bool factored) {
  for_each_tile<TM, TN>(L, L, [&](const MicroTile<TM, TN>& t) {
    float acc[TM][TN];
    zero_acc(acc);
    if constexpr (MODE == 2) {
      if (factored) {
        mm_acc(acc, t, 0, Dk, [&](int i, int kk) { return q[i * ldk + kk]; }, [&](int kk, int j) { return k[j * ldk + kk]; });
      } else {
        float E[TM][TN];
        zero_acc(E);
        mm_acc_exp(
            acc, E, t, 0, Dk, [&](int i, int kk) { return q[i * ldk + kk]; }, [&](int i, int kk) { return dec.gq(i, kk); },
            [&](int kk, int j) { return k[j * ldk + kk]; }, [&](int kk, int j) { return dec.g(j, kk); });
      }
    } else {
      mm_acc(acc, t, 0, Dk, [&](int i, int kk) { return q[i * ldk + kk]; }, [&](int kk, int j) { return k[j * ldk + kk]; });
    }
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int i = t.i[r], j = t.j[c];
        if (i >= L || j >= L || j == i) continue;
        float val = 0.f;
        if (j < i) {
          val = scale * acc[r][c];
          if constexpr (MODE == 1) val *= __expf(dec.gq(i, 0) - dec.g(j, 0));
        }
        A[i * ldc + j] = val;
      }
  });
}

// A_tt = scale * sum_c q_tc k_tc w_c (w = u with a bonus, else 1), one thread per row.
__device__ __forceinline__ void diag_A(float* A, int ldc, const float* q, const float* k, int ldk, const float* u,
                                       int L, int Dk, float scale) {
  for (int t = threadIdx.x; t < L; t += blockDim.x) {
    float s = 0.f;
    for (int c = 0; c < Dk; ++c) s += q[t * ldk + c] * k[t * ldk + c] * (u ? u[c] : 1.f);
    A[t * ldc + t] = scale * s;
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Per-chunk state contribution: out[n] (layout [Dv][Dk]) = sum_t X_t Y_t^T with
//    forward:  X = k * exp(G_last - G), Y = v          (and G_last per chunk)
//    backward: X = scale * q * exp(Gq),  Y = dout
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE, bool BWD>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(Geo geo, const T* __restrict__ xsrc, const T* __restrict__ ysrc,
                                                               const float* __restrict__ g, float* __restrict__ out,
                                                               float* __restrict__ glast) {
  extern __shared__ float smem[];
  const Smem sm(geo);
  const int n = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = n * geo.C, L = ::min(geo.C, geo.T - t0);
  float* X = smem;
  float* Y = X + geo.C * sm.ldk;
  float* G = Y + geo.C * sm.ldv;
  const int64_t rowk = int64_t(geo.H) * geo.Dk, rowv = int64_t(geo.H) * geo.Dv;
  load_rows(X, sm.ldk, xsrc + (int64_t(b) * geo.T + t0) * rowk + int64_t(h) * geo.Dk, rowk, L, geo.C, geo.Dk);
  load_rows(Y, sm.ldv, ysrc + (int64_t(b) * geo.T + t0) * rowv + int64_t(h) * geo.Dv, rowv, L, geo.C, geo.Dv);
  if constexpr (MODE > 0) {
    const int64_t rowg = int64_t(geo.H) * geo.gw;
    load_cumsum(G, sm.ldg, g + (int64_t(b) * geo.T + t0) * rowg + int64_t(h) * geo.gw, rowg, L, geo.C, geo.gw);
  }
  __syncthreads();
  const Decay<MODE> dec{G, sm.ldg, geo.bonus};
  const int64_t bhn = (int64_t(b) * geo.H + h) * geo.N + n;
  if constexpr (!BWD && MODE > 0) {
    for (int c = threadIdx.x; c < geo.gw; c += blockDim.x) glast[bhn * geo.gw + c] = dec.g(L - 1, c);
  }
  for (int idx = threadIdx.x; idx < L * geo.Dk; idx += blockDim.x) {
    const int t = idx / geo.Dk, c = idx - t * geo.Dk;
    float f;
    if constexpr (BWD) f = geo.scale * (MODE > 0 ? __expf(dec.gq(t, c)) : 1.f);
    else f = MODE > 0 ? __expf(dec.g(L - 1, c) - dec.g(t, c)) : 1.f;
    X[t * sm.ldk + c] *= f;
  }
  __syncthreads();
  float* o = out + bhn * int64_t(geo.Dv) * geo.Dk;
  const int ldk = sm.ldk, ldv = sm.ldv, Dk = geo.Dk;
  auto state_tile = [&]<int BM, int BN>(const MicroTile<BM, BN>& t) {
    float acc[BM][BN];
    zero_acc(acc);
    mm_acc(acc, t, 0, L, [&](int i, int kk) { return X[kk * ldk + i]; }, [&](int kk, int j) { return Y[kk * ldv + j]; });
#pragma unroll
    for (int r = 0; r < BM; ++r)
#pragma unroll
      for (int c = 0; c < BN; ++c)
        if (t.i[r] < Dk && t.j[c] < geo.Dv) o[int64_t(t.j[c]) * Dk + t.i[r]] = acc[r][c];
  };
  if (geo.Dk >= 128 && geo.Dv >= 64) for_each_tile<8, 8>(geo.Dk, geo.Dv, state_tile);
  else for_each_tile<TM, TN>(geo.Dk, geo.Dv, state_tile);
}

// ---------------------------------------------------------------------------------------------
// 2. The sequential pass over chunks, VEC (1 or 4) consecutive state elements of one (b, h) per thread.
//    forward:  buf[n] = U_n -> S_n;            S_{n+1} = exp(G_last,n) S_n + U_n;  end -> edge_out (final)
//    backward: buf[n] = dU_n -> dH_{n+1};      dH_n = exp(G_last,n) dH_{n+1} + dU_n; end -> edge_out (d init)
//    edge_in / edge_out are [B, H, Dk, Dv] (row-major, f32); buf is [B, H, N, Dv, Dk] of E: f32 (the FFMA
//    path) or bf16 (the tensor-core path: chunk_state_tc rounded U_n to bf16, and its chunk kernels take S_n
//    as bf16 operands: each pass moves half the bytes). Either way the sum runs in f32 registers; only what
//    goes through buf is E. In place is safe: a thread reads and writes only its own elements, loads first.
//    Memory-bound (every U_n read once, every S_n written once): the chunks go in batches of kScanBatch, all
//    of a batch's loads (U and the decays) issued before its dependent FMAs and stores, since a load placed
//    after a store to the same buffer cannot be hoisted by the compiler (one load in flight per thread ran at
//    ~12% of the H100's DRAM bandwidth). VEC = 4 (Dk % 4 == 0, buf aligned to 4 elements, a per-channel
//    glast to 16 bytes): float4 / 4 x bf16 (8-byte) accesses, the 4 elements share one row d, so per-channel
//    decays are 4 consecutive G_last entries. Same arithmetic in the same order as one element per thread:
//    bitwise identical results.
// ---------------------------------------------------------------------------------------------
constexpr int kScanBatch = 8;

template <typename E, int VEC>
struct ScanVec;
template <>
struct ScanVec<float, 1> {
  __device__ __forceinline__ static void load(float (&x)[1], const float* p) { x[0] = *p; }
  __device__ __forceinline__ static void store(float* p, const float (&x)[1]) { *p = x[0]; }
};
template <>
struct ScanVec<float, 4> {
  __device__ __forceinline__ static void load(float (&x)[4], const float* p) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
  }
  __device__ __forceinline__ static void store(float* p, const float (&x)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
  }
};
template <>
struct ScanVec<__nv_bfloat16, 1> {
  __device__ __forceinline__ static void load(float (&x)[1], const __nv_bfloat16* p) { x[0] = __bfloat162float(*p); }
  __device__ __forceinline__ static void store(__nv_bfloat16* p, const float (&x)[1]) { *p = __float2bfloat16_rn(x[0]); }
};
template <>
struct ScanVec<__nv_bfloat16, 4> {  // 8 bytes
  __device__ __forceinline__ static void load(float (&x)[4], const __nv_bfloat16* p) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    __nv_bfloat162 h[2];
    memcpy(h, &raw, sizeof(raw));
    const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
    x[0] = a.x, x[1] = a.y, x[2] = b.x, x[3] = b.y;
  }
  __device__ __forceinline__ static void store(__nv_bfloat16* p, const float (&x)[4]) {
    __nv_bfloat162 h[2] = {__floats2bfloat162_rn(x[0], x[1]), __floats2bfloat162_rn(x[2], x[3])};
    uint2 raw;
    memcpy(&raw, h, sizeof(raw));
    *reinterpret_cast<uint2*>(p) = raw;
  }
};

template <bool REVERSE, int VEC, typename E>
__global__ void __launch_bounds__(kThreads) state_scan_kernel(Geo geo, E* __restrict__ buf, const float* __restrict__ glast,
                                                              const float* __restrict__ edge_in, float* __restrict__ edge_out) {
  const int64_t DD = int64_t(geo.Dk) * geo.Dv;
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (e >= DD) return;
  const int bh = blockIdx.y;
  const int c = int(e % geo.Dk), d = int(e / geo.Dk);  // VEC | Dk: elements c .. c + VEC - 1 of row d
  const int64_t rm = int64_t(bh) * DD + int64_t(c) * geo.Dv + d;  // row-major [Dk][Dv] index of element c
  E* p = buf + int64_t(bh) * geo.N * DD + e;
  const float* gl = glast ? glast + int64_t(bh) * geo.N * geo.gw + (geo.gw > 1 ? c : 0) : nullptr;
  const bool per_channel = geo.gw > 1;
  float s[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) s[j] = edge_in ? edge_in[rm + int64_t(j) * geo.Dv] : 0.f;
  for (int n0 = 0; n0 < geo.N; n0 += kScanBatch) {
    float u[kScanBatch][VEC], a[kScanBatch][VEC];
#pragma unroll
    for (int i = 0; i < kScanBatch; ++i) {
      const int n = REVERSE ? geo.N - 1 - (n0 + i) : n0 + i;
      if (n0 + i < geo.N) {
        ScanVec<E, VEC>::load(u[i], p + int64_t(n) * DD);
        if (!gl) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) a[i][j] = 1.f;
        } else if (per_channel) {
          ScanVec<float, VEC>::load(a[i], gl + int64_t(n) * geo.gw);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) a[i][j] = gl[int64_t(n) * geo.gw];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kScanBatch; ++i) {
      const int n = REVERSE ? geo.N - 1 - (n0 + i) : n0 + i;
      if (n0 + i < geo.N) {
        ScanVec<E, VEC>::store(p + int64_t(n) * DD, s);  // over U_n, read above
#pragma unroll
        for (int j = 0; j < VEC; ++j) s[j] = fmaf(gl ? __expf(a[i][j]) : 1.f, s[j], u[i][j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j)
    if (edge_out) edge_out[rm + int64_t(j) * geo.Dv] = s[j];
}

// The tensor-core path's scan (bf16 buffer, Dk % 8 == 0, 16-byte aligned): 8 elements per thread, each chunk's
// 8 values loaded as one 16-byte word and kept packed until used (4 registers per chunk), so a batch holds twice
// the chunks of state_scan_kernel's in as many registers: with half the bytes per element, the 4-element bf16
// form had half the loads in flight and ran slower than the f32 one (0.183 vs 0.142 ms on the H100). GW: 0 no
// decay, 1 per head, 2 per channel (8 f32 decays per chunk: a batch of 8 keeps the registers in check).
// Same arithmetic per element as state_scan_kernel: bitwise identical results.
template <bool REVERSE, int GW>
__global__ void __launch_bounds__(kThreads) state_scan_bf16x8(Geo geo, __nv_bfloat16* __restrict__ buf,
                                                              const float* __restrict__ glast,
                                                              const float* __restrict__ edge_in, float* __restrict__ edge_out) {
  constexpr int kBatch = GW == 2 ? 8 : 16;
  constexpr int kA = GW == 2 ? 8 : 1;  // decays held per chunk
  const int64_t DD = int64_t(geo.Dk) * geo.Dv;
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (e >= DD) return;
  const int bh = blockIdx.y;
  const int c = int(e % geo.Dk), d = int(e / geo.Dk);  // 8 | Dk: elements c .. c + 7 of row d
  const int64_t rm = int64_t(bh) * DD + int64_t(c) * geo.Dv + d;
  __nv_bfloat16* p = buf + int64_t(bh) * geo.N * DD + e;
  const float* gl = GW > 0 ? glast + int64_t(bh) * geo.N * geo.gw + (GW == 2 ? c : 0) : nullptr;
  float s[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) s[j] = edge_in ? edge_in[rm + int64_t(j) * geo.Dv] : 0.f;
  for (int n0 = 0; n0 < geo.N; n0 += kBatch) {
    uint4 raw[kBatch];
    float a[kBatch][kA];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int n = REVERSE ? geo.N - 1 - (n0 + i) : n0 + i;
      if (n0 + i < geo.N) {
        raw[i] = *reinterpret_cast<const uint4*>(p + int64_t(n) * DD);
        if constexpr (GW == 2) {
          const float4 lo = *reinterpret_cast<const float4*>(gl + int64_t(n) * geo.gw);
          const float4 hi = *reinterpret_cast<const float4*>(gl + int64_t(n) * geo.gw + 4);
          a[i][0] = lo.x, a[i][1] = lo.y, a[i][2] = lo.z, a[i][3] = lo.w;
          a[i][4] = hi.x, a[i][5] = hi.y, a[i][6] = hi.z, a[i][7] = hi.w;
        } else if constexpr (GW == 1) {
          a[i][0] = gl[int64_t(n) * geo.gw];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int n = REVERSE ? geo.N - 1 - (n0 + i) : n0 + i;
      if (n0 + i < geo.N) {
        __nv_bfloat162 h[4];
        memcpy(h, &raw[i], sizeof(h));
        float u[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = __bfloat1622float2(h[j]);
          u[2 * j] = f.x, u[2 * j + 1] = f.y;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(s[2 * j], s[2 * j + 1]);
        uint4 out;
        memcpy(&out, h, sizeof(out));
        *reinterpret_cast<uint4*>(p + int64_t(n) * DD) = out;  // S_n over U_n, read above
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j] = fmaf(GW == 0 ? 1.f : __expf(a[i][GW == 2 ? j : 0]), s[j], u[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (edge_out) edge_out[rm + int64_t(j) * geo.Dv] = s[j];
}

// state_scan_bf16x8 takes the buffer: Dk % 8 == 0, 16-byte aligned buffer and per-channel glast.
inline bool scan_x8_ok(const Geo& g, const __nv_bfloat16* buf, const void* glast) {
  auto al = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  return g.Dk % 8 == 0 && al(buf, 16) && (g.gw <= 1 || (glast && al(glast, 16)));
}

// Elements per thread of state_scan_kernel: 4 when Dk % 4 == 0 and the buffers suit 4-element accesses
// (buf: 4 elements, 16 bytes for f32 / 8 for bf16; a per-channel glast: 16 bytes, float4).
template <typename E>
inline int scan_vec(const Geo& g, const E* buf, const void* glast) {
  auto al = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  return g.Dk % 4 == 0 && al(buf, 4 * sizeof(E)) && (g.gw <= 1 || !glast || al(glast, 16)) ? 4 : 1;
}
inline dim3 scan_grid(const Geo& g, int vec) {
  const int64_t per_thread = int64_t(kThreads) * vec;
  return dim3(unsigned((int64_t(g.Dk) * g.Dv + per_thread - 1) / per_thread), unsigned(g.B * g.H));
}

// ---------------------------------------------------------------------------------------------
// 3. Forward output of one chunk.
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE>
__global__ void __launch_bounds__(kThreads) chunk_fwd_kernel(Geo geo, const T* __restrict__ qg, const T* __restrict__ kg,
                                                             const T* __restrict__ vg, const float* __restrict__ g,
                                                             const float* __restrict__ u, const float* __restrict__ states,
                                                             T* __restrict__ og) {
  extern __shared__ float smem[];
  const Smem sm(geo);
  const int n = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = n * geo.C, L = ::min(geo.C, geo.T - t0);
  const int C = geo.C, Dk = geo.Dk, Dv = geo.Dv, ldk = sm.ldk, ldv = sm.ldv, ldc = sm.ldc;
  float* q = smem;
  float* k = q + C * ldk;
  float* v = k + C * ldk;
  float* A = v + C * ldv;
  float* G = A + C * ldc;
  const int64_t rowk = int64_t(geo.H) * Dk, rowv = int64_t(geo.H) * Dv;
  const int64_t offk = (int64_t(b) * geo.T + t0) * rowk + int64_t(h) * Dk;
  const int64_t offv = (int64_t(b) * geo.T + t0) * rowv + int64_t(h) * Dv;
  load_rows(q, ldk, qg + offk, rowk, L, C, Dk);
  load_rows(k, ldk, kg + offk, rowk, L, C, Dk);
  load_rows(v, ldv, vg + offv, rowv, L, C, Dv);
  if constexpr (MODE > 0) {
    const int64_t rowg = int64_t(geo.H) * geo.gw;
    load_cumsum(G, sm.ldg, g + (int64_t(b) * geo.T + t0) * rowg + int64_t(h) * geo.gw, rowg, L, C, geo.gw);
  }
  __syncthreads();
  const Decay<MODE> dec{G, sm.ldg, geo.bonus};
  const bool factored = MODE == 2 && chunk_factorable(G, sm.ldg, C, geo.gw);
  diag_A(A, ldc, q, k, ldk, geo.bonus ? u + int64_t(h) * Dk : nullptr, L, Dk, geo.scale);  // raw q, k
  __syncthreads();
  if (factored) {
    factor_qk<MODE>(q, k, ldk, dec, L, Dk);
    __syncthreads();
  }
  compute_A_lower<MODE>(A, ldc, q, k, ldk, dec, L, Dk, geo.scale, factored);
  __syncthreads();
  // q -> scale * q * exp(Gq) for the inter-chunk term (a factored chunk's q already holds q exp(Gq))
  for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
    const int t = idx / Dk, c = idx - t * Dk;
    q[t * ldk + c] *= geo.scale * (MODE > 0 && !factored ? __expf(dec.gq(t, c)) : 1.f);
  }
  __syncthreads();
  const float* S = states + ((int64_t(b) * geo.H + h) * geo.N + n) * int64_t(Dv) * Dk;  // [Dv][Dk]
  T* o = og + offv;
  auto o_tile = [&]<int BM, int BN>(const MicroTile<BM, BN>& t) {
    float acc[BM][BN];
    zero_acc(acc);
    mm_acc(acc, t, 0, L, [&](int i, int kk) { return A[i * ldc + kk]; }, [&](int kk, int j) { return v[kk * ldv + j]; });
    mm_acc(acc, t, 0, Dk, [&](int i, int kk) { return q[i * ldk + kk]; }, [&](int kk, int j) { return S[int64_t(j) * Dk + kk]; });
#pragma unroll
    for (int r = 0; r < BM; ++r)
#pragma unroll
      for (int c = 0; c < BN; ++c)
        if (t.i[r] < L && t.j[c] < Dv) o[int64_t(t.i[r]) * rowv + t.j[c]] = from_float<T>(acc[r][c]);
  };
  if (Dv >= 128) for_each_tile<8, 8>(L, Dv, o_tile);
  else for_each_tile<TM, TN>(L, Dv, o_tile);
}

// ---------------------------------------------------------------------------------------------
// 4. Backward of one chunk: dq, dk, dv, and the per-chunk pieces of dg and du.
// ---------------------------------------------------------------------------------------------
struct BwdOut {
  float* r;      // [B, T, H, Dk]  q dq - k dk            (decays only)
  float* p;      // [B, T, H, Dk]  q dq^state             (decays with a bonus only)
  float* ctot;   // [B, H, N, Dk]  sum over the chunk of r (decays only)
  float* du;     // [B, H, N, Dk]  sum over the chunk of dA_tt q k (bonus only)
};

template <typename T, int MODE>
__global__ void __launch_bounds__(kThreads) chunk_bwd_kernel(Geo geo, const T* __restrict__ qg, const T* __restrict__ kg,
                                                             const T* __restrict__ vg, const T* __restrict__ dog,
                                                             const float* __restrict__ g, const float* __restrict__ u,
                                                             const float* __restrict__ states, const float* __restrict__ dstates,
                                                             T* __restrict__ dqg, T* __restrict__ dkg, T* __restrict__ dvg,
                                                             BwdOut bo) {
  extern __shared__ float smem[];
  const Smem sm(geo);
  const int n = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = n * geo.C, L = ::min(geo.C, geo.T - t0);
  const int C = geo.C, Dk = geo.Dk, Dv = geo.Dv, ldk = sm.ldk, ldv = sm.ldv, ldc = sm.ldc;
  const float scale = geo.scale;
  float* q = smem;
  float* k = q + C * ldk;
  float* v = k + C * ldk;
  float* dO = v + C * ldv;
  float* A = dO + C * ldv;
  float* dA = A + C * ldc;
  float* dAd = dA + C * ldc;  // [C] raw diagonal of dA
  float* G = dAd + C;
  const int64_t rowk = int64_t(geo.H) * Dk, rowv = int64_t(geo.H) * Dv;
  const int64_t offk = (int64_t(b) * geo.T + t0) * rowk + int64_t(h) * Dk;
  const int64_t offv = (int64_t(b) * geo.T + t0) * rowv + int64_t(h) * Dv;
  load_rows(q, ldk, qg + offk, rowk, L, C, Dk);
  load_rows(k, ldk, kg + offk, rowk, L, C, Dk);
  load_rows(v, ldv, vg + offv, rowv, L, C, Dv);
  load_rows(dO, ldv, dog + offv, rowv, L, C, Dv);
  if constexpr (MODE > 0) {
    const int64_t rowg = int64_t(geo.H) * geo.gw;
    load_cumsum(G, sm.ldg, g + (int64_t(b) * geo.T + t0) * rowg + int64_t(h) * geo.gw, rowg, L, C, geo.gw);
  }
  __syncthreads();
  const Decay<MODE> dec{G, sm.ldg, geo.bonus};
  const float* uh = geo.bonus ? u + int64_t(h) * Dk : nullptr;
  const int64_t bhn = (int64_t(b) * geo.H + h) * geo.N + n;
  const float* S = states + bhn * int64_t(Dv) * Dk;    // S_n,      [Dv][Dk]
  const float* dH = dstates + bhn * int64_t(Dv) * Dk;  // dH_{n+1}, [Dv][Dk]

  // A (strictly lower) and dA: dA[t][s] = scale do_t . v_s for s < t (times exp(Gq_t - G_s) unless the decay
  // is per channel), 0 for s >= t; dAd[t] = scale do_t . v_t.
  const bool factored = MODE == 2 && chunk_factorable(G, sm.ldg, C, geo.gw);
  for_each_tile<TM, TN>(L, L, [&](const MicroTile<TM, TN>& t) {
    float acc[TM][TN];
    zero_acc(acc);
    mm_acc(acc, t, 0, Dv, [&](int i, int kk) { return dO[i * ldv + kk]; }, [&](int kk, int j) { return v[j * ldv + kk]; });
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        const int i = t.i[r], j = t.j[c];
        if (i >= L || j >= L) continue;
        float val = 0.f;
        if (j < i) {
          val = scale * acc[r][c];
          if constexpr (MODE == 1) val *= __expf(dec.gq(i, 0) - dec.g(j, 0));
        }
        dA[i * ldc + j] = val;
        if (j == i) dAd[i] = scale * acc[r][c];
      }
  });
  diag_A(A, ldc, q, k, ldk, uh, L, Dk, scale);  // raw q, k
  __syncthreads();
  if (factored) {  // from here on q, k hold q exp(Gq), k exp(-G); rq / rk give the raw values back
    factor_qk<MODE>(q, k, ldk, dec, L, Dk);
    __syncthreads();
  }
  compute_A_lower<MODE>(A, ldc, q, k, ldk, dec, L, Dk, scale, factored);  // read by dv only (after later syncs)
  auto rq = [&](int t, int c) { return MODE == 2 && factored ? q[t * ldk + c] * __expf(-dec.gq(t, c)) : q[t * ldk + c]; };
  auto rk = [&](int t, int c) { return MODE == 2 && factored ? k[t * ldk + c] * __expf(dec.g(t, c)) : k[t * ldk + c]; };

  // dq
  T* dq = dqg + offk;
  T* dk = dkg + offk;
  float* rbuf = bo.r ? bo.r + offk : nullptr;
  float* pbuf = bo.p ? bo.p + offk : nullptr;
  auto dq_tile = [&]<int BM, int BN>(const MicroTile<BM, BN>& t) {
    float acc[BM][BN], acc2[BM][BN];
    zero_acc(acc);
    zero_acc(acc2);
    if (MODE == 2 && factored) {  // exp(Gq_tc) * sum_s dA_ts (k_sc exp(-G_sc)); the factor is applied below
      mm_acc(acc, t, 0, L, [&](int i, int kk) { return dA[i * ldc + kk]; }, [&](int kk, int j) { return k[kk * ldk + j]; });
    } else if constexpr (MODE == 2) {
      float E[BM][BN];
#pragma unroll
      for (int r = 0; r < BM; ++r)
#pragma unroll
        for (int c = 0; c < BN; ++c) E[r][c] = dec.gq(t.ic[r], t.jc[c]);
      mm_acc_exp(
          acc, E, t, 0, L, [&](int i, int kk) { return dA[i * ldc + kk]; },
          [&](int i, int kk) { return kk < i ? 0.f : -INFINITY; }, [&](int kk, int j) { return k[kk * ldk + j]; },
          [&](int kk, int j) { return dec.g(kk, j); });
    } else {
      mm_acc(acc, t, 0, L, [&](int i, int kk) { return dA[i * ldc + kk]; }, [&](int kk, int j) { return k[kk * ldk + j]; });
    }
    mm_acc(acc2, t, 0, Dv, [&](int i, int kk) { return dO[i * ldv + kk]; }, [&](int kk, int j) { return S[int64_t(kk) * Dk + j]; });
#pragma unroll
    for (int r = 0; r < BM; ++r)
#pragma unroll
      for (int c = 0; c < BN; ++c) {
        const int i = t.i[r], j = t.j[c];
        if (i >= L || j >= Dk) continue;
        const float eq = MODE > 0 ? __expf(dec.gq(i, j)) : 1.f;
        float dst = (MODE == 2 && factored ? acc[r][c] * eq : acc[r][c]) + scale * acc2[r][c] * eq;
        float val = dst;
        const float kij = rk(i, j);
        if (uh) val += dAd[i] * uh[j] * kij;
        else dst = val = dst + dAd[i] * kij;
        dq[int64_t(i) * rowk + j] = from_float<T>(val);
        if (rbuf || pbuf) {
          const float qij = rq(i, j);
          if (rbuf) rbuf[int64_t(i) * rowk + j] = qij * val;
          if (pbuf) pbuf[int64_t(i) * rowk + j] = qij * dst;
        }
      }
  };
  if (Dk >= 128) for_each_tile<4, 8>(L, Dk, dq_tile);
  else for_each_tile<TM, TN>(L, Dk, dq_tile);
  __syncthreads();  // rbuf rows of this chunk are written (read-modify-write below)

  // dk
  auto dk_tile = [&]<int BM, int BN>(const MicroTile<BM, BN>& t) {
    float acc[BM][BN], acc2[BM][BN];
    zero_acc(acc);
    zero_acc(acc2);
    if (MODE == 2 && factored) {  // exp(-G_sc) * sum_t dA_ts (q_tc exp(Gq_tc)); the factor is applied below
      mm_acc(acc, t, 0, L, [&](int i, int kk) { return dA[kk * ldc + i]; }, [&](int kk, int j) { return q[kk * ldk + j]; });
    } else if constexpr (MODE == 2) {
      float E[BM][BN];
#pragma unroll
      for (int r = 0; r < BM; ++r)
#pragma unroll
        for (int c = 0; c < BN; ++c) E[r][c] = -dec.g(t.ic[r], t.jc[c]);
      mm_acc_exp(
          acc, E, t, 0, L, [&](int i, int kk) { return dA[kk * ldc + i]; },
          [&](int i, int kk) { return kk > i ? 0.f : -INFINITY; }, [&](int kk, int j) { return q[kk * ldk + j]; },
          [&](int kk, int j) { return -dec.gq(kk, j); });
    } else {
      mm_acc(acc, t, 0, L, [&](int i, int kk) { return dA[kk * ldc + i]; }, [&](int kk, int j) { return q[kk * ldk + j]; });
    }
    mm_acc(acc2, t, 0, Dv, [&](int i, int kk) { return v[i * ldv + kk]; }, [&](int kk, int j) { return dH[int64_t(kk) * Dk + j]; });
#pragma unroll
    for (int r = 0; r < BM; ++r)
#pragma unroll
      for (int c = 0; c < BN; ++c) {
        const int i = t.i[r], j = t.j[c];
        if (i >= L || j >= Dk) continue;
        const float carry = acc2[r][c] * (MODE > 0 ? __expf(dec.g(L - 1, j) - dec.g(i, j)) : 1.f);
        const float intra = MODE == 2 && factored ? acc[r][c] * __expf(-dec.g(i, j)) : acc[r][c];
        const float val = intra + carry + dAd[i] * (uh ? uh[j] : 1.f) * rq(i, j);
        dk[int64_t(i) * rowk + j] = from_float<T>(val);
        if (rbuf) rbuf[int64_t(i) * rowk + j] -= rk(i, j) * val;
      }
  };
  if (Dk >= 128) for_each_tile<4, 8>(L, Dk, dk_tile);
  else for_each_tile<TM, TN>(L, Dk, dk_tile);
  // du (bonus): per-chunk sum of dA_tt q_tc k_tc (reads raw q, k before k is transformed below)
  if (bo.du) {
    for (int c = threadIdx.x; c < Dk; c += blockDim.x) {
      float s = 0.f;
      for (int t = 0; t < L; ++t) s += dAd[t] * rq(t, c) * rk(t, c);
      bo.du[bhn * Dk + c] = s;
    }
  }
  __syncthreads();
  // k -> k * exp(G_last - G) for the carried term of dv; chunk sums of r for dg
  if constexpr (MODE > 0) {
    for (int idx = threadIdx.x; idx < L * Dk; idx += blockDim.x) {
      const int t = idx / Dk, c = idx - t * Dk;
      k[t * ldk + c] *= __expf(dec.g(L - 1, c) - (MODE == 2 && factored ? 0.f : dec.g(t, c)));
    }
  }
  if (bo.ctot) chunk_column_sums(bo.ctot + bhn * Dk, rbuf, rowk, L, Dk);
  __syncthreads();

  // dv
  T* dv = dvg + offv;
  auto dv_tile = [&]<int BM, int BN>(const MicroTile<BM, BN>& t) {
    float acc[BM][BN];
    zero_acc(acc);
    mm_acc(acc, t, 0, L, [&](int i, int kk) { return A[kk * ldc + i]; }, [&](int kk, int j) { return dO[kk * ldv + j]; });
    mm_acc(acc, t, 0, Dk, [&](int i, int kk) { return k[i * ldk + kk]; }, [&](int kk, int j) { return dH[int64_t(j) * Dk + kk]; });
#pragma unroll
    for (int r = 0; r < BM; ++r)
#pragma unroll
      for (int c = 0; c < BN; ++c)
        if (t.i[r] < L && t.j[c] < Dv) dv[int64_t(t.i[r]) * rowv + t.j[c]] = from_float<T>(acc[r][c]);
  };
  if (Dv >= 128) for_each_tile<8, 8>(L, Dv, dv_tile);
  else for_each_tile<TM, TN>(L, Dv, dv_tile);
}

// ---------------------------------------------------------------------------------------------
// 5. dg: suffix sums of the per-chunk totals (plus F_c = sum_d dS_T[c][d] S_T[c][d]), then each chunk.
// ---------------------------------------------------------------------------------------------
__global__ void dg_suffix_kernel(Geo geo, float* __restrict__ ctot, const float* __restrict__ dfinal,
                                 const float* __restrict__ final_state) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int bh = blockIdx.y;
  if (c >= geo.Dk) return;
  float run = 0.f;
  if (dfinal && final_state) {
    const int64_t base = (int64_t(bh) * geo.Dk + c) * geo.Dv;
    for (int d = 0; d < geo.Dv; ++d) run += dfinal[base + d] * final_state[base + d];
  }
  float* p = ctot + int64_t(bh) * geo.N * geo.Dk + c;
  for (int n = geo.N - 1; n >= 0; --n) {
    const float x = p[int64_t(n) * geo.Dk];
    p[int64_t(n) * geo.Dk] = run;
    run += x;
  }
}

__global__ void dg_kernel(Geo geo, const float* __restrict__ r, const float* __restrict__ p, const float* __restrict__ ctot,
                          float* __restrict__ dg) {
  const int n = blockIdx.x, bh = blockIdx.y;
  const int b = bh / geo.H, h = bh % geo.H;
  const int t0 = n * geo.C, L = ::min(geo.C, geo.T - t0);
  const int64_t rowk = int64_t(geo.H) * geo.Dk;
  const int64_t off = (int64_t(b) * geo.T + t0) * rowk + int64_t(h) * geo.Dk;
  for (int c = threadIdx.x; c < geo.Dk; c += blockDim.x) {
    float acc = ctot[(int64_t(bh) * geo.N + n) * geo.Dk + c];
    for (int t = L - 1; t >= 0; --t) {
      const int64_t i = off + int64_t(t) * rowk + c;
      acc += r[i];
      dg[i] = acc - (p ? p[i] : 0.f);
    }
  }
}

#ifndef SEQMIX_LR_EMULATE  // (defined by a CPU emulation of the kernels: one thread per block, no launches)
// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
size_t smem_state(const Geo& g) {
  Smem s(g);
  return size_t(g.C) * (s.ldk + s.ldv + (g.gw > 0 ? s.ldg : 0)) * sizeof(float);
}
size_t smem_fwd(const Geo& g) {
  Smem s(g);
  return size_t(g.C) * (2 * s.ldk + s.ldv + s.ldc + (g.gw > 0 ? s.ldg : 0)) * sizeof(float);
}
size_t smem_bwd(const Geo& g) {
  Smem s(g);
  return size_t(g.C) * (2 * s.ldk + 2 * s.ldv + 2 * s.ldc + 1 + (g.gw > 0 ? s.ldg : 0)) * sizeof(float);
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    SEQMIX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <bool REVERSE, typename E>
void launch_scan(const Geo& geo, E* buf, const float* glast, const float* edge_in, float* edge_out, cudaStream_t st) {
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    if (scan_x8_ok(geo, buf, glast) && (geo.gw == 0 || glast)) {
      auto kern = geo.gw == 0 ? state_scan_bf16x8<REVERSE, 0> : geo.gw == 1 ? state_scan_bf16x8<REVERSE, 1> : state_scan_bf16x8<REVERSE, 2>;
      kern<<<scan_grid(geo, 8), kThreads, 0, st>>>(geo, buf, glast, edge_in, edge_out);
      SEQMIX_CUDA_CHECK_LAUNCH(REVERSE ? "linear_recurrence state_scan_bf16x8 (backward)" : "linear_recurrence state_scan_bf16x8");
      return;
    }
  }
  const int vec = scan_vec(geo, buf, glast);
  auto kern = vec == 4 ? state_scan_kernel<REVERSE, 4, E> : state_scan_kernel<REVERSE, 1, E>;
  kern<<<scan_grid(geo, vec), kThreads, 0, st>>>(geo, buf, glast, edge_in, edge_out);
  SEQMIX_CUDA_CHECK_LAUNCH(REVERSE ? "linear_recurrence state_scan_kernel (backward)" : "linear_recurrence state_scan_kernel");
}

// Dispatch over the decay mode (0 none, 1 per head, 2 per channel).
template <class F>
void with_mode(int mode, F&& f) {
  switch (mode) {
    case 0: f.template operator()<0>(); break;
    case 1: f.template operator()<1>(); break;
    default: f.template operator()<2>(); break;
  }
}

struct Inputs {
  Tensor q, k, v;  // contiguous, one dtype
  Tensor g;        // f32 contiguous [B, T, H, Dk] or [B, T, H], or undefined
  Tensor u;        // f32 contiguous [H, Dk] or undefined
  Tensor s0;       // f32 contiguous [B, H, Dk, Dv] or undefined
  Geo geo;
  int mode;
};

// The tensor-core chunk kernels (linear_recurrence_tc.cu) take bf16 / f16 inputs with Dk, Dv multiples of 16
// (<= 128) and C a multiple of 16, when their shared memory fits and the pointers suit their vector accesses;
// unless SEQMIX_LR_TC=0. f32 always takes the FFMA kernels. Sequences shorter than one chunk
// stay on FFMA too: a grid of B * H CTAs gains nothing from tensor cores, and there (T = 1 without an initial
// state) dg is exactly 0 while its bf16-operand value keeps ~1e-2 of noise from q dq - k dk + dS_T . S_T.
lr_tc::TcGeo tc_geo(const Geo& g) { return {g.B, g.T, g.H, g.Dk, g.Dv, g.C, g.N, g.gw, g.scale, g.bonus}; }

bool tc_aligned(std::initializer_list<const Tensor*> ts, uintptr_t a) {
  for (const Tensor* t : ts)
    if (t->defined() && reinterpret_cast<uintptr_t>(t->data_ptr()) % a != 0) return false;
  return true;
}

bool use_tc(const Inputs& in) {
  if (in.v.dtype() != DType::BF16 && in.v.dtype() != DType::F16) return false;
  if (!lr_tc::env_enabled()) return false;
  const lr_tc::TcGeo g = tc_geo(in.geo);
  if (!lr_tc::shape_ok(g) || g.T < g.C) return false;
  const size_t limit = size_t(::seqmix::cuda::max_shared_memory_optin()) - 1024;
  if (std::max({lr_tc::smem_state(g), lr_tc::smem_fwd(g), lr_tc::smem_bwd(g)}) > limit) return false;
  return tc_aligned({&in.q, &in.k, &in.v}, 16);
}

// On the tensor-core path the fused state pass (lr_tc::state_pass) replaces chunk_state_tc + state scan only
// with SEQMIX_LR_FUSED_STATE=1 (read per call; slower on the H100, see the header) and when its shared memory
// fits; its cp.async reads of a per-channel g need 16-byte alignment (q, k, v: use_tc's check; dout:
// backward_launch's).
bool use_fused_state(const Inputs& in) {
  if (!lr_tc::fused_state_enabled()) return false;
  if (lr_tc::smem_state_pass(tc_geo(in.geo)) > size_t(::seqmix::cuda::max_shared_memory_optin()) - 1024) return false;
  return in.mode != 2 || tc_aligned({&in.g}, 16);
}

lr_tc::Elem tc_elem(const Inputs& in) { return in.v.dtype() == DType::BF16 ? lr_tc::Elem::BF16 : lr_tc::Elem::F16; }

// Returns the states S_n kept for the backward ([B, H, N, Dv, Dk]): f32 (FFMA), or bf16 (tensor cores: the
// operand precision of their chunk kernels). Each path has this one buffer: chunk_state writes U_n there and
// the scan S_n over it (the fused pass writes S_n directly).
Tensor forward_launch(const Inputs& in, const Tensor& glast, const Tensor& o, const Tensor& final_state) {
  const Geo& geo = in.geo;
  cudaStream_t st = ::seqmix::cuda::current_stream();
  dim3 grid(unsigned(geo.N), unsigned(geo.H), unsigned(geo.B));
  const Device dev = in.v.device();
  const Shape sshape{geo.B, geo.H, int64_t(geo.N), geo.Dv, geo.Dk};
  bool tc = use_tc(in) && tc_aligned({&o}, 32);
  Tensor states;
  if (tc) {
    states = Tensor::empty(sshape, DType::BF16, dev);
    tc = tc_aligned({&states}, 32);
  }
  if (!tc) states = Tensor::empty(sshape, DType::F32, dev);
  const bool fused = tc && use_fused_state(in);
  SEQMIX_CUDA_DISPATCH_FLOAT(in.v.dtype(), "linear_recurrence", [&]<typename T>() {
    with_mode(in.mode, [&]<int MODE>() {
      if (fused) {
        lr_tc::state_pass(tc_elem(in), MODE, false, tc_geo(geo), in.k.data_ptr(), in.v.data_ptr(),
                          data_or_null<const float>(in.g), data_or_null<const float>(in.s0),
                          data_or_null<float>(final_state), states.data_ptr(), data_or_null<float>(glast), st);
      } else if (tc) {
        lr_tc::chunk_state(tc_elem(in), MODE, false, tc_geo(geo), in.k.data_ptr(), in.v.data_ptr(),
                           data_or_null<const float>(in.g), states.data_ptr(), data_or_null<float>(glast), st);
      } else {
        auto kern = chunk_state_kernel<T, MODE, false>;
        const size_t sb = smem_state(geo);
        set_smem(kern, sb);
        kern<<<grid, kThreads, sb, st>>>(geo, data_or_null<const T>(in.k), data_or_null<const T>(in.v),
                                         data_or_null<const float>(in.g), data_or_null<float>(states),
                                         data_or_null<float>(glast));
        SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence chunk_state_kernel");
      }
      const float* gl = MODE > 0 ? data_or_null<const float>(glast) : nullptr;
      if (tc && !fused)
        launch_scan<false>(geo, data_or_null<__nv_bfloat16>(states), gl, data_or_null<const float>(in.s0),
                           data_or_null<float>(final_state), st);
      if (!tc)
        launch_scan<false>(geo, data_or_null<float>(states), gl, data_or_null<const float>(in.s0),
                           data_or_null<float>(final_state), st);
      if (tc) {
        lr_tc::chunk_fwd(tc_elem(in), MODE, tc_geo(geo), in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                         data_or_null<const float>(in.g), data_or_null<const float>(in.u), states.data_ptr(),
                         o.data_ptr(), st);
      } else {
        auto kern = chunk_fwd_kernel<T, MODE>;
        const size_t sb = smem_fwd(geo);
        set_smem(kern, sb);
        kern<<<grid, kThreads, sb, st>>>(geo, data_or_null<const T>(in.q), data_or_null<const T>(in.k),
                                         data_or_null<const T>(in.v), data_or_null<const float>(in.g),
                                         data_or_null<const float>(in.u), data_or_null<const float>(states),
                                         data_or_null<T>(o));
        SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence chunk_fwd_kernel");
      }
    });
  });
  return states;
}

struct Grads {
  Tensor dq, dk, dv, dg, du, ds0;
};

// states: forward_launch's (f32 or bf16). Should this call take the other path than the forward did (the
// environment changed in between, or a buffer's alignment), the states are converted: bf16 ones for FFMA
// then carry the bf16 rounding; f32 ones (FFMA, from f32 U_n) are rounded once to bf16 for the tensor cores,
// which stands in for that path's S_n (f32 sums of bf16 U_n, rounded) within bf16 precision. The fused pass
// and the pair write the same bf16 S_n, so switching SEQMIX_LR_FUSED_STATE in between needs nothing.
// want_dg false (g needs no gradient: retnet's fixed decays) skips every dg buffer and kernel: the chunk
// kernels then write neither r nor its chunk sums.
Grads backward_launch(const Inputs& in, Tensor states, const Tensor& glast, const Tensor& final_state,
                      const Tensor& dout, const Tensor& dfinal, bool want_dg) {
  const Geo& geo = in.geo;
  const Device dev = in.v.device();
  cudaStream_t st = ::seqmix::cuda::current_stream();
  dim3 grid(unsigned(geo.N), unsigned(geo.H), unsigned(geo.B));
  Grads gr;
  gr.dq = Tensor::empty(in.q.shape(), in.q.dtype(), dev);
  gr.dk = Tensor::empty(in.k.shape(), in.k.dtype(), dev);
  gr.dv = Tensor::empty(in.v.shape(), in.v.dtype(), dev);
  gr.ds0 = Tensor::empty({geo.B, geo.H, geo.Dk, geo.Dv}, DType::F32, dev);
  Tensor dstates;  // dU_n -> dH_{n+1} in place: f32 (FFMA) or bf16 (tensor cores; the fused pass writes dH_{n+1})
  Tensor rbuf, pbuf, ctot, dubuf, dg32;
  const bool dg_on = in.mode > 0 && want_dg;
  if (dg_on) {
    rbuf = Tensor::empty({geo.B, geo.T, geo.H, geo.Dk}, DType::F32, dev);
    ctot = Tensor::empty({geo.B, geo.H, geo.N, geo.Dk}, DType::F32, dev);
    dg32 = Tensor::empty({geo.B, geo.T, geo.H, geo.Dk}, DType::F32, dev);
    if (geo.bonus) pbuf = Tensor::empty({geo.B, geo.T, geo.H, geo.Dk}, DType::F32, dev);
  }
  if (geo.bonus) dubuf = Tensor::empty({geo.B, geo.H, geo.N, geo.Dk}, DType::F32, dev);
  bool tc = use_tc(in) && tc_aligned({&dout, &gr.dq, &gr.dk, &gr.dv, &rbuf, &pbuf}, 16);
  if (tc) {
    dstates = Tensor::empty(states.shape(), DType::BF16, dev);
    if (states.dtype() != DType::BF16) states = states.to(DType::BF16);
    tc = tc_aligned({&states, &dstates}, 32);
  }
  if (!tc) {
    dstates = Tensor::empty(states.shape(), DType::F32, dev);
    if (states.dtype() != DType::F32) states = states.to(DType::F32);
  }
  const bool fused = tc && use_fused_state(in);
  SEQMIX_CUDA_DISPATCH_FLOAT(in.v.dtype(), "linear_recurrence backward", [&]<typename T>() {
    with_mode(in.mode, [&]<int MODE>() {
      if (fused) {
        lr_tc::state_pass(tc_elem(in), MODE, true, tc_geo(geo), in.q.data_ptr(), dout.data_ptr(),
                          data_or_null<const float>(in.g), data_or_null<const float>(dfinal),
                          data_or_null<float>(gr.ds0), dstates.data_ptr(), nullptr, st);
      } else if (tc) {
        lr_tc::chunk_state(tc_elem(in), MODE, true, tc_geo(geo), in.q.data_ptr(), dout.data_ptr(),
                           data_or_null<const float>(in.g), dstates.data_ptr(), nullptr, st);
      } else {
        auto kern = chunk_state_kernel<T, MODE, true>;
        const size_t sb = smem_state(geo);
        set_smem(kern, sb);
        kern<<<grid, kThreads, sb, st>>>(geo, data_or_null<const T>(in.q), data_or_null<const T>(dout),
                                         data_or_null<const float>(in.g), data_or_null<float>(dstates), nullptr);
        SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence chunk_state_kernel (backward)");
      }
      const float* gl = MODE > 0 ? data_or_null<const float>(glast) : nullptr;
      if (tc && !fused)
        launch_scan<true>(geo, data_or_null<__nv_bfloat16>(dstates), gl, data_or_null<const float>(dfinal),
                          data_or_null<float>(gr.ds0), st);
      if (!tc)
        launch_scan<true>(geo, data_or_null<float>(dstates), gl, data_or_null<const float>(dfinal),
                          data_or_null<float>(gr.ds0), st);
      if (tc) {
        lr_tc::chunk_bwd(tc_elem(in), MODE, tc_geo(geo), in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                         dout.data_ptr(), data_or_null<const float>(in.g), data_or_null<const float>(in.u),
                         states.data_ptr(), dstates.data_ptr(), gr.dq.data_ptr(), gr.dk.data_ptr(), gr.dv.data_ptr(),
                         lr_tc::TcBwdOut{data_or_null<float>(rbuf), data_or_null<float>(pbuf),
                                         data_or_null<float>(ctot), data_or_null<float>(dubuf)},
                         st);
      } else {
        auto kern = chunk_bwd_kernel<T, MODE>;
        const size_t sb = smem_bwd(geo);
        set_smem(kern, sb);
        BwdOut bo{data_or_null<float>(rbuf), data_or_null<float>(pbuf), data_or_null<float>(ctot),
                  data_or_null<float>(dubuf)};
        kern<<<grid, kThreads, sb, st>>>(geo, data_or_null<const T>(in.q), data_or_null<const T>(in.k),
                                         data_or_null<const T>(in.v), data_or_null<const T>(dout),
                                         data_or_null<const float>(in.g), data_or_null<const float>(in.u),
                                         data_or_null<const float>(states), data_or_null<const float>(dstates),
                                         data_or_null<T>(gr.dq), data_or_null<T>(gr.dk), data_or_null<T>(gr.dv), bo);
        SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence chunk_bwd_kernel");
      }
    });
  });
  if (dg_on) {
    dim3 gs(unsigned((geo.Dk + 127) / 128), unsigned(geo.B * geo.H));
    dg_suffix_kernel<<<gs, 128, 0, st>>>(
        geo, data_or_null<float>(ctot),
        dfinal.defined() && final_state.defined() ? data_or_null<const float>(dfinal) : nullptr,
        data_or_null<const float>(final_state));
    SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence dg_suffix_kernel");
    dim3 gd(unsigned(geo.N), unsigned(geo.B * geo.H));
    const int th = geo.Dk >= 128 ? 128 : 32 * ((geo.Dk + 31) / 32);
    dg_kernel<<<gd, th, 0, st>>>(geo, data_or_null<const float>(rbuf), data_or_null<const float>(pbuf),
                                 data_or_null<const float>(ctot), data_or_null<float>(dg32));
    SEQMIX_CUDA_CHECK_LAUNCH("linear_recurrence dg_kernel");
    gr.dg = in.mode == 1 ? sum(dg32, -1) : dg32;
  }
  if (geo.bonus) gr.du = sum(dubuf, std::vector<int>{0, 2});  // [H, Dk]
  return gr;
}

struct RecurrenceFunction : autograd::CustomFunction {
  Geo geo{};
  int mode = 0;
  DType q_dtype = DType::F32, k_dtype = DType::F32, v_dtype = DType::F32, g_dtype = DType::F32, u_dtype = DType::F32;
  bool has_final = false;
  std::string name() const override { return "linear_recurrence_cuda"; }
  autograd::Tensors backward(const autograd::Tensors& grads) override {
    const autograd::Tensors& s = saved();  // q, k, v, g, u, s0, states, glast, final
    Tensor dout = grads.size() > 0 ? grads[0] : Tensor();
    Tensor dfinal = grads.size() > 1 ? grads[1] : Tensor();
    if (!dout.defined() && !dfinal.defined()) return autograd::Tensors(6);
    Inputs in;
    in.q = s[0];
    in.k = s[1];
    in.v = s[2];
    in.g = s[3];
    in.u = s[4];
    in.s0 = s[5];
    in.geo = geo;
    in.mode = mode;
    Grads gr;
    {
      autograd::NoGradGuard ng;
      kernel_output_grads(dout, dfinal, in.v);
      ::seqmix::cuda::select_device(in.v.device().index);
      gr = backward_launch(in, s[6], s[7], s[8], dout, dfinal, needs_input_grad(3));
    }
    autograd::Tensors out(6);
    if (needs_input_grad(0)) out[0] = gr.dq.dtype() == q_dtype ? gr.dq : gr.dq.to(q_dtype);
    if (needs_input_grad(1)) out[1] = gr.dk.dtype() == k_dtype ? gr.dk : gr.dk.to(k_dtype);
    if (needs_input_grad(2)) out[2] = gr.dv.dtype() == v_dtype ? gr.dv : gr.dv.to(v_dtype);
    if (needs_input_grad(3) && gr.dg.defined()) out[3] = gr.dg.dtype() == g_dtype ? gr.dg : gr.dg.to(g_dtype);
    if (needs_input_grad(4) && gr.du.defined()) out[4] = gr.du.dtype() == u_dtype ? gr.du : gr.du.to(u_dtype);
    if (needs_input_grad(5)) out[5] = gr.ds0;
    return out;
  }
};

#endif  // SEQMIX_LR_EMULATE
}  // namespace
}  // namespace lr_cuda

#ifndef SEQMIX_LR_EMULATE
RecurrenceResult linear_recurrence_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& g_in,
                                        const Tensor& bonus_in, const Tensor& s0_in, const RecurrenceOptions& opt) {
  using namespace lr_cuda;
  const char* what = "linear_recurrence (CUDA)";
  SEQMIX_CHECK(q_in.defined() && k_in.defined() && v_in.defined(), what, ": q, k and v must be defined");
  SEQMIX_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, what, ": q, k must be [B, T, H, Dk] and v [B, T, H, Dv], got ",
               shape_str(q_in.shape()), ", ", shape_str(k_in.shape()), ", ", shape_str(v_in.shape()));
  SEQMIX_CHECK(q_in.shape() == k_in.shape(), what, ": q ", shape_str(q_in.shape()), " and k ", shape_str(k_in.shape()),
               " must have one shape");
  SEQMIX_CHECK(v_in.size(0) == q_in.size(0) && v_in.size(1) == q_in.size(1) && v_in.size(2) == q_in.size(2), what, ": v ",
               shape_str(v_in.shape()), " does not match q ", shape_str(q_in.shape()), " in [B, T, H]");
  SEQMIX_CHECK(q_in.is_cuda() && k_in.is_cuda() && v_in.is_cuda(), what, ": q, k and v must be CUDA tensors");
  SEQMIX_CHECK(is_floating(v_in.dtype()) && v_in.dtype() != DType::F64, what, ": v must be f32, bf16 or f16, got ",
               dtype_name(v_in.dtype()));
  const int64_t B = q_in.size(0), T = q_in.size(1), H = q_in.size(2), Dk = q_in.size(3), Dv = v_in.size(3);
  int mode = 0;
  if (g_in.defined()) {
    if (g_in.dim() == 3) {
      SEQMIX_CHECK(g_in.shape() == (Shape{B, T, H}), what, ": a per-head g must be [B, T, H] = ", shape_str({B, T, H}), ", got ",
                   shape_str(g_in.shape()));
      mode = 1;
    } else {
      SEQMIX_CHECK(g_in.shape() == q_in.shape(), what, ": g must be [B, T, H, Dk] = ", shape_str(q_in.shape()),
                   " or [B, T, H], got ", shape_str(g_in.shape()));
      mode = 2;
    }
  }
  if (bonus_in.defined())
    SEQMIX_CHECK(bonus_in.shape() == (Shape{H, Dk}), what, ": bonus must be [H, Dk] = ", shape_str({H, Dk}), ", got ",
                 shape_str(bonus_in.shape()));
  if (s0_in.defined())
    SEQMIX_CHECK(s0_in.shape() == (Shape{B, H, Dk, Dv}), what, ": initial_state must be [B, H, Dk, Dv] = ",
                 shape_str({B, H, Dk, Dv}), ", got ", shape_str(s0_in.shape()));
  SEQMIX_CHECK(Dk > 0 && Dv > 0, what, ": head dims must be positive");
  SEQMIX_CHECK(B * H <= 65535 && H <= 65535 && B <= 65535, what, ": B * H too large for the launch grid");
  const Device dev = v_in.device();
  ::seqmix::cuda::select_device(dev.index);

  Inputs in;
  RecurrenceResult res;
  Tensor states, glast;
  {
    autograd::NoGradGuard ng;
    const DType dt = v_in.dtype();
    auto prep = [&](const Tensor& t) {
      Tensor x = t.detach();
      if (x.dtype() != dt) x = x.to(dt);
      return x.contiguous();
    };
    in.q = prep(q_in);
    in.k = prep(k_in);
    in.v = prep(v_in);
    if (g_in.defined()) in.g = g_in.detach().to(dev).to(DType::F32).contiguous();
    if (bonus_in.defined()) in.u = bonus_in.detach().to(dev).to(DType::F32).contiguous();
    if (s0_in.defined()) in.s0 = s0_in.detach().to(dev).to(DType::F32).contiguous();
    in.mode = mode;
    Geo& geo = in.geo;
    geo.B = int(B);
    geo.T = int(T);
    geo.H = int(H);
    geo.Dk = int(Dk);
    geo.Dv = int(Dv);
    geo.gw = mode == 2 ? int(Dk) : mode;
    geo.scale = float(opt.scale);
    geo.bonus = bonus_in.defined();
    // Chunk length: opt.chunk (64), halved until a chunk's shared memory fits.
    int C = int(std::clamp<int64_t>(opt.chunk > 0 ? opt.chunk : 64, 16, 64));
    const size_t limit = size_t(::seqmix::cuda::max_shared_memory_optin()) - 1024;  // margin for the kernels' static shared memory
    for (;;) {
      geo.C = C;
      if (std::max({smem_state(geo), smem_fwd(geo), smem_bwd(geo)}) <= limit || C <= 16) break;
      C /= 2;
    }
    SEQMIX_CHECK(std::max({smem_state(geo), smem_fwd(geo), smem_bwd(geo)}) <= limit, what, ": head dims Dk=", Dk, " Dv=", Dv,
                 " are too large for the CUDA kernel's shared memory");
    geo.N = int((T + C - 1) / C);

    res.o = Tensor::empty({B, T, H, Dv}, dt, dev);
    res.final_state = Tensor::empty({B, H, Dk, Dv}, DType::F32, dev);
    if (T == 0) {
      if (in.s0.defined()) res.final_state.copy_(in.s0);
      else res.final_state.zero_();
    } else {
      if (mode > 0) glast = Tensor::empty({B, H, int64_t(geo.N), int64_t(geo.gw)}, DType::F32, dev);
      states = forward_launch(in, glast, res.o, res.final_state);
    }
  }
  const Tensor final_out = opt.want_final_state ? res.final_state : Tensor();
  if (T > 0 && autograd::needs_grad({&q_in, &k_in, &v_in, &g_in, &bonus_in, &s0_in})) {
    auto fn = std::make_shared<RecurrenceFunction>();
    fn->geo = in.geo;
    fn->mode = mode;
    fn->q_dtype = q_in.dtype();
    fn->k_dtype = k_in.dtype();
    fn->v_dtype = v_in.dtype();
    fn->g_dtype = g_in.defined() ? g_in.dtype() : DType::F32;
    fn->u_dtype = bonus_in.defined() ? bonus_in.dtype() : DType::F32;
    // The final state is kept only for dg's final-state term (d final_state . final_state).
    fn->save_for_backward({in.q, in.k, in.v, in.g, in.u, in.s0, states, glast,
                           opt.want_final_state && mode > 0 ? res.final_state : Tensor()});
    autograd::CustomFunction::attach(fn, {q_in, k_in, v_in, g_in, bonus_in, s0_in},
                                     opt.want_final_state ? autograd::Tensors{res.o, final_out} : autograd::Tensors{res.o});
  }
  res.final_state = final_out;
  return res;
}

#endif  // SEQMIX_LR_EMULATE

}  // namespace seqmix::mixers
