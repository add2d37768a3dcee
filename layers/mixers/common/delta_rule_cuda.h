// Fused chunked CUDA kernel of delta_rule (deltanet; gated_deltanet with a per-head log decay g), forward and
// backward (see delta_rule.h for the semantics, delta_rule_cuda.cu for the algorithm and the gradients).
// Differentiable (a CustomFunction) in q, k, v, beta, g and initial_state. Only in builds with SEQMIX_WITH_CUDA.
//
// delta_rule() dispatches here when delta_rule_cuda_supported() holds (f32 inputs: head dims <= 64) unless
// SEQMIX_DELTA_CUDA=0 is set; verified on the lent H100 (tests/gpu/test_delta_rule_gpu.cpp) and by CPU
// emulation (scripts/delta_emulate.sh).
#pragma once
#include "layers/mixers/common/delta_rule.h"

namespace seqmix::mixers {

// True unless SEQMIX_DELTA_CUDA=0 (read on every call, so a benchmark can time both paths).
bool delta_rule_cuda_enabled();

// CUDA tensors; q, k, v of bf16, f16 or f32 (cast to v's dtype); beta [B, T, H]; g [B, T, H] or undefined;
// initial_state [B, H, Dk, Dv] or undefined; Dk, Dv multiples of 16 in [16, 128]; opt.chunk = 64;
// opt.normalize_qk. Any T (padded inside to a multiple of 64).
bool delta_rule_cuda_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g,
                               const Tensor& initial_state, const DeltaOptions& opt);

// The fused kernel (requires delta_rule_cuda_supported). o [B, T, H, Dv] in v's dtype, final state [B, H, Dk, Dv]
// f32. Matmul operands: bf16 on tensor cores (f32 accumulation) for bf16 / f16 inputs and for f32 inputs whose
// f32-operand shared memory does not fit (Dk or Dv > 64); f32 FFMA operands for other f32 inputs.
DeltaResult delta_rule_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g,
                            const Tensor& initial_state, const DeltaOptions& opt);

}  // namespace seqmix::mixers
