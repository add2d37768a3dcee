#include "layers/mixers/attention/attention.h"

#include "layers/mixers/attention/attention_op.h"

namespace seqmix::mixers {

namespace {
struct KVCache : MixerState {
  Tensor k, v;  // [B, max_len, Hkv, D]
  int64_t len = 0;
};
}  // namespace

Attention::Attention(const MixerContext& ctx, const AttentionConfig& cfg)
    : d_model_(ctx.d_model),
      heads_(cfg.n_heads),
      kv_heads_(cfg.n_kv_heads > 0 ? cfg.n_kv_heads : cfg.n_heads),
      head_dim_(cfg.head_dim > 0 ? cfg.head_dim : ctx.d_model / cfg.n_heads),
      cfg_(cfg),
      rotary_(head_dim_ % 2 == 0 ? head_dim_ : 2, cfg.rope_base) {
  SEQMIX_CHECK(heads_ > 0 && heads_ % kv_heads_ == 0, "attention: n_heads (", heads_, ") must be a multiple of n_kv_heads (",
               kv_heads_, ")");
  SEQMIX_CHECK(cfg.head_dim > 0 || ctx.d_model % heads_ == 0, "attention: d_model (", ctx.d_model,
               ") is not divisible by n_heads (", heads_, "); set head_dim");
  SEQMIX_CHECK(!cfg.rope || head_dim_ % 2 == 0, "attention: rope needs an even head_dim, got ", head_dim_);
  int64_t qkv = (heads_ + 2 * kv_heads_) * head_dim_;
  qkv_proj = register_module("qkv_proj", std::make_shared<Linear>(d_model_, qkv, cfg.qkv_bias, *ctx.gen, ctx.init_std));
  out_proj = register_module("out_proj", std::make_shared<Linear>(heads_ * head_dim_, d_model_, false, *ctx.gen, ctx.out_std));
}

std::string Attention::type_name() const {
  return "Attention(heads=" + std::to_string(heads_) + ", kv_heads=" + std::to_string(kv_heads_) +
         ", head_dim=" + std::to_string(head_dim_) + (cfg_.window > 0 ? ", window=" + std::to_string(cfg_.window) : "") + ")";
}

Tensor Attention::attend(const Tensor& x, int64_t start, Tensor* k_cache, Tensor* v_cache, int64_t* cache_len) {
  int64_t B = x.size(0), T = x.size(1), D = head_dim_;
  Tensor qkv = qkv_proj->forward(x);  // [B, T, (H + 2 Hkv) D]
  Tensor q = qkv.narrow(2, 0, heads_ * D).view({B, T, heads_, D});
  Tensor k = qkv.narrow(2, heads_ * D, kv_heads_ * D).view({B, T, kv_heads_, D});
  Tensor v = qkv.narrow(2, (heads_ + kv_heads_) * D, kv_heads_ * D).view({B, T, kv_heads_, D});
  if (cfg_.rope) {
    q = rotary_.apply(q, start);
    k = rotary_.apply(k, start);
  }
  if (k_cache) {
    int64_t len = *cache_len;
    SEQMIX_CHECK(len + T <= k_cache->size(1), "attention: the KV cache holds ", k_cache->size(1), " tokens; generating past it (",
                 len + T, ") needs a larger max length");
    k_cache->narrow(1, len, T).copy_(k);
    v_cache->narrow(1, len, T).copy_(v);
    *cache_len = len + T;
    k = k_cache->narrow(1, 0, len + T);
    v = v_cache->narrow(1, 0, len + T);
  }
  Tensor o = attention(q, k, v, 0.0, cfg_.window);  // [B, T, H, D]
  return out_proj->forward(o.reshape({B, T, heads_ * D}));
}

Tensor Attention::forward(const Tensor& x) { return attend(x, 0, nullptr, nullptr, nullptr); }

std::unique_ptr<MixerState> Attention::init_state(int64_t batch, int64_t max_len, Device device, DType dtype) const {
  auto s = std::make_unique<KVCache>();
  s->k = zeros({batch, max_len, kv_heads_, head_dim_}, dtype, device);
  s->v = zeros({batch, max_len, kv_heads_, head_dim_}, dtype, device);
  return s;
}

Tensor Attention::step(const Tensor& x, MixerState& state) {
  auto& c = dynamic_cast<KVCache&>(state);
  return attend(x, c.len, &c.k, &c.v, &c.len);
}

int64_t Attention::state_bytes(int64_t seq_len, int64_t dtype_bytes) const {
  int64_t kept = cfg_.window > 0 ? std::min(seq_len, cfg_.window) : seq_len;
  return 2 * kept * kv_heads_ * head_dim_ * dtype_bytes;
}

double Attention::flops_per_token(int64_t seq_len) const {
  double proj = 2.0 * double(d_model_) * double((heads_ + 2 * kv_heads_) * head_dim_ + heads_ * head_dim_);
  double ctx = double(cfg_.window > 0 ? std::min(seq_len, cfg_.window) : seq_len);
  // QK^T and PV: 2 * 2 * H * D per visible key; causal: on average half the context is visible
  double attn = 4.0 * double(heads_ * head_dim_) * ctx / (cfg_.window > 0 ? 1.0 : 2.0);
  return proj + attn;
}

void register_attention_mixer() {
  register_mixer("attention", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    AttentionConfig cfg;
    cfg.n_heads = c.get<int64_t>("n_heads", cfg.n_heads);
    cfg.n_kv_heads = c.get<int64_t>("n_kv_heads", cfg.n_kv_heads);
    cfg.head_dim = c.get<int64_t>("head_dim", cfg.head_dim);
    cfg.rope = c.get<bool>("rope", cfg.rope);
    cfg.rope_base = c.get<double>("rope_base", cfg.rope_base);
    cfg.window = c.get<int64_t>("window", cfg.window);
    cfg.qkv_bias = c.get<bool>("qkv_bias", cfg.qkv_bias);
    return std::make_shared<Attention>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
