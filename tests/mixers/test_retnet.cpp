#include <cmath>

#include "layers/mixers/retnet/retnet.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

TEST(RetNetMixer, DecaysPerHead) {
  Generator g(1);
  mixers::RetNetConfig cfg;
  cfg.n_heads = 4;
  mixers::RetNet m(tiny_mixer_ctx(g, 8), cfg);
  auto d = m.log_decays();
  ASSERT_EQ(d.size(), 4u);
  for (int h = 0; h < 4; ++h) EXPECT_NEAR(std::exp(d[size_t(h)]), 1.0 - std::pow(2.0, -5.0 - h), 1e-15);
}

TEST(RetNetMixer, GradcheckF64) {
  Generator g(2);
  mixers::RetNetConfig cfg;
  cfg.n_heads = 2;
  cfg.expand_v = 1.5;
  cfg.chunk = 4;
  mixers::RetNet m(tiny_mixer_ctx(g, 8), cfg);
  expect_mixer_gradcheck(m, 2, 7, 8, 3);
}

TEST(RetNetMixer, StepsEqualForward) {
  Generator g(4);
  mixers::RetNetConfig cfg;
  cfg.n_heads = 2;
  cfg.chunk = 4;
  mixers::RetNet m(tiny_mixer_ctx(g, 8), cfg);
  expect_steps_equal_forward(m, 2, 11, 8, 5, 5);
}

TEST(RetNetMixer, LongSequenceStaysFinite) {
  Generator g(6);
  mixers::RetNetConfig cfg;
  cfg.n_heads = 1;
  mixers::RetNet m(tiny_mixer_ctx(g, 4), cfg);
  expect_long_sequence_finite(m, 65536, 4, 3.0, 7);
}
