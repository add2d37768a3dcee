// Tensor-core (WMMA bf16 x bf16 -> f32) versions of the three chunk kernels of the CUDA linear recurrence
// (linear_recurrence.cu: chunk_state_kernel, chunk_fwd_kernel, chunk_bwd_kernel). Same grid, same inputs,
// outputs and buffers as those kernels, so linear_recurrence.cu swaps them in for eligible inputs and keeps
// its dg kernels and state scans (with SEQMIX_LR_FUSED_STATE=1, chunk_state + scan are one fused state pass
// instead, linear_recurrence_state_tc.cu). The algorithm is the one described in linear_recurrence.cu's
// header; see linear_recurrence_tc.cu for what changes (operand precision, shared memory, occupancy).
// Include only from .cu files; no spdlog / fmt here.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace seqmix::mixers::lr_tc {

// Mirrors linear_recurrence.cu's Geo (gw: Dk per-channel decay, 1 per head, 0 none).
struct TcGeo {
  int B, T, H, Dk, Dv, C, N;
  int gw;
  float scale;
  bool bonus;
};

enum class Elem { BF16, F16 };

struct TcBwdOut {
  float* r;     // [B, T, H, Dk]  q dq - k dk            (decays only)
  float* p;     // [B, T, H, Dk]  q dq^state             (decays with a bonus only)
  float* ctot;  // [B, H, N, Dk]  chunk sums of r        (decays only)
  float* du;    // [B, H, N, Dk]  chunk sums of dA_tt q k (bonus only)
};

// True unless the environment sets SEQMIX_LR_TC=0 (read on every call, so a benchmark can time both paths).
// The default since these kernels passed the GPU tests and racecheck on the lent H100 (docs/PERF.md).
bool env_enabled();
// Dk, Dv multiples of 16 in [16, 128]; C a multiple of 16 in [16, 64].
bool shape_ok(const TcGeo& g);
size_t smem_state(const TcGeo& g);
size_t smem_fwd(const TcGeo& g);
size_t smem_bwd(const TcGeo& g);

// Pointers as in linear_recurrence.cu's kernels; x, y, q, k, v, dout, o, dq, dk, dv are of the element type
// (16-byte aligned); out (U_n / dU_n, rounded once from the f32 accumulator) and states / dstates (S_n,
// dH_{n+1}, the state scan's rounding of its f32 sums, written over out) are bf16 [B, H, N, Dv, Dk] (32-byte
// aligned).
void chunk_state(Elem e, int mode, bool bwd, const TcGeo& g, const void* x, const void* y, const float* gdec, void* out,
                 float* glast, cudaStream_t st);
void chunk_fwd(Elem e, int mode, const TcGeo& g, const void* q, const void* k, const void* v, const float* gdec,
               const float* u, const void* states, void* o, cudaStream_t st);
void chunk_bwd(Elem e, int mode, const TcGeo& g, const void* q, const void* k, const void* v, const void* dout,
               const float* gdec, const float* u, const void* states, const void* dstates, void* dq, void* dk, void* dv,
               TcBwdOut bo, cudaStream_t st);

// Fused state pass (linear_recurrence_state_tc.cu), opt-in: replaces chunk_state + the state scan on the
// tensor-core path (U_n never goes through global memory; slower on the H100, see that file). Forward (bwd = false): x = k, y = v, edge_in = initial state
// (f32 [B, H, Dk, Dv], may be null), edge_out = final state, out16 = S_n (bf16 [B, H, N, Dv, Dk]), glast
// ([B, H, N, gw]) written for mode > 0. Backward: x = q, y = dout, edge_in = d final state (may be null),
// edge_out = d initial state, out16 = dH_{n+1}, glast unused (may be null). The arithmetic of chunk_state +
// state_scan_kernel, op for op, U_n rounded to bf16 as chunk_state does (bit-identical results in the CPU
// emulation). x, y, out16 and a per-channel
// gdec 16-byte aligned.
// fused_state_enabled(): true only with SEQMIX_LR_FUSED_STATE=1 (read on every call: a benchmark can time both).
bool fused_state_enabled();
size_t smem_state_pass(const TcGeo& g);  // any shape_ok() geometry; the caller checks it against the device limit
void state_pass(Elem e, int mode, bool bwd, const TcGeo& g, const void* x, const void* y, const float* gdec,
                const float* edge_in, float* edge_out, void* out16, float* glast, cudaStream_t st);

}  // namespace seqmix::mixers::lr_tc
