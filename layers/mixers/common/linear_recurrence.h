// The shared engine of the gated linear recurrences (linear_attention, retnet, gla, hgrn2, rwkv6, mlstm).
// Per batch b and head h, with state S_t of shape [Dk, Dv]:
//     S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T          (g_t <= 0: log-decay per key channel)
//     o_t = scale * S_t^T q_t                             (bonus undefined)
//     o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T q_t   (bonus u [H, Dk]: rwkv6's "current token" term)
// Three forms that must agree: a recurrent reference (CPU), a chunked form (CPU and CUDA: within a chunk,
// masked matmuls with decays as exp of differences of cumulative log-decays; across chunks, f32 state
// passing), and a one-token step for generation.
#pragma once
#include "core/tensor.h"

namespace seqmix::mixers {

struct RecurrenceOptions {
  double scale = 1.0;
  int64_t chunk = 64;          // chunk length of the chunked forms
  bool want_final_state = true;
};

struct RecurrenceResult {
  Tensor o;            // [B, T, H, Dv], dtype of v
  Tensor final_state;  // [B, H, Dk, Dv] f32 (undefined unless want_final_state)
};

// q, k [B, T, H, Dk]; v [B, T, H, Dv]; g: [B, T, H, Dk] log-decays, or [B, T, H] (one per head, broadcast
// over Dk), or undefined (no decay); bonus: [H, Dk] or undefined; initial_state: [B, H, Dk, Dv] f32 or
// undefined (zeros). Differentiable in q, k, v, g, bonus and initial_state. Picks the CUDA chunked kernel
// for CUDA tensors and the CPU chunked path otherwise.
RecurrenceResult linear_recurrence(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus,
                                   const Tensor& initial_state, const RecurrenceOptions& opt = {});

// The plain recurrent form, token by token (the oracle; also differentiable through the op library).
RecurrenceResult linear_recurrence_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                             const Tensor& bonus, const Tensor& initial_state, const RecurrenceOptions& opt = {});

}  // namespace seqmix::mixers
