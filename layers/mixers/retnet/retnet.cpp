#include "layers/mixers/retnet/retnet.h"

#include <cmath>

namespace seqmix::mixers {

RetNet::RetNet(const MixerContext& ctx, const RetNetConfig& cfg)
    : d_model_(ctx.d_model),
      heads_(cfg.n_heads),
      dk_(ctx.d_model / std::max<int64_t>(cfg.n_heads, 1)),
      dv_(int64_t(std::llround(double(ctx.d_model) * cfg.expand_v)) / std::max<int64_t>(cfg.n_heads, 1)),
      cfg_(cfg),
      rotary_(dk_ % 2 == 0 ? dk_ : 2, cfg.rope_base) {
  SEQMIX_CHECK(heads_ > 0 && d_model_ % heads_ == 0, "retnet: d_model (", d_model_, ") is not divisible by n_heads (", heads_, ")");
  SEQMIX_CHECK(dv_ > 0, "retnet: expand_v (", cfg.expand_v, ") leaves no value channels");
  SEQMIX_CHECK(!cfg.rope || dk_ % 2 == 0, "retnet: rope needs an even head dim, got ", dk_);
  Generator& gen = *ctx.gen;
  q_proj = register_module("q_proj", std::make_shared<Linear>(d_model_, heads_ * dk_, false, gen, ctx.init_std));
  k_proj = register_module("k_proj", std::make_shared<Linear>(d_model_, heads_ * dk_, false, gen, ctx.init_std));
  v_proj = register_module("v_proj", std::make_shared<Linear>(d_model_, heads_ * dv_, false, gen, ctx.init_std));
  g_proj = register_module("g_proj", std::make_shared<Linear>(d_model_, heads_ * dv_, false, gen, ctx.init_std));
  out_proj = register_module("out_proj", std::make_shared<Linear>(heads_ * dv_, d_model_, false, gen, ctx.out_std));
  norm_weight = register_parameter("norm_weight", ones({heads_ * dv_}));
  norm_bias = register_parameter("norm_bias", zeros({heads_ * dv_}));
}

std::string RetNet::type_name() const {
  return "RetNet(heads=" + std::to_string(heads_) + ", dk=" + std::to_string(dk_) + ", dv=" + std::to_string(dv_) + ")";
}

std::vector<double> retnet_log_decays(int64_t heads) {
  std::vector<double> g(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h) g[size_t(h)] = std::log1p(-std::exp2(-5.0 - double(h)));
  return g;
}

std::vector<double> RetNet::log_decays() const { return retnet_log_decays(heads_); }

Tensor RetNet::run(const Tensor& x, RecurrentState* st) {
  int64_t B = x.size(0), T = x.size(1), H = heads_;
  Tensor q = split_heads(q_proj->forward(x), H), k = split_heads(k_proj->forward(x), H), v = split_heads(v_proj->forward(x), H);
  if (cfg_.rope) {
    int64_t start = st ? st->pos : 0;
    q = rotary_.apply(q, start);
    k = rotary_.apply(k, start);
  }
  if (st) st->pos += T;
  Tensor g = Tensor::from_vector<double>(log_decays(), {1, 1, H}).to(x.device(), gate_dtype(x)).expand({B, T, H}).contiguous();
  Tensor o = run_recurrence(q, k, v, g, Tensor(), st, 1.0 / std::sqrt(double(dk_)), cfg_.chunk);  // [B, T, H, dv]
  o = group_norm(o, cast_param(norm_weight), cast_param(norm_bias), cfg_.norm_eps);
  o = mul(silu(g_proj->forward(x)), o);
  return out_proj->forward(o);
}

int64_t RetNet::state_bytes(int64_t, int64_t) const { return heads_ * dk_ * dv_ * 4; }  // the f32 state

double RetNet::flops_per_token(int64_t) const {
  double proj = 2.0 * double(d_model_) * double(2 * heads_ * dk_ + 3 * heads_ * dv_);
  return proj + recurrence_flops(heads_, dk_, dv_, cfg_.chunk);
}

void register_retnet_mixer() {
  register_mixer("retnet", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    RetNetConfig cfg;
    cfg.n_heads = c.get<int64_t>("n_heads", cfg.n_heads);
    cfg.expand_v = c.get<double>("expand_v", cfg.expand_v);
    cfg.rope = c.get<bool>("rope", cfg.rope);
    cfg.rope_base = c.get<double>("rope_base", cfg.rope_base);
    cfg.norm_eps = c.get<double>("norm_eps", cfg.norm_eps);
    cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
    return std::make_shared<RetNet>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
