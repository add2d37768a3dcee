// Basic layers: Linear, Embedding, RMSNorm, LayerNorm, MLP (GELU or SwiGLU), rotary embedding.
// Initialization (GPT-2 style): weights ~ N(0, std) with std = 0.02 by default, residual output
// projections scaled by 1 / sqrt(2 * n_layers) by the caller, biases 0, norm weights 1.
#pragma once
#include <string>

#include "layers/module.h"

namespace seqmix {

class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias, Generator& gen, double init_std = 0.02);
  std::string type_name() const override { return "Linear(" + std::to_string(in_) + " -> " + std::to_string(out_) + ")"; }
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;  // weight [out, in]

 private:
  int64_t in_, out_;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator& gen, double init_std = 0.02);
  std::string type_name() const override { return "Embedding(" + std::to_string(num_) + ", " + std::to_string(dim_) + ")"; }
  Tensor forward(const Tensor& ids) const;  // -> compute dtype
  Tensor weight;  // [num, dim]

 private:
  int64_t num_, dim_;
};

class Norm : public Module {
 public:
  enum class Kind { RMS, Layer };
  Norm(Kind kind, int64_t dim, double eps = 1e-5);
  static Kind parse(const std::string& name);  // "rmsnorm" | "layernorm"
  std::string type_name() const override { return kind_ == Kind::RMS ? "RMSNorm" : "LayerNorm"; }
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;  // bias only for LayerNorm

 private:
  Kind kind_;
  double eps_;
};

class MLP : public Module {
 public:
  enum class Kind { Gelu, SwiGLU };
  MLP(Kind kind, int64_t dim, int64_t hidden, Generator& gen, double out_std, bool bias = false);
  static Kind parse(const std::string& name);  // "gelu" | "swiglu"
  std::string type_name() const override { return kind_ == Kind::Gelu ? "MLP(gelu)" : "MLP(swiglu)"; }
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Linear> up, gate, down;  // gate only for SwiGLU

 private:
  Kind kind_;
};

// Rotary position embedding (half-split convention) for x [B, T, H, D], positions start..start+T-1.
class Rotary {
 public:
  explicit Rotary(int64_t head_dim, double base = 10000.0);
  Tensor apply(const Tensor& x, int64_t start) const;

 private:
  void ensure(int64_t len, Device device) const;
  int64_t dim_;
  double base_;
  mutable Tensor cos_, sin_;  // [len, D/2] f32, grown on demand
  mutable int64_t len_ = 0;
};

}  // namespace seqmix
