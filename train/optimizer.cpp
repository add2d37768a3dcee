#include "train/optimizer.h"

#include <cmath>
#include <map>
#include <set>

#include "core/ops.h"

namespace seqmix::train {

void validate_adamw_config(const AdamWConfig& c) {
  SEQMIX_CHECK(std::isfinite(c.beta1) && c.beta1 >= 0 && c.beta1 < 1, "AdamW beta1 must be in [0, 1), got ", c.beta1);
  SEQMIX_CHECK(std::isfinite(c.beta2) && c.beta2 >= 0 && c.beta2 < 1, "AdamW beta2 must be in [0, 1), got ", c.beta2);
  SEQMIX_CHECK(std::isfinite(c.eps) && c.eps > 0, "AdamW eps must be > 0, got ", c.eps);
  SEQMIX_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0, "AdamW weight_decay must be >= 0, got ",
               c.weight_decay);
}

namespace detail {

AdamWScalars adamw_scalars(const AdamWConfig& cfg, double lr, int64_t t, double grad_scale) {
  const double bc1 = 1.0 - std::pow(cfg.beta1, double(t));
  const double bc2 = 1.0 - std::pow(cfg.beta2, double(t));
  AdamWScalars s;
  s.beta1 = float(cfg.beta1);
  s.beta2 = float(cfg.beta2);
  s.one_minus_beta1 = float(1.0 - cfg.beta1);
  s.one_minus_beta2 = float(1.0 - cfg.beta2);
  s.step_size = float(lr / bc1);
  s.inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  s.eps = float(cfg.eps);
  s.grad_scale = float(grad_scale);
  return s;
}

void adamw_step_cpu(const AdamWTensor& t, const AdamWScalars& s) {
  float* p = t.p;
  const float* g = t.g;
  float* m = t.m;
  float* v = t.v;
  const float decay = t.decay;
  const int64_t n = t.n;
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (int64_t i = 0; i < n; ++i) adamw_update(p[i], g[i], m[i], v[i], decay, s);
}

}  // namespace detail

AdamW::AdamW(NamedTensors named_params, AdamWConfig cfg) : cfg_(cfg) {
  validate_adamw_config(cfg_);
  std::set<std::string> names;
  int cuda_index = -1;
  for (auto& [name, p] : named_params) {
    SEQMIX_CHECK(p.defined(), "AdamW: parameter '", name, "' is undefined");
    SEQMIX_CHECK(names.insert(name).second, "AdamW: duplicate parameter name '", name, "'");
    SEQMIX_CHECK(p.dtype() == DType::F32, "AdamW: parameter '", name, "' is ", dtype_name(p.dtype()),
                 "; master parameters must be f32");
    SEQMIX_CHECK(p.is_contiguous(), "AdamW: parameter '", name, "' is not contiguous");
    if (p.is_cuda()) {
      SEQMIX_CHECK(cuda_index < 0 || cuda_index == p.device().index, "AdamW: parameter '", name, "' is on ",
                   p.device().str(), " but others are on cuda:", cuda_index, "; one optimizer serves one device");
      cuda_index = p.device().index;
    }
    Slot s;
    s.name = name;
    s.param = p;
    s.exp_avg = zeros(p.shape(), DType::F32, p.device());
    s.exp_avg_sq = zeros(p.shape(), DType::F32, p.device());
    s.decay = p.dim() >= 2;
    slots_.push_back(std::move(s));
  }
}

void AdamW::step(double lr, double grad_scale) {
  SEQMIX_CHECK(std::isfinite(lr) && lr >= 0, "AdamW::step: learning rate must be finite and >= 0, got ", lr);
  SEQMIX_CHECK(std::isfinite(grad_scale), "AdamW::step: gradient scale must be finite, got ", grad_scale);
  ++steps_;
  const detail::AdamWScalars s = detail::adamw_scalars(cfg_, lr, steps_, grad_scale);
  const float decay = float(1.0 - lr * cfg_.weight_decay);
  std::vector<detail::AdamWTensor> cuda_items;
  std::vector<Tensor> keep;  // converted gradients, alive until the launch is queued
  for (Slot& sl : slots_) {
    Tensor g = sl.param.grad();
    if (!g.defined() || sl.param.numel() == 0) continue;
    SEQMIX_CHECK(g.shape() == sl.param.shape(), "AdamW: gradient of '", sl.name, "' has shape ",
                 shape_str(g.shape()), ", the parameter ", shape_str(sl.param.shape()));
    SEQMIX_CHECK(g.device() == sl.param.device(), "AdamW: gradient of '", sl.name, "' is on ", g.device().str(),
                 ", the parameter on ", sl.param.device().str());
    const bool read_bf16 = sl.param.is_cuda() && g.dtype() == DType::BF16 && g.is_contiguous();  // as it is
    if (!read_bf16 && g.dtype() != DType::F32) g = g.to(DType::F32);
    if (!g.is_contiguous()) g = g.contiguous();
    keep.push_back(g);
    detail::AdamWTensor t{sl.param.data<float>(), read_bf16 ? nullptr : g.data<float>(), sl.exp_avg.data<float>(),
                          sl.exp_avg_sq.data<float>(), sl.param.numel(), sl.decay ? decay : 1.0f};
    if (read_bf16) t.g_bf16 = static_cast<const uint16_t*>(g.data_ptr());
    if (sl.param.is_cuda()) {
      cuda_items.push_back(t);
    } else {
      detail::adamw_step_cpu(t, s);
    }
  }
  if (!cuda_items.empty()) {
#ifdef SEQMIX_WITH_CUDA
    detail::adamw_step_cuda(cuda_items, s);
#else
    SEQMIX_FAIL("AdamW: CUDA parameters but this seqmix was built without CUDA");
#endif
  }
}

void AdamW::zero_grad() {
  for (Slot& sl : slots_) sl.param.set_grad(Tensor());
}

NamedTensors AdamW::state_tensors() const {
  NamedTensors out;
  out.reserve(slots_.size() * 2);
  for (const Slot& sl : slots_) {
    out.emplace_back("exp_avg." + sl.name, sl.exp_avg);
    out.emplace_back("exp_avg_sq." + sl.name, sl.exp_avg_sq);
  }
  return out;
}

NamedTensors AdamW::params() const {
  NamedTensors out;
  out.reserve(slots_.size());
  for (const Slot& sl : slots_) out.emplace_back(sl.name, sl.param);
  return out;
}

void AdamW::load_state(const NamedTensors& state, int64_t steps) {
  SEQMIX_CHECK(steps >= 0, "AdamW::load_state: step count must be >= 0, got ", steps);
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : state) {
    SEQMIX_CHECK(by_name.emplace(name, &t).second, "optimizer state: duplicate tensor '", name, "'");
  }
  std::set<std::string> expected;
  for (const Slot& sl : slots_) {
    expected.insert("exp_avg." + sl.name);
    expected.insert("exp_avg_sq." + sl.name);
  }
  for (const auto& [name, t] : by_name) {
    SEQMIX_CHECK(expected.count(name), "optimizer state has a tensor '", name,
                 "' that matches no parameter of this model (was it saved for a different model config?)");
  }
  // validate everything before changing anything
  for (const Slot& sl : slots_) {
    for (const char* kind : {"exp_avg.", "exp_avg_sq."}) {
      const std::string key = kind + sl.name;
      auto it = by_name.find(key);
      SEQMIX_CHECK(it != by_name.end(), "optimizer state has no tensor '", key,
                   "' (was it saved for a different model config?)");
      const Tensor& t = *it->second;
      SEQMIX_CHECK(t.defined() && t.shape() == sl.param.shape(), "optimizer state '", key, "' has shape ",
                   t.defined() ? shape_str(t.shape()) : std::string("<undefined>"), " but parameter '", sl.name,
                   "' has shape ", shape_str(sl.param.shape()));
      SEQMIX_CHECK(is_floating(t.dtype()), "optimizer state '", key, "' has dtype ", dtype_name(t.dtype()),
                   "; expected f32");
    }
  }
  for (Slot& sl : slots_) {
    sl.exp_avg.copy_(*by_name.at("exp_avg." + sl.name));
    sl.exp_avg_sq.copy_(*by_name.at("exp_avg_sq." + sl.name));
  }
  steps_ = steps;
}

}  // namespace seqmix::train
