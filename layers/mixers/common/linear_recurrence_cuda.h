// CUDA chunked kernel of the shared gated-linear-recurrence engine (see linear_recurrence.h for the
// semantics). Called by linear_recurrence() for CUDA tensors. Differentiable (a CustomFunction) in
// q, k, v, g, bonus and initial_state. Only available in builds with SEQMIX_WITH_CUDA.
#pragma once
#include "layers/mixers/common/linear_recurrence.h"

namespace seqmix::mixers {

// q, k [B, T, H, Dk]; v [B, T, H, Dv] (bf16, f16 or f32, all on one CUDA device; unit last-dim stride
// views are accepted); g [B, T, H, Dk] or [B, T, H] or undefined; bonus [H, Dk] or undefined;
// initial_state [B, H, Dk, Dv] f32 or undefined. Returns o [B, T, H, Dv] (v's dtype) and the final
// state [B, H, Dk, Dv] f32 (if opt.want_final_state).
RecurrenceResult linear_recurrence_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                        const Tensor& bonus, const Tensor& initial_state, const RecurrenceOptions& opt);

}  // namespace seqmix::mixers
