#include "layers/mixers/rwkv7/rwkv7.h"

#include <cmath>
#include <functional>

#include "layers/mixers/common/delta_rule.h"

namespace seqmix::mixers {

namespace {
int64_t lora_dim(double v) { return std::max<int64_t>(32, int64_t(std::llround(v / 32.0)) * 32); }

Tensor vec_param(int64_t d, const std::function<double(int64_t)>& f) {
  std::vector<float> v(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) v[size_t(i)] = float(f(i));
  return Tensor::from_vector<float>(v, {d});
}
}  // namespace

Rwkv7::Rwkv7(const MixerContext& ctx, const Rwkv7Config& cfg) : d_(ctx.d_model), n_(cfg.head_size), cfg_(cfg) {
  SEQMIX_CHECK(n_ > 0 && d_ % n_ == 0, "rwkv7: d_model (", d_, ") must be a multiple of head_size (", n_, ")");
  SEQMIX_CHECK(cfg.chunk >= 1 && (cfg.chunk & (cfg.chunk - 1)) == 0, "rwkv7: chunk must be a power of two, got ", cfg.chunk);
  heads_ = d_ / n_;
  double dd = double(d_);
  dw_ = cfg.decay_lora > 0 ? cfg.decay_lora : lora_dim(1.8 * std::sqrt(dd));
  da_ = cfg.iclr_lora > 0 ? cfg.iclr_lora : lora_dim(1.8 * std::sqrt(dd));
  dg_ = cfg.gate_lora > 0 ? cfg.gate_lora : lora_dim(0.6 * std::pow(dd, 0.8));
  hidden_ = cfg.cm_hidden > 0 ? cfg.cm_hidden : 4 * d_;
  Generator& gen = *ctx.gen;
  // RWKV-7's layer-dependent initial values
  double r01 = ctx.n_layers > 1 ? double(ctx.layer_index) / double(ctx.n_layers - 1) : 0.0;
  double r1a0 = 1.0 - double(ctx.layer_index) / double(std::max(ctx.n_layers, 1));
  auto ddd = [&](int64_t i) { return double(i) / dd; };
  mu_r = register_parameter("mu_r", vec_param(d_, [&](int64_t i) { return 1.0 - std::pow(ddd(i), 0.2 * r1a0); }));
  mu_w = register_parameter("mu_w", vec_param(d_, [&](int64_t i) { return 1.0 - std::pow(ddd(i), 0.9 * r1a0); }));
  mu_k = register_parameter("mu_k", vec_param(d_, [&](int64_t i) { return 1.0 - std::pow(ddd(i), 0.7 * r1a0); }));
  mu_v = register_parameter("mu_v", vec_param(d_, [&](int64_t i) { return 1.0 - std::pow(ddd(i), 0.7 * r1a0); }));
  mu_a = register_parameter("mu_a", vec_param(d_, [&](int64_t i) { return 1.0 - std::pow(ddd(i), 0.9 * r1a0); }));
  mu_g = register_parameter("mu_g", vec_param(d_, [&](int64_t i) { return 1.0 - std::pow(ddd(i), 0.2 * r1a0); }));
  w0 = register_parameter("w0", vec_param(d_, [&](int64_t i) {
                            double x = d_ > 1 ? double(i) / double(d_ - 1) : 0.0;
                            return -7.0 + 5.0 * std::pow(x, 0.85 + 1.0 * std::sqrt(r01)) + 0.5;
                          }));
  auto lora = [&](int64_t in, int64_t out, double std_) { return (randn({in, out}, gen) * std_).detach(); };
  w1 = register_parameter("w1", lora(d_, dw_, ctx.init_std));
  w2 = register_parameter("w2", lora(dw_, d_, 0.1 / std::sqrt(double(dw_))));
  a0 = register_parameter("a0", zeros({d_}));
  a1 = register_parameter("a1", lora(d_, da_, ctx.init_std));
  a2 = register_parameter("a2", lora(da_, d_, 0.1 / std::sqrt(double(da_))));
  g1 = register_parameter("g1", lora(d_, dg_, ctx.init_std));
  g2 = register_parameter("g2", lora(dg_, d_, 0.1 / std::sqrt(double(dg_))));
  k_k = register_parameter("k_k", full({d_}, 0.85));
  k_a = register_parameter("k_a", ones({d_}));
  r_k = register_parameter("r_k", (randn({heads_, n_}, gen) * 0.1).detach());
  ln_x_w = register_parameter("ln_x_w", full({d_}, std::pow(double(ctx.layer_index + 1) / double(std::max(ctx.n_layers, 1)), 0.7)));
  ln_x_b = register_parameter("ln_x_b", zeros({d_}));
  receptance = register_module("receptance", std::make_shared<Linear>(d_, d_, false, gen, ctx.init_std));
  key = register_module("key", std::make_shared<Linear>(d_, d_, false, gen, ctx.init_std));
  value = register_module("value", std::make_shared<Linear>(d_, d_, false, gen, ctx.init_std));
  output = register_module("output", std::make_shared<Linear>(d_, d_, false, gen, ctx.out_std));
  cm_norm = register_module("cm_norm", std::make_shared<Norm>(Norm::Kind::Layer, d_));
  cm_mu_k = register_parameter("cm_mu_k", vec_param(d_, [&](int64_t i) { return 1.0 - std::pow(ddd(i), r1a0 * r1a0); }));
  cm_key = register_module("cm_key", std::make_shared<Linear>(d_, hidden_, false, gen, ctx.init_std));
  cm_value = register_module("cm_value", std::make_shared<Linear>(hidden_, d_, false, gen, ctx.out_std));
}

std::string Rwkv7::type_name() const {
  return "Rwkv7(heads=" + std::to_string(heads_) + ", head_size=" + std::to_string(n_) + ", lora=" + std::to_string(dw_) + "/" +
         std::to_string(da_) + "/" + std::to_string(dg_) + ", cm_hidden=" + std::to_string(hidden_) + ")";
}

Tensor Rwkv7::run(const Tensor& x, Rwkv7State* st) {
  int64_t B = x.size(0), T = x.size(1), H = heads_, N = n_;
  // ---- time mix ----
  Tensor xx = sub(token_shift(x, st ? &st->prev_tm : nullptr), x);
  auto mix = [&](const Tensor& mu) { return add(x, mul(xx, cast_param(mu))); };
  Tensor xr = mix(mu_r), xw = mix(mu_w), xk = mix(mu_k), xv = mix(mu_v), xa = mix(mu_a), xg = mix(mu_g);
  Tensor r = receptance->forward(xr), k = key->forward(xk), v = value->forward(xv);
  // the log decay in f32 (f64 in f64 runs) whatever the compute dtype: in (-e^{-1/2}, 0)
  DType gd = gate_dtype(x);
  Tensor wr = add(as_dtype(w0, gd), as_dtype(matmul(tanh(matmul(xw, cast_param(w1))), cast_param(w2)), gd));
  Tensor lw = neg(exp(affine(neg(softplus(neg(wr))), 1.0, -0.5)));
  Tensor iclr = sigmoid(add(cast_param(a0), matmul(matmul(xa, cast_param(a1)), cast_param(a2))));
  Tensor g = matmul(sigmoid(matmul(xg, cast_param(g1))), cast_param(g2));
  Tensor kk = mixers::l2_normalize(mul(k, cast_param(k_k)).view({B, T, H, N}), 1e-12);
  k = mul(k, mul(affine(iclr, 1.0, -1.0), cast_param(k_a)) + 1.0);
  Shape hs{B, T, H, N};
  Tensor rh = r.view(hs), kh = k.view(hs), vh = v.view(hs), iclr_h = iclr.view(hs);
  DeltaOptions opt;
  opt.chunk = cfg_.chunk;
  opt.min_log_decay = -std::exp(-0.5) * (1.0 + 1e-6);  // lw = -e^{-softplus(-wr) - 1/2} >= -e^{-1/2}
  opt.want_final_state = st != nullptr;
  DeltaResult res;
  Tensor a = neg(kk), b = mul(kk, iclr_h);
  if (st && T < cfg_.chunk)
    res = generalized_delta_rule_reference(rh, kh, vh, lw.view(hs), a, b, st->S, opt);
  else
    res = generalized_delta_rule(rh, kh, vh, lw.view(hs), a, b, st ? st->S : Tensor(), opt);
  if (st) st->S = res.final_state.detach();
  // head GroupNorm (eps 64e-5 as RWKV-7), then the "bonus" of the current token
  Tensor o = res.o;  // [B, T, H, N]
  Tensor mu = mean(o, -1, true);
  Tensor oc = sub(o, mu);
  o = mul(oc, rsqrt(mean(square(oc), -1, true) + 64e-5));
  o = add(mul(o, cast_param(ln_x_w).view({H, N})), cast_param(ln_x_b).view({H, N}));
  Tensor bonus = sum(mul(mul(rh, kh), cast_param(r_k)), -1, true);  // [B, T, H, 1]
  o = add(o, mul(bonus, vh));
  Tensor tm = output->forward(mul(o.reshape({B, T, d_}), g));
  // ---- channel mix ----
  Tensor h = cm_norm->forward(add(x, tm));
  Tensor hx = sub(token_shift(h, st ? &st->prev_cm : nullptr), h);
  Tensor ck = square(relu(cm_key->forward(add(h, mul(hx, cast_param(cm_mu_k))))));
  return add(tm, cm_value->forward(ck));
}

std::unique_ptr<MixerState> Rwkv7::init_state(int64_t batch, int64_t, Device device, DType dtype) const {
  auto s = std::make_unique<Rwkv7State>();
  s->S = zeros({batch, heads_, n_, n_}, dtype == DType::F64 ? DType::F64 : DType::F32, device);
  s->prev_tm = zeros({batch, 1, d_}, dtype, device);
  s->prev_cm = zeros({batch, 1, d_}, dtype, device);
  return s;
}

int64_t Rwkv7::state_bytes(int64_t, int64_t dtype_bytes) const { return (heads_ * n_ * n_ + 2 * d_) * dtype_bytes; }

double Rwkv7::flops_per_token(int64_t seq_len) const {
  double d = double(d_), N = double(n_), H = double(heads_);
  double proj = 2.0 * d * d * 4 + 2.0 * 2.0 * d * double(dw_ + da_ + dg_);
  double cm = 2.0 * 2.0 * d * double(hidden_);
  // chunked generalized rule per token and head: state products (W S, Q S, B^T Z, K^T V: 4 x 2 N^2) and the
  // pairwise intra-chunk terms (4 matrices of C x N, products with V and Z)
  double C = double(std::min<int64_t>(cfg_.chunk, std::max<int64_t>(seq_len, 1)));
  double rec = H * (8.0 * N * N + 8.0 * C * N + 4.0 * C * N + C * C);
  return proj + cm + rec;
}

void register_rwkv7_mixer() {
  register_mixer("rwkv7", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    Rwkv7Config cfg;
    cfg.head_size = c.get<int64_t>("head_size", cfg.head_size);
    cfg.decay_lora = c.get<int64_t>("decay_lora", cfg.decay_lora);
    cfg.iclr_lora = c.get<int64_t>("iclr_lora", cfg.iclr_lora);
    cfg.gate_lora = c.get<int64_t>("gate_lora", cfg.gate_lora);
    cfg.cm_hidden = c.get<int64_t>("cm_hidden", cfg.cm_hidden);
    cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
    return std::make_shared<Rwkv7>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
