// The gated_deltanet mixer: f64 gradient check of the module (decay, output gate, short convs; chunked
// path over an odd length), generation step by step == full forward, and its registry entry.
#include "layers/mixers/gated_deltanet/gated_deltanet.h"
#include "models/lm.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {
mixers::DeltaNetConfig small_gdn_config() {
  mixers::DeltaNetConfig cfg = mixers::gated_deltanet_defaults();
  cfg.n_heads = 2;
  cfg.head_dim = 3;
  cfg.head_dim_v = 5;
  cfg.chunk = 4;
  return cfg;
}
}  // namespace

TEST(GatedDeltaNetMixer, Gradcheck) {
  Generator g(13);
  mixers::DeltaNet m(tiny_mixer_ctx(g, 6), small_gdn_config());
  ASSERT_TRUE(m.A_log.defined() && m.g_proj);
  expect_mixer_gradcheck(m, 2, 7, 6, 14);
}

TEST(GatedDeltaNetMixer, StepByStepEqualsFullForward) {
  Generator g(15);
  mixers::DeltaNet m(tiny_mixer_ctx(g, 8), small_gdn_config());
  // chunked prompt (6 >= chunk 4)
  expect_steps_equal_forward(m, 2, 13, 8, 6, 16, 1e-5);
}

TEST(GatedDeltaNetMixer, RegisteredInAHybridModel) {
  register_builtin_mixers();
  ASSERT_TRUE(mixer_registered("gated_deltanet"));
  auto cfg = Config::from_string(R"(
model:
  d_model: 8
  n_layers: 4
  mixers: [gated_deltanet, gated_deltanet, gated_deltanet, attention]
  gated_deltanet: {n_heads: 2, chunk: 4}
  attention: {n_heads: 2}
  mlp_hidden: 12
)", "hybrid.yaml");
  ModelConfig mc = read_model_config(cfg->root().child("model"), 11, 16, 3);
  LanguageModel lm(mc, cfg->root().child("model"));
  EXPECT_NE(lm.summary().find("GatedDeltaNet(heads=2"), std::string::npos) << lm.summary();
  lm.eval();
  autograd::NoGradGuard ng;
  Tensor ids = Tensor::from_vector<int32_t>({1, 4, 2, 9, 10, 0, 3}, {1, 7});
  Tensor full = lm.forward(ids);
  GenerationState st = lm.init_generation(1, 7);
  Tensor l = lm.step(ids.narrow(1, 0, 2), st);
  EXPECT_LT(rel_error(l, full.select(1, 1)), 1e-5);
  for (int64_t t = 2; t < 7; ++t) {
    l = lm.step(ids.narrow(1, t, 1), st);
    EXPECT_LT(rel_error(l, full.select(1, t)), 1e-5) << "position " << t;
  }
  EXPECT_GT(lm.state_bytes(100, 2), 0);
}

TEST(GatedDeltaNetMixer, Bf16ComputeMatchesF32) {
  // the mixed-precision path (bf16 activations, f32 gates, decays and state) against f32
  Generator g(17);
  mixers::DeltaNet m(tiny_mixer_ctx(g, 8), small_gdn_config());
  autograd::NoGradGuard ng;
  Tensor x = random_f64({2, 9, 8}, 18, false).to(DType::F32);
  Tensor ref = m.forward(x);
  ComputeDtypeGuard cg(DType::BF16);
  Tensor y = m.forward(x.to(DType::BF16));
  EXPECT_EQ(y.dtype(), DType::BF16);
  EXPECT_LT(rel_error(y.to(DType::F32), ref), 5e-2);
}
