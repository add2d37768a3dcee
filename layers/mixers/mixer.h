// The mixer interface every token mixer implements, and the registry that builds mixers by name
// from a config block. A new mixer: a folder layers/mixers/<name>/ with a Mixer subclass and a
// register function, plus one line in models/registry.cpp.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"
#include "train/config.h"

namespace seqmix {

// Recurrent state or KV cache of one mixer for a batch of sequences (generation).
struct MixerState {
  virtual ~MixerState() = default;
};

struct MixerContext {
  int64_t d_model = 0;
  int layer_index = 0;
  int n_layers = 1;
  int64_t max_seq_len = 0;
  double init_std = 0.02;
  double out_std = 0.02;  // init std of the mixer's output projection (depth-scaled)
  Generator* gen = nullptr;
};

class Mixer : public Module {
 public:
  // x [B, T, d_model] -> [B, T, d_model], causal.
  virtual Tensor forward(const Tensor& x) = 0;
  // Incremental form for generation: continues from `state` over x [B, T_new, d_model] and updates it.
  virtual std::unique_ptr<MixerState> init_state(int64_t batch, int64_t max_len, Device device, DType dtype) const = 0;
  virtual Tensor step(const Tensor& x, MixerState& state) = 0;
  // Mamba-style mixers replace the block's MLP.
  virtual bool uses_mlp() const { return true; }
  // Bytes of generation state (cache) per sequence after `seq_len` tokens, at `dtype_bytes` per element.
  virtual int64_t state_bytes(int64_t seq_len, int64_t dtype_bytes) const = 0;
  // Forward FLOPs per token at context `seq_len` (matmuls; 2 FLOPs per multiply-add), weights included.
  virtual double flops_per_token(int64_t seq_len) const = 0;
};

using MixerFactory = std::function<std::shared_ptr<Mixer>(const MixerContext&, const ConfigNode&)>;
void register_mixer(const std::string& name, MixerFactory factory);
bool mixer_registered(const std::string& name);
std::vector<std::string> mixer_names();
// Builds `name` from its config block; an unknown name is an error listing the known ones.
std::shared_ptr<Mixer> make_mixer(const std::string& name, const MixerContext& ctx, const ConfigNode& cfg);

}  // namespace seqmix
