// The delta-rule engine (deltanet, gated_deltanet, rwkv7). Per batch b and head h, state S_t [Dk, Dv]:
//
//   delta_rule:              S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,   o_t = scale * S_t^T q_t
//                            a_t = exp(g_t) (g_t <= 0 a per-head log decay; a_t = 1 when g is undefined),
//                            q, k L2-normalized inside (with their gradient) unless opts.normalize_qk is off.
//   generalized_delta_rule:  S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T,       o_t = scale * S_t^T q_t
//                            w_t = exp(lw_t) in (0, 1], lw_t given in log space per key channel.
//
// Three forms that agree: the token-by-token reference (the oracle), the chunked form (WY / UT
// representation, below) and the one-token step for generation. All are compositions of ops from
// core/ops.h, so they are differentiable and run on any device whose backend has those ops. On CUDA tensors
// delta_rule() dispatches to a fused chunked kernel (delta_rule_cuda.h) and generalized_delta_rule(), when the caller
// bounds the decays, to a chunked tensor-core kernel (or, for head dims it does not take, a fused recurrent one;
// generalized_delta_cuda.h); otherwise, and with
// SEQMIX_DELTA_CUDA=0 / SEQMIX_GDR_CUDA=0, the op composition runs on the GPU. Computation is in f32 (f64
// when the inputs are f64); the output comes back in v's dtype.
//
// Chunked form (chunk of C tokens, G = cumulative log decay inside the chunk, Gamma_ts = exp(G_t - G_s)):
//   A = strict_lower(diag(b) K K^T (.) Gamma),  T = (I + A)^{-1} (recursive block inversion, log2 C levels),
//   W = T diag(b exp(G)) K,  U = T diag(b) V,  U' = U - W S      (U' = the "new values" b_t (v_t - a_t S_{t-1}^T k_t))
//   O = diag(exp(G)) Q S + (Q K^T (.) Gamma (.) lower-incl) U',  S' = exp(G_C) S + (diag(exp(G_C - G)) K)^T U'.
// The generalized form is the same with the pairwise decays exp(L_t - L_s) per key channel (never a product
// of exp(L) and exp(-L), so decays near 0 do not overflow); see delta_rule.cpp.
#pragma once
#include "core/tensor.h"

namespace seqmix::mixers {

struct DeltaOptions {
  double scale = 1.0;          // applied to the output (q's usual 1/sqrt(Dk) if wanted)
  int64_t chunk = 64;          // chunk length of the chunked form: a power of two
  bool normalize_qk = true;    // delta_rule only: L2-normalize q and k per head inside
  double norm_eps = 1e-6;      // L2 normalization: x / sqrt(sum x^2 + eps)
  bool want_final_state = true;
  // generalized_delta_rule only: the caller's promise that every lw >= min_log_decay (rwkv7: -e^{-1/2}). The
  // fused CUDA kernel needs it >= kGdrMinLogDecay (generalized_delta_cuda.h); otherwise the op composition runs.
  double min_log_decay = -1e300;
};

struct DeltaResult {
  Tensor o;            // [B, T, H, Dv], dtype of v
  Tensor final_state;  // [B, H, Dk, Dv] f32 (f64 for f64 inputs); undefined unless want_final_state
};

// q, k [B, T, H, Dk]; v [B, T, H, Dv]; beta [B, T, H]; g [B, T, H] log decay (<= 0) or undefined;
// initial_state [B, H, Dk, Dv] or undefined (zeros). Differentiable in all of them. Chunked form.
DeltaResult delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g,
                       const Tensor& initial_state, const DeltaOptions& opt = {});
// The token-by-token recurrent form (the oracle).
DeltaResult delta_rule_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g,
                                 const Tensor& initial_state, const DeltaOptions& opt = {});
// One token for generation: q, k [B, H, Dk], v [B, H, Dv], beta [B, H], g [B, H] or undefined. Updates
// `state` ([B, H, Dk, Dv], f32/f64; zeros when undefined) and returns o [B, H, Dv] in v's dtype.
Tensor delta_rule_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g, Tensor& state,
                       const DeltaOptions& opt = {});

// q, k, a, b [B, T, H, Dk]; v [B, T, H, Dv]; lw [B, T, H, Dk] log decays (<= 0); initial_state as above.
// No normalization inside (the caller builds a and b). Chunked form.
DeltaResult generalized_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a,
                                   const Tensor& b, const Tensor& initial_state, const DeltaOptions& opt = {});
DeltaResult generalized_delta_rule_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw,
                                             const Tensor& a, const Tensor& b, const Tensor& initial_state,
                                             const DeltaOptions& opt = {});
// One token: q, k, lw, a, b [B, H, Dk], v [B, H, Dv].
Tensor generalized_delta_rule_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a,
                                   const Tensor& b, Tensor& state, const DeltaOptions& opt = {});

// (I + A)^{-1} for A [..., C, C] strictly lower triangular, C a power of two: recursive 2x2 block inversion
// ([[T11, 0], [-T22 A21 T11, T22]]), log2(C) levels of batched matmuls. Differentiable.
Tensor unit_lower_inverse(const Tensor& A);

// x / sqrt(sum(x^2, -1) + eps) (differentiable).
Tensor l2_normalize(const Tensor& x, double eps = 1e-6);

}  // namespace seqmix::mixers
