// The `mlstm` mixer: the matrix-memory LSTM of xLSTM (Beck et al. 2024). Per head,
//   C_t = f_t C_{t-1} + i_t v_t k_t^T,   n_t = f_t n_{t-1} + i_t k_t,   h_t = C_t q_t / max(|n_t . q_t|, 1)
// with an exponential input gate i_t = exp(i~_t) and a sigmoid forget gate f_t = sigmoid(f~_t) (scalars per
// head, from the concatenated q, k, v), k scaled by 1/sqrt(d_k). Layer: a short causal convolution (+ SiLU)
// on the input feeds q and k (v comes from the input itself, as in the xLSTM block), per-head LayerNorm,
// a learnable skip of the convolution output, an output gate SiLU(x W_z), and the output projection.
// The xLSTM block's up-projection is left out (the block keeps its MLP), q/k projections are dense.
//
// Stabilization. The normalizer n rides along as an extra value column of ones, so one engine call gives
// both C q and n . q. With the max-stabilizer m_t = max(log f_t + m_{t-1}, i~_t) (m_0 = 0), the engine runs the
// scaled recurrence C~_t = C_t exp(-m_t):
//   log-decay g'_t = log f_t + m_{t-1} - m_t <= 0,   key k'_t = exp(i~_t - m_t) k_t (factor <= 1),
// and h_t = C~_t q_t / max(|n~_t . q_t|, exp(-m_t)), which equals the unstabilized C_t q_t / max(|n_t . q_t|, 1)
// for ANY m. Since the result does not depend on m, m is computed without gradient (maxplus_scan, in f64)
// and treated as a constant: the gradient is exact. In the chunked engine all decays are exp of
// differences of cumulative g' (<= 0), so nothing overflows whatever the gate values.
#pragma once
#include "layers/mixers/common/recurrent_mixer.h"

namespace seqmix::mixers {

struct MLSTMConfig {
  int64_t n_heads = 4;
  int64_t conv_size = 4;
  double norm_eps = 1e-5;
  double fgate_bias_lo = 3.0, fgate_bias_hi = 6.0;  // forget-gate bias init: linspace over heads (xLSTM)
  int64_t chunk = 64;
};

class MLSTM : public RecurrentMixer {
 public:
  MLSTM(const MixerContext& ctx, const MLSTMConfig& cfg);
  std::string type_name() const override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;

  std::shared_ptr<ShortConv> conv;
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, z_proj, igate, fgate, out_proj;
  Tensor norm_weight, skip;  // [d]

 private:
  Tensor run(const Tensor& x, RecurrentState* st) override;
  int64_t d_model_, heads_, dh_;
  MLSTMConfig cfg_;
};

// The cell: q, k, v [B, T, H, D], gate pre-activations ig (i~) and log forget gates logf [B, T, H] (f32/f64);
// returns h [B, T, H, D] (k is scaled by 1/sqrt(D) inside). `st` (may be null) carries C, n and m.
Tensor mlstm_cell(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ig, const Tensor& logf, RecurrentState* st,
                  int64_t chunk);

void register_mlstm_mixer();

}  // namespace seqmix::mixers
