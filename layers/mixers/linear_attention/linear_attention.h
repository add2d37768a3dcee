// The `linear_attention` mixer (Katharopoulos et al. 2020): phi(x) = elu(x) + 1 on queries and keys,
// S_t = S_{t-1} + phi(k_t) v_t^T, o_t = S_t^T phi(q_t), optionally divided by the normalizer
// z_t . phi(q_t) with z_t = z_{t-1} + phi(k_t) (carried as an extra value column of ones).
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct LinearAttentionConfig {
  int64_t n_heads = 4;
  bool normalize = true;  // divide by z_t . phi(q_t); without it the output is scaled by head_dim^-1/2
  double eps = 1e-6;      // added to the normalizer
  int64_t chunk = 64;
};

class LinearAttention : public RecurrentMixer {
 public:
  LinearAttention(const MixerContext& ctx, const LinearAttentionConfig& cfg);
  std::string type_name() const override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;

  std::shared_ptr<Linear> qkv_proj, out_proj;

 private:
  Tensor run(const Tensor& x, RecurrentState* st) override;
  int64_t d_model_, heads_, head_dim_;
  LinearAttentionConfig cfg_;
};

void register_linear_attention_mixer();

}  // namespace seqmix::mixers
