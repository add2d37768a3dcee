// The `deltanet` mixer (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
// Sequence Length") and, with `gated` on, the `gated_deltanet` mixer (Yang et al. 2025, "Gated Delta
// Networks"): per head,
//   q, k, v = SiLU(short causal conv(x W_q / W_k / W_v)),   q, k L2-normalized (inside the engine)
//   b_t = sigmoid(x W_b)
//   deltanet:        S_t = (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T
//   gated_deltanet:  S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,
//                    log a_t = g_t = -exp(A_log) * softplus(x W_a + dt_bias)   (Mamba-2 style, g_t <= 0)
//   o_t = RMSNorm_head(S_t^T q_t / sqrt(Dk)), times SiLU(x W_g) when output_gate (gated_deltanet), then W_o.
// The recurrence runs in layers/mixers/common/delta_rule (chunked WY form for training and prompts, the
// one-token step for generation).
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct DeltaNetConfig {
  int64_t n_heads = 4;
  int64_t head_dim = 0;     // key (and query) dim per head; 0: d_model / n_heads
  int64_t head_dim_v = 0;   // value dim per head; 0: = head_dim
  int64_t conv_size = 4;    // short causal depthwise conv on q, k, v; 0 or 1: none
  bool gated = false;       // scalar data-dependent decay per head (gated_deltanet)
  bool output_gate = false; // o * SiLU(x W_g) after the head norm (gated_deltanet)
  int64_t chunk = 64;       // chunk length of the chunked form (power of two)
  double norm_eps = 1e-5;
};

class DeltaNet : public RecurrentMixer {
 public:
  DeltaNet(const MixerContext& ctx, const DeltaNetConfig& cfg);
  std::string type_name() const override;
  std::unique_ptr<MixerState> init_state(int64_t batch, int64_t max_len, Device device, DType dtype) const override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, b_proj, a_proj, g_proj, o_proj;
  Tensor q_conv, k_conv, v_conv;  // [channels, conv_size]
  Tensor A_log, dt_bias;          // [H] (gated)
  Tensor o_norm;                  // [Dv] head RMSNorm weight

 private:
  Tensor run(const Tensor& x, RecurrentState* st) override;  // st: S and conv (q, k, v caches)
  int64_t d_model_, heads_, dk_, dv_;
  DeltaNetConfig cfg_;
};

DeltaNetConfig read_deltanet_config(const ConfigNode& c, DeltaNetConfig defaults);
void register_deltanet_mixer();

}  // namespace seqmix::mixers
