#include <cmath>

#include "layers/mixers/gla/gla.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

TEST(GLAMixer, GradcheckF64WithAndWithoutShortConv) {
  Generator g(1);
  for (bool conv : {false, true}) {
    mixers::GLAConfig cfg;
    cfg.n_heads = 2;
    cfg.gate_low_rank = 3;
    cfg.use_short_conv = conv;
    cfg.chunk = 4;
    mixers::GLA m(tiny_mixer_ctx(g, 8), cfg);
    expect_mixer_gradcheck(m, 2, 7, 8, 2);
  }
}

TEST(GLAMixer, StepsEqualForward) {
  Generator g(3);
  for (bool conv : {false, true}) {
    mixers::GLAConfig cfg;
    cfg.n_heads = 2;
    cfg.gate_low_rank = 3;
    cfg.use_short_conv = conv;
    cfg.chunk = 4;
    mixers::GLA m(tiny_mixer_ctx(g, 8), cfg);
    expect_steps_equal_forward(m, 2, 11, 8, 5, 4);
  }
}

TEST(GLAMixer, LongSequenceStrongAndWeakDecaysStayFinite) {
  Generator g(5);
  mixers::GLAConfig cfg;
  cfg.n_heads = 1;
  cfg.expand_k = 0.5;
  cfg.gate_low_rank = 2;
  mixers::GLA m(tiny_mixer_ctx(g, 4), cfg);
  // gate bias: channel 0 decays by ~1e-3 per token (logsigmoid(-110)/16 = log(1e-3)), channel 1 by ~1 - 1e-15
  m.gk_up->bias.copy_(Tensor::from_vector<float>({-110.f, 30.f}, {2}));
  expect_long_sequence_finite(m, 65536, 4, 1.0, 6);
}
