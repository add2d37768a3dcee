// The rwkv7 mixer (time mix on the generalized delta rule + channel mix): f64 gradient check of the
// module (chunked path over an odd length), generation step by step == full forward, registry.
#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "layers/mixers/rwkv7/rwkv7.h"
#include "models/lm.h"
#include "mixers/recurrent_mixer_testing.h"
#include "support/module_testing.h"
#include "support/test_util.h"

using namespace seqmix;
using autograd::Tensors;
using seqmix::testing::random_f64;
using seqmix::testing::rel_error;

namespace {
mixers::Rwkv7Config small_rwkv7_config() {
  mixers::Rwkv7Config cfg;
  cfg.head_size = 3;
  cfg.decay_lora = 2;
  cfg.iclr_lora = 2;
  cfg.gate_lora = 3;
  cfg.cm_hidden = 7;
  cfg.chunk = 4;
  return cfg;
}
}  // namespace

TEST(Rwkv7Mixer, Gradcheck) {
  Generator g(23);
  mixers::Rwkv7 m(seqmix::testing::tiny_mixer_ctx(g, 6), small_rwkv7_config());
  EXPECT_FALSE(m.uses_mlp());
  seqmix::testing::expect_mixer_gradcheck(m, 2, 7, 6, 24);
}

TEST(Rwkv7Mixer, StepByStepEqualsFullForward) {
  Generator g(25);
  mixers::Rwkv7 m(seqmix::testing::tiny_mixer_ctx(g, 8), [] {
    mixers::Rwkv7Config c = small_rwkv7_config();
    c.head_size = 4;
    return c;
  }());
  // chunked prompt (5 >= chunk 4)
  seqmix::testing::expect_steps_equal_forward(m, 2, 13, 8, 5, 26, 1e-5);
}

TEST(Rwkv7Mixer, RegisteredWithStateAndFlops) {
  register_builtin_mixers();
  ASSERT_TRUE(mixer_registered("rwkv7"));
  Generator g(27);
  mixers::Rwkv7 m(seqmix::testing::tiny_mixer_ctx(g, 8), [] {
    mixers::Rwkv7Config c = small_rwkv7_config();
    c.head_size = 4;
    return c;
  }());
  EXPECT_EQ(m.state_bytes(5000, 4), (2 * 4 * 4 + 2 * 8) * 4);
  EXPECT_GT(m.flops_per_token(1024), 0.0);
}

TEST(Rwkv7Mixer, Bf16ComputeMatchesF32) {
  // the mixed-precision path (bf16 activations, f32 decays and state) against f32
  Generator g(29);
  mixers::Rwkv7 m(seqmix::testing::tiny_mixer_ctx(g, 8), [] {
    mixers::Rwkv7Config c = small_rwkv7_config();
    c.head_size = 4;
    return c;
  }());
  autograd::NoGradGuard ng;
  Tensor x = random_f64({2, 9, 8}, 30, false).to(DType::F32);
  Tensor ref = m.forward(x);
  ComputeDtypeGuard cg(DType::BF16);
  Tensor y = m.forward(x.to(DType::BF16));
  EXPECT_EQ(y.dtype(), DType::BF16);
  EXPECT_LT(rel_error(y.to(DType::F32), ref), 5e-2);
}
