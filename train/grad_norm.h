// Global gradient norm and clipping over a list of parameters (their .grad(); undefined grads are
// skipped), on the CPU and CUDA.
//
// Sum of squares: f32 accumulation over fixed blocks of elements, the block partials summed in double
// in a fixed order, so the result is deterministic for a given device. CUDA gradients (f32 or bf16,
// contiguous) go through one fused multi-tensor kernel per 128 tensors plus a one-block final sum; the
// result is read back with a single host synchronization. NaN and inf propagate into the result, so
// the caller can detect a bad step.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace seqmix::train {

// sqrt(sum over params of sum(grad^2)).
double grad_norm(const std::vector<Tensor>& params);
// The same, and `extra` (f64, contiguous; computed on the gradients' device before this call) read back into
// *extra_out in the same host synchronization (data parallel: the reduced per-parameter flags and loss).
double grad_norm(const std::vector<Tensor>& params, const Tensor& extra, std::vector<double>* extra_out);
// grad *= factor, in place, for every defined gradient.
void scale_grads(const std::vector<Tensor>& params, double factor);
// Computes the norm; if it is finite and above max_norm (> 0), scales the gradients by
// max_norm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). A non-finite norm leaves the gradients
// untouched. Returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
// The factor clip_grad_norm scales by: max_norm / (norm + 1e-6) when the norm is finite and above
// max_norm (> 0), else 1. For AdamW::step(lr, grad_scale), which applies it without a pass of its own.
double clip_factor(double norm, double max_norm);

namespace detail {
// One contiguous gradient on the current CUDA device: f32 (g), or bf16 (g_bf16; sum of squares only).
struct GradRef {
  float* g;
  int64_t n;
  const uint16_t* g_bf16 = nullptr;
};
#ifdef SEQMIX_WITH_CUDA
// train/grad_norm.cu, on cuda::current_stream().
// One host synchronization; `n_extra` doubles at `extra` (device) are copied to `extra_host` before it.
double grad_sumsq_cuda(const std::vector<GradRef>& grads, const double* extra = nullptr, size_t n_extra = 0,
                       double* extra_host = nullptr);
void scale_cuda(const std::vector<GradRef>& grads, float factor);  // asynchronous
#endif
}  // namespace detail

}  // namespace seqmix::train
