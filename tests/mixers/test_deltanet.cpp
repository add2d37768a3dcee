// The deltanet mixer: f64 gradient check of the module (chunked path, odd length), generation step by
// step == full forward, and its registry entry.
#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "layers/mixers/deltanet/deltanet.h"
#include "models/lm.h"
#include "support/module_testing.h"
#include "support/test_util.h"

using namespace seqmix;
using autograd::Tensors;
using seqmix::testing::random_f64;
using seqmix::testing::rel_error;

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
    mixers::DeltaNet m(seqmix::testing::tiny_mixer_ctx(g, 6), cfg);
    ComputeDtypeGuard cg(DType::F64);
    Tensors inputs = {random_f64({2, 7, 6}, 4)};
    Tensors params = seqmix::testing::params_to_f64(m);
    inputs.insert(inputs.end(), params.begin(), params.end());
    autograd::GradcheckResult r = autograd::gradcheck([&](const Tensors& in) { return m.forward(in[0]); }, inputs);
    EXPECT_TRUE(r.ok) << m.type_name() << ": " << r.message;
  }
}

TEST(DeltaNetMixer, StepByStepEqualsFullForward) {
  Generator g(5);
  mixers::DeltaNet m(seqmix::testing::tiny_mixer_ctx(g, 8), small_deltanet_config());
  autograd::NoGradGuard ng;
  Tensor x = random_f64({2, 13, 8}, 6, false).to(DType::F32);
  Tensor full = m.forward(x);
  auto st = m.init_state(2, 13, Device::cpu(), DType::F32);
  // a prompt of 5 tokens (chunked path: 5 >= chunk 4), then one token at a time
  Tensor first = m.step(x.narrow(1, 0, 5), *st);
  EXPECT_LT(rel_error(first, full.narrow(1, 0, 5)), 1e-5);
  for (int64_t t = 5; t < 13; ++t) {
    Tensor y = m.step(x.narrow(1, t, 1), *st);
    EXPECT_LT(rel_error(y, full.narrow(1, t, 1)), 1e-5) << "position " << t;
  }
}

TEST(DeltaNetMixer, RegisteredWithStateAndFlops) {
  register_builtin_mixers();
  ASSERT_TRUE(mixer_registered("deltanet"));
  Generator g(7);
  mixers::DeltaNet m(seqmix::testing::tiny_mixer_ctx(g, 8), small_deltanet_config());
  // state: H Dk Dv + conv caches (K - 1) H (2 Dk + Dv), independent of the length
  EXPECT_EQ(m.state_bytes(1000, 4), (2 * 3 * 5 + 3 * 2 * (2 * 3 + 5)) * 4);
  EXPECT_EQ(m.state_bytes(10, 2), m.state_bytes(100000, 2));
  EXPECT_GT(m.flops_per_token(1024), 0.0);
}
