#include <gtest/gtest.h>

#include "autograd/checkpoint.h"
#include "autograd/function.h"
#include "autograd/gradcheck.h"
#include "core/ops.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::autograd;
using seqmix::testing::rel_error;

TEST(Engine, SimpleGradients) {
  Tensor x = Tensor::from_vector<double>({1, 2, 3}, {3});
  x.requires_grad_();
  Tensor y = sum(mul(x, x));  // dy/dx = 2x
  y.backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{2, 4, 6}));
}

TEST(Engine, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2});
  x.requires_grad_();
  sum(x * 3.0).backward();
  sum(x * 2.0).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{5, 5}));
}

TEST(Engine, SharedSubexpressionAccumulates) {
  Tensor x = Tensor::from_vector<double>({2}, {1});
  x.requires_grad_();
  Tensor a = x * x;       // 2x
  Tensor y = sum(a * a + a);  // d/dx (x^4 + x^2) = 4x^3 + 2x = 36
  y.backward();
  EXPECT_DOUBLE_EQ(x.grad().item(), 36.0);
}

TEST(Engine, DeepChainDoesNotOverflowTheStack) {
  Tensor x = Tensor::from_vector<float>({1.0f}, {1});
  x.requires_grad_();
  Tensor y = x;
  for (int i = 0; i < 100000; ++i) y = y * 1.0;
  sum(y).backward();
  EXPECT_FLOAT_EQ(x.grad().item(), 1.0f);
}

TEST(Engine, NoGradRecordsNothing) {
  Tensor x = ones({3});
  x.requires_grad_();
  {
    NoGradGuard ng;
    Tensor y = x * 2.0;
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_TRUE((x * 2.0).requires_grad());
}

TEST(Engine, SecondBackwardNeedsRetainGraph) {
  Tensor x = ones({3});
  x.requires_grad_();
  Tensor y = sum(exp(x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  EXPECT_NEAR(x.grad().to_vector<float>()[0], 2 * std::exp(1.0), 1e-5);
  Tensor z = sum(exp(x));
  z.backward();
  seqmix::testing::expect_error_contains([&] { z.backward(); }, "retain_graph");
}

TEST(Engine, NonScalarNeedsExplicitGradient) {
  Tensor x = ones({3});
  x.requires_grad_();
  seqmix::testing::expect_error_contains([&] { (x * 2.0).backward(); }, "non-scalar");
}

TEST(Engine, GradReadyHooksFireOncePerLeafInReverseOrder) {
  Tensor w1 = ones({2}), w2 = ones({2});
  w1.requires_grad_();
  w2.requires_grad_();
  std::vector<int> order;
  w1.register_grad_ready_hook([&](const Tensor&) { order.push_back(1); });
  w2.register_grad_ready_hook([&](const Tensor& g) {
    order.push_back(2);
    EXPECT_EQ(g.to_vector<float>(), (std::vector<float>{3, 3}));
  });
  Tensor h = w1 * 2.0;     // layer 1
  Tensor out = h * w2 * 1.5;  // layer 2 uses w2
  sum(out).backward();
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], 2);  // the later layer's gradient is ready first
  EXPECT_EQ(order[1], 1);
}

TEST(Engine, GradSinkReceivesTheGradientPlusWhatWasAccumulated) {
  Tensor w = ones({3});
  w.requires_grad_();
  sum(w * 2.0).backward();  // an earlier micro-batch: grad() = 2
  Tensor buffer = zeros({5}, DType::BF16);
  Tensor sink = make_view(buffer, {3}, {1}, 1);  // elements 1..3 of a wider buffer, another dtype
  w.set_grad_sink(sink);
  int calls = 0, calls_with_sink = 0;
  w.register_grad_ready_hook([&](const Tensor& g) {
    ++calls;
    calls_with_sink += g.same(sink);
  });
  sum(w * 3.0).backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(calls_with_sink, 1);
  EXPECT_FALSE(w.grad().defined());  // the gradient lives in the sink
  EXPECT_EQ(buffer.to_vector<float>(), (std::vector<float>{0, 5, 5, 5, 0}));
  w.set_grad_sink(Tensor());
  sum(w * 4.0).backward();  // without the sink: a fresh gradient again
  EXPECT_EQ(w.grad().to_vector<float>(), (std::vector<float>{4, 4, 4}));
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(calls_with_sink, 1);
  EXPECT_EQ(buffer.to_vector<float>(), (std::vector<float>{0, 5, 5, 5, 0}));
  seqmix::testing::expect_error_contains([&] { w.set_grad_sink(zeros({2})); }, "set_grad_sink");
}

// A cast passes a leaf's gradient back in the cast's dtype; the leaf still gets it in its own dtype, summed there
// when several casts (or a cast and a direct use) reach it, and a sink gets it converted once.
TEST(Engine, CastOfALeafDeliversItsGradientInTheLeafsDtype) {
  Tensor w = full({4}, 1.0);  // f32 leaf
  w.requires_grad_();
  // two casts: gradients 1 and 2^-9 arrive in bf16; 1 + 2^-9 is exact in f32 and rounds to 1 in bf16
  (sum(cast(w, DType::BF16)) + sum(cast(w, DType::BF16) * (1.0 / 512))).backward();
  ASSERT_EQ(w.grad().dtype(), DType::F32);
  for (float x : w.grad().to_vector<float>()) EXPECT_EQ(x, 1.0f + 1.0f / 512);
  Tensor v = full({2}, 1.0);
  v.requires_grad_();
  sum(cast(v, DType::BF16)).backward();  // one cast only: converted where it lands
  ASSERT_EQ(v.grad().dtype(), DType::F32);
  EXPECT_EQ(v.grad().to_vector<float>(), (std::vector<float>{1, 1}));
  // summed in the leaf's dtype: 1 (bf16 path) + 2^-9 (f32 path) is exact in f32, lost in bf16
  Tensor u = full({2}, 1.0);
  u.requires_grad_();
  (sum(cast(u, DType::BF16)).to(DType::F32) + sum(u * (1.0 / 512))).backward();
  EXPECT_EQ(u.grad().to_vector<float>(), (std::vector<float>{1.0f + 1.0f / 512, 1.0f + 1.0f / 512}));
  // a sink of the cast's dtype receives it with no f32 round trip; grad() through a cast: the leaf's dtype
  Tensor sink = zeros({2}, DType::BF16);
  u.set_grad(Tensor());
  u.set_grad_sink(sink);
  sum(cast(u, DType::BF16) * 3.0).backward();
  EXPECT_EQ(sink.to_vector<float>(), (std::vector<float>{3, 3}));
  u.set_grad_sink(Tensor());
  Tensors g = grad({sum(cast(u, DType::BF16) * 2.0)}, {u}, {Tensor()});
  ASSERT_EQ(g[0].dtype(), DType::F32);
  EXPECT_EQ(g[0].to_vector<float>(), (std::vector<float>{2, 2}));
}

TEST(Engine, GradFunctionDoesNotTouchDotGrad) {
  Tensor x = seqmix::testing::random_f64({4}, 1);
  Tensor y = sum(sin(x));
  Tensors g = grad({y}, {x}, {Tensor()});
  EXPECT_FALSE(x.grad().defined());
  EXPECT_LT(rel_error(g[0], cos(x.detach())), 1e-12);
}

struct ScaleByThree : CustomFunction {
  std::string name() const override { return "scale_by_three"; }
  Tensors backward(const Tensors& grads) override { return {grads[0] * 3.0}; }
};

TEST(CustomFunction, HandWrittenBackwardIsUsed) {
  Tensor x = seqmix::testing::random_f64({5}, 2);
  auto f = [](const Tensors& in) -> Tensor {
    Tensor y;
    {
      NoGradGuard ng;
      y = in[0] * 3.0;
    }
    if (needs_grad({&in[0]})) {
      auto fn = std::make_shared<ScaleByThree>();
      fn->save_for_backward({in[0]});
      CustomFunction::attach(fn, {in[0]}, {y});
    }
    return y;
  };
  GradcheckResult r = gradcheck(f, {x});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(Gradcheck, CatchesAWrongBackward) {
  struct Wrong : CustomFunction {
    std::string name() const override { return "wrong"; }
    Tensors backward(const Tensors& grads) override { return {grads[0] * 2.0}; }
  };
  Tensor x = seqmix::testing::random_f64({3}, 3);
  auto f = [](const Tensors& in) -> Tensor {
    Tensor y;
    {
      NoGradGuard ng;
      y = in[0] * 3.0;
    }
    if (needs_grad({&in[0]})) CustomFunction::attach(std::make_shared<Wrong>(), {in[0]}, {y});
    return y;
  };
  GradcheckResult r = gradcheck(f, {x});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("analytic"), std::string::npos);
}

TEST(Checkpoint, RecomputeGivesTheSameGradients) {
  Generator g(11);
  Tensor w = randn({6, 6}, g, DType::F64);
  w.requires_grad_();
  Tensor x = seqmix::testing::random_f64({3, 6}, 4);
  auto block = [&](const Tensors& in) -> Tensors {
    Tensor h = tanh(matmul(in[0], w));
    return {dropout(h, 0.3, true, default_generator()) * 2.0};
  };
  manual_seed(99);
  sum(block({x})[0]).backward();
  Tensor gw = w.grad().clone(), gx = x.grad().clone();
  w.set_grad(Tensor());
  x.set_grad(Tensor());
  manual_seed(99);
  Tensors out = checkpoint(block, {x});
  sum(out[0]).backward();
  EXPECT_LT(rel_error(w.grad(), gw), 1e-12);
  EXPECT_LT(rel_error(x.grad(), gx), 1e-12);
}
