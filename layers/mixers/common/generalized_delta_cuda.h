// Fused recurrent CUDA kernel of generalized_delta_rule (rwkv7's time mix; semantics in delta_rule.h, the
// algorithm and the gradients in generalized_delta_cuda.cu), forward and backward. Differentiable (a
// CustomFunction) in q, k, v, lw, a, b and initial_state. Only in builds with SEQMIX_WITH_CUDA.
//
// generalized_delta_rule() dispatches here when generalized_delta_cuda_supported() holds, unless
// SEQMIX_GDR_CUDA=0 is set. The backward walks each 16-token chunk backwards from the state saved at its
// end by inverting the steps (S_{t-1} = (S_t - b sa^T - k v^T) / w), so it needs the caller's promise that
// every decay is at least e^{opt.min_log_decay} with min_log_decay >= kGdrMinLogDecay (rwkv7's decay is
// above e^{-e^{-1/2}} by construction): rounding then grows by at most e^{0.61 * 15} ~ 1e4 inside a chunk.
#pragma once
#include "layers/mixers/common/delta_rule.h"

namespace seqmix::mixers {

constexpr double kGdrMinLogDecay = -0.61;

// True unless SEQMIX_GDR_CUDA=0 (read on every call, so a benchmark can time both paths).
bool generalized_delta_cuda_enabled();

// CUDA tensors; q, k, v, a, b of bf16, f16 or f32 (cast to v's dtype); lw [B, T, H, Dk] (f32 inside);
// initial_state [B, H, Dk, Dv] or undefined; Dk in {32, 64, 128}; Dv a multiple of 32 up to 4096;
// opt.min_log_decay >= kGdrMinLogDecay. Any T.
bool generalized_delta_cuda_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw,
                                      const Tensor& a, const Tensor& b, const Tensor& initial_state,
                                      const DeltaOptions& opt);

// The fused kernel (requires generalized_delta_cuda_supported): o [B, T, H, Dv] in v's dtype, final state
// [B, H, Dk, Dv] f32. Arithmetic and state in f32.
DeltaResult generalized_delta_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a,
                                   const Tensor& b, const Tensor& initial_state, const DeltaOptions& opt);

// The chunked tensor-core form (generalized_delta_chunked.cu: WY with per-key decays, C = 64, on the delta rule's
// tiles): the training path. Needs the same decay bound; Dk, Dv multiples of 16 up to 128. generalized_delta_rule()
// takes it first unless SEQMIX_GDR_CHUNKED=0 (read on every call), then the recurrent kernel above.
bool generalized_delta_chunked_enabled();
bool generalized_delta_chunked_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw,
                                         const Tensor& a, const Tensor& b, const Tensor& initial_state,
                                         const DeltaOptions& opt);
DeltaResult generalized_delta_chunked_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw,
                                           const Tensor& a, const Tensor& b, const Tensor& initial_state,
                                           const DeltaOptions& opt);

}  // namespace seqmix::mixers
