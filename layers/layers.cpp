#include "layers/layers.h"

#include <cmath>

namespace seqmix {

Linear::Linear(int64_t in, int64_t out, bool has_bias, Generator& gen, double init_std) : in_(in), out_(out) {
  Tensor w = randn({out, in}, gen) * init_std;
  weight = register_parameter("weight", w.detach());
  if (has_bias) bias = register_parameter("bias", zeros({out}));
}

Tensor Linear::forward(const Tensor& x) const {
  return linear(x, cast_param(weight), bias.defined() ? cast_param(bias) : Tensor());
}

Embedding::Embedding(int64_t num, int64_t dim, Generator& gen, double init_std) : num_(num), dim_(dim) {
  weight = register_parameter("weight", (randn({num, dim}, gen) * init_std).detach());
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(cast_param(weight), ids); }

Norm::Norm(Kind kind, int64_t dim, double eps) : kind_(kind), eps_(eps) {
  weight = register_parameter("weight", ones({dim}));
  if (kind == Kind::Layer) bias = register_parameter("bias", zeros({dim}));
}

Norm::Kind Norm::parse(const std::string& name) {
  if (name == "rmsnorm" || name == "rms") return Kind::RMS;
  if (name == "layernorm" || name == "layer") return Kind::Layer;
  SEQMIX_FAIL("unknown norm '", name, "': use rmsnorm or layernorm");
}

Tensor Norm::forward(const Tensor& x) const {
  if (kind_ == Kind::RMS) return rms_norm(x, cast_param(weight), eps_);
  return layer_norm(x, cast_param(weight), cast_param(bias), eps_);
}

MLP::MLP(Kind kind, int64_t dim, int64_t hidden, Generator& gen, double out_std, bool bias) : kind_(kind) {
  up = register_module("up", std::make_shared<Linear>(dim, hidden, bias, gen));
  if (kind == Kind::SwiGLU) gate = register_module("gate", std::make_shared<Linear>(dim, hidden, bias, gen));
  down = register_module("down", std::make_shared<Linear>(hidden, dim, bias, gen, out_std));
}

MLP::Kind MLP::parse(const std::string& name) {
  if (name == "gelu") return Kind::Gelu;
  if (name == "swiglu") return Kind::SwiGLU;
  SEQMIX_FAIL("unknown mlp type '", name, "': use gelu or swiglu");
}

Tensor MLP::forward(const Tensor& x) const {
  if (kind_ == Kind::Gelu) return down->forward(gelu(up->forward(x)));
  return down->forward(mul(silu(gate->forward(x)), up->forward(x)));
}

Rotary::Rotary(int64_t head_dim, double base) : dim_(head_dim), base_(base) {
  SEQMIX_CHECK(head_dim % 2 == 0, "rotary embedding needs an even head dimension, got ", head_dim);
}

void Rotary::ensure(int64_t len, Device device) const {
  if (len <= len_ && cos_.defined() && cos_.device() == device) return;
  int64_t n = std::max<int64_t>(len, std::max<int64_t>(2 * len_, 256));
  int64_t half = dim_ / 2;
  std::vector<float> c(size_t(n * half)), s(size_t(n * half));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < half; ++i) {
      double freq = std::pow(base_, -2.0 * double(i) / double(dim_));
      c[t * half + i] = float(std::cos(double(t) * freq));
      s[t * half + i] = float(std::sin(double(t) * freq));
    }
  cos_ = Tensor::from_vector(c, {n, half}, device);
  sin_ = Tensor::from_vector(s, {n, half}, device);
  len_ = n;
}

Tensor Rotary::apply(const Tensor& x, int64_t start) const {
  int64_t T = x.size(1), half = dim_ / 2;
  SEQMIX_CHECK(x.dim() == 4 && x.size(3) == dim_, "rotary: expected [B, T, H, ", dim_, "], got ", shape_str(x.shape()));
  ensure(start + T, x.device());
  Tensor c = cos_.slice(0, start, start + T).to(x.dtype()).view({1, T, 1, half});
  Tensor s = sin_.slice(0, start, start + T).to(x.dtype()).view({1, T, 1, half});
  Tensor x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
  return cat({sub(mul(x1, c), mul(x2, s)), add(mul(x1, s), mul(x2, c))}, 3);
}

}  // namespace seqmix
