// Generation helper of the gated-linear-recurrence engine: continues a recurrence from a carried state.
#pragma once
#include "layers/mixers/common/linear_recurrence.h"

namespace seqmix::mixers {

// Same inputs as linear_recurrence, with `state` [B, H, Dk, Dv] (undefined: zeros) the state before the new
// tokens. One token (T = 1): the direct update S' = diag(exp(g)) S + k v^T, o = scale * S'^T q (with a bonus,
// o = scale * (S + diag(u) k v^T)^T q); more tokens: the chunked form from that state. Always returns the
// final state (f32, or f64 for f64 inputs / an f64 state).
RecurrenceResult linear_recurrence_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus,
                                        const Tensor& state, const RecurrenceOptions& opt = {});

}  // namespace seqmix::mixers
