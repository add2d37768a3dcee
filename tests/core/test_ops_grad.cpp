// Finite-difference gradient checks (f64, CPU) for every differentiable op of core/ops.h, on small
// odd shapes, broadcast operands, strided (transposed, sliced) views and inputs kept inside each op's
// domain (positive for log/sqrt, away from kinks for abs/relu/clamp/max).
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <type_traits>

#include "autograd/function.h"
#include "autograd/gradcheck.h"
#include "core/ops.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::autograd;

namespace {

enum class Domain {
  Normal,        // N(0, 1)
  Positive,      // uniform in [0.3, 2.3]
  AwayFromZero,  // |x| in [0.25, 2], random sign
};

Tensor values(const std::vector<double>& v, const Shape& shape, bool requires_grad = true) {
  Tensor t = Tensor::from_vector<double>(v, shape);
  if (requires_grad) t.requires_grad_();
  return t;
}

// An f64 leaf with values in `domain` (requires grad unless told otherwise).
Tensor leaf(const Shape& shape, uint64_t seed, Domain domain = Domain::Normal, bool requires_grad = true) {
  Generator g(seed);
  std::vector<double> v;
  switch (domain) {
    case Domain::Normal: v = randn(shape, g, DType::F64).to_vector<double>(); break;
    case Domain::Positive:
      v = rand(shape, g, DType::F64).to_vector<double>();
      for (double& x : v) x = 0.3 + 2.0 * x;
      break;
    case Domain::AwayFromZero: {
      v = rand(shape, g, DType::F64).to_vector<double>();
      std::vector<double> s = rand(shape, g, DType::F64).to_vector<double>();
      for (size_t i = 0; i < v.size(); ++i) v[i] = (0.25 + 1.75 * v[i]) * (s[i] < 0.5 ? -1.0 : 1.0);
      break;
    }
  }
  return values(v, shape, requires_grad);
}

// Moves values that lie within `margin` of any of `points` to a distance `margin` (kinks of clamp).
Tensor avoiding(const Tensor& t, const std::vector<double>& points, double margin) {
  std::vector<double> v = t.to_vector<double>();
  for (double& x : v)
    for (double p : points)
      if (std::abs(x - p) < margin) x = x < p ? p - margin : p + margin;
  return values(v, t.shape(), t.requires_grad());
}

Tensor ids(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_vector<int64_t>(v, shape); }

// Runs gradcheck on f (returning a Tensor or Tensors) and reports the worst mismatch on failure.
template <typename F>
void expect_gradcheck(const std::string& what, F f, const Tensors& inputs, GradcheckOptions opt = {}) {
  using R = std::invoke_result_t<F, const Tensors&>;
  std::function<R(const Tensors&)> fn(f);
  try {
    GradcheckResult r = gradcheck(fn, inputs, opt);
    EXPECT_TRUE(r.ok) << what << ": " << r.message;
  } catch (const Error& e) {
    ADD_FAILURE() << what << ": threw " << e.what();
  }
}

using UnaryFn = Tensor (*)(const Tensor&);
struct UnaryCase {
  const char* name;
  UnaryFn fn;
  Domain domain;
};
const UnaryCase kUnaryCases[] = {
    {"neg", seqmix::neg, Domain::Normal},
    {"abs", seqmix::abs, Domain::AwayFromZero},
    {"exp", seqmix::exp, Domain::Normal},
    {"log", seqmix::log, Domain::Positive},
    {"sqrt", seqmix::sqrt, Domain::Positive},
    {"rsqrt", seqmix::rsqrt, Domain::Positive},
    {"reciprocal", seqmix::reciprocal, Domain::AwayFromZero},
    {"square", seqmix::square, Domain::Normal},
    {"sin", seqmix::sin, Domain::Normal},
    {"cos", seqmix::cos, Domain::Normal},
    {"tanh", seqmix::tanh, Domain::Normal},
    {"sigmoid", seqmix::sigmoid, Domain::Normal},
    {"logsigmoid", seqmix::logsigmoid, Domain::Normal},
    {"relu", seqmix::relu, Domain::AwayFromZero},
    {"silu", seqmix::silu, Domain::Normal},
    {"gelu", seqmix::gelu, Domain::Normal},
    {"softplus", seqmix::softplus, Domain::Normal},
    {"elu", seqmix::elu, Domain::AwayFromZero},
    {"elu_plus_one", seqmix::elu_plus_one, Domain::AwayFromZero},
};

using BinaryFn = Tensor (*)(const Tensor&, const Tensor&);
struct BinaryCase {
  const char* name;
  BinaryFn fn;
  Domain a_domain, b_domain;
};
const BinaryCase kBinaryCases[] = {
    {"add", seqmix::add, Domain::Normal, Domain::Normal},
    {"sub", seqmix::sub, Domain::Normal, Domain::Normal},
    {"mul", seqmix::mul, Domain::Normal, Domain::Normal},
    {"div", seqmix::div, Domain::Normal, Domain::AwayFromZero},
    {"maximum", seqmix::maximum, Domain::Normal, Domain::Normal},
    {"minimum", seqmix::minimum, Domain::Normal, Domain::Normal},
    {"pow", static_cast<BinaryFn>(seqmix::pow), Domain::Positive, Domain::Normal},
};

}  // namespace

// ---- elementwise ----

TEST(OpsGrad, UnaryOps) {
  for (const UnaryCase& c : kUnaryCases) {
    Tensor x = leaf({3, 5}, 11, c.domain);
    expect_gradcheck(c.name, [&](const Tensors& in) { return c.fn(in[0]); }, {x});
    // a strided (transposed) input goes through the broadcasting loop, not the dense one
    expect_gradcheck(std::string(c.name) + " (transposed input)", [&](const Tensors& in) { return c.fn(in[0].t()); }, {x});
  }
}

TEST(OpsGrad, UnaryOpsOverAWideRange) {
  // both branches of the stable sigmoid / softplus / logsigmoid forms (|x| > 20 switches formula)
  Tensor x = values({-30, -21, -19, -7, -0.7, 0.3, 4, 19, 21, 30}, {10});
  for (UnaryFn fn : {seqmix::sigmoid, seqmix::logsigmoid, seqmix::softplus, seqmix::tanh, seqmix::silu, seqmix::gelu})
    expect_gradcheck("wide range", [&](const Tensors& in) { return fn(in[0]); }, {x});
  Tensor xn = values({-30, -7, -0.7, -0.3}, {4});
  expect_gradcheck("elu negative", [](const Tensors& in) { return elu(in[0]); }, {xn});
  expect_gradcheck("elu_plus_one negative", [](const Tensors& in) { return elu_plus_one(in[0]); }, {xn});
}

TEST(OpsGrad, UnaryThroughTheTable) {
  Tensor x = leaf({7}, 12, Domain::Positive);
  for (UnaryOp op : {UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Gelu})
    expect_gradcheck(op_name(op), [&](const Tensors& in) { return unary(op, in[0]); }, {x});
}

TEST(OpsGrad, BinaryOpsWithBroadcasting) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 5}, {3, 5}}, {{3, 1, 5}, {4, 5}}, {{4, 5}, {3, 1, 5}}, {{3, 5}, {}}, {{}, {3, 5}},
      {{5}, {3, 5}},    {{3, 1}, {1, 5}},    {{}, {}},
  };
  uint64_t seed = 100;
  for (const BinaryCase& c : kBinaryCases) {
    for (const auto& [sa, sb] : shapes) {
      Tensor a = leaf(sa, seed++, c.a_domain), b = leaf(sb, seed++, c.b_domain);
      std::string what = std::string(c.name) + " " + shape_str(sa) + " with " + shape_str(sb);
      expect_gradcheck(what, [&](const Tensors& in) { return c.fn(in[0], in[1]); }, {a, b});
    }
    // only one operand needs a gradient
    Tensor a = leaf({3, 5}, seed++, c.a_domain), b = leaf({5}, seed++, c.b_domain, false);
    expect_gradcheck(std::string(c.name) + " (b fixed)", [&](const Tensors& in) { return c.fn(in[0], in[1]); }, {a, b});
    Tensor a2 = leaf({3, 5}, seed++, c.a_domain, false), b2 = leaf({3, 1}, seed++, c.b_domain);
    expect_gradcheck(std::string(c.name) + " (a fixed)", [&](const Tensors& in) { return c.fn(in[0], in[1]); }, {a2, b2});
    // strided operands
    Tensor at = leaf({5, 3}, seed++, c.a_domain), bt = leaf({5, 3}, seed++, c.b_domain);
    expect_gradcheck(std::string(c.name) + " (transposed)", [&](const Tensors& in) { return c.fn(in[0].t(), in[1].t()); },
                     {at, bt});
  }
}

TEST(OpsGrad, BinaryOpsPromoteDtypes) {
  Tensor a = leaf({3, 5}, 21);
  Tensor f = Tensor::from_vector<float>({0.5f, -1.5f, 2.0f, 3.0f, -0.25f}, {5});
  Tensor i = Tensor::from_vector<int64_t>({1, -2, 3}, {3, 1});
  expect_gradcheck("f64 * f32", [&](const Tensors& in) { return mul(in[0], f); }, {a});
  expect_gradcheck("f64 / i64", [&](const Tensors& in) { return div(in[0], i); }, {a});
}

TEST(OpsGrad, ScalarOperators) {
  Tensor x = leaf({3, 5}, 22, Domain::AwayFromZero);
  expect_gradcheck("x + s", [](const Tensors& in) { return in[0] + 1.5; }, {x});
  expect_gradcheck("x - s", [](const Tensors& in) { return in[0] - 1.5; }, {x});
  expect_gradcheck("x * s", [](const Tensors& in) { return in[0] * -2.5; }, {x});
  expect_gradcheck("x / s", [](const Tensors& in) { return in[0] / 3.0; }, {x});
  expect_gradcheck("s - x", [](const Tensors& in) { return 2.0 - in[0]; }, {x});
  expect_gradcheck("s * x", [](const Tensors& in) { return 0.5 * in[0]; }, {x});
  expect_gradcheck("-x", [](const Tensors& in) { return -in[0]; }, {x});
  expect_gradcheck("x * x + x / x", [](const Tensors& in) { return in[0] * in[0] + in[0] / in[0]; }, {x});
}

TEST(OpsGrad, PowScalar) {
  Tensor x = leaf({3, 5}, 23, Domain::Positive);
  for (double p : {2.0, 3.0, 0.5, -1.5, 2.7, 1.0})
    expect_gradcheck("pow " + std::to_string(p), [&](const Tensors& in) { return pow(in[0], p); }, {x});
  Tensor xn = leaf({7}, 24, Domain::AwayFromZero);  // integer powers of negative numbers
  expect_gradcheck("pow 3 (negative base)", [](const Tensors& in) { return pow(in[0], 3.0); }, {xn});
}

TEST(OpsGrad, AffineAndClamp) {
  Tensor x = leaf({3, 5}, 25);
  expect_gradcheck("affine", [](const Tensors& in) { return affine(in[0], -1.7, 0.3); }, {x});
  expect_gradcheck("affine alpha=1", [](const Tensors& in) { return affine(in[0], 1.0, 2.0); }, {x});
  Tensor xc = avoiding(leaf({3, 7}, 26), {-0.4, 0.6}, 1e-3);
  expect_gradcheck("clamp", [](const Tensors& in) { return clamp(in[0], -0.4, 0.6); }, {xc});
  expect_gradcheck("clamp (transposed)", [](const Tensors& in) { return clamp(in[0].t(), -0.4, 0.6); }, {xc});
}

TEST(OpsGrad, Where) {
  Tensor cond = Tensor::from_vector<uint8_t>({1, 0, 0, 1}, {4, 1});
  Tensor a = leaf({3, 1, 5}, 27), b = leaf({5}, 28);
  expect_gradcheck("where broadcast", [&](const Tensors& in) { return where(cond, in[0], in[1]); }, {a, b});
  Tensor a2 = leaf({3, 5}, 29), b2 = leaf({3, 5}, 30);
  Tensor c2 = gt(leaf({3, 5}, 31, Domain::Normal, false), zeros({}, DType::F64));
  expect_gradcheck("where same shape", [&](const Tensors& in) { return where(c2, in[0], in[1]); }, {a2, b2});
  expect_gradcheck("where with a 0-d constant",
                   [&](const Tensors& in) { return where(c2, in[0], zeros({}, DType::F64)); }, {a2});
}

// ---- reductions ----

TEST(OpsGrad, SumAndMean) {
  Tensor x = leaf({3, 4, 5}, 40);
  expect_gradcheck("sum all", [](const Tensors& in) { return sum(in[0]); }, {x});
  expect_gradcheck("mean all", [](const Tensors& in) { return mean(in[0]); }, {x});
  for (int d : {0, 1, 2, -1})
    for (bool keep : {false, true}) {
      std::string tag = " dim " + std::to_string(d) + (keep ? " keepdim" : "");
      expect_gradcheck("sum" + tag, [&](const Tensors& in) { return sum(in[0], d, keep); }, {x});
      expect_gradcheck("mean" + tag, [&](const Tensors& in) { return mean(in[0], d, keep); }, {x});
    }
  for (bool keep : {false, true}) {
    expect_gradcheck("sum dims {0, 2}", [&](const Tensors& in) { return sum(in[0], std::vector<int>{0, 2}, keep); }, {x});
    expect_gradcheck("sum dims {-1, 1}", [&](const Tensors& in) { return sum(in[0], std::vector<int>{-1, 1}, keep); }, {x});
  }
  expect_gradcheck("sum of a permuted view", [](const Tensors& in) { return sum(in[0].permute({2, 0, 1}), 1); }, {x});
  Tensor s = leaf({}, 41);
  expect_gradcheck("sum of a 0-d tensor", [](const Tensors& in) { return sum(in[0]); }, {s});
  expect_gradcheck("dim 0 of a 0-d tensor", [](const Tensors& in) {
    return Tensors{sum(in[0], 0), mean(in[0], 0), max(in[0], 0), min(in[0], 0, true), logsumexp(in[0], 0), cumsum(in[0], 0)};
  }, {s});
}

TEST(OpsGrad, MaxMinLogsumexp) {
  Tensor x = leaf({3, 4, 5}, 42);
  for (int d : {0, 1, 2, -1})
    for (bool keep : {false, true}) {
      std::string tag = " dim " + std::to_string(d) + (keep ? " keepdim" : "");
      expect_gradcheck("max" + tag, [&](const Tensors& in) { return max(in[0], d, keep); }, {x});
      expect_gradcheck("min" + tag, [&](const Tensors& in) { return min(in[0], d, keep); }, {x});
      expect_gradcheck("logsumexp" + tag, [&](const Tensors& in) { return logsumexp(in[0], d, keep); }, {x});
    }
  expect_gradcheck("max of a transposed view", [](const Tensors& in) { return max(in[0].transpose(0, 2), 1); }, {x});
  expect_gradcheck("logsumexp of a transposed view", [](const Tensors& in) { return logsumexp(in[0].transpose(0, 2), 0); }, {x});
}

TEST(OpsGrad, SumTo) {
  Tensor x = leaf({3, 4, 5}, 43);
  for (const Shape& s : std::vector<Shape>{{4, 1}, {1, 5}, {5}, {3, 1, 1}, {1, 4, 5}, {3, 4, 5}, {4, 5}})
    expect_gradcheck("sum_to " + shape_str(s), [&](const Tensors& in) { return sum_to(in[0], s); }, {x});
}

// ---- linear algebra ----

namespace {
struct MatmulCase {
  Shape a, b;
  bool ta = false, tb = false;  // the stored operand is the transpose; f uses .transpose(-1, -2)
};
}  // namespace

TEST(OpsGrad, Matmul) {
  const std::vector<MatmulCase> cases = {
      {{3, 5}, {5, 4}},
      {{1, 5}, {5, 4}},
      {{3, 5}, {5, 1}},
      {{2, 3, 5}, {2, 5, 4}},        // batched
      {{2, 3, 5}, {5, 4}},           // b shared across the batch
      {{3, 5}, {2, 5, 4}},           // a shared across the batch
      {{1, 3, 5}, {2, 5, 4}},        // size-1 batch broadcast
      {{2, 3, 5}, {1, 5, 4}},        // size-1 batch broadcast
      {{2, 1, 3, 5}, {3, 5, 4}},     // 4-d broadcast batch
      {{5}, {5, 4}},                 // 1-d operands
      {{3, 5}, {5}},
      {{5}, {2, 5, 4}},
      {{2, 3, 5}, {5}},
      {{5, 3}, {5, 4}, true, false},  // transposed views
      {{3, 5}, {4, 5}, false, true},
      {{5, 3}, {4, 5}, true, true},
      {{2, 5, 3}, {2, 4, 5}, true, true},
      {{2, 5, 3}, {5, 4}, true, false},  // strided a with a shared b
      {{3, 5}, {2, 4, 5}, false, true},
  };
  uint64_t seed = 50;
  for (const MatmulCase& c : cases) {
    Tensor a = leaf(c.a, seed++), b = leaf(c.b, seed++);
    std::string what = "matmul " + shape_str(c.a) + (c.ta ? "^T" : "") + " @ " + shape_str(c.b) + (c.tb ? "^T" : "");
    expect_gradcheck(what, [&](const Tensors& in) {
      return matmul(c.ta ? in[0].transpose(-1, -2) : in[0], c.tb ? in[1].transpose(-1, -2) : in[1]);
    }, {a, b});
  }
  // row-sliced operand (leading stride larger than the row) and a column-strided one (needs a copy)
  Tensor a = leaf({3, 7}, seed++), b = leaf({5, 4}, seed++);
  expect_gradcheck("matmul of a column slice", [](const Tensors& in) { return matmul(in[0].slice(1, 1, 6), in[1]); }, {a, b});
  expect_gradcheck("matmul of a strided slice",
                   [](const Tensors& in) { return matmul(in[0].slice(1, 0, 7, 2), in[1].slice(0, 1, 5)); }, {a, b});
  // one operand fixed
  Tensor bf = leaf({5, 4}, seed++, Domain::Normal, false);
  expect_gradcheck("matmul with b fixed", [&](const Tensors& in) { return matmul(in[0].slice(1, 1, 6), bf); }, {a});
}

TEST(OpsGrad, Linear) {
  Tensor x = leaf({3, 5}, 60), w = leaf({4, 5}, 61), b = leaf({4}, 62);
  expect_gradcheck("linear with bias", [](const Tensors& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
  expect_gradcheck("linear without bias", [](const Tensors& in) { return linear(in[0], in[1]); }, {x, w});
  Tensor x3 = leaf({2, 3, 5}, 63);
  expect_gradcheck("linear 3-d input", [](const Tensors& in) { return linear(in[0], in[1], in[2]); }, {x3, w, b});
  Tensor x1 = leaf({5}, 64);
  expect_gradcheck("linear 1-d input", [](const Tensors& in) { return linear(in[0], in[1], in[2]); }, {x1, w, b});
  Tensor wt = leaf({5, 4}, 65);
  expect_gradcheck("linear with a transposed weight", [](const Tensors& in) { return linear(in[0], in[1].t(), in[2]); },
                   {x, wt, b});
  Tensor xt = leaf({5, 3}, 66);
  expect_gradcheck("linear with a transposed input", [](const Tensors& in) { return linear(in[0].t(), in[1], in[2]); },
                   {xt, w, b});
  Tensor wf = leaf({4, 5}, 67, Domain::Normal, false);
  expect_gradcheck("linear with a fixed weight", [&](const Tensors& in) { return linear(in[0], wf, in[1]); }, {x3, b});
}

// ---- neural-network ops ----

TEST(OpsGrad, SoftmaxAndLogSoftmax) {
  Tensor x = leaf({3, 4, 5}, 70);
  for (int d : {-1, 1, 0}) {
    expect_gradcheck("softmax dim " + std::to_string(d), [&](const Tensors& in) { return softmax(in[0], d); }, {x});
    expect_gradcheck("log_softmax dim " + std::to_string(d), [&](const Tensors& in) { return log_softmax(in[0], d); }, {x});
  }
  expect_gradcheck("softmax of a transposed view", [](const Tensors& in) { return softmax(in[0].transpose(1, 2), -1); }, {x});
}

TEST(OpsGrad, CrossEntropy) {
  Tensor logits = leaf({2, 3, 5}, 71);
  Tensor t = ids({1, -100, 4, 0, 2, -100}, {2, 3});
  expect_gradcheck("cross_entropy with ignored rows", [&](const Tensors& in) { return cross_entropy(in[0], t); }, {logits});
  Tensor t32 = Tensor::from_vector<int32_t>({3, 3, 0, 1, 4, 2}, {2, 3});
  expect_gradcheck("cross_entropy i32 targets, ignore_index 3",
                   [&](const Tensors& in) { return cross_entropy(in[0], t32, 3); }, {logits});
  Tensor l2 = leaf({7, 5}, 72);  // used as its [5, 7] transpose
  Tensor t2 = ids({6, 0, 3, 3, 1}, {5});
  expect_gradcheck("cross_entropy of a transposed view", [&](const Tensors& in) { return cross_entropy(in[0].t(), t2); }, {l2});
  expect_gradcheck("cross_entropy of scaled logits", [&](const Tensors& in) { return cross_entropy(in[0].t() * 3.0, t2); }, {l2});
  expect_gradcheck("cross_entropy, every row ignored", [&](const Tensors& in) {
    return cross_entropy(in[0].t(), ids({-100, -100, -100, -100, -100}, {5}));
  }, {l2});
}

TEST(OpsGrad, LayerNormAndRmsNorm) {
  Tensor x = leaf({3, 7}, 80), w = leaf({7}, 81), b = leaf({7}, 82);
  expect_gradcheck("layer_norm", [](const Tensors& in) { return layer_norm(in[0], in[1], in[2]); }, {x, w, b});
  expect_gradcheck("layer_norm no affine", [](const Tensors& in) { return layer_norm(in[0], Tensor(), Tensor()); }, {x});
  expect_gradcheck("layer_norm weight only", [](const Tensors& in) { return layer_norm(in[0], in[1], Tensor()); }, {x, w});
  expect_gradcheck("layer_norm bias only", [](const Tensors& in) { return layer_norm(in[0], Tensor(), in[1]); }, {x, b});
  Tensor x3 = leaf({2, 3, 5}, 83), w5 = leaf({5}, 84), b5 = leaf({5}, 85);
  expect_gradcheck("layer_norm 3-d", [](const Tensors& in) { return layer_norm(in[0], in[1], in[2]); }, {x3, w5, b5});
  expect_gradcheck("layer_norm transposed input",
                   [](const Tensors& in) { return layer_norm(in[0].transpose(0, 2), in[1].slice(0, 0, 2), Tensor()); }, {x3, w5});
  Tensor wf = leaf({7}, 86, Domain::Normal, false);
  expect_gradcheck("layer_norm fixed weight", [&](const Tensors& in) { return layer_norm(in[0], wf, in[1]); }, {x, b});
  expect_gradcheck("rms_norm", [](const Tensors& in) { return rms_norm(in[0], in[1]); }, {x, w});
  expect_gradcheck("rms_norm no weight", [](const Tensors& in) { return rms_norm(in[0], Tensor()); }, {x});
  expect_gradcheck("rms_norm 3-d", [](const Tensors& in) { return rms_norm(in[0], in[1]); }, {x3, w5});
  expect_gradcheck("rms_norm fixed weight", [&](const Tensors& in) { return rms_norm(in[0], wf); }, {x});
}

TEST(OpsGrad, Embedding) {
  Tensor w = leaf({5, 3}, 90);
  Tensor i64 = ids({1, 3, 1, 0, 4, 1}, {2, 3});
  expect_gradcheck("embedding repeated ids", [&](const Tensors& in) { return embedding(in[0], i64); }, {w});
  Tensor i32 = Tensor::from_vector<int32_t>({2, 2, 2}, {3});
  expect_gradcheck("embedding i32 ids", [&](const Tensors& in) { return embedding(in[0], i32); }, {w});
}

TEST(OpsGrad, Dropout) {
  Tensor x = leaf({3, 7}, 91);
  // re-seeded inside f: every evaluation draws the same mask
  expect_gradcheck("dropout", [](const Tensors& in) {
    Generator g(42);
    return dropout(in[0], 0.3, true, g);
  }, {x});
  expect_gradcheck("dropout of a transposed view", [](const Tensors& in) {
    Generator g(43);
    return dropout(in[0].t(), 0.5, true, g);
  }, {x});
  expect_gradcheck("dropout in eval mode", [](const Tensors& in) {
    Generator g(44);
    return dropout(in[0], 0.3, false, g);
  }, {x});
}

TEST(OpsGrad, Cumsum) {
  Tensor x = leaf({3, 5, 2}, 92);
  for (int d : {0, 1, 2, -2})
    for (bool rev : {false, true})
      expect_gradcheck("cumsum dim " + std::to_string(d) + (rev ? " reverse" : ""),
                       [&](const Tensors& in) { return cumsum(in[0], d, rev); }, {x});
  expect_gradcheck("cumsum of a transposed view", [](const Tensors& in) { return cumsum(in[0].transpose(0, 1), 0); }, {x});
}

TEST(OpsGrad, CausalConv1d) {
  Tensor x = leaf({2, 7, 3}, 93), w = leaf({3, 4}, 94), b = leaf({3}, 95);
  expect_gradcheck("conv1d_causal with bias", [](const Tensors& in) { return conv1d_causal(in[0], in[1], in[2]); }, {x, w, b});
  expect_gradcheck("conv1d_causal without bias", [](const Tensors& in) { return conv1d_causal(in[0], in[1]); }, {x, w});
  Tensor xt = leaf({2, 3, 7}, 96);
  expect_gradcheck("conv1d_causal of a transposed input",
                   [](const Tensors& in) { return conv1d_causal(in[0].transpose(1, 2), in[1], in[2]); }, {xt, w, b});
  Tensor wf = leaf({3, 4}, 97, Domain::Normal, false);
  expect_gradcheck("conv1d_causal fixed weight", [&](const Tensors& in) { return conv1d_causal(in[0], wf, in[1]); }, {x, b});
  Tensor x2 = leaf({1, 3, 5}, 98), w2 = leaf({5, 4}, 99);  // K > T
  expect_gradcheck("conv1d_causal K > T", [](const Tensors& in) { return conv1d_causal(in[0], in[1]); }, {x2, w2});
}

TEST(OpsGrad, FftConv) {
  Tensor x = leaf({2, 9, 3}, 100), k5 = leaf({3, 5}, 101), k9 = leaf({3, 9}, 102);
  expect_gradcheck("fft_conv L=5", [](const Tensors& in) { return fft_conv(in[0], in[1]); }, {x, k5});
  expect_gradcheck("fft_conv L=T", [](const Tensors& in) { return fft_conv(in[0], in[1]); }, {x, k9});
  Tensor kf = leaf({3, 5}, 103, Domain::Normal, false);
  expect_gradcheck("fft_conv fixed filter", [&](const Tensors& in) { return fft_conv(in[0], kf); }, {x});
  expect_gradcheck("fft_conv strided input", [](const Tensors& in) { return fft_conv(in[0].slice(1, 0, 9, 2), in[1]); }, {x, k5});
}

// ---- joining, splitting, indexing ----

TEST(OpsGrad, CatStackSplitChunk) {
  Tensor a = leaf({2, 3}, 110), b = leaf({4, 3}, 111), c = leaf({3, 1}, 112), d = leaf({3, 4}, 113);
  expect_gradcheck("cat dim 0", [](const Tensors& in) { return cat({in[0], in[1]}, 0); }, {a, b});
  expect_gradcheck("cat dim -1", [](const Tensors& in) { return cat({in[0].t(), in[1], in[2]}, -1); }, {a, c, d});
  Tensor fixed = leaf({1, 3}, 114, Domain::Normal, false);
  expect_gradcheck("cat with a fixed input", [&](const Tensors& in) { return cat({fixed, in[0], fixed}, 0); }, {b});
  Tensor s1 = leaf({3, 5}, 115), s2 = leaf({3, 5}, 116), s3 = leaf({3, 5}, 117);
  for (int dim : {0, 1, 2, -1})
    expect_gradcheck("stack dim " + std::to_string(dim), [&](const Tensors& in) { return stack({in[0], in[1], in[2]}, dim); },
                     {s1, s2, s3});
  Tensor x = leaf({7, 3}, 118);
  expect_gradcheck("split", [](const Tensors& in) { return split(in[0], {2, 4, 1}, 0); }, {x});
  expect_gradcheck("split dim 1", [](const Tensors& in) { return split(in[0], {1, 2}, 1); }, {x});
  expect_gradcheck("chunk", [](const Tensors& in) { return chunk(in[0].t(), 3, 1); }, {x});
  expect_gradcheck("split, one piece used twice", [](const Tensors& in) {
    auto parts = split(in[0], {3, 4}, 0);
    return parts[1].slice(0, 0, 3) * parts[0] + parts[0];
  }, {x});
}

TEST(OpsGrad, IndexSelectAndGather) {
  Tensor x = leaf({5, 3}, 120);
  Tensor idx = ids({4, 0, 4, 2}, {4});
  expect_gradcheck("index_select dim 0 (repeats)", [&](const Tensors& in) { return index_select(in[0], 0, idx); }, {x});
  Tensor idx1 = Tensor::from_vector<int32_t>({1, 1, 2, 0, -1}, {5});
  expect_gradcheck("index_select dim 1 (i32, negative)", [&](const Tensors& in) { return index_select(in[0], 1, idx1); }, {x});
  expect_gradcheck("index_select of a transposed view", [&](const Tensors& in) { return index_select(in[0].t(), 1, idx); }, {x});
  Tensor g = leaf({3, 5}, 121);
  Tensor gi = ids({4, 4, 0, 1, 2, 3, 3, 3, 0, 1, 0, 4}, {3, 4});
  expect_gradcheck("gather dim 1", [&](const Tensors& in) { return gather(in[0], 1, gi); }, {g});
  Tensor gi0 = ids({2, 0, 1, 1, 0, 0, 0, 2, 2, 1}, {2, 5});
  expect_gradcheck("gather dim 0", [&](const Tensors& in) { return gather(in[0], 0, gi0); }, {g});
  Tensor g3 = leaf({2, 3, 5}, 122);
  Tensor gi3 = ids({0, 4, 1, 2, 2, 0, 3, 3, 1, 4, 0, 0}, {2, 3, 2});
  expect_gradcheck("gather 3-d dim -1", [&](const Tensors& in) { return gather(in[0], -1, gi3); }, {g3});
}

// ---- views ----

TEST(OpsGrad, ViewOps) {
  Tensor x = leaf({3, 5, 2}, 130);
  std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> views = {
      {"view", [](const Tensor& t) { return t.view({5, 6}); }},
      {"view -1", [](const Tensor& t) { return t.view({-1, 2}); }},
      {"reshape of a non-contiguous tensor", [](const Tensor& t) { return t.transpose(0, 1).reshape({15, 2}); }},
      {"reshape (a view)", [](const Tensor& t) { return t.reshape({3, 10}); }},
      {"flatten", [](const Tensor& t) { return t.permute({2, 0, 1}).flatten(1); }},
      {"transpose", [](const Tensor& t) { return t.transpose(0, 2); }},
      {"t", [](const Tensor& t) { return t.select(2, 1).t(); }},
      {"permute", [](const Tensor& t) { return t.permute({1, 2, 0}); }},
      {"slice with step", [](const Tensor& t) { return t.slice(1, 0, 5, 2); }},
      {"slice with step 3, negative start", [](const Tensor& t) { return t.slice(1, -4, 5, 3); }},
      {"narrow", [](const Tensor& t) { return t.narrow(0, 1, 2); }},
      {"select", [](const Tensor& t) { return t.select(1, 3); }},
      {"select negative", [](const Tensor& t) { return t.select(-1, -1); }},
      {"expand", [](const Tensor& t) { return t.select(2, 0).unsqueeze(1).expand({3, 4, 5}); }},
      {"expand new leading dims", [](const Tensor& t) { return t.expand({2, 3, 5, 2}); }},
      {"unsqueeze", [](const Tensor& t) { return t.unsqueeze(1).unsqueeze(-1); }},
      {"squeeze", [](const Tensor& t) { return t.slice(1, 2, 3).squeeze(1); }},
      {"contiguous", [](const Tensor& t) { return t.transpose(0, 1).contiguous(); }},
      {"contiguous (already)", [](const Tensor& t) { return t.contiguous() * 1.0; }},
      {"clone", [](const Tensor& t) { return t.clone(); }},
      {"clone of a view", [](const Tensor& t) { return t.slice(1, 1, 5, 3).clone(); }},
      {"view of a view of a view", [](const Tensor& t) { return t.view({15, 2}).t().slice(1, 2, 13, 4).reshape({-1}); }},
  };
  for (auto& [name, fn] : views) expect_gradcheck(name, [&](const Tensors& in) { return fn(in[0]); }, {x});
}

TEST(OpsGrad, CastToF32AndBack) {
  // The round trip is identity up to f32 rounding: a larger step keeps that rounding out of the
  // finite differences.
  Tensor x = leaf({3, 5}, 140);
  GradcheckOptions opt;
  opt.eps = 1e-2;
  opt.atol = 1e-4;
  opt.rtol = 1e-4;
  expect_gradcheck("cast f64 -> f32 -> f64", [](const Tensors& in) { return cast(cast(in[0], DType::F32), DType::F64); }, {x},
                   opt);
  expect_gradcheck("to(f32) then math", [](const Tensors& in) { return in[0].to(DType::F32) * 2.0; }, {x}, opt);
  expect_gradcheck("cast to f64 (no-op)", [](const Tensors& in) { return cast(in[0], DType::F64); }, {x});
}

TEST(OpsGrad, CompositeChain) {
  // A small attention-like block: every op above in one graph, with shared subexpressions.
  Tensor x = leaf({2, 3, 5}, 150), wq = leaf({5, 5}, 151), wk = leaf({5, 5}, 152), g = leaf({5}, 153);
  expect_gradcheck("attention block", [](const Tensors& in) {
    Tensor h = rms_norm(in[0], in[3]);
    Tensor q = linear(h, in[1]), k = linear(h, in[2]);
    Tensor s = softmax(matmul(q, k.transpose(-1, -2)) * (1.0 / std::sqrt(5.0)), -1);
    return in[0] + matmul(s, h);
  }, {x, wq, wk, g});
}

// Reductions to a 0-d result and views of 0-d tensors. Disabled: Tensor::view cannot view a 0-d
// tensor as [1] (view_strides in core/tensor.cpp returns false for an empty source shape), so the
// backward of sum/mean/max/logsumexp of a 1-d tensor over dim 0 (which unsqueezes the 0-d
// gradient), of sum_to(x, {}) and of matmul([k], [k]) (which squeezes [1, 1] to []) throws
// "view: cannot view a tensor of shape [] ... as [1]". Enable once that is fixed.
TEST(OpsGrad, ZeroDimResults) {
  Tensor v = leaf({5}, 160), w = leaf({5}, 161), s = leaf({}, 162), x = leaf({3, 4, 5}, 163);
  expect_gradcheck("sum_to []", [](const Tensors& in) { return sum_to(in[0], {}); }, {x});
  expect_gradcheck("sum of 1-d over dim 0", [](const Tensors& in) { return sum(in[0], 0); }, {v});
  expect_gradcheck("mean of 1-d over dim 0", [](const Tensors& in) { return mean(in[0], 0); }, {v});
  expect_gradcheck("max of 1-d over dim 0", [](const Tensors& in) { return max(in[0], 0); }, {v});
  expect_gradcheck("logsumexp of 1-d over dim 0", [](const Tensors& in) { return logsumexp(in[0], -1); }, {v});
  expect_gradcheck("matmul [5] @ [5]", [](const Tensors& in) { return matmul(in[0], in[1]); }, {v, w});
  expect_gradcheck("unsqueeze of 0-d", [](const Tensors& in) { return in[0].unsqueeze(0); }, {s});
  expect_gradcheck("reshape of 0-d", [](const Tensors& in) { return in[0].reshape({1, 1}); }, {s});
  expect_gradcheck("flatten of 0-d", [](const Tensors& in) { return in[0].flatten(); }, {s});
  expect_gradcheck("stack of 0-d tensors", [&](const Tensors& in) { return stack({in[0], in[0] * 2.0}, 0); }, {s});
}

// gradcheck itself: a backward that returns a gradient of the wrong shape is reported, not read
// out of bounds.
TEST(OpsGrad, GradcheckReportsAWronglyShapedGradient) {
  struct WrongShape : CustomFunction {
    std::string name() const override { return "wrong_shape"; }
    Tensors backward(const Tensors& grads) override { return {sum(grads[0], 0)}; }
  };
  Tensor x = leaf({3, 5}, 170);
  auto f = [](const Tensors& in) -> Tensor {
    Tensor y;
    {
      NoGradGuard ng;
      y = in[0] * 2.0;
    }
    if (needs_grad({&in[0]})) CustomFunction::attach(std::make_shared<WrongShape>(), {in[0]}, {y});
    return y;
  };
  GradcheckResult r = gradcheck(f, {x});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("shape [5]"), std::string::npos) << r.message;
}
