// Shared by the module and mixer tests: a small mixer context and turning a module's parameters into
// f64 leaves for gradcheck.
#pragma once
#include "autograd/node.h"
#include "layers/mixers/mixer.h"

namespace seqmix::testing {

inline MixerContext tiny_mixer_ctx(Generator& g, int64_t d, int layer = 0, int n_layers = 1) {
  MixerContext ctx;
  ctx.d_model = d;
  ctx.gen = &g;
  ctx.max_seq_len = 64;
  ctx.out_std = 0.3;
  ctx.init_std = 0.3;
  ctx.layer_index = layer;
  ctx.n_layers = n_layers;
  return ctx;
}

// Converts the module's parameters to f64 in place (same handles) and returns them, for gradcheck to perturb.
inline autograd::Tensors params_to_f64(Module& m) {
  autograd::Tensors out;
  for (auto& [name, p] : m.named_parameters()) {
    Tensor t = p;
    t.set_data(p.detach().to(DType::F64));
    out.push_back(t);
  }
  return out;
}

}  // namespace seqmix::testing
