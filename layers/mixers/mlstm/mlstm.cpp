#include "layers/mixers/mlstm/mlstm.h"

#include <cmath>
#include <cstdlib>
#include <string>
#include <limits>

namespace seqmix::mixers {

Tensor mlstm_cell(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ig, const Tensor& logf, RecurrentState* st,
                  int64_t chunk) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
  DType gdt = ig.dtype();

  // the max-stabilizer m_t = max(log f_t + m_{t-1}, i~_t), m_0 = 0 (or the carried one): a constant, scanned in
  // f64 on the inputs' device (no host round trip). The floor exp(min(-m_t, cap)) is taken in f64 where the
  // backend has f64 math (the CPU: bitwise the former host values); the CUDA elementwise kernels have no f64,
  // so there it is taken in f32 from m_t rounded to f32 (m_t and m_{t-1} in the gate dtype are unchanged:
  // f64 -> f32 -> gate dtype is the conversion the host upload made).
  // CUDA inputs are scanned on the device (tests/gpu/test_maxplus_scan_gpu.cpp passed on the H100);
  // SEQMIX_MAXPLUS_CUDA=0 scans them on the host instead (one device -> host wait per call).
  Device dev = q.device();
  const char* on_gpu = std::getenv("SEQMIX_MAXPLUS_CUDA");
  const Device sdev = dev.is_cpu() || !(on_gpu && std::string(on_gpu) == "0") ? dev : Device::cpu();
  const DType sdt = sdev.is_cpu() || gdt == DType::F64 ? DType::F64 : DType::F32;
  MaxplusScanResult sc = maxplus_scan(logf.to(sdev), ig.to(sdev), st && st->m.defined() ? st->m.to(sdev) : Tensor(), sdt);
  if (st) st->m = sc.m_last;
  const double cap = gdt == DType::F64 ? 700.0 : 80.0;  // exp(-m) stays finite in the compute dtype
  Tensor m_t = cast(sc.m, gdt).to(dev), m_prev = cast(sc.m_prev, gdt).to(dev);
  Tensor floor = cast(exp(clamp(neg(sc.m), -std::numeric_limits<double>::infinity(), cap)), gdt).to(dev).unsqueeze(-1);

  Tensor g = sub(add(logf, m_prev), m_t);                    // log f_t + m_{t-1} - m_t
  Tensor kscale = exp(sub(ig, m_t)) * (1.0 / std::sqrt(double(D)));  // exp(i~_t - m_t) / sqrt(d_k)
  Tensor kk = mul(k, cast(kscale, k.dtype()).unsqueeze(-1));
  Tensor v1 = cat({v, ones({B, T, H, 1}, v.dtype(), dev)}, 3);  // normalizer column
  Tensor o = run_recurrence(q, kk, v1, g, Tensor(), st, 1.0, chunk);  // [B, T, H, D + 1]
  Tensor num = o.narrow(3, 0, D), den = o.narrow(3, D, 1);
  return div(num, maximum(abs(den), cast(floor, den.dtype())));
}

MLSTM::MLSTM(const MixerContext& ctx, const MLSTMConfig& cfg) : d_model_(ctx.d_model), heads_(cfg.n_heads), cfg_(cfg) {
  SEQMIX_CHECK(heads_ > 0 && d_model_ % heads_ == 0, "mlstm: d_model (", d_model_, ") is not divisible by n_heads (", heads_, ")");
  dh_ = d_model_ / heads_;
  const int64_t d = d_model_;
  Generator& gen = *ctx.gen;
  conv = register_module("conv", std::make_shared<ShortConv>(d, cfg.conv_size, gen));
  q_proj = register_module("q_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  k_proj = register_module("k_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  v_proj = register_module("v_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  z_proj = register_module("z_proj", std::make_shared<Linear>(d, d, false, gen, ctx.init_std));
  igate = register_module("igate", std::make_shared<Linear>(3 * d, heads_, true, gen, ctx.init_std));
  fgate = register_module("fgate", std::make_shared<Linear>(3 * d, heads_, true, gen, ctx.init_std));
  // xLSTM: gate weights start at zero, input-gate bias ~ N(0, 0.1), forget-gate bias linspace(3, 6)
  igate->weight.zero_();
  fgate->weight.zero_();
  normal_(igate->bias, gen, 0.0, 0.1);
  std::vector<float> fb(static_cast<size_t>(heads_));
  for (int64_t h = 0; h < heads_; ++h)
    fb[size_t(h)] = float(cfg.fgate_bias_lo + (cfg.fgate_bias_hi - cfg.fgate_bias_lo) * (heads_ > 1 ? double(h) / double(heads_ - 1) : 0.0));
  fgate->bias.copy_(Tensor::from_vector<float>(fb, {heads_}));
  out_proj = register_module("out_proj", std::make_shared<Linear>(d, d, false, gen, ctx.out_std));
  norm_weight = register_parameter("norm_weight", ones({d}));
  skip = register_parameter("skip", ones({d}));
}

std::string MLSTM::type_name() const {
  return "MLSTM(heads=" + std::to_string(heads_) + ", head_dim=" + std::to_string(dh_) + ", conv=" + std::to_string(cfg_.conv_size) + ")";
}

Tensor MLSTM::run(const Tensor& x, RecurrentState* st) {
  if (st && st->conv.size() < 1) st->conv.resize(1);
  Tensor xc = conv->forward(x, st ? &st->conv[0] : nullptr);  // SiLU(conv(x))
  Tensor q = q_proj->forward(xc), k = k_proj->forward(xc), v = v_proj->forward(x);
  Tensor qkv = cat({q, k, v}, 2);
  Tensor ig = gate_precision(igate->forward(qkv));              // [B, T, H] pre-activation i~
  Tensor logf = logsigmoid(gate_precision(fgate->forward(qkv)));  // [B, T, H]
  Tensor h = mlstm_cell(split_heads(q, heads_), split_heads(k, heads_), split_heads(v, heads_), ig, logf, st, cfg_.chunk);
  h = merge_heads(head_norm(h, false, cfg_.norm_eps));
  h = add(mul(h, cast_param(norm_weight)), mul(xc, cast_param(skip)));
  return out_proj->forward(mul(h, silu(z_proj->forward(x))));
}

int64_t MLSTM::state_bytes(int64_t, int64_t dtype_bytes) const {
  // f32 C and n (n as the extra column), the f64 stabilizer, the conv inputs
  return heads_ * dh_ * (dh_ + 1) * 4 + heads_ * 8 + (cfg_.conv_size - 1) * d_model_ * dtype_bytes;
}

double MLSTM::flops_per_token(int64_t) const {
  double d = double(d_model_);
  double proj = 2.0 * d * d * 5 + 2.0 * 3 * d * 2 * double(heads_) + 2.0 * d * double(cfg_.conv_size);
  return proj + recurrence_flops(heads_, dh_, dh_ + 1, cfg_.chunk);
}

void register_mlstm_mixer() {
  register_mixer("mlstm", [](const MixerContext& ctx, const ConfigNode& c) -> std::shared_ptr<Mixer> {
    MLSTMConfig cfg;
    cfg.n_heads = c.get<int64_t>("n_heads", cfg.n_heads);
    cfg.conv_size = c.get<int64_t>("conv_size", cfg.conv_size);
    cfg.norm_eps = c.get<double>("norm_eps", cfg.norm_eps);
    cfg.fgate_bias_lo = c.get<double>("fgate_bias_lo", cfg.fgate_bias_lo);
    cfg.fgate_bias_hi = c.get<double>("fgate_bias_hi", cfg.fgate_bias_hi);
    cfg.chunk = c.get<int64_t>("chunk", cfg.chunk);
    return std::make_shared<MLSTM>(ctx, cfg);
  });
}

}  // namespace seqmix::mixers
