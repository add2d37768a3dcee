// Gradient checks (f64, CPU) of every module, over inputs and all parameters.
#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "layers/layers.h"
#include "layers/mixers/attention/attention.h"
#include "models/lm.h"
#include "support/module_testing.h"
#include "support/test_util.h"

using namespace seqmix;
using autograd::gradcheck;
using autograd::Tensors;
using seqmix::testing::random_f64;
using seqmix::testing::params_to_f64;
using seqmix::testing::rel_error;

namespace {
void expect_gradcheck(const std::function<Tensor(const Tensors&)>& f, Tensors inputs, Module& m) {
  ComputeDtypeGuard cg(DType::F64);
  Tensors params = params_to_f64(m);
  inputs.insert(inputs.end(), params.begin(), params.end());
  autograd::GradcheckResult r = gradcheck(f, inputs);
  EXPECT_TRUE(r.ok) << m.type_name() << ": " << r.message;
}
}  // namespace

TEST(Layers, LinearWithAndWithoutBias) {
  Generator g(1);
  for (bool bias : {true, false}) {
    Linear lin(5, 3, bias, g);
    Tensor x = random_f64({2, 3, 5}, 2);
    expect_gradcheck([&](const Tensors& in) { return lin.forward(in[0]); }, {x}, lin);
  }
}

TEST(Layers, EmbeddingAndNorms) {
  Generator g(1);
  Embedding emb(7, 4, g);
  Tensor ids = Tensor::from_vector<int64_t>({1, 3, 3, 6, 0}, {5});
  expect_gradcheck([&](const Tensors&) { return emb.forward(ids); }, {}, emb);
  for (auto kind : {Norm::Kind::RMS, Norm::Kind::Layer}) {
    Norm n(kind, 5);
    Tensor x = random_f64({3, 5}, 3);
    expect_gradcheck([&](const Tensors& in) { return n.forward(in[0]); }, {x}, n);
  }
}

TEST(Layers, MlpGeluAndSwiglu) {
  Generator g(4);
  for (auto kind : {MLP::Kind::Gelu, MLP::Kind::SwiGLU}) {
    MLP mlp(kind, 4, 7, g, 0.3);
    Tensor x = random_f64({2, 3, 4}, 5);
    expect_gradcheck([&](const Tensors& in) { return mlp.forward(in[0]); }, {x}, mlp);
  }
}

TEST(Layers, RotaryIsAnOrthogonalRotation) {
  Rotary rope(6);
  Tensor x = random_f64({1, 5, 2, 6}, 6, false);
  Tensor y = rope.apply(x, 3);
  // rotations keep each pair's norm: |y| == |x| per position and head
  EXPECT_LT(rel_error(sum(square(y), 3), sum(square(x), 3)), 1e-6);  // tables are f32
  // position 0 is the identity
  EXPECT_LT(rel_error(rope.apply(x, 0).narrow(1, 0, 1), x.narrow(1, 0, 1)), 1e-12);
  Tensor xg = random_f64({1, 5, 2, 6}, 7);
  autograd::GradcheckResult r = gradcheck([&](const Tensors& in) { return rope.apply(in[0], 2); }, {xg});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(Layers, RotaryRelativePositions) {
  // q(m) . k(n) after rotary depends only on m - n
  Rotary rope(4);
  Tensor q = random_f64({1, 1, 1, 4}, 8, false), k = random_f64({1, 1, 1, 4}, 9, false);
  double a = sum(mul(rope.apply(q, 5), rope.apply(k, 2))).item();
  double b = sum(mul(rope.apply(q, 13), rope.apply(k, 10))).item();
  EXPECT_NEAR(a, b, 1e-6);  // tables are f32
}

namespace {
MixerContext tiny_ctx(Generator& g, int64_t d) {
  MixerContext ctx;
  ctx.d_model = d;
  ctx.gen = &g;
  ctx.max_seq_len = 32;
  ctx.out_std = 0.3;
  ctx.init_std = 0.3;
  return ctx;
}
}  // namespace

TEST(Attention, MixerGradcheckWithGqaAndWindow) {
  Generator g(10);
  for (int64_t window : {0, 3}) {
    mixers::AttentionConfig cfg;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.window = window;
    mixers::Attention attn(tiny_ctx(g, 8), cfg);
    Tensor x = random_f64({2, 5, 8}, 11);
    expect_gradcheck([&](const Tensors& in) { return attn.forward(in[0]); }, {x}, attn);
  }
}

TEST(Attention, StepByStepEqualsFullForward) {
  Generator g(12);
  mixers::AttentionConfig cfg;
  cfg.n_heads = 2;
  mixers::Attention attn(tiny_ctx(g, 8), cfg);
  Tensor x = random_f64({2, 7, 8}, 13, false).to(DType::F32);
  autograd::NoGradGuard ng;
  Tensor full = attn.forward(x);
  auto st = attn.init_state(2, 7, Device::cpu(), DType::F32);
  // a prompt of 3 tokens, then one token at a time
  Tensor first = attn.step(x.narrow(1, 0, 3), *st);
  EXPECT_LT(rel_error(first, full.narrow(1, 0, 3)), 1e-5);
  for (int64_t t = 3; t < 7; ++t) {
    Tensor y = attn.step(x.narrow(1, t, 1), *st);
    EXPECT_LT(rel_error(y, full.narrow(1, t, 1)), 1e-5) << "position " << t;
  }
}

namespace {
std::unique_ptr<Config> tiny_model_config(const std::string& extra = "") {
  return Config::from_string(R"(
model:
  d_model: 8
  n_layers: 2
  mixers: [attention]
  attention: {n_heads: 2}
  mlp: swiglu
  mlp_hidden: 12
  norm: rmsnorm
  init_std: 0.3
)" + extra, "tiny.yaml");
}
}  // namespace

TEST(LanguageModel, WholeModelGradcheck) {
  auto cfg = tiny_model_config();
  ModelConfig mc = read_model_config(cfg->root().child("model"), 11, 6, 3);
  LanguageModel lm(mc, cfg->root().child("model"));
  Tensor ids = Tensor::from_vector<int32_t>({1, 4, 2, 9, 10, 0, 3, 3}, {2, 4});
  Tensor tg = Tensor::from_vector<int32_t>({4, 2, 9, -100, 0, 3, 3, 7}, {2, 4});
  expect_gradcheck([&](const Tensors&) { return lm.loss(ids, tg); }, {}, lm);
}

TEST(LanguageModel, GenerationEqualsForward) {
  auto cfg = tiny_model_config("  pos_embedding: learned\n  max_seq_len: 16\n");
  ModelConfig mc = read_model_config(cfg->root().child("model"), 11, 16, 3);
  LanguageModel lm(mc, cfg->root().child("model"));
  lm.eval();
  autograd::NoGradGuard ng;
  Tensor ids = Tensor::from_vector<int32_t>({1, 4, 2, 9, 10, 0}, {1, 6});
  Tensor full = lm.forward(ids);  // [1, 6, V]
  GenerationState st = lm.init_generation(1, 6);
  Tensor l = lm.step(ids.narrow(1, 0, 2), st);
  EXPECT_LT(rel_error(l, full.select(1, 1)), 1e-5);
  for (int64_t t = 2; t < 6; ++t) {
    l = lm.step(ids.narrow(1, t, 1), st);
    EXPECT_LT(rel_error(l, full.select(1, t)), 1e-5) << "position " << t;
  }
}

TEST(LanguageModel, MixerPatternRepeatsAndUnknownNamesAreErrors) {
  auto cfg = Config::from_string("model:\n  n_layers: 4\n  mixers: [attention, attention]\n", "p.yaml");
  ModelConfig mc = read_model_config(cfg->root().child("model"), 11, 8, 0);
  EXPECT_EQ(mc.mixers.size(), 4u);
  auto bad = Config::from_string("model:\n  n_layers: 2\n  mixers: [attention, nope]\n", "bad.yaml");
  seqmix::testing::expect_error_contains([&] { read_model_config(bad->root().child("model"), 11, 8, 0); }, "unknown mixer 'nope'");
  auto bad2 = Config::from_string("model:\n  n_layers: 3\n  mixers: [attention, attention]\n", "bad2.yaml");
  seqmix::testing::expect_error_contains([&] { read_model_config(bad2->root().child("model"), 11, 8, 0); }, "does not divide n_layers");
}

TEST(Module, SummaryNamesAndCounts) {
  auto cfg = tiny_model_config();
  ModelConfig mc = read_model_config(cfg->root().child("model"), 11, 6, 3);
  LanguageModel lm(mc, cfg->root().child("model"));
  auto names = lm.named_parameters();
  EXPECT_EQ(names.front().first, "embed.weight");
  bool found = false;
  for (auto& [n, p] : names) found |= n == "layers.1.mixer.qkv_proj.weight";
  EXPECT_TRUE(found);
  // tied embeddings: no separate head
  for (auto& [n, p] : names) EXPECT_EQ(n.find("head"), std::string::npos);
  EXPECT_NE(lm.summary().find("Attention(heads=2"), std::string::npos) << lm.summary();
  EXPECT_GT(lm.num_parameters(), lm.non_embedding_parameters());
}
