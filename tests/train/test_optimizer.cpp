// AdamW against a hand-computed f64 update, weight decay on matrices only, determinism, state round
// trips; learning-rate schedules; gradient norm and clipping.
#include <cmath>
#include <cstring>
#include <limits>

#include "support/test_util.h"
#include "train/grad_norm.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace seqmix::train {
namespace {

using seqmix::testing::expect_error_contains;

Tensor param(const std::vector<float>& v, const Shape& s) {
  Tensor p = Tensor::from_vector<float>(v, s);
  p.requires_grad_(true);
  return p;
}
void set_grad(Tensor p, const std::vector<float>& g) { p.set_grad(Tensor::from_vector<float>(g, p.shape())); }

// The AdamW update in f64, written out from the paper / torch.optim.AdamW documentation.
struct RefAdamW {
  std::vector<double> p, m, v;
  bool decay;
  void step(const std::vector<double>& g, double lr, int t, const AdamWConfig& c) {
    for (size_t i = 0; i < p.size(); ++i) {
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * g[i] * g[i];
      if (decay) p[i] *= 1 - lr * c.weight_decay;
      double mhat = m[i] / (1 - std::pow(c.beta1, t));
      double vhat = v[i] / (1 - std::pow(c.beta2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + c.eps);
    }
  }
};

TEST(AdamW, MatchesHandComputedTwoSteps) {
  AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
  const std::vector<float> w0 = {0.5f, -1.25f, 2.0f, 0.0f, 3.5f, -0.75f};
  const std::vector<float> b0 = {0.1f, -0.2f, 0.3f};
  Tensor w = param(w0, {2, 3}), b = param(b0, {3});
  AdamW opt({{"w", w}, {"b", b}}, cfg);
  RefAdamW rw{{w0.begin(), w0.end()}, std::vector<double>(6), std::vector<double>(6), true};
  RefAdamW rb{{b0.begin(), b0.end()}, std::vector<double>(3), std::vector<double>(3), false};

  const std::vector<std::vector<float>> gw = {{0.1f, -0.2f, 0.3f, 1e-4f, -5.0f, 0.0f}, {-0.3f, 0.2f, 0.1f, 2e-4f, 4.0f, 1.0f}};
  const std::vector<std::vector<float>> gb = {{1.0f, 0.5f, -0.25f}, {0.75f, -0.5f, 0.125f}};
  const double lrs[2] = {1e-2, 5e-3};
  for (int t = 0; t < 2; ++t) {
    set_grad(w, gw[size_t(t)]);
    set_grad(b, gb[size_t(t)]);
    opt.step(lrs[t]);
    rw.step({gw[size_t(t)].begin(), gw[size_t(t)].end()}, lrs[t], t + 1, cfg);
    rb.step({gb[size_t(t)].begin(), gb[size_t(t)].end()}, lrs[t], t + 1, cfg);
  }
  EXPECT_EQ(opt.steps(), 2);
  auto got_w = w.to_vector<double>(), got_b = b.to_vector<double>();
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(got_w[i], rw.p[i], 1e-6 * std::max(1.0, std::abs(rw.p[i]))) << i;
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(got_b[i], rb.p[i], 1e-6 * std::max(1.0, std::abs(rb.p[i]))) << i;
  // the moments too
  NamedTensors st = opt.state_tensors();
  ASSERT_EQ(st.size(), 4u);
  EXPECT_EQ(st[0].first, "exp_avg.w");
  EXPECT_EQ(st[1].first, "exp_avg_sq.w");
  EXPECT_EQ(st[2].first, "exp_avg.b");
  EXPECT_EQ(st[3].first, "exp_avg_sq.b");
  auto m = st[0].second.to_vector<double>(), v = st[1].second.to_vector<double>();
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_NEAR(m[i], rw.m[i], 1e-7 * std::max(1.0, std::abs(rw.m[i])));
    EXPECT_NEAR(v[i], rw.v[i], 1e-7 * std::max(1e-3, std::abs(rw.v[i])));
  }
}

TEST(AdamW, WeightDecayOnlyOnMatrices) {
  AdamWConfig cfg{0.9, 0.95, 1e-8, 0.5};
  Tensor w = param({1, 2, 3, 4}, {2, 2}), b = param({1, 2}, {2}), k = param({1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2});
  AdamW opt({{"w", w}, {"b", b}, {"k", k}}, cfg);
  for (Tensor t : {w, b, k}) t.set_grad(zeros(t.shape()));  // zero gradient: only decay moves p
  opt.step(0.1);
  const float f = float(1.0 - 0.1 * 0.5);
  auto wv = w.to_vector<float>(), bv = b.to_vector<float>(), kv = k.to_vector<float>();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(wv[size_t(i)], float(i + 1) * f);
  EXPECT_EQ(bv, (std::vector<float>{1, 2}));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(kv[size_t(i)], float(i + 1) * f);
}

TEST(AdamW, SkipsParamsWithoutGradAndZeroGradClears) {
  Tensor a = param({1, 2, 3}, {3}), b = param({4, 5}, {2});
  AdamW opt({{"a", a}, {"b", b}}, AdamWConfig{});
  set_grad(a, {1, 1, 1});
  opt.step(0.1);
  EXPECT_EQ(b.to_vector<float>(), (std::vector<float>{4, 5}));
  EXPECT_EQ(opt.state_tensors()[2].second.to_vector<float>(), (std::vector<float>{0, 0}));
  EXPECT_NE(a.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
}

std::vector<float> run_big(int threads_hint) {
  (void)threads_hint;
  Generator gen(5);
  Tensor p = randn({317, 331}, gen);  // > 100K elements: the OpenMP path
  AdamW opt({{"p", p}}, AdamWConfig{});
  for (int s = 0; s < 3; ++s) {
    p.set_grad(randn(p.shape(), gen));
    opt.step(1e-3);
  }
  return p.to_vector<float>();
}

TEST(AdamW, DeterministicOnCpu) {
  auto a = run_big(0), b = run_big(1);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
}

TEST(AdamW, GradScaleEqualsScalingTheGradientsFirst) {
  // step(lr, f) must be bit for bit scale_grads(f) then step(lr): clipping folded into the update.
  Generator gen(11);
  Tensor a = randn({37, 5}, gen), b = randn({37, 5}, gen);
  a.copy_(b);
  Tensor g = randn({37, 5}, gen);
  AdamW oa({{"w", a}}, AdamWConfig{}), ob({{"w", b}}, AdamWConfig{});
  const double f = 0.3791;
  for (int step = 0; step < 3; ++step) {
    a.set_grad(g.clone());
    b.set_grad(g.clone());
    scale_grads({a}, f);
    oa.step(1e-2);
    ob.step(1e-2, f);
  }
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  EXPECT_EQ(clip_factor(13.0, 20.0), 1.0);
  EXPECT_DOUBLE_EQ(clip_factor(13.0, 6.5), 6.5 / (13.0 + 1e-6));
  EXPECT_EQ(clip_factor(std::numeric_limits<double>::quiet_NaN(), 1.0), 1.0);
  EXPECT_EQ(clip_factor(13.0, 0.0), 1.0);
  expect_error_contains([&] { ob.step(1e-2, std::numeric_limits<double>::infinity()); }, "gradient scale");
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  Generator gen(9);
  Tensor w1 = randn({7, 5}, gen), b1 = randn({5}, gen);
  Tensor w2 = w1.clone(), b2 = b1.clone();
  AdamW o1({{"w", w1}, {"b", b1}}, AdamWConfig{});
  for (int s = 0; s < 3; ++s) {
    w1.set_grad(randn(w1.shape(), gen));
    b1.set_grad(randn(b1.shape(), gen));
    o1.step(1e-2);
  }
  w2.copy_(w1);
  b2.copy_(b1);
  AdamW o2({{"w", w2}, {"b", b2}}, AdamWConfig{});
  NamedTensors saved;
  for (auto& [n, t] : o1.state_tensors()) saved.emplace_back(n, t.clone());
  o2.load_state(saved, o1.steps());
  for (int s = 0; s < 3; ++s) {
    Tensor gw = randn(w1.shape(), gen), gb = randn(b1.shape(), gen);
    w1.set_grad(gw);
    b1.set_grad(gb);
    w2.set_grad(gw.clone());
    b2.set_grad(gb.clone());
    o1.step(1e-2);
    o2.step(1e-2);
  }
  EXPECT_EQ(w1.to_vector<float>(), w2.to_vector<float>());
  EXPECT_EQ(b1.to_vector<float>(), b2.to_vector<float>());
}

TEST(AdamW, LoadStateValidates) {
  Tensor w = zeros({2, 3}), b = zeros({3});
  AdamW opt({{"w", w}, {"b", b}}, AdamWConfig{});
  NamedTensors good = {{"exp_avg.w", zeros({2, 3})}, {"exp_avg_sq.w", zeros({2, 3})},
                       {"exp_avg.b", zeros({3})}, {"exp_avg_sq.b", zeros({3})}};
  opt.load_state(good, 5);
  EXPECT_EQ(opt.steps(), 5);
  NamedTensors missing(good.begin(), good.end() - 1);
  expect_error_contains([&] { opt.load_state(missing, 1); }, "has no tensor 'exp_avg_sq.b'");
  NamedTensors shaped = good;
  shaped[0].second = zeros({3, 2});
  expect_error_contains([&] { opt.load_state(shaped, 1); }, "'exp_avg.w' has shape [3, 2] but parameter 'w' has shape [2, 3]");
  NamedTensors extra = good;
  extra.emplace_back("exp_avg.lm_head", zeros({1}));
  expect_error_contains([&] { opt.load_state(extra, 1); }, "'exp_avg.lm_head' that matches no parameter");
  expect_error_contains([&] { opt.load_state(good, -1); }, "step count must be >= 0");
  EXPECT_EQ(opt.steps(), 5);  // failed loads change nothing
}

TEST(AdamW, RejectsBadParamsAndConfig) {
  expect_error_contains([] { AdamW({{"w", zeros({2}, DType::F64)}}, AdamWConfig{}); }, "master parameters must be f32");
  expect_error_contains([] { AdamW({{"w", zeros({2})}, {"w", zeros({2})}}, AdamWConfig{}); }, "duplicate parameter name 'w'");
  expect_error_contains([] { AdamW({{"w", zeros({2, 3}).t()}}, AdamWConfig{}); }, "not contiguous");
  expect_error_contains([] { AdamW({{"w", zeros({2})}}, AdamWConfig{1.0, 0.95, 1e-8, 0.1}); }, "beta1 must be in [0, 1)");
  expect_error_contains([] { AdamW({{"w", zeros({2})}}, AdamWConfig{0.9, 0.95, 0.0, 0.1}); }, "eps must be > 0");
  AdamW opt({{"w", zeros({2})}}, AdamWConfig{});
  expect_error_contains([&] { opt.step(std::nan("")); }, "learning rate must be finite");
}

// ---------------------------------------------------------------------------------------------
// schedules
// ---------------------------------------------------------------------------------------------

TEST(Schedule, CosineLinearConstant) {
  ScheduleConfig c;
  c.kind = "cosine";
  c.lr = 1.0;
  c.min_lr = 0.1;
  c.warmup = 10;
  c.steps = 110;
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 0.1);   // lr / warmup
  EXPECT_DOUBLE_EQ(lr_at(c, 4), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(c, 9), 1.0);   // warmup end
  EXPECT_DOUBLE_EQ(lr_at(c, 10), 1.0);  // decay start
  EXPECT_NEAR(lr_at(c, 60), 0.55, 1e-12);  // midpoint
  EXPECT_NEAR(lr_at(c, 35), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(c, 110), 0.1);  // end
  EXPECT_DOUBLE_EQ(lr_at(c, 500), 0.1);  // past the end
  c.kind = "linear";
  EXPECT_DOUBLE_EQ(lr_at(c, 9), 1.0);
  EXPECT_NEAR(lr_at(c, 60), 0.55, 1e-12);
  EXPECT_NEAR(lr_at(c, 85), 1.0 - 0.9 * 0.75, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(c, 110), 0.1);
  c.kind = "constant";
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(c, 50), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 110), 1.0);
  c.kind = "cosine";
  c.warmup = 0;
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 1.0);  // no warmup: full lr at step 0
}

TEST(Schedule, WsdPlateauThenLinearDecay) {
  ScheduleConfig c;
  c.kind = "wsd";
  c.lr = 2.0;
  c.min_lr = 0.0;
  c.warmup = 10;
  c.steps = 100;
  c.decay_fraction = 0.2;
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 0.2);
  EXPECT_DOUBLE_EQ(lr_at(c, 9), 2.0);
  for (int64_t s : {10, 50, 79, 80}) EXPECT_DOUBLE_EQ(lr_at(c, s), 2.0) << s;  // plateau
  EXPECT_DOUBLE_EQ(lr_at(c, 90), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 95), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(c, 100), 0.0);
  c.decay_fraction = 0.0;  // no decay phase
  EXPECT_DOUBLE_EQ(lr_at(c, 99), 2.0);
}

TEST(Schedule, Validation) {
  ScheduleConfig c;
  c.kind = "cosin";
  expect_error_contains([&] { lr_at(c, 0); }, "unknown learning-rate schedule 'cosin'");
  expect_error_contains([&] { validate_schedule(c); }, "cosine, wsd, constant, linear");
  c.kind = "cosine";
  c.steps = 10;
  c.warmup = 11;
  expect_error_contains([&] { validate_schedule(c); }, "train.warmup must be in [0, train.steps = 10]");
  c.warmup = 0;
  c.min_lr = 1.0;
  expect_error_contains([&] { validate_schedule(c); }, "train.min_lr");
  c.min_lr = 0;
  c.lr = 0;
  expect_error_contains([&] { validate_schedule(c); }, "train.lr must be");
  c.lr = 1e-3;
  c.steps = 0;
  expect_error_contains([&] { validate_schedule(c); }, "train.steps must be >= 1");
  c.steps = 5;
  c.decay_fraction = 1.5;
  expect_error_contains([&] { validate_schedule(c); }, "decay_fraction");
  c.decay_fraction = 0.2;
  expect_error_contains([&] { lr_at(c, -1); }, "step must be >= 0");
}

// ---------------------------------------------------------------------------------------------
// gradient norm
// ---------------------------------------------------------------------------------------------

TEST(GradNorm, SimpleValuesClipAndScale) {
  Tensor a = param({0, 0}, {2}), b = param({0}, {1}), c = param({1, 2, 3}, {3});  // c has no grad
  set_grad(a, {3, 4});
  set_grad(b, {12});
  std::vector<Tensor> ps = {a, b, c};
  EXPECT_DOUBLE_EQ(grad_norm(ps), 13.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 20.0), 13.0);  // under the limit: untouched
  EXPECT_EQ(a.grad().to_vector<float>(), (std::vector<float>{3, 4}));
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 6.5), 13.0);  // returns the norm before clipping
  EXPECT_NEAR(grad_norm(ps), 6.5, 1e-5);
  EXPECT_NEAR(a.grad().to_vector<float>()[0], 1.5, 1e-6);
  scale_grads(ps, 2.0);
  EXPECT_NEAR(grad_norm(ps), 13.0, 1e-5);
  EXPECT_FALSE(c.grad().defined());
  EXPECT_EQ(grad_norm({c}), 0.0);
}

TEST(GradNorm, LargeTensorsMatchF64) {
  Generator gen(3);
  std::vector<Tensor> ps;
  double ref = 0;
  for (int64_t n : {1, 7, 4097, 100003, 262147}) {
    Tensor p = zeros({n});
    Tensor g = randn({n}, gen);
    p.set_grad(g);
    for (double x : g.to_vector<double>()) ref += x * x;
    ps.push_back(p);
  }
  // a non-contiguous and a non-f32 gradient take the general path
  Tensor q = zeros({3, 4});
  q.set_grad(randn({4, 3}, gen).t());
  for (double x : q.grad().to_vector<double>()) ref += x * x;
  ps.push_back(q);
  Tensor r = zeros({5});
  r.set_grad(randn({5}, gen, DType::F64));
  for (double x : r.grad().to_vector<double>()) ref += double(float(x)) * double(float(x));
  ps.push_back(r);
  const double norm = grad_norm(ps);
  EXPECT_NEAR(norm, std::sqrt(ref), 1e-6 * std::sqrt(ref));
  EXPECT_EQ(norm, grad_norm(ps));  // deterministic
  scale_grads(ps, 0.25);
  EXPECT_NEAR(grad_norm(ps), 0.25 * std::sqrt(ref), 1e-6 * std::sqrt(ref));
}

TEST(GradNorm, NanAndInfPropagateAndClipLeavesGradsAlone) {
  Tensor a = param({0, 0, 0}, {3});
  set_grad(a, {1, std::numeric_limits<float>::quiet_NaN(), 2});
  EXPECT_TRUE(std::isnan(grad_norm({a})));
  EXPECT_TRUE(std::isnan(clip_grad_norm({a}, 1.0)));
  EXPECT_EQ(a.grad().to_vector<float>()[0], 1.0f);  // not scaled
  set_grad(a, {1, std::numeric_limits<float>::infinity(), 2});
  EXPECT_TRUE(std::isinf(grad_norm({a})));
}

}  // namespace
}  // namespace seqmix::train
