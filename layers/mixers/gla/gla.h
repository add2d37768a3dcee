// The `gla` mixer: gated linear attention (Yang et al. 2024). A data-dependent decay per key channel from a
// low-rank gate, alpha_t = sigmoid(x_t W1 W2 + b)^(1/tau) (tau = 16), i.e. log-decay
// g_t = logsigmoid(x_t W1 W2 + b) / tau; S_t = diag(alpha_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t / sqrt(d_k);
// per-head RMSNorm and a swish output gate: out = W_o (RMSNorm(o) * swish(x W_r)). Optional short causal
// convolutions (+ SiLU) on q, k, v.
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct GLAConfig {
  int64_t n_heads = 4;
  double expand_k = 0.5;  // key width = expand_k * d_model
  double expand_v = 1.0;  // value width = expand_v * d_model
  int64_t gate_low_rank = 16;
  double gate_logit_normalizer = 16.0;  // tau
  bool use_short_conv = false;
  int64_t conv_size = 4;
  double norm_eps = 1e-5;
  int64_t chunk = 64;
};

class GLA : public RecurrentMixer {
 public:
  GLA(const MixerContext& ctx, const GLAConfig& cfg);
  std::string type_name() const override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, g_proj, gk_down, gk_up, out_proj;
  std::shared_ptr<ShortConv> q_conv, k_conv, v_conv;  // only with use_short_conv
  Tensor norm_weight;                                  // [dv], shared by the heads

 private:
  Tensor run(const Tensor& x, RecurrentState* st) override;
  int64_t d_model_, heads_, dk_, dv_;
  GLAConfig cfg_;
};

void register_gla_mixer();

}  // namespace seqmix::mixers
