// The recurrent mixers inside the language model, built by name from a config through the registry:
// a hybrid stack trains (finite loss and gradients) and generates token by token exactly like the forward.
#include <gtest/gtest.h>

#include "models/lm.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;

TEST(RecurrentMixersInLM, HybridStackGenerationEqualsForward) {
  auto cfg = Config::from_string(R"(
model:
  d_model: 16
  n_layers: 7
  mixers: [linear_attention, retnet, gla, hgrn2, rwkv6, mlstm, attention]
  linear_attention: {n_heads: 2, chunk: 4}
  retnet: {n_heads: 2, chunk: 4}
  gla: {n_heads: 2, gate_low_rank: 4, use_short_conv: true, chunk: 4}
  hgrn2: {expand_ratio: 4, use_short_conv: true, chunk: 4}
  rwkv6: {head_size: 8, mix_low_rank: 4, decay_low_rank: 4, chunk: 4}
  mlstm: {n_heads: 2, chunk: 4}
  attention: {n_heads: 2}
  mlp: swiglu
  mlp_hidden: 24
  norm: rmsnorm
  init_std: 0.2
)", "hybrid.yaml");
  ModelConfig mc = read_model_config(cfg->root().child("model"), 13, 16, 3);
  LanguageModel lm(mc, cfg->root().child("model"));
  Tensor ids = Tensor::from_vector<int32_t>({1, 4, 2, 9, 10, 0, 3, 3, 12, 5, 7, 1, 0, 2, 8, 6, 11, 4}, {2, 9});
  {
    Tensor targets = Tensor::from_vector<int32_t>({4, 2, 9, 10, 0, 3, 3, 12, 5, 7, 1, 0, 2, 8, 6, 11, 4, 1}, {2, 9});
    Tensor loss = lm.loss(ids, targets);
    EXPECT_TRUE(std::isfinite(loss.item()));
    loss.backward();
    for (auto& [name, p] : lm.named_parameters()) EXPECT_TRUE(seqmix::testing::all_finite(p.grad())) << name;
  }
  lm.eval();
  autograd::NoGradGuard ng;
  Tensor full = lm.forward(ids);  // [2, 9, V]
  GenerationState st = lm.init_generation(2, 9);
  Tensor l = lm.step(ids.narrow(1, 0, 4), st);
  EXPECT_LT(seqmix::testing::rel_error(l, full.select(1, 3)), 1e-4);
  for (int64_t t = 4; t < 9; ++t) {
    l = lm.step(ids.narrow(1, t, 1), st);
    EXPECT_LT(seqmix::testing::rel_error(l, full.select(1, t)), 1e-4) << "position " << t;
  }
  EXPECT_GT(lm.state_bytes(100, 2), 0);
  EXPECT_GT(lm.flops_per_token(100), 0.0);
}
