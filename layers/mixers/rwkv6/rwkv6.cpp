#include "layers/mixers/rwkv6/rwkv6.h"

#include <cmath>

namespace seqmix::mixers {

RWKV6::RWKV6(const MixerContext& ctx, const RWKV6Config& cfg) : d_model_(ctx.d_model), hs_(cfg.head_size), cfg_(cfg) {
  SEQMIX_CHECK(hs_ > 0 && d_model_ % hs_ == 0, "rwkv6: d_model (", d_model_, ") is not divisible by head_size (", hs_, ")");
  heads_ = d_model_ / hs_;
  const int64_t d = d_model_, R = cfg.mix_low_rank, Rd = cfg.decay_low_rank;
  Generator& gen = *ctx.gen;
  double r01 = ctx.n_layers > 1 ? double(ctx.layer_index) / double(ctx.n_layers - 1) : 0.0;  // 0 -> 1 with depth
  double r10 = 1.0 - double(ctx.layer_index) / double(std::max(ctx.n_layers, 1));           // 1 -> ~0 with depth
  std::vector<float> mx(static_cast<size_t>(d)), m5(static_cast<size_t>(5 * d)), dec(static_cast<size_t>(d)), u(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) {
    double ddd = double(i) / double(d);
    double p = std::pow(ddd, r10), ph = std::pow(ddd, 0.5 * r10);
    mx[size_t(i)] = float(1.0 - p);
    m5[size_t(0 * d + i)] = float(1.0 - p);               // w
    m5[size_t(1 * d + i)] = float(1.0 - p);               // k
    m5[size_t(2 * d + i)] = float(1.0 - (p + 0.3 * r01));  // v
    m5[size_t(3 * d + i)] = float(1.0 - ph);              // r
    m5[size_t(4 * d + i)] = float(1.0 - ph);              // g
    double n = d > 1 ? double(i) / double(d - 1) : 0.0;
    dec[size_t(i)] = float(-6.0 + 5.0 * std::pow(n, 0.7 + 1.3 * r01));
    u[size_t(i)] = float(r01 * (1.0 - n) + double((i + 1) % 3 - 1) * 0.1);
  }
  auto small = [&](const Shape& s) {
    Tensor t = empty(s);
    uniform_(t, gen, -0.01, 0.01);
    return t;
  };
  maa_x = register_parameter("maa_x", Tensor::from_vector<float>(mx, {d}));
  maa = register_parameter("maa", Tensor::from_vector<float>(m5, {5, d}));
  maa_w1 = register_parameter("maa_w1", small({d, 5 * R}));
  maa_w2 = register_parameter("maa_w2", small({5, R, d}));
  decay = register_parameter("decay", Tensor::from_vector<float>(dec, {d}));
  decay_w1 = register_parameter("decay_w1", small({d, Rd}));
  decay_w2 = register_parameter("decay_w2", small({Rd, d}));
  bonus = register_parameter("bonus", Tensor::from_vector<float>(u, {heads_, hs_}));
  r_proj = register_module("r_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  k_proj = register_module("k_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  v_proj = register_module("v_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  g_proj = register_module("g_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  out_proj = register_module("out_proj", std::make_shared<Linear>(d, d, false, gen, ctx.out_std));
  ln_weight = register_parameter("ln_weight", ones({d}));
  ln_bias = register_parameter("ln_bias", zeros({d}));
}

std::string RWKV6::type_name() const {
  return "RWKV6(heads=" + std::to_string(heads_) + ", head_size=" + std::to_string(hs_) + ")";
}

Tensor RWKV6::run(const Tensor& x, RecurrentState* st) {
  const int64_t R = cfg_.mix_low_rank;
  Tensor xx = sub(token_shift(x, st ? &st->shift : nullptr), x);  // x_{t-1} - x_t
  // ddlerp: five data-dependent interpolations between x_t and x_{t-1}
  Tensor xxx = add(x, mul(xx, cast_param(maa_x)));
  Tensor mixed = tanh(matmul(xxx, cast_param(maa_w1)));  // [B, T, 5 R]
  Tensor w2 = cast_param(maa_w2), m5 = cast_param(maa);
  Tensor xs[5];
  for (int i = 0; i < 5; ++i) {
    Tensor mi = matmul(mixed.narrow(2, i * R, R), w2.select(0, i));  // [B, T, d]
    xs[i] = add(x, mul(xx, add(m5.select(0, i), mi)));
  }
  // log-decay per channel, in f32: -exp(w0 + tanh(x_w A) B)
  Tensor xw = gate_precision(xs[0]);
  Tensor w = add(gate_precision(cast_param(decay)),
                 matmul(tanh(matmul(xw, gate_precision(cast_param(decay_w1)))), gate_precision(cast_param(decay_w2))));
  Tensor g = neg(exp(w));
  Tensor r = r_proj->forward(xs[3]), k = k_proj->forward(xs[1]), v = v_proj->forward(xs[2]);
  Tensor gate = silu(g_proj->forward(xs[4]));
  Tensor o = run_head_recurrence(r, k, v, g, cast_param(bonus), heads_, st, 1.0, cfg_.chunk);  // [B, T, H, head_size]
  o = group_norm(o, cast_param(ln_weight), cast_param(ln_bias), cfg_.norm_eps);
  return out_proj->forward(mul(o, gate));
}

int64_t RWKV6::state_bytes(int64_t, int64_t dtype_bytes) const {
  return heads_ * hs_ * hs_ * 4 + d_model_ * dtype_bytes;  // f32 state + the shifted token
}

double RWKV6::flops_per_token(int64_t) const {
  double d = double(d_model_), R = double(cfg_.mix_low_rank), Rd = double(cfg_.decay_low_rank);
  double proj = 2.0 * d * d * 5 + 2.0 * (d * 5 * R + 5 * R * d) + 2.0 * (d * Rd + Rd * d);
  return proj + recurrence_flops(heads_, hs_, hs_, cfg_.chunk);
}

void register_rwkv6_mixer() {
  register_mixer("rwkv6", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    RWKV6Config cfg;
    cfg.head_size = c.get<int64_t>("head_size", cfg.head_size);
    cfg.mix_low_rank = c.get<int64_t>("mix_low_rank", cfg.mix_low_rank);
    cfg.decay_low_rank = c.get<int64_t>("decay_low_rank", cfg.decay_low_rank);
    cfg.norm_eps = c.get<double>("norm_eps", cfg.norm_eps);
    cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
    return std::make_shared<RWKV6>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
