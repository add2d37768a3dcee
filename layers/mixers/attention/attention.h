// The `attention` mixer: causal multi-head softmax attention with RoPE and optional grouped KV heads
// (n_kv_heads < n_heads), an optional sliding window, and a KV cache for generation. The fused
// kernels live in attention_op.* (CPU reference and flash-style CUDA forward/backward).
#pragma once
#include "layers/layers.h"
#include "layers/mixers/mixer.h"

namespace seqmix::mixers {

struct AttentionConfig {
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;  // 0: = n_heads
  int64_t head_dim = 0;    // 0: d_model / n_heads
  bool rope = true;
  double rope_base = 10000.0;
  int64_t window = 0;  // > 0: sliding window of that many keys
  bool qkv_bias = false;
};

class Attention : public Mixer {
 public:
  Attention(const MixerContext& ctx, const AttentionConfig& cfg);
  std::string type_name() const override;
  Tensor forward(const Tensor& x) override;
  std::unique_ptr<MixerState> init_state(int64_t batch, int64_t max_len, Device device, DType dtype) const override;
  Tensor step(const Tensor& x, MixerState& state) override;
  int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const override;
  double flops_per_token(int64_t seq_len) const override;

  std::shared_ptr<Linear> qkv_proj, out_proj;

 private:
  Tensor attend(const Tensor& x, int64_t start, Tensor* k_cache, Tensor* v_cache, int64_t* cache_len);
  int64_t d_model_, heads_, kv_heads_, head_dim_;
  AttentionConfig cfg_;
  Rotary rotary_;
};

void register_attention_mixer();

}  // namespace seqmix::mixers
