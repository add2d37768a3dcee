#include "layers/mixers/hgrn2/hgrn2.h"

#include <cmath>

namespace seqmix::mixers {

HGRN2::HGRN2(const MixerContext& ctx, const HGRN2Config& cfg) : d_model_(ctx.d_model), cfg_(cfg) {
  SEQMIX_CHECK(cfg.expand_ratio > 0, "hgrn2: expand_ratio must be positive, got ", cfg.expand_ratio);
  heads_ = cfg.n_heads > 0 ? cfg.n_heads : std::max<int64_t>(1, d_model_ / cfg.expand_ratio);
  SEQMIX_CHECK(d_model_ % heads_ == 0, "hgrn2: d_model (", d_model_, ") is not divisible by the number of heads (", heads_, ")");
  dk_ = cfg.expand_ratio;
  dv_ = d_model_ / heads_;
  lb_ = cfg.lower_bound >= 0 ? cfg.lower_bound : cfg.lower_bound_max * double(ctx.layer_index) / double(std::max(ctx.n_layers, 1));
  SEQMIX_CHECK(lb_ >= 0 && lb_ < 1, "hgrn2: the forget-gate lower bound must lie in [0, 1), got ", lb_);
  Generator& gen = *ctx.gen;
  int64_t key = heads_ * dk_;
  q_proj = register_module("q_proj", std::make_shared<Linear>(d_model_, key, false, gen, ctx.init_std));
  f_proj = register_module("f_proj", std::make_shared<Linear>(d_model_, key, false, gen, ctx.init_std));
  i_proj = register_module("i_proj", std::make_shared<Linear>(d_model_, d_model_, false, gen, ctx.init_std));
  if (cfg.use_short_conv) {
    q_conv = register_module("q_conv", std::make_shared<ShortConv>(key, cfg.conv_size, gen));
    f_conv = register_module("f_conv", std::make_shared<ShortConv>(key, cfg.conv_size, gen, false));
    i_conv = register_module("i_conv", std::make_shared<ShortConv>(d_model_, cfg.conv_size, gen, false));
  }
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_model_, d_model_, false, gen, ctx.out_std));
  norm_weight = register_parameter("norm_weight", ones({dv_}));
}

std::string HGRN2::type_name() const {
  return "HGRN2(heads=" + std::to_string(heads_) + ", expand_ratio=" + std::to_string(dk_) + ", dv=" + std::to_string(dv_) +
         ", lower_bound=" + std::to_string(lb_) + ")";
}

Tensor HGRN2::run(const Tensor& x, RecurrentState* st) {
  Tensor q = q_proj->forward(x), f = f_proj->forward(x), i = i_proj->forward(x);
  if (cfg_.use_short_conv) {
    if (st && st->conv.size() < 3) st->conv.resize(3);
    q = q_conv->forward(q, st ? &st->conv[0] : nullptr);
    f = f_conv->forward(f, st ? &st->conv[1] : nullptr);
    i = i_conv->forward(i, st ? &st->conv[2] : nullptr);
  } else {
    q = silu(q);
  }
  // forget gate in f32 log space; k = 1 - f (the input gate tied to the forget gate)
  f = gate_precision(f);
  Tensor g, k;
  if (lb_ == 0.0) {
    g = logsigmoid(f);
    k = sigmoid(neg(f));  // 1 - sigmoid(f)
  } else {
    Tensor a = affine(sigmoid(f), 1.0 - lb_, lb_);
    g = log(a);
    k = affine(sigmoid(f), -(1.0 - lb_), 1.0 - lb_);  // 1 - a
  }
  k = k.dtype() == q.dtype() ? k : cast(k, q.dtype());
  Tensor o = run_head_recurrence(q, k, i, g, Tensor(), heads_, st, 1.0 / std::sqrt(double(dk_)), cfg_.chunk);  // [B, T, H, dv]
  return out_proj->forward(head_rms_norm(o, cast_param(norm_weight), cfg_.norm_eps));
}

int64_t HGRN2::state_bytes(int64_t, int64_t dtype_bytes) const {
  int64_t conv = cfg_.use_short_conv ? (cfg_.conv_size - 1) * (2 * heads_ * dk_ + d_model_) * dtype_bytes : 0;
  return heads_ * dk_ * dv_ * 4 + conv;
}

double HGRN2::flops_per_token(int64_t) const {
  double d = double(d_model_), key = double(heads_ * dk_);
  return 2.0 * d * (2 * key + 2 * d) + recurrence_flops(heads_, dk_, dv_, cfg_.chunk);
}

void register_hgrn2_mixer() {
  register_mixer("hgrn2", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    HGRN2Config cfg;
    cfg.expand_ratio = c.get<int64_t>("expand_ratio", cfg.expand_ratio);
    cfg.n_heads = c.get<int64_t>("n_heads", cfg.n_heads);
    cfg.lower_bound = c.get<double>("lower_bound", cfg.lower_bound);
    cfg.lower_bound_max = c.get<double>("lower_bound_max", cfg.lower_bound_max);
    cfg.use_short_conv = c.get<bool>("use_short_conv", cfg.use_short_conv);
    cfg.conv_size = c.get<int64_t>("conv_size", cfg.conv_size);
    cfg.norm_eps = c.get<double>("norm_eps", cfg.norm_eps);
    cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
    return std::make_shared<HGRN2>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
