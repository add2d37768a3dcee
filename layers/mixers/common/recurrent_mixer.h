// Pieces shared by the mixers built on the gated-linear-recurrence engine (linear_attention, retnet, gla,
// hgrn2, rwkv6, mlstm): their generation state, short causal convolutions and token shift that carry their
// context across step() calls, per-head group norms, and the engine call that reads/writes the state.
#pragma once
#include <memory>
#include <vector>

#include "layers/layers.h"
#include "layers/mixers/common/linear_recurrence.h"
#include "layers/mixers/mixer.h"

namespace seqmix::mixers {

// Generation state of a recurrent mixer: all fields start undefined (= zeros / fresh sequence).
struct RecurrentState : MixerState {
  Tensor S;                  // [B, H, Dk, Dv] f32 recurrent state
  std::vector<Tensor> conv;  // per short convolution: its last kernel-1 inputs [B, <=K-1, C]
  Tensor shift;              // token shift: the last input [B, 1, C]
  Tensor m;                  // mLSTM stabilizer [B, H] (f64, where its scan runs)
  int64_t pos = 0;           // tokens seen (rotary positions)
};

// Depthwise causal convolution over time (kernel K per channel), followed by SiLU unless `activation` is
// false, as in the short convolutions of GLA/HGRN2/xLSTM. `cache` (may be null) carries the last K-1
// inputs across calls.
class ShortConv : public Module {
 public:
  ShortConv(int64_t channels, int64_t kernel, Generator& gen, bool activation = true);
  std::string type_name() const override { return "ShortConv(" + std::to_string(channels_) + ", k=" + std::to_string(kernel_) + ")"; }
  Tensor forward(const Tensor& x, Tensor* cache) const;  // x [B, T, C]
  Tensor weight, bias;  // [C, K], [C]
  int64_t kernel() const { return kernel_; }

 private:
  int64_t channels_, kernel_;
  bool activation_;
};

// x_{t-1} for every t (zeros, or `*last`, before the first token); updates `*last` when given.
Tensor token_shift(const Tensor& x, Tensor* last);

// Gates and decays are computed in f32 (f64 when the compute dtype is f64: gradient checks).
Tensor gate_precision(const Tensor& x);

// Normalizes each head's features of x [B, T, H, D] (layer norm: rms = false; RMS norm: rms = true)
// without affine; the caller applies its own weight.
Tensor head_norm(const Tensor& x, bool rms, double eps);

// linear_recurrence without a state (training), or continuing from and updating st->S (generation).
Tensor run_recurrence(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus, RecurrentState* st,
                      double scale, int64_t chunk);

// Forward FLOPs per token of the chunked recurrence for H heads (2 per multiply-add): the state update and
// readout (4 Dk Dv) plus the causal intra-chunk scores and their product with V (C (Dk + Dv) on average).
double recurrence_flops(int64_t heads, int64_t dk, int64_t dv, int64_t chunk);

}  // namespace seqmix::mixers
