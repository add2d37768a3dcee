// The `rwkv6` mixer: RWKV-6 "Finch" time mixing (Peng et al. 2024). Token shift with data-dependent linear
// interpolation (ddlerp: x + (x_{t-1} - x_t) * (mu_* + lora_*(...))) feeds r, k, v, g and the decay; the decay
// is data dependent per channel, w_t = exp(-exp(w0 + tanh(x_w A) B)) (log-decay -exp(.)), and a bonus u
// weighs the current token: o_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T), S_t = diag(w_t) S_{t-1} + k_t v_t^T.
// Per-head GroupNorm, then a SiLU gate and the output projection.
// The channel mix of RWKV is not part of this mixer: the block keeps its own MLP (uses_mlp() is true), so
// rwkv6 stacks the same way as every other mixer and the MLP setting of the config applies.
// Deviations from the reference initialization: the low-rank mixing/decay matrices are initialized
// uniform(-0.01, 0.01) on both factors (RWKV zeros the first one).
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct RWKV6Config {
  int64_t head_size = 64;
  int64_t mix_low_rank = 32;
  int64_t decay_low_rank = 64;
  double norm_eps = 64e-5;  // RWKV's GroupNorm eps (1e-5 * head_size_divisor^2)
  int64_t chunk = 64;
};

class RWKV6 : public RecurrentMixer {
 public:
  RWKV6(const MixerContext& ctx, const RWKV6Config& cfg);
  std::string type_name() const override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;

  std::shared_ptr<Linear> r_proj, k_proj, v_proj, g_proj, out_proj;
  Tensor maa_x, maa;           // [d], [5, d]: static mix of w, k, v, r, g
  Tensor maa_w1, maa_w2;       // [d, 5 R], [5, R, d]: data-dependent mix
  Tensor decay, decay_w1, decay_w2;  // [d], [d, Rd], [Rd, d]
  Tensor bonus;                // [H, head_size] (u)
  Tensor ln_weight, ln_bias;   // GroupNorm affine [d]

 private:
  Tensor run(const Tensor& x, RecurrentState* st) override;
  int64_t d_model_, heads_, hs_;
  RWKV6Config cfg_;
};

void register_rwkv6_mixer();

}  // namespace seqmix::mixers
