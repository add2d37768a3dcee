#include "layers/mixers/hgrn2/hgrn2.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

TEST(HGRN2Mixer, LowerBoundRisesWithDepth) {
  Generator g(1);
  mixers::HGRN2Config cfg;
  cfg.expand_ratio = 4;
  double prev = -1;
  for (int layer = 0; layer < 4; ++layer) {
    mixers::HGRN2 m(tiny_mixer_ctx(g, 8, layer, 4), cfg);
    EXPECT_GT(m.lower_bound(), prev);
    prev = m.lower_bound();
    if (layer == 0) {
      EXPECT_EQ(m.lower_bound(), 0.0);
    }
  }
}

TEST(HGRN2Mixer, GradcheckF64) {
  Generator g(2);
  for (int layer : {0, 2})
    for (bool conv : {false, true}) {
      mixers::HGRN2Config cfg;
      cfg.expand_ratio = 3;
      cfg.n_heads = 2;
      cfg.use_short_conv = conv;
      cfg.chunk = 4;
      mixers::HGRN2 m(tiny_mixer_ctx(g, 6, layer, 4), cfg);
      expect_mixer_gradcheck(m, 2, 7, 6, 3);
    }
}

TEST(HGRN2Mixer, StepsEqualForward) {
  Generator g(4);
  for (bool conv : {false, true}) {
    mixers::HGRN2Config cfg;
    cfg.expand_ratio = 4;
    cfg.use_short_conv = conv;
    cfg.chunk = 4;
    mixers::HGRN2 m(tiny_mixer_ctx(g, 8, 1, 2), cfg);
    expect_steps_equal_forward(m, 2, 11, 8, 5, 5);
  }
}

TEST(HGRN2Mixer, LongSequenceStrongAndWeakDecaysStayFinite) {
  Generator g(6);
  mixers::HGRN2Config cfg;
  cfg.expand_ratio = 2;
  cfg.n_heads = 1;  // Dk = 2, Dv = 4
  mixers::HGRN2 m(tiny_mixer_ctx(g, 4), cfg);  // layer 0: no lower bound
  // large inputs drive the forget gates to both ends: log f ~ -20 (strong) and ~ -1e-9 (near 1)
  expect_long_sequence_finite(m, 65536, 4, 30.0, 7);
}
