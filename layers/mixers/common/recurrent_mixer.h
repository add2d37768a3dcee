// Pieces shared by the recurrent mixers. The gated-linear-recurrence ones (linear_attention, retnet, gla,
// hgrn2, rwkv6, mlstm) share everything here: their base class, generation state, short causal convolutions
// and token shift that carry their context across step() calls, per-head norms, and the engine call that
// reads/writes the state. The delta-rule ones (deltanet, gated_deltanet, rwkv7) share the base class (and
// deltanet the state).
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

// Base of the mixers whose whole math is one function run(x, st) (the one place to read a mixer's
// forward): forward() calls it without state (training), step() continues the carried State (generation).
template <class State>
class StatefulMixer : public Mixer {
 public:
  Tensor forward(const Tensor& x) override { return run(x, nullptr); }
  Tensor step(const Tensor& x, MixerState& state) override { return run(x, &dynamic_cast<State&>(state)); }

 protected:
  // x [B, T, d_model] -> [B, T, d_model]; `st` is null (no state kept) or continued and updated.
  virtual Tensor run(const Tensor& x, State* st) = 0;
};

// A StatefulMixer on a RecurrentState that starts empty (every field created on first use).
class RecurrentMixer : public StatefulMixer<RecurrentState> {
 public:
  std::unique_ptr<MixerState> init_state(int64_t, int64_t, Device, DType) const override { return std::make_unique<RecurrentState>(); }
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
// The same rule by the input: the gate dtype of a mixer whose input is x (f64 for f64 inputs, else f32),
// and t converted to dtype dt (t itself when it has it).
DType gate_dtype(const Tensor& x);
Tensor as_dtype(const Tensor& t, DType dt);

// Normalizes each head's features of x [B, T, H, D] (layer norm: rms = false; RMS norm: rms = true)
// without affine; the caller applies its own weight.
Tensor head_norm(const Tensor& x, bool rms, double eps);

// linear_recurrence without a state (training), or continuing from and updating st->S (generation).
Tensor run_recurrence(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus, RecurrentState* st,
                      double scale, int64_t chunk);

// The channels of x [B, T, H * D] as H heads [B, T, H, D] (a view), and heads [B, T, H, D] back to [B, T, H * D].
Tensor split_heads(const Tensor& x, int64_t heads);
Tensor merge_heads(const Tensor& x);

// run_recurrence on projections [B, T, H * D] split into `heads` heads (q, k and the log-decay g per key
// channel, v; g may be undefined); returns o [B, T, H, Dv].
Tensor run_head_recurrence(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus, int64_t heads,
                           RecurrentState* st, double scale, int64_t chunk);

// Output norms of o [B, T, H, Dv], returned merged [B, T, H * Dv]: a per-head RMSNorm with one weight [Dv]
// for all heads (GLA, HGRN2), or GroupNorm: a LayerNorm per head, then a per-channel affine [H * Dv]
// (RetNet, RWKV6).
Tensor head_rms_norm(const Tensor& o, const Tensor& weight, double eps);
Tensor group_norm(const Tensor& o, const Tensor& weight, const Tensor& bias, double eps);

// Forward FLOPs per token of the chunked recurrence for H heads (2 per multiply-add): the state update and
// readout (4 Dk Dv) plus the causal intra-chunk scores and their product with V (C (Dk + Dv) on average).
double recurrence_flops(int64_t heads, int64_t dk, int64_t dv, int64_t chunk);

}  // namespace seqmix::mixers
