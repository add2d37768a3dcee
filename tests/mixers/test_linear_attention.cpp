#include "layers/mixers/linear_attention/linear_attention.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

TEST(LinearAttentionMixer, GradcheckF64) {
  Generator g(1);
  for (bool normalize : {true, false}) {
    mixers::LinearAttentionConfig cfg;
    cfg.n_heads = 2;
    cfg.normalize = normalize;
    cfg.chunk = 4;
    mixers::LinearAttention m(tiny_mixer_ctx(g, 6), cfg);
    expect_mixer_gradcheck(m, 2, 7, 6, 2);
  }
}

TEST(LinearAttentionMixer, StepsEqualForward) {
  Generator g(3);
  for (bool normalize : {true, false}) {
    mixers::LinearAttentionConfig cfg;
    cfg.n_heads = 2;
    cfg.normalize = normalize;
    cfg.chunk = 4;
    mixers::LinearAttention m(tiny_mixer_ctx(g, 8), cfg);
    expect_steps_equal_forward(m, 2, 11, 8, 5, 4);
  }
}

TEST(LinearAttentionMixer, LongSequenceStaysFinite) {
  Generator g(5);
  mixers::LinearAttentionConfig cfg;
  cfg.n_heads = 1;
  mixers::LinearAttention m(tiny_mixer_ctx(g, 4), cfg);
  expect_long_sequence_finite(m, 65536, 4, 3.0, 6);
}
