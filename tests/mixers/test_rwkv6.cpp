#include <cmath>

#include "layers/mixers/rwkv6/rwkv6.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {
mixers::RWKV6Config tiny_cfg() {
  mixers::RWKV6Config cfg;
  cfg.head_size = 4;
  cfg.mix_low_rank = 2;
  cfg.decay_low_rank = 3;
  cfg.chunk = 4;
  return cfg;
}
}  // namespace

TEST(RWKV6Mixer, GradcheckF64) {
  Generator g(1);
  mixers::RWKV6 m(tiny_mixer_ctx(g, 8, 1, 3), tiny_cfg());
  // larger low-rank factors than the init so that their gradients are not negligible
  for (Tensor* t : {&m.maa_w1, &m.maa_w2, &m.decay_w1, &m.decay_w2}) uniform_(*t, g, -0.5, 0.5);
  expect_mixer_gradcheck(m, 2, 7, 8, 2);
}

TEST(RWKV6Mixer, StepsEqualForward) {
  Generator g(3);
  mixers::RWKV6 m(tiny_mixer_ctx(g, 8, 1, 3), tiny_cfg());
  expect_steps_equal_forward(m, 2, 11, 8, 5, 4);
}

TEST(RWKV6Mixer, LongSequenceStrongAndWeakDecaysStayFinite) {
  Generator g(5);
  mixers::RWKV6Config cfg = tiny_cfg();
  cfg.head_size = 2;  // B = H = 1, Dk = Dv = 2
  cfg.chunk = 64;
  mixers::RWKV6 m(tiny_mixer_ctx(g, 2), cfg);
  // w0: log-decay -exp(w0) = log(1e-3) on one channel, about -2e-9 on the other
  float strong = float(std::log(-std::log(1e-3)));
  m.decay.copy_(Tensor::from_vector<float>({strong, -20.f}, {2}));
  expect_long_sequence_finite(m, 65536, 2, 1.0, 6);
}
