#include "layers/mixers/gla/gla.h"

#include <cmath>

namespace seqmix::mixers {

GLA::GLA(const MixerContext& ctx, const GLAConfig& cfg) : d_model_(ctx.d_model), heads_(cfg.n_heads), cfg_(cfg) {
  SEQMIX_CHECK(heads_ > 0, "gla: n_heads must be positive, got ", heads_);
  int64_t key = int64_t(std::llround(double(d_model_) * cfg.expand_k)), val = int64_t(std::llround(double(d_model_) * cfg.expand_v));
  SEQMIX_CHECK(key % heads_ == 0 && val % heads_ == 0 && key > 0 && val > 0, "gla: key width ", key, " and value width ", val,
               " (expand_k, expand_v times d_model) must be positive multiples of n_heads (", heads_, ")");
  dk_ = key / heads_;
  dv_ = val / heads_;
  Generator& gen = *ctx.gen;
  q_proj = register_module("q_proj", std::make_shared<Linear>(d_model_, key, false, gen, ctx.init_std));
  k_proj = register_module("k_proj", std::make_shared<Linear>(d_model_, key, false, gen, ctx.init_std));
  v_proj = register_module("v_proj", std::make_shared<Linear>(d_model_, val, false, gen, ctx.init_std));
  g_proj = register_module("g_proj", std::make_shared<Linear>(d_model_, val, false, gen, ctx.init_std));
  gk_down = register_module("gk_down", std::make_shared<Linear>(d_model_, cfg.gate_low_rank, false, gen, ctx.init_std));
  gk_up = register_module("gk_up", std::make_shared<Linear>(cfg.gate_low_rank, key, true, gen, ctx.init_std));
  if (cfg.use_short_conv) {
    q_conv = register_module("q_conv", std::make_shared<ShortConv>(key, cfg.conv_size, gen));
    k_conv = register_module("k_conv", std::make_shared<ShortConv>(key, cfg.conv_size, gen));
    v_conv = register_module("v_conv", std::make_shared<ShortConv>(val, cfg.conv_size, gen));
  }
  out_proj = register_module("out_proj", std::make_shared<Linear>(val, d_model_, false, gen, ctx.out_std));
  norm_weight = register_parameter("norm_weight", ones({dv_}));
}

std::string GLA::type_name() const {
  return "GLA(heads=" + std::to_string(heads_) + ", dk=" + std::to_string(dk_) + ", dv=" + std::to_string(dv_) +
         (cfg_.use_short_conv ? ", short_conv" : "") + ")";
}

Tensor GLA::run(const Tensor& x, RecurrentState* st) {
  Tensor q = q_proj->forward(x), k = k_proj->forward(x), v = v_proj->forward(x);
  if (cfg_.use_short_conv) {
    if (st && st->conv.size() < 3) st->conv.resize(3);
    q = q_conv->forward(q, st ? &st->conv[0] : nullptr);
    k = k_conv->forward(k, st ? &st->conv[1] : nullptr);
    v = v_conv->forward(v, st ? &st->conv[2] : nullptr);
  }
  // log-decay per key channel in f32: logsigmoid(.) / tau
  Tensor g = gate_precision(gk_up->forward(gk_down->forward(x)));
  g = logsigmoid(g) * (1.0 / cfg_.gate_logit_normalizer);
  Tensor o = run_head_recurrence(q, k, v, g, Tensor(), heads_, st, 1.0 / std::sqrt(double(dk_)), cfg_.chunk);  // [B, T, H, dv]
  o = head_rms_norm(o, cast_param(norm_weight), cfg_.norm_eps);
  return out_proj->forward(mul(o, silu(g_proj->forward(x))));
}

int64_t GLA::state_bytes(int64_t, int64_t dtype_bytes) const {
  int64_t conv = cfg_.use_short_conv ? (cfg_.conv_size - 1) * heads_ * (2 * dk_ + dv_) * dtype_bytes : 0;
  return heads_ * dk_ * dv_ * 4 + conv;  // f32 state + conv inputs
}

double GLA::flops_per_token(int64_t) const {
  double key = double(heads_ * dk_), val = double(heads_ * dv_), d = double(d_model_), r = double(cfg_.gate_low_rank);
  double proj = 2.0 * d * (2 * key + 3 * val) + 2.0 * r * (d + key);
  return proj + recurrence_flops(heads_, dk_, dv_, cfg_.chunk);
}

void register_gla_mixer() {
  register_mixer("gla", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    GLAConfig cfg;
    cfg.n_heads = c.get<int64_t>("n_heads", cfg.n_heads);
    cfg.expand_k = c.get<double>("expand_k", cfg.expand_k);
    cfg.expand_v = c.get<double>("expand_v", cfg.expand_v);
    cfg.gate_low_rank = c.get<int64_t>("gate_low_rank", cfg.gate_low_rank);
    cfg.gate_logit_normalizer = c.get<double>("gate_logit_normalizer", cfg.gate_logit_normalizer);
    cfg.use_short_conv = c.get<bool>("use_short_conv", cfg.use_short_conv);
    cfg.conv_size = c.get<int64_t>("conv_size", cfg.conv_size);
    cfg.norm_eps = c.get<double>("norm_eps", cfg.norm_eps);
    cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
    return std::make_shared<GLA>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
