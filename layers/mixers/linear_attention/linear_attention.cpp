#include "layers/mixers/linear_attention/linear_attention.h"

#include <cmath>

namespace seqmix::mixers {

LinearAttention::LinearAttention(const MixerContext& ctx, const LinearAttentionConfig& cfg)
    : d_model_(ctx.d_model), heads_(cfg.n_heads), head_dim_(ctx.d_model / std::max<int64_t>(cfg.n_heads, 1)), cfg_(cfg) {
  SEQMIX_CHECK(heads_ > 0 && d_model_ % heads_ == 0, "linear_attention: d_model (", d_model_, ") is not divisible by n_heads (",
               heads_, ")");
  qkv_proj = register_module("qkv_proj", std::make_shared<Linear>(d_model_, 3 * d_model_, false, *ctx.gen, ctx.init_std));
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_model_, d_model_, false, *ctx.gen, ctx.out_std));
}

std::string LinearAttention::type_name() const {
  return "LinearAttention(heads=" + std::to_string(heads_) + ", head_dim=" + std::to_string(head_dim_) +
         (cfg_.normalize ? ", normalized" : "") + ")";
}

Tensor LinearAttention::run(const Tensor& x, RecurrentState* st) {
  int64_t B = x.size(0), T = x.size(1), H = heads_, D = head_dim_;
  Tensor qkv = qkv_proj->forward(x);
  Tensor q = elu_plus_one(split_heads(qkv.narrow(2, 0, d_model_), H));
  Tensor k = elu_plus_one(split_heads(qkv.narrow(2, d_model_, d_model_), H));
  Tensor v = split_heads(qkv.narrow(2, 2 * d_model_, d_model_), H);
  Tensor o;
  if (cfg_.normalize) {
    // the normalizer z_t . phi(q_t) is the output column of a value of ones
    Tensor v1 = cat({v, ones({B, T, H, 1}, v.dtype(), v.device())}, 3);
    Tensor r = run_recurrence(q, k, v1, Tensor(), Tensor(), st, 1.0, cfg_.chunk);
    o = div(r.narrow(3, 0, D), r.narrow(3, D, 1) + cfg_.eps);
  } else {
    o = run_recurrence(q, k, v, Tensor(), Tensor(), st, 1.0 / std::sqrt(double(D)), cfg_.chunk);
  }
  return out_proj->forward(merge_heads(o));
}

int64_t LinearAttention::state_bytes(int64_t, int64_t) const {
  return heads_ * head_dim_ * (head_dim_ + (cfg_.normalize ? 1 : 0)) * 4;  // the f32 state (with the normalizer column)
}

double LinearAttention::flops_per_token(int64_t) const {
  double proj = 2.0 * double(d_model_) * double(4 * d_model_);
  return proj + recurrence_flops(heads_, head_dim_, head_dim_ + (cfg_.normalize ? 1 : 0), cfg_.chunk);
}

void register_linear_attention_mixer() {
  register_mixer("linear_attention", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    LinearAttentionConfig cfg;
    cfg.n_heads = c.get<int64_t>("n_heads", cfg.n_heads);
    cfg.normalize = c.get<bool>("normalize", cfg.normalize);
    cfg.eps = c.get<double>("eps", cfg.eps);
    cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
    return std::make_shared<LinearAttention>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
