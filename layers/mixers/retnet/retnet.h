// The `retnet` mixer: multi-scale retention (Sun et al. 2023). Per head h a fixed decay
// gamma_h = 1 - 2^(-5-h) (log-decay log gamma_h for every token), rotary positions on q and k (in place of
// xPos), S_t = gamma_h S_{t-1} + k_t v_t^T, o_t = S_t^T q_t / sqrt(d_k); GroupNorm over heads (a layer norm
// per head with a per-channel affine), then a swish output gate: out = W_o (swish(x W_g) * GroupNorm(o)).
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct RetNetConfig {
  int64_t n_heads = 4;
  double expand_v = 1.0;  // value (and gate) width = expand_v * d_model (the paper uses 2 with a smaller MLP)
  bool rope = true;
  double rope_base = 10000.0;
  double norm_eps = 1e-5;
  int64_t chunk = 64;
};

// log gamma_h = log(1 - 2^(-5-h)) for heads h = 0 .. heads - 1 (also the benchmark's retnet decays).
std::vector<double> retnet_log_decays(int64_t heads);

class RetNet : public RecurrentMixer {
 public:
  RetNet(const MixerContext& ctx, const RetNetConfig& cfg);
  std::string type_name() const override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;
  std::vector<double> log_decays() const;  // log gamma_h per head

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, g_proj, out_proj;
  Tensor norm_weight, norm_bias;  // GroupNorm affine [H * dv]

 private:
  Tensor run(const Tensor& x, RecurrentState* st) override;
  int64_t d_model_, heads_, dk_, dv_;
  RetNetConfig cfg_;
  Rotary rotary_;
};

void register_retnet_mixer();

}  // namespace seqmix::mixers
