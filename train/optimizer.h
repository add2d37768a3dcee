// AdamW (Loshchilov & Hutter) on f32 master parameters, with decoupled weight decay on matrices only.
//
// Per step t (1-based) and element, in f32 with every operation rounded separately (no fused
// multiply-add), identically on the CPU and in the fused CUDA kernel (train/adamw.cu):
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   p = p * (1 - lr * weight_decay)          (only parameters with dim() >= 2)
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// This is torch.optim.AdamW's update. step(lr, grad_scale) first multiplies each gradient by the f32
// grad_scale (the clipping factor, folded in instead of a separate pass over the gradients; the same
// rounding as scaling them in place, and exact when it is 1). One step counter serves every parameter (a parameter without a
// gradient in a step keeps p, m and v unchanged but the counter still advances).
//
// CPU parameters: an OpenMP loop per tensor (elementwise, so bit-identical between runs and thread
// counts). CUDA parameters: one fused multi-tensor launch per step over all of them (a device table
// of pointers and 64K-element chunks; 16-byte vector loads where aligned; reads each gradient once,
// updates p, m, v in place). No host synchronization.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace seqmix::train {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};
// Throws a seqmix::Error naming the bad field (betas in [0, 1), eps > 0, weight_decay >= 0).
void validate_adamw_config(const AdamWConfig& cfg);

class AdamW {
 public:
  // Parameters must be f32 and contiguous (CPU or CUDA; the CUDA ones on one device), names unique.
  // The moments are allocated (zeros) next to each parameter.
  AdamW(NamedTensors named_params, AdamWConfig cfg);

  // One update with learning rate `lr` from each parameter's .grad() (undefined: skipped), each
  // gradient times `grad_scale` (see above). CUDA gradients may be f32 or bf16 (read as they are);
  // other dtypes and non-contiguous gradients are converted first (slower).
  void step(double lr, double grad_scale = 1.0);
  // Sets every parameter's gradient to undefined (the next backward allocates fresh ones).
  void zero_grad();
  int64_t steps() const { return steps_; }

  // "exp_avg.<name>" and "exp_avg_sq.<name>" for every parameter, in parameter order: the live,
  // full (unsharded) state tensors on the parameters' devices (handles, not copies).
  NamedTensors state_tensors() const;
  // Copies a saved state in (from any device; floating dtypes are converted) and sets the step
  // counter. Every expected name must be present with the parameter's shape, and no other name may
  // be; the message names the first problem.
  void load_state(const NamedTensors& state, int64_t steps);

  const AdamWConfig& config() const { return cfg_; }
  NamedTensors params() const;
  size_t size() const { return slots_.size(); }

 private:
  struct Slot {
    std::string name;
    Tensor param, exp_avg, exp_avg_sq;
    bool decay = false;
  };
  std::vector<Slot> slots_;
  AdamWConfig cfg_;
  int64_t steps_ = 0;
};

namespace detail {

// Per-step constants, all f32 (computed in double on the host, rounded once).
struct AdamWScalars {
  float beta1, beta2, one_minus_beta1, one_minus_beta2;
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
  float eps;
  float grad_scale;    // multiplies every gradient first (clipping); 1 = none
};
AdamWScalars adamw_scalars(const AdamWConfig& cfg, double lr, int64_t t, double grad_scale = 1.0);

// One tensor's update: n elements of f32 p, g, m, v; decay = 1 - lr * weight_decay, or 1.
struct AdamWTensor {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
  float decay;
  const uint16_t* g_bf16 = nullptr;  // CUDA only: a bf16 gradient, read instead of g
};

// Separately rounded f32 operations (the device versions forbid contraction into FMA), so the
// host and device updates agree bit for bit.
SEQMIX_HD float f_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SEQMIX_HD float f_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
SEQMIX_HD float f_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
SEQMIX_HD float f_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
SEQMIX_HD float f_sqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return __builtin_sqrtf(a);
#endif
}

SEQMIX_HD void adamw_update(float& p, float g, float& m, float& v, float decay, const AdamWScalars& s) {
  g = f_mul(g, s.grad_scale);
  m = f_add(f_mul(s.beta1, m), f_mul(s.one_minus_beta1, g));
  v = f_add(f_mul(s.beta2, v), f_mul(f_mul(s.one_minus_beta2, g), g));
  const float denom = f_add(f_mul(f_sqrt(v), s.inv_sqrt_bc2), s.eps);
  p = f_sub(f_mul(p, decay), f_mul(s.step_size, f_div(m, denom)));
}

void adamw_step_cpu(const AdamWTensor& t, const AdamWScalars& s);
#ifdef SEQMIX_WITH_CUDA
// train/adamw.cu: all tensors (on the current device) in one launch on cuda::current_stream().
void adamw_step_cuda(const std::vector<AdamWTensor>& tensors, const AdamWScalars& s);
#endif

}  // namespace detail

}  // namespace seqmix::train
