#include "layers/mixers/deltanet/deltanet.h"

#include <cmath>

#include "layers/mixers/common/delta_rule.h"

namespace seqmix::mixers {

namespace {
Tensor conv_init(int64_t channels, int64_t K, Generator& gen) {
  // PyTorch's Conv1d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = K for a depthwise conv
  Tensor w = empty({channels, K});
  double bound = 1.0 / std::sqrt(double(K));
  uniform_(w, gen, -bound, bound);
  return w;
}

// Short causal depthwise conv over x [B, T, C], continuing from `cache` (the K-1 previous inputs) when given;
// the cache is advanced.
Tensor short_conv(const Tensor& x, const Tensor& w, Tensor* cache) {
  int64_t K = w.size(1), T = x.size(1);
  if (!cache) return conv1d_causal(x, w);
  Tensor xin = cat({*cache, x}, 1);  // [B, K-1+T, C]
  Tensor y = conv1d_causal(xin, w).narrow(1, K - 1, T);
  *cache = xin.narrow(1, xin.size(1) - (K - 1), K - 1).detach().contiguous();
  return y;
}
}  // namespace

DeltaNet::DeltaNet(const MixerContext& ctx, const DeltaNetConfig& cfg)
    : d_model_(ctx.d_model),
      heads_(cfg.n_heads),
      dk_(cfg.head_dim > 0 ? cfg.head_dim : ctx.d_model / cfg.n_heads),
      dv_(cfg.head_dim_v > 0 ? cfg.head_dim_v : (cfg.head_dim > 0 ? cfg.head_dim : ctx.d_model / cfg.n_heads)),
      cfg_(cfg) {
  const char* nm = cfg.gated ? "gated_deltanet" : "deltanet";
  SEQMIX_CHECK(heads_ > 0, nm, ": n_heads must be positive, got ", heads_);
  SEQMIX_CHECK(cfg.head_dim > 0 || ctx.d_model % heads_ == 0, nm, ": d_model (", ctx.d_model,
               ") is not divisible by n_heads (", heads_, "); set head_dim");
  SEQMIX_CHECK(cfg.chunk >= 1 && (cfg.chunk & (cfg.chunk - 1)) == 0, nm, ": chunk must be a power of two, got ", cfg.chunk);
  SEQMIX_CHECK(cfg.conv_size >= 0, nm, ": conv_size must be >= 0, got ", cfg.conv_size);
  Generator& gen = *ctx.gen;
  int64_t HK = heads_ * dk_, HV = heads_ * dv_;
  q_proj = register_module("q_proj", std::make_shared<Linear>(d_model_, HK, false, gen, ctx.init_std));
  k_proj = register_module("k_proj", std::make_shared<Linear>(d_model_, HK, false, gen, ctx.init_std));
  v_proj = register_module("v_proj", std::make_shared<Linear>(d_model_, HV, false, gen, ctx.init_std));
  b_proj = register_module("b_proj", std::make_shared<Linear>(d_model_, heads_, false, gen, ctx.init_std));
  if (cfg.conv_size > 1) {
    q_conv = register_parameter("q_conv", conv_init(HK, cfg.conv_size, gen));
    k_conv = register_parameter("k_conv", conv_init(HK, cfg.conv_size, gen));
    v_conv = register_parameter("v_conv", conv_init(HV, cfg.conv_size, gen));
  }
  if (cfg.gated) {
    a_proj = register_module("a_proj", std::make_shared<Linear>(d_model_, heads_, false, gen, ctx.init_std));
    // A ~ U(1, 16), dt log-uniform in [1e-3, 1e-1] stored as softplus^{-1}(dt) (Mamba-2 / Gated DeltaNet)
    Tensor A = empty({heads_}), u = empty({heads_});
    uniform_(A, gen, 1.0, 16.0);
    uniform_(u, gen, std::log(1e-3), std::log(1e-1));
    std::vector<float> inv;
    for (float lu : u.to_vector<float>()) {
      double dt = std::exp(double(lu));
      inv.push_back(float(dt + std::log(-std::expm1(-dt))));  // softplus^{-1}(dt)
    }
    A_log = register_parameter("A_log", log(A).detach());
    dt_bias = register_parameter("dt_bias", Tensor::from_vector<float>(inv, {heads_}));
  }
  if (cfg.output_gate)
    g_proj = register_module("g_proj", std::make_shared<Linear>(d_model_, HV, false, gen, ctx.init_std));
  o_norm = register_parameter("o_norm", ones({dv_}));
  o_proj = register_module("o_proj", std::make_shared<Linear>(HV, d_model_, false, gen, ctx.out_std));
}

std::string DeltaNet::type_name() const {
  return std::string(cfg_.gated ? "GatedDeltaNet" : "DeltaNet") + "(heads=" + std::to_string(heads_) +
         ", head_dim=" + std::to_string(dk_) + ", head_dim_v=" + std::to_string(dv_) + ", conv=" + std::to_string(cfg_.conv_size) +
         ")";
}

Tensor DeltaNet::run(const Tensor& x, RecurrentState* st) {
  int64_t B = x.size(0), T = x.size(1);
  bool conv = cfg_.conv_size > 1;
  Tensor q = q_proj->forward(x), k = k_proj->forward(x), v = v_proj->forward(x);
  if (conv) {
    q = short_conv(q, cast_param(q_conv), st ? &st->conv[0] : nullptr);
    k = short_conv(k, cast_param(k_conv), st ? &st->conv[1] : nullptr);
    v = short_conv(v, cast_param(v_conv), st ? &st->conv[2] : nullptr);
  }
  q = silu(q).view({B, T, heads_, dk_});
  k = silu(k).view({B, T, heads_, dk_});
  v = silu(v).view({B, T, heads_, dv_});
  DType gd = gate_dtype(x);  // gates and decays in f32 (f64 in f64 runs) whatever the compute dtype
  Tensor beta = sigmoid(as_dtype(b_proj->forward(x), gd));  // [B, T, H]
  Tensor g;
  if (cfg_.gated) {
    Tensor A = exp(as_dtype(A_log, gd));
    g = neg(mul(A, softplus(add(as_dtype(a_proj->forward(x), gd), as_dtype(dt_bias, gd)))));
  }
  DeltaOptions opt;
  opt.scale = 1.0 / std::sqrt(double(dk_));
  opt.chunk = cfg_.chunk;
  opt.want_final_state = st != nullptr;
  DeltaResult r;
  if (st && T < cfg_.chunk)
    r = delta_rule_reference(q, k, v, beta, g, st->S, opt);  // generation: token by token
  else
    r = delta_rule(q, k, v, beta, g, st ? st->S : Tensor(), opt);
  if (st) st->S = r.final_state.detach();
  Tensor o = rms_norm(r.o, cast_param(o_norm), cfg_.norm_eps);  // [B, T, H, Dv]
  if (cfg_.output_gate) o = mul(o, silu(g_proj->forward(x)).view({B, T, heads_, dv_}));
  return o_proj->forward(o.reshape({B, T, heads_ * dv_}));
}

std::unique_ptr<MixerState> DeltaNet::init_state(int64_t batch, int64_t, Device device, DType dtype) const {
  // the state S and the conv caches (last conv_size - 1 pre-conv q, k, v projections), zeros
  auto s = std::make_unique<RecurrentState>();
  s->S = zeros({batch, heads_, dk_, dv_}, dtype == DType::F64 ? DType::F64 : DType::F32, device);
  if (cfg_.conv_size > 1)
    for (int64_t channels : {heads_ * dk_, heads_ * dk_, heads_ * dv_})
      s->conv.push_back(zeros({batch, cfg_.conv_size - 1, channels}, dtype, device));
  return s;
}

int64_t DeltaNet::state_bytes(int64_t, int64_t dtype_bytes) const {
  int64_t conv = cfg_.conv_size > 1 ? (cfg_.conv_size - 1) * heads_ * (2 * dk_ + dv_) : 0;
  return (heads_ * dk_ * dv_ + conv) * dtype_bytes;
}

double DeltaNet::flops_per_token(int64_t seq_len) const {
  double HK = double(heads_ * dk_), HV = double(heads_ * dv_), d = double(d_model_);
  double proj = 2.0 * d * (2 * HK + HV + double(heads_) * (cfg_.gated ? 2 : 1) + (cfg_.output_gate ? HV : 0)) + 2.0 * HV * d;
  double conv = cfg_.conv_size > 1 ? 2.0 * double(cfg_.conv_size) * (2 * HK + HV) : 0.0;
  // chunked form per token: W S, Q S, K^T U' against the state (3 x 2 Dk Dv per head), the intra-chunk
  // K K^T, Q K^T (2 x 2 C Dk), the triangular solve and its products (about 2 C (Dk + Dv) + C^2)
  double C = double(std::min<int64_t>(cfg_.chunk, std::max<int64_t>(seq_len, 1)));
  double rec = double(heads_) * (6.0 * double(dk_ * dv_) + 4.0 * C * double(dk_) + 2.0 * C * double(dk_ + dv_) + C * C);
  return proj + conv + rec;
}

DeltaNetConfig read_deltanet_config(const ConfigNode& c, DeltaNetConfig cfg) {
  cfg.n_heads = c.get<int64_t>("n_heads", cfg.n_heads);
  cfg.head_dim = c.get<int64_t>("head_dim", cfg.head_dim);
  cfg.head_dim_v = c.get<int64_t>("head_dim_v", cfg.head_dim_v);
  cfg.conv_size = c.get<int64_t>("conv_size", cfg.conv_size);
  cfg.output_gate = c.get<bool>("output_gate", cfg.output_gate);
  cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
  cfg.norm_eps = c.get<double>("norm_eps", cfg.norm_eps);
  return cfg;
}

void register_deltanet_mixer() {
  register_mixer("deltanet", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    return std::make_shared<DeltaNet>(ctx, read_deltanet_config(c, DeltaNetConfig{}));
  });
}

}  // namespace seqmix::mixers
