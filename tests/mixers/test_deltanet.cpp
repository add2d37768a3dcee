// The deltanet mixer: f64 gradient check of the module (chunked path, odd length), generation step by
// step == full forward, and its registry entry.
#include "layers/mixers/deltanet/deltanet.h"
#include "models/lm.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {
mixers::DeltaNetConfig small_deltanet_config() {
  mixers::DeltaNetConfig cfg;
  cfg.n_heads = 2;
  cfg.head_dim = 3;
  cfg.head_dim_v = 5;
  cfg.chunk = 4;
  return cfg;
}
}  // namespace

TEST(DeltaNetMixer, Gradcheck) {
  Generator g(3);
  for (int64_t conv : {0, 4}) {
    mixers::DeltaNetConfig cfg = small_deltanet_config();
    cfg.conv_size = conv;
    mixers::DeltaNet m(tiny_mixer_ctx(g, 6), cfg);
    expect_mixer_gradcheck(m, 2, 7, 6, 4);
  }
}

TEST(DeltaNetMixer, StepByStepEqualsFullForward) {
  Generator g(5);
  mixers::DeltaNet m(tiny_mixer_ctx(g, 8), small_deltanet_config());
  // a prompt of 5 tokens (chunked path: 5 >= chunk 4), then one token at a time
  expect_steps_equal_forward(m, 2, 13, 8, 5, 6, 1e-5);
}

TEST(DeltaNetMixer, RegisteredWithStateAndFlops) {
  register_builtin_mixers();
  ASSERT_TRUE(mixer_registered("deltanet"));
  Generator g(7);
  mixers::DeltaNet m(tiny_mixer_ctx(g, 8), small_deltanet_config());
  // state: H Dk Dv + conv caches (K - 1) H (2 Dk + Dv), independent of the length
  EXPECT_EQ(m.state_bytes(1000, 4), (2 * 3 * 5 + 3 * 2 * (2 * 3 + 5)) * 4);
  EXPECT_EQ(m.state_bytes(10, 2), m.state_bytes(100000, 2));
  EXPECT_GT(m.flops_per_token(1024), 0.0);
}
