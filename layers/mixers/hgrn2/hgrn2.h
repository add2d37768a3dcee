// The `hgrn2` mixer (Qin et al. 2024): gated linear RNN with state expansion. Per head a forget gate
// f_t = lb + (1 - lb) sigmoid(x_t W_f) in [lb, 1) with a lower bound lb per layer that rises with depth,
// the input gate tied to it (k_t = 1 - f_t), q_t = swish(x_t W_q), value i_t = x_t W_i:
// S_t = diag(f_t) S_{t-1} + k_t i_t^T (state of expand_ratio x head_dim per head), o_t = S_t^T q_t / sqrt(d_k),
// then a per-head RMSNorm and the output projection. Optional short causal convolutions on q, f, i.
// The lower bound is fixed, not learned (HGRN2 learns it with a cumulative softmax over layers):
// lb = lower_bound_max * layer_index / n_layers (0 for the first layer), or the `lower_bound` given.
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct HGRN2Config {
  int64_t expand_ratio = 64;  // key (forget) width per head
  int64_t n_heads = 0;        // 0: d_model / expand_ratio
  double lower_bound = -1.0;  // < 0: lower_bound_max * layer_index / n_layers
  double lower_bound_max = 1.0;
  bool use_short_conv = false;
  int64_t conv_size = 4;
  double norm_eps = 1e-5;
  int64_t chunk = 64;
};

class HGRN2 : public RecurrentMixer {
 public:
  HGRN2(const MixerContext& ctx, const HGRN2Config& cfg);
  std::string type_name() const override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;
  double lower_bound() const { return lb_; }

  std::shared_ptr<Linear> q_proj, f_proj, i_proj, out_proj;
  std::shared_ptr<ShortConv> q_conv, f_conv, i_conv;
  Tensor norm_weight;  // [dv], shared by the heads

 private:
  Tensor run(const Tensor& x, RecurrentState* st) override;
  int64_t d_model_, heads_, dk_, dv_;
  double lb_;
  HGRN2Config cfg_;
};

void register_hgrn2_mixer();

}  // namespace seqmix::mixers
