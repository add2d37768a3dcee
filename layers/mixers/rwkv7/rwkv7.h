// The `rwkv7` mixer (RWKV-7 "Goose", Peng et al. 2025): time mix + channel mix.
//
// Time mix, per head (head size N, written in this project's d_k x d_v state convention; RWKV's papers
// write the transpose):
//   token shift: x_* = x + (x_{t-1} - x) * mu_*  for * in r, w, k, v, a, g
//   r = x_r W_r, k = x_k W_k, v = x_v W_v
//   log w_t = -exp(-softplus(-(w0 + tanh(x_w W1) W2)) - 0.5)      (decay w_t = exp(-exp(.)) in (0.545, 1))
//   iclr_t = sigmoid(a0 + (x_a A1) A2),  g_t = sigmoid(x_g G1) G2
//   kk = L2norm_head(k * k_k),  k <- k * (1 + (iclr - 1) * k_a)
//   S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T   with a_t = -kk, b_t = kk * iclr
//   o = GroupNorm_head(S_t^T r_t) + (sum_head(r * k * r_k)) v,   out = (o * g) W_o
// Channel mix: k = relu(x_k' W_key)^2 W_value with x_k' token-shifted.
//
// The block: rwkv7 replaces the MLP (uses_mlp() is false). The model's block hands the mixer norm1(x)
// and adds the mixer's output to x, so the mixer returns tm + cm where tm = time_mix(h), h = norm1(x), and
// cm = channel_mix(LayerNorm(h + tm)): the channel mix sees h + tm instead of RWKV's x + tm (the same
// thing up to the first norm). Not included: RWKV-7's value residual across layers (v mixed with the first
// layer's v), which needs state shared between layers that the mixer interface does not carry.
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct Rwkv7Config {
  int64_t head_size = 64;   // N; n_heads = d_model / head_size
  int64_t decay_lora = 0;   // 0: max(32, round(1.8 sqrt(d) / 32) * 32)
  int64_t iclr_lora = 0;    // 0: same rule as decay_lora
  int64_t gate_lora = 0;    // 0: max(32, round(0.6 d^0.8 / 32) * 32)
  int64_t cm_hidden = 0;    // channel-mix hidden size; 0: 4 * d_model
  int64_t chunk = 16;       // chunk length of the chunked form (power of two)
};

// Generation state: zeros from init_state().
struct Rwkv7State : MixerState {
  Tensor S;        // [B, H, N, N] f32 (f64 in f64 runs)
  Tensor prev_tm;  // [B, 1, d]: the last input of the time mix
  Tensor prev_cm;  // [B, 1, d]: the last (normed) input of the channel mix
};

class Rwkv7 : public StatefulMixer<Rwkv7State> {
 public:
  Rwkv7(const MixerContext& ctx, const Rwkv7Config& cfg);
  std::string type_name() const override;
  std::unique_ptr<MixerState> init_state(int64_t batch, int64_t max_len, Device device, DType dtype) const override;
  bool uses_mlp() const override { return false; }
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;

  // time mix
  Tensor mu_r, mu_w, mu_k, mu_v, mu_a, mu_g;  // [d]
  Tensor w0, w1, w2, a0, a1, a2, g1, g2;      // w0, a0 [d]; *1 [d, lora]; *2 [lora, d]
  Tensor k_k, k_a, r_k;                       // [d], [d], [H, N]
  Tensor ln_x_w, ln_x_b;                      // head GroupNorm [d]
  std::shared_ptr<Linear> receptance, key, value, output;
  // channel mix
  std::shared_ptr<Norm> cm_norm;
  Tensor cm_mu_k;  // [d]
  std::shared_ptr<Linear> cm_key, cm_value;

 private:
  Tensor run(const Tensor& x, Rwkv7State* st) override;
  int64_t d_, heads_, n_, dw_, da_, dg_, hidden_;
  Rwkv7Config cfg_;
};

void register_rwkv7_mixer();

}  // namespace seqmix::mixers
