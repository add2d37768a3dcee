// Forward values of the ops in core/ops.h against plain loops over host vectors (or hand-computed
// values), in f32 and bf16 (references are computed from the inputs as stored, so only the op's own
// rounding counts), plus edge cases (0 and 1 elements, ties, ignored rows, huge logits) and the
// messages of the errors a user can cause.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <string>

#include "core/ops.h"
#include "support/test_util.h"

using namespace seqmix;
using seqmix::testing::expect_error_contains;

namespace {

using Vec = std::vector<double>;
using Idx = std::vector<int64_t>;

Idx unravel(int64_t i, const Shape& s) {
  Idx idx(s.size(), 0);
  for (int d = int(s.size()) - 1; d >= 0; --d) {
    if (s[d] > 0) {
      idx[d] = i % s[d];
      i /= s[d];
    }
  }
  return idx;
}
// Flat (row-major) offset in a tensor of shape `s` of the element that broadcasts to `idx` (an
// index of a shape with at least as many dims, aligned on the right).
int64_t bcast_offset(const Idx& idx, const Shape& s) {
  int lead = int(idx.size()) - int(s.size());
  int64_t off = 0;
  for (size_t d = 0; d < s.size(); ++d) off = off * s[d] + (s[d] == 1 ? 0 : idx[d + lead]);
  return off;
}

Vec host(const Tensor& t) { return t.to_vector<double>(); }

Tensor from(const Vec& v, const Shape& s, DType dt) { return Tensor::from_vector<double>(v, s).to(dt); }
Tensor ids(const std::vector<int64_t>& v, const Shape& s) { return Tensor::from_vector<int64_t>(v, s); }

Tensor uniform(const Shape& s, DType dt, uint64_t seed, double lo = -2.0, double hi = 2.0) {
  Generator g(seed);
  return affine(rand(s, g, DType::F64), hi - lo, lo).to(dt);
}
// |x| in [lo, hi] with a random sign
Tensor away_from_zero(const Shape& s, DType dt, uint64_t seed, double lo = 0.25, double hi = 2.0) {
  Generator g(seed);
  Vec m = host(rand(s, g, DType::F64)), sign = host(rand(s, g, DType::F64));
  for (size_t i = 0; i < m.size(); ++i) m[i] = (lo + (hi - lo) * m[i]) * (sign[i] < 0.5 ? -1.0 : 1.0);
  return from(m, s, dt);
}

// Checks shape, dtype and values: max |got - ref| <= tol * max(max |ref|, 1e-3) (NaN never passes).
void expect_values(const std::string& what, const Tensor& got, const Shape& shape, const Vec& ref, double tol,
                   std::optional<DType> dtype = std::nullopt) {
  ASSERT_TRUE(got.defined()) << what;
  EXPECT_EQ(shape_str(got.shape()), shape_str(shape)) << what;
  if (dtype) {
    EXPECT_EQ(dtype_name(got.dtype()), dtype_name(*dtype)) << what;
  }
  Vec g = host(got);
  ASSERT_EQ(g.size(), ref.size()) << what;
  double scale = 1e-3, worst = 0;
  size_t at = 0;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  for (size_t i = 0; i < g.size(); ++i) {
    double e = std::abs(g[i] - ref[i]);
    if (std::isnan(g[i]) != std::isnan(ref[i]) || (std::isinf(ref[i]) && g[i] != ref[i])) e = INFINITY;
    else if (std::isnan(ref[i]) || std::isinf(ref[i])) e = 0;
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  EXPECT_LE(worst, tol * scale) << what << ": element " << at << " is " << g[at] << ", expected " << ref[at]
                                << " (tolerance " << tol * scale << ")";
}

// out[idx] = f(a[idx], b[idx]) with broadcasting
Vec ref_binary(const Vec& a, const Shape& sa, const Vec& b, const Shape& sb, Shape& out_shape,
               const std::function<double(double, double)>& f) {
  out_shape = broadcast_shapes(sa, sb);
  Vec out(size_t(shape_numel(out_shape)));
  for (int64_t i = 0; i < int64_t(out.size()); ++i) {
    Idx idx = unravel(i, out_shape);
    out[i] = f(a[bcast_offset(idx, sa)], b[bcast_offset(idx, sb)]);
  }
  return out;
}

// Reduces dim `d` of a row-major host tensor: out[o, i] = f(the n values along d).
Vec ref_reduce(const Vec& v, const Shape& s, int d, const std::function<double(const Vec&)>& f) {
  int64_t outer = 1, n = s[d], inner = 1;
  for (int i = 0; i < d; ++i) outer *= s[i];
  for (int i = d + 1; i < int(s.size()); ++i) inner *= s[i];
  Vec out;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < inner; ++c) {
      Vec line;
      for (int64_t k = 0; k < n; ++k) line.push_back(v[(o * n + k) * inner + c]);
      out.push_back(f(line));
    }
  return out;
}
// Applies f to every line along dim d, in place (softmax-like ops).
Vec ref_lines(const Vec& v, const Shape& s, int d, const std::function<Vec(const Vec&)>& f) {
  int64_t outer = 1, n = s[d], inner = 1;
  for (int i = 0; i < d; ++i) outer *= s[i];
  for (int i = d + 1; i < int(s.size()); ++i) inner *= s[i];
  Vec out(v.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < inner; ++c) {
      Vec line;
      for (int64_t k = 0; k < n; ++k) line.push_back(v[(o * n + k) * inner + c]);
      Vec r = f(line);
      for (int64_t k = 0; k < n; ++k) out[(o * n + k) * inner + c] = r[k];
    }
  return out;
}
Shape without(Shape s, int d, bool keepdim) {
  if (keepdim) s[d] = 1;
  else s.erase(s.begin() + d);
  return s;
}

double line_sum(const Vec& l) {
  double s = 0;
  for (double x : l) s += x;
  return s;
}
double line_max(const Vec& l) { return *std::max_element(l.begin(), l.end()); }
double line_min(const Vec& l) { return *std::min_element(l.begin(), l.end()); }
double line_lse(const Vec& l) {
  double m = line_max(l), s = 0;
  for (double x : l) s += std::exp(x - m);
  return m + std::log(s);
}
Vec line_softmax(const Vec& l) {
  double lse = line_lse(l);
  Vec r;
  for (double x : l) r.push_back(std::exp(x - lse));
  return r;
}
Vec line_log_softmax(const Vec& l) {
  double lse = line_lse(l);
  Vec r;
  for (double x : l) r.push_back(x - lse);
  return r;
}

// numpy matmul semantics on host vectors (1-d operands promoted and the added dim removed)
Vec ref_matmul(const Vec& a, Shape sa, const Vec& b, Shape sb, Shape& out_shape) {
  bool a1 = sa.size() == 1, b1 = sb.size() == 1;
  if (a1) sa.insert(sa.begin(), 1);
  if (b1) sb.push_back(1);
  int64_t m = sa[sa.size() - 2], k = sa.back(), n = sb.back();
  EXPECT_EQ(k, sb[sb.size() - 2]);
  Shape ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  Shape batch = broadcast_shapes(ba, bb);
  Vec out;
  for (int64_t bi = 0; bi < shape_numel(batch); ++bi) {
    Idx idx = unravel(bi, batch);
    int64_t oa = bcast_offset(idx, ba) * m * k, ob = bcast_offset(idx, bb) * k * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t l = 0; l < k; ++l) acc += a[oa + i * k + l] * b[ob + l * n + j];
        out.push_back(acc);
      }
  }
  out_shape = batch;
  if (!a1) out_shape.push_back(m);
  if (!b1) out_shape.push_back(n);
  return out;
}

Vec transpose2d(const Vec& v, int64_t rows, int64_t cols) {  // v is [rows, cols]; returns [cols, rows]
  Vec out(v.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = v[i * cols + j];
  return out;
}

double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }

enum class Domain { Normal, Positive, AwayFromZero };
struct UnaryRef {
  const char* name;
  Tensor (*fn)(const Tensor&);
  double (*ref)(double);
  Domain domain;
};
const UnaryRef kUnary[] = {
    {"neg", seqmix::neg, [](double x) { return -x; }, Domain::Normal},
    {"abs", seqmix::abs, [](double x) { return std::fabs(x); }, Domain::Normal},
    {"exp", seqmix::exp, [](double x) { return std::exp(x); }, Domain::Normal},
    {"log", seqmix::log, [](double x) { return std::log(x); }, Domain::Positive},
    {"sqrt", seqmix::sqrt, [](double x) { return std::sqrt(x); }, Domain::Positive},
    {"rsqrt", seqmix::rsqrt, [](double x) { return 1.0 / std::sqrt(x); }, Domain::Positive},
    {"reciprocal", seqmix::reciprocal, [](double x) { return 1.0 / x; }, Domain::AwayFromZero},
    {"square", seqmix::square, [](double x) { return x * x; }, Domain::Normal},
    {"sin", seqmix::sin, [](double x) { return std::sin(x); }, Domain::Normal},
    {"cos", seqmix::cos, [](double x) { return std::cos(x); }, Domain::Normal},
    {"tanh", seqmix::tanh, [](double x) { return std::tanh(x); }, Domain::Normal},
    {"sigmoid", seqmix::sigmoid, sigmoid_ref, Domain::Normal},
    {"logsigmoid", seqmix::logsigmoid, [](double x) { return std::log(sigmoid_ref(x)); }, Domain::Normal},
    {"relu", seqmix::relu, [](double x) { return x > 0 ? x : 0.0; }, Domain::Normal},
    {"silu", seqmix::silu, [](double x) { return x * sigmoid_ref(x); }, Domain::Normal},
    {"gelu", seqmix::gelu,
     [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }, Domain::Normal},
    {"softplus", seqmix::softplus, [](double x) { return std::log(1 + std::exp(x)); }, Domain::Normal},
    {"elu", seqmix::elu, [](double x) { return x > 0 ? x : std::exp(x) - 1; }, Domain::Normal},
    {"elu_plus_one", seqmix::elu_plus_one, [](double x) { return x > 0 ? x + 1 : std::exp(x); }, Domain::Normal},
};

Tensor input_for(Domain d, const Shape& s, DType dt, uint64_t seed) {
  switch (d) {
    case Domain::Positive: return uniform(s, dt, seed, 0.2, 3.0);
    case Domain::AwayFromZero: return away_from_zero(s, dt, seed);
    default: return uniform(s, dt, seed, -3.0, 3.0);
  }
}

struct BinaryRef {
  const char* name;
  Tensor (*fn)(const Tensor&, const Tensor&);
  double (*ref)(double, double);
  Domain a_domain, b_domain;
};
const BinaryRef kBinary[] = {
    {"add", seqmix::add, [](double a, double b) { return a + b; }, Domain::Normal, Domain::Normal},
    {"sub", seqmix::sub, [](double a, double b) { return a - b; }, Domain::Normal, Domain::Normal},
    {"mul", seqmix::mul, [](double a, double b) { return a * b; }, Domain::Normal, Domain::Normal},
    {"div", seqmix::div, [](double a, double b) { return a / b; }, Domain::Normal, Domain::AwayFromZero},
    {"maximum", seqmix::maximum, [](double a, double b) { return std::max(a, b); }, Domain::Normal, Domain::Normal},
    {"minimum", seqmix::minimum, [](double a, double b) { return std::min(a, b); }, Domain::Normal, Domain::Normal},
    {"pow", static_cast<Tensor (*)(const Tensor&, const Tensor&)>(seqmix::pow),
     [](double a, double b) { return std::pow(a, b); }, Domain::Positive, Domain::Normal},
};

class OpsForward : public ::testing::TestWithParam<DType> {
 protected:
  DType dt() const { return GetParam(); }
  double tol() const { return dt() == DType::BF16 ? 1e-2 : 1e-5; }
};

}  // namespace

// ---- elementwise ----

TEST_P(OpsForward, UnaryOps) {
  for (const UnaryRef& u : kUnary) {
    Tensor x = input_for(u.domain, {3, 5}, dt(), 1);
    Vec xv = host(x), ref;
    for (double v : xv) ref.push_back(u.ref(v));
    expect_values(u.name, u.fn(x), {3, 5}, ref, tol(), dt());
    expect_values(std::string(u.name) + " (transposed)", u.fn(x.t()), {5, 3}, transpose2d(ref, 3, 5), tol(), dt());
  }
}

TEST_P(OpsForward, UnaryOpsStayFiniteForLargeInputs) {
  Tensor x = from({-1000, -90, -30, -21, -19, 19, 21, 30, 90, 1000}, {10}, dt());
  Vec xv = host(x);
  auto check = [&](const char* name, Tensor y, std::function<double(double)> ref) {
    Vec r;
    for (double v : xv) r.push_back(ref(v));
    expect_values(name, y, {10}, r, tol());
  };
  check("sigmoid", sigmoid(x), [](double v) { return v >= 0 ? 1 / (1 + std::exp(-v)) : std::exp(v) / (1 + std::exp(v)); });
  check("softplus", softplus(x), [](double v) { return v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); });
  check("logsigmoid", logsigmoid(x), [](double v) { return v < 0 ? v - std::log1p(std::exp(v)) : -std::log1p(std::exp(-v)); });
  check("tanh", tanh(x), [](double v) { return std::tanh(v); });
  check("silu", silu(x), [](double v) { return v >= 0 ? v / (1 + std::exp(-v)) : v * std::exp(v) / (1 + std::exp(v)); });
  check("elu", elu(x), [](double v) { return v > 0 ? v : std::expm1(v); });
}

TEST_P(OpsForward, BinaryOpsWithBroadcasting) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 5}, {3, 5}}, {{3, 1, 5}, {4, 5}}, {{4, 5}, {3, 1, 5}}, {{3, 5}, {}}, {{}, {3, 5}}, {{5}, {3, 5}}, {{3, 1}, {1, 5}}, {{}, {}},
  };
  uint64_t seed = 10;
  for (const BinaryRef& op : kBinary)
    for (const auto& [sa, sb] : shapes) {
      Tensor a = input_for(op.a_domain, sa, dt(), seed++), b = input_for(op.b_domain, sb, dt(), seed++);
      Shape os;
      Vec ref = ref_binary(host(a), sa, host(b), sb, os, op.ref);
      expect_values(std::string(op.name) + " " + shape_str(sa) + " with " + shape_str(sb), op.fn(a, b), os, ref, tol(), dt());
    }
  // strided operands
  Tensor a = uniform({5, 3}, dt(), 90), b = uniform({3, 5}, dt(), 91);
  Shape os;
  Vec ref = ref_binary(transpose2d(host(a), 5, 3), {3, 5}, host(b), {3, 5}, os, [](double x, double y) { return x * y; });
  expect_values("mul (transposed a)", mul(a.t(), b), {3, 5}, ref, tol());
  Tensor c = uniform({3, 10}, dt(), 92);
  Vec cv = host(c), ref2;
  Vec bv = host(b);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) ref2.push_back(cv[i * 10 + 2 * j] - bv[i * 5 + j]);
  expect_values("sub (step-2 slice)", sub(c.slice(1, 0, 10, 2), b), {3, 5}, ref2, tol());
}

TEST_P(OpsForward, ScalarOpsPowAffineClamp) {
  Tensor x = uniform({3, 5}, dt(), 20, 0.2, 3.0);
  Vec xv = host(x);
  auto map = [&](std::function<double(double)> f) {
    Vec r;
    for (double v : xv) r.push_back(f(v));
    return r;
  };
  for (double p : {2.0, 3.0, 0.5, -1.5})
    expect_values("pow " + std::to_string(p), pow(x, p), {3, 5}, map([p](double v) { return std::pow(v, p); }), tol(), dt());
  expect_values("affine", affine(x, -1.5, 0.25), {3, 5}, map([](double v) { return -1.5 * v + 0.25; }), tol(), dt());
  expect_values("x + 2", x + 2.0, {3, 5}, map([](double v) { return v + 2; }), tol());
  expect_values("2 - x", 2.0 - x, {3, 5}, map([](double v) { return 2 - v; }), tol());
  expect_values("x / 4", x / 4.0, {3, 5}, map([](double v) { return v / 4; }), tol());
  expect_values("clamp", clamp(x, 0.5, 2.0), {3, 5}, map([](double v) { return std::min(2.0, std::max(0.5, v)); }), tol(), dt());
}

TEST_P(OpsForward, Where) {
  Tensor cond = Tensor::from_vector<uint8_t>({1, 0, 0, 1}, {4, 1});
  Tensor a = uniform({3, 1, 5}, dt(), 30), b = uniform({5}, dt(), 31);
  Vec av = host(a), bv = host(b), ref;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 5; ++k) ref.push_back((j == 0 || j == 3) ? av[i * 5 + k] : bv[k]);
  expect_values("where", where(cond, a, b), {3, 4, 5}, ref, 0.0, dt());
}

// ---- reductions ----

TEST_P(OpsForward, Reductions) {
  Shape s = {3, 4, 5};
  Tensor x = uniform(s, dt(), 40, -3.0, 3.0);
  Vec xv = host(x);
  expect_values("sum all", sum(x), {}, {line_sum(xv)}, tol(), dt());
  expect_values("mean all", mean(x), {}, {line_sum(xv) / 60}, tol(), dt());
  for (int d = 0; d < 3; ++d)
    for (bool keep : {false, true}) {
      std::string tag = " dim " + std::to_string(d) + (keep ? " keepdim" : "");
      Shape os = without(s, d, keep);
      expect_values("sum" + tag, sum(x, d, keep), os, ref_reduce(xv, s, d, line_sum), tol(), dt());
      expect_values("mean" + tag, mean(x, d, keep), os, ref_reduce(xv, s, d, [](const Vec& l) { return line_sum(l) / l.size(); }),
                    tol(), dt());
      expect_values("max" + tag, max(x, d, keep), os, ref_reduce(xv, s, d, line_max), 0.0, dt());
      expect_values("min" + tag, min(x, d, keep), os, ref_reduce(xv, s, d, line_min), 0.0, dt());
      expect_values("logsumexp" + tag, logsumexp(x, d, keep), os, ref_reduce(xv, s, d, line_lse), tol(), dt());
      expect_values("argmax" + tag, argmax(x, d, keep), os, ref_reduce(xv, s, d, [](const Vec& l) {
        return double(std::max_element(l.begin(), l.end()) - l.begin());  // the first maximum
      }), 0.0, DType::I64);
    }
  expect_values("sum dim -1", sum(x, -1), {3, 4}, ref_reduce(xv, s, 2, line_sum), tol());
  // several dims
  Vec s02 = ref_reduce(ref_reduce(xv, s, 2, line_sum), {3, 4}, 0, line_sum);
  expect_values("sum dims {0, 2}", sum(x, std::vector<int>{0, 2}), {4}, s02, tol());
  expect_values("sum dims {2, 0} keepdim", sum(x, std::vector<int>{2, 0}, true), {1, 4, 1}, s02, tol());
  // a permuted (non-contiguous) input
  Tensor xp = x.permute({2, 0, 1});  // [5, 3, 4]
  expect_values("sum of a permuted view", sum(xp, 0), {3, 4}, ref_reduce(xv, s, 2, line_sum), tol());
  expect_values("max of a permuted view", max(xp, 0), {3, 4}, ref_reduce(xv, s, 2, line_max), 0.0);
}

TEST_P(OpsForward, SumTo) {
  Shape s = {3, 4, 5};
  Tensor x = uniform(s, dt(), 41);
  Vec xv = host(x);
  Vec over0 = ref_reduce(xv, s, 0, line_sum);  // [4, 5]
  expect_values("sum_to [4, 5]", sum_to(x, {4, 5}), {4, 5}, over0, tol());
  expect_values("sum_to [1, 4, 5]", sum_to(x, {1, 4, 5}), {1, 4, 5}, over0, tol());
  expect_values("sum_to [5]", sum_to(x, {5}), {5}, ref_reduce(over0, {4, 5}, 0, line_sum), tol());
  expect_values("sum_to [4, 1]", sum_to(x, {4, 1}), {4, 1}, ref_reduce(over0, {4, 5}, 1, line_sum), tol());
  expect_values("sum_to []", sum_to(x, {}), {}, {line_sum(xv)}, tol());
  expect_values("sum_to [3, 1, 1]", sum_to(x, {3, 1, 1}), {3, 1, 1},
                ref_reduce(ref_reduce(xv, s, 2, line_sum), {3, 4}, 1, line_sum), tol());
  expect_values("sum_to (same shape)", sum_to(x, s), s, xv, 0.0);
}

// ---- linear algebra ----

TEST_P(OpsForward, Matmul) {
  struct Case {
    Shape a, b;
    bool ta = false, tb = false;
  };
  const std::vector<Case> cases = {
      {{3, 5}, {5, 4}},       {{1, 5}, {5, 4}},          {{3, 5}, {5, 1}},     {{2, 3, 5}, {2, 5, 4}},
      {{2, 3, 5}, {5, 4}},    {{3, 5}, {2, 5, 4}},       {{1, 3, 5}, {2, 5, 4}}, {{2, 3, 5}, {1, 5, 4}},
      {{2, 1, 3, 5}, {3, 5, 4}}, {{5}, {5, 4}},          {{3, 5}, {5}},        {{5}, {5}},
      {{5}, {2, 5, 4}},       {{2, 3, 5}, {5}},          {{5, 3}, {5, 4}, true}, {{3, 5}, {4, 5}, false, true},
      {{5, 3}, {4, 5}, true, true}, {{2, 5, 3}, {2, 4, 5}, true, true}, {{2, 5, 3}, {5, 4}, true},
      {{3, 13}, {13, 7}},
  };
  uint64_t seed = 50;
  for (const Case& c : cases) {
    Tensor a = uniform(c.a, dt(), seed++), b = uniform(c.b, dt(), seed++);
    Tensor ua = c.ta ? a.transpose(-1, -2) : a, ub = c.tb ? b.transpose(-1, -2) : b;
    Vec av = host(ua.contiguous()), bv = host(ub.contiguous());
    Shape os;
    Vec ref = ref_matmul(av, ua.shape(), bv, ub.shape(), os);
    std::string what = "matmul " + shape_str(ua.shape()) + (c.ta ? " (transposed)" : "") + " @ " + shape_str(ub.shape()) +
                       (c.tb ? " (transposed)" : "");
    expect_values(what, matmul(ua, ub), os, ref, tol(), dt());
  }
  // a row slice (lda > k), a step-2 column slice (needs a copy), an expanded (stride-0) operand
  Tensor a = uniform({3, 7}, dt(), 80), b = uniform({5, 4}, dt(), 81);
  Shape os;
  Vec bv = host(b);
  Tensor as = a.slice(1, 1, 6);
  expect_values("matmul of a column slice", matmul(as, b), {3, 4}, ref_matmul(host(as), {3, 5}, bv, {5, 4}, os), tol());
  Tensor a2 = uniform({3, 10}, dt(), 82).slice(1, 0, 10, 2);
  expect_values("matmul of a step-2 slice", matmul(a2, b), {3, 4}, ref_matmul(host(a2), {3, 5}, bv, {5, 4}, os), tol());
  Tensor row = uniform({1, 5}, dt(), 83);
  Tensor ex = row.expand({3, 5});
  expect_values("matmul of an expanded operand", matmul(ex, b), {3, 4}, ref_matmul(host(ex), {3, 5}, bv, {5, 4}, os), tol());
  // a single row whose row stride is smaller than its length (as a view of a view can produce)
  Tensor base = uniform({12}, dt(), 84);
  Tensor odd = make_view(base, {1, 5}, {2, 1}, 1);
  expect_values("matmul of a [1, 5] view with row stride 2", matmul(odd, b), {1, 4},
                ref_matmul(host(odd), {1, 5}, bv, {5, 4}, os), tol());
}

TEST_P(OpsForward, Linear) {
  Tensor x = uniform({2, 3, 5}, dt(), 90), w = uniform({4, 5}, dt(), 91), bias = uniform({4}, dt(), 92);
  Vec xv = host(x), wv = host(w), bv = host(bias);
  Vec ref, ref_nb;
  for (int r = 0; r < 6; ++r)
    for (int o = 0; o < 4; ++o) {
      double acc = 0;
      for (int i = 0; i < 5; ++i) acc += xv[r * 5 + i] * wv[o * 5 + i];
      ref_nb.push_back(acc);
      ref.push_back(acc + bv[o]);
    }
  expect_values("linear", linear(x, w, bias), {2, 3, 4}, ref, tol(), dt());
  expect_values("linear without bias", linear(x, w), {2, 3, 4}, ref_nb, tol(), dt());
  expect_values("linear with a transposed weight", linear(x, w.t().contiguous().t(), bias), {2, 3, 4}, ref, tol());
  Tensor xt = x.view({6, 5}).t().contiguous().t();  // [6, 5] with strides [1, 6]
  expect_values("linear with a transposed input", linear(xt, w, bias), {6, 4}, ref, tol());
  Vec ref1(ref.begin(), ref.begin() + 4);
  expect_values("linear of a 1-d input", linear(x.select(0, 0).select(0, 0), w, bias), {4}, ref1, tol());
}

// ---- neural-network ops ----

TEST_P(OpsForward, SoftmaxAndLogSoftmax) {
  Shape s = {3, 4, 5};
  Tensor x = uniform(s, dt(), 100, -4.0, 4.0);
  Vec xv = host(x);
  for (int d : {2, 1, 0}) {
    expect_values("softmax dim " + std::to_string(d), softmax(x, d), s, ref_lines(xv, s, d, line_softmax), tol(), dt());
    expect_values("log_softmax dim " + std::to_string(d), log_softmax(x, d), s, ref_lines(xv, s, d, line_log_softmax), tol(), dt());
  }
  expect_values("softmax dim -1", softmax(x), s, ref_lines(xv, s, 2, line_softmax), tol());
  // rows sum to one
  Tensor rows = sum(softmax(x, 1).to(DType::F32), 1);
  expect_values("softmax rows sum to 1", rows, {3, 5}, Vec(15, 1.0), tol());
}

TEST_P(OpsForward, SoftmaxLogsumexpAndCrossEntropyAreStableForHugeLogits) {
  // exactly representable in bf16, so both dtypes see the same numbers
  Vec big = {9984, 9920, -9984, 0, 9984, 9984, -9984, -9920};
  Tensor x = from(big, {2, 4}, dt());
  expect_values("softmax", softmax(x), {2, 4}, ref_lines(big, {2, 4}, 1, line_softmax), tol());
  expect_values("log_softmax", log_softmax(x), {2, 4}, ref_lines(big, {2, 4}, 1, line_log_softmax), tol());
  expect_values("logsumexp", logsumexp(x, 1), {2}, ref_reduce(big, {2, 4}, 1, line_lse), tol());
  Tensor t = ids({1, 3}, {2});
  double l0 = line_lse({9984, 9920, -9984, 0}) - 9920, l1 = line_lse({9984, 9984, -9984, -9920}) + 9920;
  Tensor xl = x.detach();
  xl.requires_grad_();
  Tensor loss = cross_entropy(xl, t);
  expect_values("cross_entropy", loss, {}, {(l0 + l1) / 2}, 1e-5);
  loss.backward();
  Vec g = host(xl.grad());
  for (double v : g) EXPECT_TRUE(std::isfinite(v));
  // row 0: softmax ~ [1, e^-64, 0, 0] minus onehot(1), halved
  EXPECT_NEAR(g[0], 0.5, 1e-3);
  EXPECT_NEAR(g[1], -0.5, 1e-3);
  // row 1: two tied maxima at 1/2 each; the target (an -9920 logit) gets -1
  EXPECT_NEAR(g[4], 0.25, 1e-3);
  EXPECT_NEAR(g[7], -0.5, 1e-3);
}

TEST_P(OpsForward, CrossEntropy) {
  Tensor logits = uniform({2, 3, 5}, dt(), 110, -3.0, 3.0);
  Tensor t = ids({1, -100, 4, 0, 2, -100}, {2, 3});
  Vec lv = host(logits);
  std::vector<int64_t> tv = t.to_vector<int64_t>();
  double total = 0;
  int count = 0;
  for (int r = 0; r < 6; ++r) {
    if (tv[r] == -100) continue;
    Vec row(lv.begin() + r * 5, lv.begin() + r * 5 + 5);
    total += line_lse(row) - row[tv[r]];
    count++;
  }
  Tensor loss = cross_entropy(logits, t);
  expect_values("cross_entropy", loss, {}, {total / count}, 1e-5, DType::F32);  // f32 statistics for f32 and bf16
  // custom ignore_index and i32 targets
  Tensor t32 = Tensor::from_vector<int32_t>({3, 3, 0, 1, 4, 2}, {6});
  total = 0;
  count = 0;
  for (int r = 0; r < 6; ++r) {
    int64_t tr = t32.to_vector<int64_t>()[r];
    if (tr == 3) continue;
    Vec row(lv.begin() + r * 5, lv.begin() + r * 5 + 5);
    total += line_lse(row) - row[tr];
    count++;
  }
  expect_values("cross_entropy i32, ignore 3", cross_entropy(logits.view({6, 5}), t32, 3), {}, {total / count}, 1e-5);
  // gradient: (softmax - onehot) / count on counted rows, 0 on ignored rows
  Tensor lg = logits.detach();
  lg.requires_grad_();
  cross_entropy(lg, t).backward();
  Vec g = host(lg.grad());
  for (int r = 0; r < 6; ++r) {
    Vec row(lv.begin() + r * 5, lv.begin() + r * 5 + 5), p = line_softmax(row);
    for (int i = 0; i < 5; ++i) {
      double want = tv[r] == -100 ? 0.0 : (p[i] - (i == tv[r] ? 1.0 : 0.0)) / 4.0;
      EXPECT_NEAR(g[r * 5 + i], want, dt() == DType::BF16 ? 2e-3 : 1e-6) << "row " << r << " col " << i;
    }
  }
}

TEST_P(OpsForward, CrossEntropyWithEveryRowIgnoredIsZero) {
  Tensor logits = uniform({3, 5}, dt(), 111);
  logits.requires_grad_();
  Tensor loss = cross_entropy(logits, ids({-100, -100, -100}, {3}));
  EXPECT_EQ(loss.item(), 0.0);
  loss.backward();
  for (double v : host(logits.grad())) EXPECT_EQ(v, 0.0);
  // no rows at all
  Tensor empty_logits = zeros({0, 5}, dt());
  EXPECT_EQ(cross_entropy(empty_logits, ids({}, {0})).item(), 0.0);
}

TEST_P(OpsForward, LayerNormAndRmsNorm) {
  Shape s = {2, 3, 7};
  Tensor x = uniform(s, dt(), 120, -3.0, 3.0), w = uniform({7}, dt(), 121), b = uniform({7}, dt(), 122);
  Vec xv = host(x), wv = host(w), bv = host(b);
  auto ln = [&](bool use_w, bool use_b) {
    return ref_lines(xv, s, 2, [&](const Vec& l) {
      double m = line_sum(l) / 7, var = 0;
      for (double v : l) var += (v - m) * (v - m);
      double rstd = 1 / std::sqrt(var / 7 + 1e-5);
      Vec r;
      for (int j = 0; j < 7; ++j) r.push_back((l[j] - m) * rstd * (use_w ? wv[j] : 1.0) + (use_b ? bv[j] : 0.0));
      return r;
    });
  };
  expect_values("layer_norm", layer_norm(x, w, b), s, ln(true, true), tol(), dt());
  expect_values("layer_norm no affine", layer_norm(x, Tensor(), Tensor()), s, ln(false, false), tol(), dt());
  expect_values("layer_norm weight only", layer_norm(x, w, Tensor()), s, ln(true, false), tol());
  expect_values("layer_norm bias only", layer_norm(x, Tensor(), b), s, ln(false, true), tol());
  auto rms = [&](bool use_w) {
    return ref_lines(xv, s, 2, [&](const Vec& l) {
      double ss = 0;
      for (double v : l) ss += v * v;
      double rstd = 1 / std::sqrt(ss / 7 + 1e-6);
      Vec r;
      for (int j = 0; j < 7; ++j) r.push_back(l[j] * rstd * (use_w ? wv[j] : 1.0));
      return r;
    });
  };
  expect_values("rms_norm", rms_norm(x, w), s, rms(true), tol(), dt());
  expect_values("rms_norm no weight", rms_norm(x, Tensor()), s, rms(false), tol(), dt());
  // a non-contiguous input
  Tensor xt = x.transpose(0, 1);  // [3, 2, 7]
  Vec ref = ln(true, true), reft;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 2; ++j)
      for (int k = 0; k < 7; ++k) reft.push_back(ref[(j * 3 + i) * 7 + k]);
  expect_values("layer_norm of a transposed view", layer_norm(xt, w, b), {3, 2, 7}, reft, tol());
  // strided (non-contiguous) weight and bias
  Tensor w2 = stack({w, zeros({7}, dt())}, 1), b2 = stack({zeros({7}, dt()), b}, 0);  // [7, 2], [2, 7]
  expect_values("layer_norm with strided weight", layer_norm(x, w2.select(1, 0), b2.select(0, 1)), s, ln(true, true), tol());
  expect_values("rms_norm with strided weight", rms_norm(x, w2.select(1, 0)), s, rms(true), tol());
}

TEST_P(OpsForward, Embedding) {
  Tensor w = uniform({5, 3}, dt(), 130);
  Vec wv = host(w);
  std::vector<int64_t> iv = {1, 3, 1, 0, 4, 1};
  Vec ref;
  for (int64_t i : iv)
    for (int j = 0; j < 3; ++j) ref.push_back(wv[i * 3 + j]);
  expect_values("embedding", embedding(w, ids(iv, {2, 3})), {2, 3, 3}, ref, 0.0, dt());
  Tensor i32 = Tensor::from_vector<int32_t>({1, 3, 1, 0, 4, 1}, {6});
  expect_values("embedding i32 ids", embedding(w, i32), {6, 3}, ref, 0.0, dt());
  Vec ref_t;  // ids given as a transposed view: [3, 2] = {1, 0}, {3, 4}, {1, 1}
  for (int64_t i : {1, 0, 3, 4, 1, 1})
    for (int j = 0; j < 3; ++j) ref_t.push_back(wv[i * 3 + j]);
  expect_values("embedding of transposed ids", embedding(w, ids(iv, {2, 3}).t()), {3, 2, 3}, ref_t, 0.0);
  expect_values("embedding 0-d id", embedding(w, ids({4}, {})), {3}, Vec(wv.begin() + 12, wv.end()), 0.0);
  // backward scatter-adds repeated ids
  Tensor wl = w.detach();
  wl.requires_grad_();
  sum(embedding(wl, ids(iv, {6}))).backward();
  expect_values("embedding grad counts ids", wl.grad(), {5, 3}, {1, 1, 1, 3, 3, 3, 0, 0, 0, 1, 1, 1, 1, 1, 1}, 0.0);
}

TEST_P(OpsForward, Dropout) {
  Tensor x = uniform({3, 7}, dt(), 140, 0.5, 2.0);
  Generator g1(5), g2(5);
  Tensor y1 = dropout(x, 0.4, true, g1), y2 = dropout(x, 0.4, true, g2);
  EXPECT_EQ(host(y1), host(y2));  // same generator state, same mask
  EXPECT_EQ(g1.offset, 6u);       // 21 uniforms = 6 blocks of 4
  Vec xv = host(x), yv = host(y1);
  int dropped = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    if (yv[i] == 0) dropped++;
    else EXPECT_NEAR(yv[i], xv[i] / 0.6, tol() * 4) << i;
  }
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, 21);
  // the next draw uses fresh numbers
  EXPECT_NE(host(dropout(x, 0.4, true, g1)), yv);
  // backward regenerates the same mask
  Tensor xl = x.detach();
  xl.requires_grad_();
  Generator g3(5);
  sum(dropout(xl, 0.4, true, g3)).backward();
  Vec gv = host(xl.grad());
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_NEAR(gv[i], yv[i] == 0 ? 0.0 : 1 / 0.6, tol() * 4) << i;
  // p = 0 and eval mode are the identity
  EXPECT_TRUE(dropout(x, 0.0, true, g1).same(x));
  EXPECT_TRUE(dropout(x, 0.4, false, g1).same(x));
}

TEST_P(OpsForward, Cumsum) {
  Shape s = {3, 5, 2};
  Tensor x = uniform(s, dt(), 150);
  Vec xv = host(x);
  for (int d = 0; d < 3; ++d)
    for (bool rev : {false, true}) {
      Vec ref = ref_lines(xv, s, d, [rev](const Vec& l) {
        Vec r(l.size());
        double acc = 0;
        for (size_t k = 0; k < l.size(); ++k) {
          size_t i = rev ? l.size() - 1 - k : k;
          acc += l[i];
          r[i] = acc;
        }
        return r;
      });
      expect_values("cumsum dim " + std::to_string(d) + (rev ? " reverse" : ""), cumsum(x, d, rev), s, ref, tol(), dt());
    }
}

TEST_P(OpsForward, CausalConvolutions) {
  const int64_t B = 2, T = 9, C = 3;
  Tensor x = uniform({B, T, C}, dt(), 160), w = uniform({C, 4}, dt(), 161), bias = uniform({C}, dt(), 162);
  Vec xv = host(x), wv = host(w), bv = host(bias);
  auto conv = [&](bool with_bias) {
    Vec y;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          double acc = with_bias ? bv[c] : 0.0;
          for (int64_t j = 0; j < 4; ++j) {
            int64_t src = t - 3 + j;
            if (src >= 0) acc += wv[c * 4 + j] * xv[(b * T + src) * C + c];
          }
          y.push_back(acc);
        }
    return y;
  };
  expect_values("conv1d_causal", conv1d_causal(x, w, bias), {B, T, C}, conv(true), tol(), dt());
  expect_values("conv1d_causal without bias", conv1d_causal(x, w), {B, T, C}, conv(false), tol(), dt());
  for (int64_t L : {5, 9, 1}) {
    Tensor k = uniform({C, L}, dt(), 163 + L);
    Vec kv = host(k), y;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          double acc = 0;
          for (int64_t s = 0; s <= t && s < L; ++s) acc += kv[c * L + s] * xv[(b * T + t - s) * C + c];
          y.push_back(acc);
        }
    expect_values("fft_conv L=" + std::to_string(L), fft_conv(x, k), {B, T, C}, y, tol(), dt());
    // a filter of another dtype (f64 here) is read as such; dk comes back in the filter's dtype
    Tensor k64 = k.to(DType::F64);
    expect_values("fft_conv with an f64 filter L=" + std::to_string(L), fft_conv(x, k64), {B, T, C}, y, tol(), dt());
    k64.requires_grad_();
    Tensor xl = x.detach();
    xl.requires_grad_();
    sum(fft_conv(xl, k64)).backward();
    Vec dk;  // d sum(y) / dk[c, s] = sum over b, t >= s of x[b, t - s, c]
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < L; ++s) {
        double acc = 0;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t t = s; t < T; ++t) acc += xv[(b * T + t - s) * C + c];
        dk.push_back(acc);
      }
    expect_values("fft_conv dk in the filter's dtype", k64.grad(), {C, L}, dk, tol(), DType::F64);
    EXPECT_EQ(xl.grad().dtype(), dt());
  }
}

// ---- joining, splitting, indexing, views ----

TEST_P(OpsForward, CatStackSplitChunk) {
  Tensor a = uniform({2, 3}, dt(), 170), b = uniform({4, 3}, dt(), 171);
  Vec av = host(a), bv = host(b), ab = av;
  ab.insert(ab.end(), bv.begin(), bv.end());
  expect_values("cat dim 0", cat({a, b}, 0), {6, 3}, ab, 0.0, dt());
  Tensor c = uniform({3, 1}, dt(), 172);
  Vec cv = host(c), ref;
  for (int i = 0; i < 3; ++i) {
    ref.push_back(av[i]);  // a.t() row i = column i of a
    ref.push_back(av[3 + i]);
    ref.push_back(cv[i]);
  }
  expect_values("cat dim -1 of a view", cat({a.t(), c}, -1), {3, 3}, ref, 0.0);
  Tensor s1 = uniform({3, 5}, dt(), 173), s2 = uniform({3, 5}, dt(), 174);
  Vec v1 = host(s1), v2 = host(s2), st0 = v1, st1, st2;
  st0.insert(st0.end(), v2.begin(), v2.end());
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 5; ++j) st1.push_back(v1[i * 5 + j]);
    for (int j = 0; j < 5; ++j) st1.push_back(v2[i * 5 + j]);
  }
  for (int i = 0; i < 15; ++i) {
    st2.push_back(v1[i]);
    st2.push_back(v2[i]);
  }
  expect_values("stack dim 0", stack({s1, s2}, 0), {2, 3, 5}, st0, 0.0);
  expect_values("stack dim 1", stack({s1, s2}, 1), {3, 2, 5}, st1, 0.0);
  expect_values("stack dim -1", stack({s1, s2}, -1), {3, 5, 2}, st2, 0.0);
  Tensor x = uniform({7, 3}, dt(), 175);
  Vec xv = host(x);
  std::vector<Tensor> parts = split(x, {2, 4, 1}, 0);
  ASSERT_EQ(parts.size(), 3u);
  expect_values("split 0", parts[0], {2, 3}, Vec(xv.begin(), xv.begin() + 6), 0.0);
  expect_values("split 1", parts[1], {4, 3}, Vec(xv.begin() + 6, xv.begin() + 18), 0.0);
  expect_values("split 2", parts[2], {1, 3}, Vec(xv.begin() + 18, xv.end()), 0.0);
  std::vector<Tensor> chunks = chunk(x, 3, 0);  // 7 rows: 3, 3, 1
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].size(0), 3);
  EXPECT_EQ(chunks[2].size(0), 1);
  expect_values("chunk 2", chunks[2], {1, 3}, Vec(xv.begin() + 18, xv.end()), 0.0);
  std::vector<Tensor> cols = chunk(x, 2, 1);  // 3 columns: 2, 1
  ASSERT_EQ(cols.size(), 2u);
  Vec col2;
  for (int i = 0; i < 7; ++i) col2.push_back(xv[i * 3 + 2]);
  expect_values("chunk of columns", cols[1], {7, 1}, col2, 0.0);
}

TEST_P(OpsForward, IndexSelectAndGather) {
  Tensor x = uniform({5, 3}, dt(), 180);
  Vec xv = host(x), ref;
  for (int64_t i : {4, 0, 4, 2})
    for (int j = 0; j < 3; ++j) ref.push_back(xv[i * 3 + j]);
  expect_values("index_select dim 0", index_select(x, 0, ids({4, 0, 4, 2}, {4})), {4, 3}, ref, 0.0, dt());
  Vec ref1;
  for (int i = 0; i < 5; ++i)
    for (int64_t j : {2, 2, 0}) ref1.push_back(xv[i * 3 + j]);
  expect_values("index_select dim 1, negative index", index_select(x, 1, Tensor::from_vector<int32_t>({-1, 2, 0}, {3})), {5, 3},
                ref1, 0.0);
  Tensor g = uniform({3, 5}, dt(), 181);
  Vec gv = host(g);
  std::vector<int64_t> gi = {4, 4, 0, 1, 2, 3, 3, 3, 0, 1, 0, 4};
  Vec gref;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) gref.push_back(gv[i * 5 + gi[i * 4 + j]]);
  expect_values("gather dim 1", gather(g, 1, ids(gi, {3, 4})), {3, 4}, gref, 0.0, dt());
  std::vector<int64_t> gi0 = {2, 0, 1, 1, 0, 0, 0, 2, 2, 1};
  Vec gref0;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 5; ++j) gref0.push_back(gv[gi0[i * 5 + j] * 5 + j]);
  expect_values("gather dim 0", gather(g, 0, ids(gi0, {2, 5})), {2, 5}, gref0, 0.0);
  Vec gref_t;  // gather from a transposed view [5, 3] along dim 1
  std::vector<int64_t> gt = {2, 0, 1, 1, 0};
  for (int i = 0; i < 5; ++i) gref_t.push_back(gv[gt[i] * 5 + i]);
  expect_values("gather of a transposed view", gather(g.t(), 1, ids(gt, {5, 1})), {5, 1}, gref_t, 0.0);
}

TEST_P(OpsForward, ViewsAndCasts) {
  Tensor x = uniform({3, 5, 2}, dt(), 190);
  Vec xv = host(x);
  auto at = [&](int i, int j, int k) { return xv[(i * 5 + j) * 2 + k]; };
  Vec perm;  // permute {2, 0, 1}: [2, 3, 5]
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 5; ++j) perm.push_back(at(i, j, k));
  expect_values("permute", x.permute({2, 0, 1}), {2, 3, 5}, perm, 0.0, dt());
  expect_values("permute + reshape", x.permute({2, 0, 1}).reshape({6, 5}), {6, 5}, perm, 0.0);
  Vec sl;  // slice dim 1, start -4, step 3: j = 1, 4
  for (int i = 0; i < 3; ++i)
    for (int j : {1, 4})
      for (int k = 0; k < 2; ++k) sl.push_back(at(i, j, k));
  expect_values("slice with step", x.slice(1, -4, 5, 3), {3, 2, 2}, sl, 0.0);
  Vec sel;
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 2; ++k) sel.push_back(at(i, 3, k));
  expect_values("select", x.select(1, 3), {3, 2}, sel, 0.0);
  Vec ex;
  for (int r = 0; r < 4; ++r)
    for (int i = 0; i < 3; ++i) ex.push_back(at(i, 0, 1));
  expect_values("expand", x.select(2, 1).select(1, 0).expand({4, 3}), {4, 3}, ex, 0.0);
  expect_values("unsqueeze/squeeze", x.unsqueeze(1).squeeze(1).unsqueeze(-1), {3, 5, 2, 1}, xv, 0.0);
  expect_values("clone", x.clone(), {3, 5, 2}, xv, 0.0, dt());
  // casts: f32 -> bf16 rounds to nearest even; bf16 -> f32 is exact
  Tensor f = Tensor::from_vector<float>({1.0f, 1.00390625f, 1.01171875f, -3.3f, 0.0f, 65504.0f}, {6});
  expect_values("cast f32 -> bf16", cast(f, DType::BF16), {6}, {1.0, 1.0, 1.015625, -3.296875, 0.0, 65536.0}, 0.0,
                DType::BF16);
  Tensor xb = cast(x, DType::BF16);
  expect_values("cast to bf16 and back", cast(xb, dt()), {3, 5, 2}, host(xb), 0.0, dt());
  expect_values("cast to f64", cast(x, DType::F64), {3, 5, 2}, xv, 0.0, DType::F64);
  expect_values("cast of a view", cast(x.permute({2, 0, 1}), DType::F64), {2, 3, 5}, perm, 0.0, DType::F64);
}

// ---- 0-element, 1-element and 0-d edge cases ----

TEST_P(OpsForward, EmptyTensors) {
  DType d = dt();
  Tensor e = zeros({0, 3}, d);
  expect_values("exp of [0, 3]", exp(e), {0, 3}, {}, 0.0, d);
  expect_values("[0, 3] + [3]", add(e, ones({3}, d)), {0, 3}, {}, 0.0);
  expect_values("[0, 3] * 0-d", mul(e, scalar_tensor(2.0, d)), {0, 3}, {}, 0.0);
  expect_values("sum of [0, 3]", sum(e), {}, {0.0}, 0.0);
  expect_values("sum of [0, 3] over dim 0", sum(e, 0), {3}, {0, 0, 0}, 0.0);
  expect_values("sum of [0, 3] over dim 1", sum(e, 1), {0}, {}, 0.0);
  expect_values("sum of [3, 0] over dim 1", sum(zeros({3, 0}, d), 1), {3}, {0, 0, 0}, 0.0);
  expect_values("max of [0, 3] over dim 1", max(e, 1), {0}, {}, 0.0);
  expect_values("cumsum of [0]", cumsum(zeros({0}, d), 0), {0}, {}, 0.0);
  expect_values("[0, 5] @ [5, 3]", matmul(zeros({0, 5}, d), ones({5, 3}, d)), {0, 3}, {}, 0.0);
  expect_values("[3, 0] @ [0, 4]", matmul(zeros({3, 0}, d), ones({0, 4}, d)), {3, 4}, Vec(12, 0.0), 0.0);
  expect_values("[3, 5] @ [5, 0]", matmul(ones({3, 5}, d), ones({5, 0}, d)), {3, 0}, {}, 0.0);
  expect_values("[0, 3, 5] @ [5, 4]", matmul(zeros({0, 3, 5}, d), ones({5, 4}, d)), {0, 3, 4}, {}, 0.0);
  expect_values("linear of [0, 5]", linear(zeros({0, 5}, d), ones({4, 5}, d), ones({4}, d)), {0, 4}, {}, 0.0);
  expect_values("softmax of [0, 5]", softmax(zeros({0, 5}, d)), {0, 5}, {}, 0.0);
  expect_values("layer_norm of [0, 7]", layer_norm(zeros({0, 7}, d), ones({7}, d), zeros({7}, d)), {0, 7}, {}, 0.0);
  expect_values("rms_norm of [0, 7]", rms_norm(zeros({0, 7}, d), ones({7}, d)), {0, 7}, {}, 0.0);
  expect_values("embedding of no ids", embedding(ones({5, 3}, d), ids({}, {0})), {0, 3}, {}, 0.0);
  expect_values("cat with an empty piece", cat({zeros({0, 3}, d), ones({2, 3}, d)}, 0), {2, 3}, Vec(6, 1.0), 0.0);
  expect_values("index_select with no indices", index_select(ones({5, 3}, d), 0, ids({}, {0})), {0, 3}, {}, 0.0);
  expect_values("gather with an empty index", gather(ones({3, 5}, d), 1, ids({}, {3, 0})), {3, 0}, {}, 0.0);
  std::vector<Tensor> parts = split(ones({7}, d), {0, 7}, 0);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].numel(), 0);
  Generator g(1);
  expect_values("dropout of [0]", dropout(zeros({0}, d), 0.5, true, g), {0}, {}, 0.0);
}

TEST_P(OpsForward, SingleElementTensors) {
  DType d = dt();
  Tensor one = from({1.5}, {1}, d);
  expect_values("softmax of one element", softmax(one), {1}, {1.0}, 0.0);
  expect_values("log_softmax of one element", log_softmax(one), {1}, {0.0}, 0.0);
  expect_values("logsumexp of one element", logsumexp(one, 0, true), {1}, {1.5}, tol());
  expect_values("max of one element", max(from({-2.0}, {1, 1}, d), 1), {1}, {-2.0}, 0.0);
  expect_values("argmax of one element", argmax(one.view({1, 1}), 0), {1}, {0.0}, 0.0);
  expect_values("cumsum of one element", cumsum(one, 0, true), {1}, {1.5}, 0.0);
  expect_values("[1, 1] @ [1, 1]", matmul(from({3.0}, {1, 1}, d), from({-2.0}, {1, 1}, d)), {1, 1}, {-6.0}, 0.0);
  expect_values("layer_norm with D = 1", layer_norm(from({4.0, -1.0}, {2, 1}, d), from({2.0}, {1}, d), from({0.5}, {1}, d)), {2, 1},
                {0.5, 0.5}, 0.0);
  expect_values("rms_norm with D = 1", rms_norm(from({2.0}, {1, 1}, d), Tensor()), {1, 1}, {1.0}, tol());
  expect_values("cross_entropy with V = 1", cross_entropy(from({3.0}, {1, 1}, d), ids({0}, {1})), {}, {0.0}, 0.0);
  expect_values("conv1d_causal with T = 1", conv1d_causal(from({2.0}, {1, 1, 1}, d), from({5.0, 3.0}, {1, 2}, d)), {1, 1, 1}, {6.0},
                0.0);
  expect_values("fft_conv with T = L = 1", fft_conv(from({2.0}, {1, 1, 1}, d), from({-1.5}, {1, 1}, d)), {1, 1, 1}, {-3.0}, 0.0);
  std::vector<Tensor> chunks = chunk(from({1.0, 2.0}, {2}, d), 3, 0);
  ASSERT_EQ(chunks.size(), 2u);
  expect_values("chunk into more pieces than elements", chunks[1], {1}, {2.0}, 0.0);
  // 0-d tensors
  Tensor s = scalar_tensor(2.0, d), t = scalar_tensor(-0.5, d);
  expect_values("0-d + 0-d", add(s, t), {}, {1.5}, 0.0, d);
  expect_values("0-d * [3]", mul(s, ones({3}, d)), {3}, {2, 2, 2}, 0.0);
  expect_values("exp of 0-d", exp(t), {}, {std::exp(-0.5)}, tol(), d);
  expect_values("sum of 0-d", sum(s), {}, {2.0}, 0.0);
  expect_values("mean of 0-d", mean(s), {}, {2.0}, 0.0);
  expect_values("where with 0-d operands", where(Tensor::from_vector<uint8_t>({1, 0}, {2}), s, t), {2}, {2.0, -0.5}, 0.0);
  // reducing / scanning "dim 0" of a 0-d tensor is the identity (as in numpy and PyTorch)
  expect_values("sum of 0-d over dim 0", sum(s, 0), {}, {2.0}, 0.0, d);
  expect_values("sum of 0-d over dim 0, keepdim", sum(s, 0, true), {}, {2.0}, 0.0, d);
  expect_values("mean of 0-d over dim 0", mean(s, 0), {}, {2.0}, 0.0, d);
  expect_values("max of 0-d over dim 0", max(s, 0), {}, {2.0}, 0.0, d);
  expect_values("min of 0-d over dim 0", min(t, 0), {}, {-0.5}, 0.0, d);
  expect_values("logsumexp of 0-d over dim 0", logsumexp(s, 0), {}, {2.0}, 0.0, d);
  expect_values("argmax of 0-d over dim 0", argmax(s, 0), {}, {0.0}, 0.0, DType::I64);
  expect_values("cumsum of 0-d", cumsum(s, 0), {}, {2.0}, 0.0, d);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpsForward, ::testing::Values(DType::F32, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); });

// ---- dtype-independent behaviour ----

TEST(OpsForwardTies, ArgmaxMaxAndMinPickTheFirstExtremum) {
  Tensor x = Tensor::from_vector<float>({1, 3, 3, 2, 5, 5, 5, 0, -1, -1, 4, -1}, {3, 4});
  EXPECT_EQ(argmax(x, 1).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 2}));
  EXPECT_EQ(argmax(x.t(), 0).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 2}));
  Tensor col = Tensor::from_vector<float>({2, 7, 7, 1, 7, 0}, {3, 2});
  EXPECT_EQ(argmax(col, 0).to_vector<int64_t>(), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(argmax(col, 0, true).shape(), (Shape{1, 2}));
  // the gradient of max / min goes to the first extremum only
  Tensor xl = x.to(DType::F64);
  xl.requires_grad_();
  sum(max(xl, 1)).backward();
  EXPECT_EQ(xl.grad().to_vector<double>(), (std::vector<double>{0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0}));
  xl.set_grad(Tensor());
  sum(min(xl, 1)).backward();
  EXPECT_EQ(xl.grad().to_vector<double>(), (std::vector<double>{1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0}));
  // bf16 ties made by rounding
  Tensor b = Tensor::from_vector<float>({1.0f, 1.001f, 0.5f}, {3}).to(DType::BF16);
  EXPECT_EQ(argmax(b, 0).item(), 0.0);
}

TEST(OpsForwardCompare, ComparisonsGiveU8WithBroadcasting) {
  Tensor a = Tensor::from_vector<float>({1, 2, 3}, {3, 1});
  Tensor b = Tensor::from_vector<float>({2, 2, 1, 3}, {4});
  auto flat = [](const Tensor& t) { return t.to_vector<uint8_t>(); };
  Tensor e = eq(a, b);
  EXPECT_EQ(e.dtype(), DType::U8);
  EXPECT_EQ(e.shape(), (Shape{3, 4}));
  EXPECT_EQ(flat(e), (std::vector<uint8_t>{0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1}));
  EXPECT_EQ(flat(ne(a, b)), (std::vector<uint8_t>{1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0}));
  EXPECT_EQ(flat(lt(a, b)), (std::vector<uint8_t>{1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0}));
  EXPECT_EQ(flat(le(a, b)), (std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1}));
  EXPECT_EQ(flat(gt(a, b)), (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0}));
  EXPECT_EQ(flat(ge(a, b)), (std::vector<uint8_t>{0, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1}));
  // mixed dtypes promote; bf16 and integers compare too
  Tensor i = Tensor::from_vector<int64_t>({2}, {1});
  EXPECT_EQ(flat(eq(a, i)), (std::vector<uint8_t>{0, 1, 0}));
  EXPECT_EQ(flat(gt(a.to(DType::BF16), b.to(DType::BF16))), flat(gt(a, b)));
  EXPECT_EQ(flat(lt(Tensor::from_vector<int64_t>({1, 5}, {2}), i)), (std::vector<uint8_t>{1, 0}));
  // the results feed where()
  Tensor w = where(gt(a, b), a.expand({3, 4}), zeros({}));
  EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{0, 0, 0, 0, 0, 0, 2, 0, 3, 3, 3, 0}));
}

TEST(OpsForwardInt, IntegerArithmeticAndPromotion) {
  Tensor a = Tensor::from_vector<int64_t>({1, -2, 3}, {3});
  Tensor b = Tensor::from_vector<int64_t>({4, 5, -6}, {3});
  Tensor s = add(a, b);
  EXPECT_EQ(s.dtype(), DType::I64);
  EXPECT_EQ(s.to_vector<int64_t>(), (std::vector<int64_t>{5, 3, -3}));
  EXPECT_EQ(mul(a, b).to_vector<int64_t>(), (std::vector<int64_t>{4, -10, -18}));
  EXPECT_EQ(sum(a).to_vector<int64_t>(), (std::vector<int64_t>{2}));
  EXPECT_EQ(sum(Tensor::from_vector<int64_t>({1, 2, 3, 4, 5, 6}, {2, 3}), 0).to_vector<int64_t>(), (std::vector<int64_t>{5, 7, 9}));
  Tensor f = Tensor::from_vector<float>({0.5f, 0.25f, 2.0f}, {3});
  Tensor m = mul(a, f);
  EXPECT_EQ(m.dtype(), DType::F32);
  EXPECT_EQ(m.to_vector<float>(), (std::vector<float>{0.5f, -0.5f, 6.0f}));
  Tensor bf = add(Tensor::from_vector<float>({1, 2}, {2}).to(DType::BF16), Tensor::from_vector<double>({0.5, 0.25}, {2}));
  EXPECT_EQ(bf.dtype(), DType::F64);
  EXPECT_EQ(bf.to_vector<double>(), (std::vector<double>{1.5, 2.25}));
  EXPECT_EQ(argmax(Tensor::from_vector<int64_t>({3, 9, 9, 1}, {4}), 0).item(), 1.0);
}

TEST(OpsForwardInt, U8MasksPromoteInArithmetic) {
  Tensor x = Tensor::from_vector<float>({-1.5f, 2.0f, 0.0f, 3.0f}, {4});
  Tensor m = mul(x, gt(x, zeros({})));
  EXPECT_EQ(m.dtype(), DType::F32);
  EXPECT_EQ(m.to_vector<float>(), (std::vector<float>{0, 2, 0, 3}));
  Tensor xl = x.detach();
  xl.requires_grad_();
  sum(mul(xl, ge(xl, zeros({})))).backward();
  EXPECT_EQ(xl.grad().to_vector<float>(), (std::vector<float>{0, 1, 1, 1}));
  EXPECT_EQ(add(gt(x, zeros({})), lt(x, zeros({}))).to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1, 0, 1}));
}

TEST(OpsForwardEdges, PowScalarGradientsAtZero) {
  Tensor x = Tensor::from_vector<double>({0.0, 2.0, -1.5}, {3});
  x.requires_grad_();
  sum(pow(x, 0.0)).backward();  // x^0 = 1 everywhere: the gradient is 0, also at x = 0
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{0, 0, 0}));
  x.set_grad(Tensor());
  sum(pow(x, 2.0)).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{0, 4, -3}));
  x.set_grad(Tensor());
  sum(pow(x, 1.0)).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{1, 1, 1}));
}

TEST(OpsForwardLogsumexp, InfinitiesDoNotMakeNaN) {
  const double inf = std::numeric_limits<double>::infinity();
  Tensor x = Tensor::from_vector<double>({-inf, -inf, -inf, 0.0, -inf, 1.0}, {2, 3});
  std::vector<double> l = logsumexp(x, 1).to_vector<double>();
  EXPECT_EQ(l[0], -inf);
  EXPECT_NEAR(l[1], std::log(1 + std::exp(1.0)), 1e-12);
  std::vector<float> p = softmax(x.to(DType::F32).slice(0, 1, 2)).to_vector<float>();
  EXPECT_EQ(p[1], 0.0f);
  EXPECT_NEAR(p[0] + p[2], 1.0f, 1e-6);
}

// 0-d targets and ids. Disabled: cross_entropy reshapes targets with reshape({-1}) and embedding's
// backward views ids as {-1}, and Tensor::view cannot view a 0-d tensor as [1] (view_strides in
// core/tensor.cpp); enable once that is fixed.
TEST(OpsForwardEdges, ZeroDimTargetsAndIds) {
  Tensor logits = Tensor::from_vector<float>({0.5f, -1.0f, 2.0f}, {3});
  double lse = std::log(std::exp(0.5) + std::exp(-1.0) + std::exp(2.0));
  EXPECT_NEAR(cross_entropy(logits, ids({1}, {})).item(), lse + 1.0, 1e-5);
  Tensor w = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {3, 2});
  w.requires_grad_();
  sum(embedding(w, ids({2}, {}))).backward();
  EXPECT_EQ(w.grad().to_vector<float>(), (std::vector<float>{0, 0, 0, 0, 1, 1}));
}

// ---- error messages ----

TEST(OpsErrors, EmbeddingIdOutOfRangeNamesTheIdAndTheVocabulary) {
  Tensor w = zeros({5, 3});
  expect_error_contains([&] { embedding(w, ids({0, 7, 1}, {3})); }, "id 7 at position 1 is outside the vocabulary [0, 5)");
  expect_error_contains([&] { embedding(w, ids({-1}, {1})); }, "id -1");
  expect_error_contains([&] { embedding(zeros({5}), ids({0}, {1})); }, "weight must be [num_embeddings, dim], got [5]");
  expect_error_contains([&] { embedding(w, zeros({2})); }, "embedding: ids must be i64 or i32");
}

TEST(OpsErrors, CrossEntropyTargets) {
  Tensor logits = zeros({3, 5});
  expect_error_contains([&] { cross_entropy(logits, ids({0, 9, 1}, {3})); }, "target 9 at row 1 is outside the vocabulary [0, 5)");
  expect_error_contains([&] { cross_entropy(logits, ids({0, -1, 1}, {3})); }, "target -1");
  expect_error_contains([&] { cross_entropy(logits, ids({0, 1}, {2})); }, "logits of shape [3, 5] do not match targets of shape [2]");
  expect_error_contains([&] { cross_entropy(logits, zeros({3})); }, "targets must be i64 or i32 ids, got f32");
  expect_error_contains([&] { cross_entropy(logits, zeros({3}, DType::U8)); }, "targets must be i64 or i32 ids, got u8");
}

TEST(OpsErrors, ShapeMismatches) {
  expect_error_contains([&] { cat({zeros({2, 3}), zeros({2, 4})}, 0); }, "cat: shapes [2, 3] and [2, 4] differ outside dimension 0");
  expect_error_contains([&] { cat({zeros({2, 3}), zeros({2, 3, 1})}, 0); }, "cat: tensor of shape [2, 3, 1]");
  expect_error_contains([&] { cat({zeros({2, 3}), zeros({2, 3}, DType::F64)}, 0); }, "(f64) does not match [2, 3] (f32)");
  expect_error_contains([&] { cat({}, 0); }, "cat: no tensors given");
  expect_error_contains([&] { matmul(zeros({3, 5}), zeros({4, 2})); }, "inner dimensions 5 and 4");
  expect_error_contains([&] { matmul(zeros({2, 3, 5}), zeros({2, 4, 2})); }, "inner dimensions 5 and 4");
  expect_error_contains([&] { matmul(zeros({5}), zeros({4})); }, "inner dimensions 5 and 4");
  expect_error_contains([&] { matmul(zeros({2, 3, 5}), zeros({3, 5, 2})); }, "shapes [2] and [3] cannot be broadcast");
  expect_error_contains([&] { matmul(zeros({3, 5}), zeros({5, 2}, DType::F64)); }, "matmul: dtypes differ (f32 and f64)");
  expect_error_contains([&] { linear(zeros({3, 5}), zeros({4, 6})); }, "input of shape [3, 5] does not match weight of shape [4, 6]");
  expect_error_contains([&] { add(zeros({3, 5}), zeros({4, 5})); }, "shapes [3, 5] and [4, 5] cannot be broadcast together");
  expect_error_contains([&] { where(zeros({3}), zeros({3}), zeros({3})); }, "where: condition must be u8, got f32");
  expect_error_contains([&] { split(zeros({7, 3}), {2, 4}, 0); }, "split: sizes add up to 6 but dimension 0 has size 7");
  expect_error_contains([&] { split(zeros({7, 3}), {-1, 8}, 0); }, "split: size -1 is negative");
  expect_error_contains([&] { chunk(zeros({7, 3}), 0, 0); }, "chunk: the number of chunks must be positive, got 0");
  expect_error_contains([&] { conv1d_causal(zeros({2, 7}), zeros({3, 4})); }, "conv1d_causal: x must be [B, T, C] and w [C, K]");
  expect_error_contains([&] { conv1d_causal(zeros({2, 7, 3}), zeros({4, 4})); }, "got [2, 7, 3] and [4, 4]");
  expect_error_contains([&] { fft_conv(zeros({2, 7, 3}), zeros({3, 9})); }, "with L <= T; got [2, 7, 3] and [3, 9]");
  expect_error_contains([&] { layer_norm(zeros({3, 7}), zeros({5}), Tensor()); }, "layer_norm: weight of shape [5]");
  expect_error_contains([&] { layer_norm(zeros({3, 7}), Tensor(), zeros({7}, DType::F64)); }, "layer_norm: bias");
  expect_error_contains([&] { rms_norm(zeros({3, 7}), zeros({7, 1})); }, "rms_norm: weight of shape [7, 1]");
  expect_error_contains([&] { rms_norm(zeros({3, 7}), zeros({7}, DType::BF16)); }, "rms_norm: weight is bf16 but the input is f32");
  expect_error_contains([&] { conv1d_causal(zeros({2, 7, 3}), zeros({3, 4}, DType::F64)); }, "conv1d_causal: w is f64 but x is f32");
  expect_error_contains([&] { conv1d_causal(zeros({2, 7, 3}), zeros({3, 4}), zeros({4})); }, "conv1d_causal: bias of shape [4]");

  expect_error_contains([&] { max(zeros({3, 0}), 1); }, "reduction over an empty dimension 1 of [3, 0]");
  expect_error_contains([&] { sum(zeros({3, 4}), 2); }, "dimension 2 out of range for a tensor of shape [3, 4]");
  expect_error_contains([&] { softmax(zeros({3, 4}), -3); }, "dimension -3 out of range");
}

TEST(OpsErrors, IndexOutOfRange) {
  Tensor x = zeros({5, 3});
  expect_error_contains([&] { index_select(x, 0, ids({1, 5}, {2})); }, "index_select: index 5 is out of range for dimension 0 of size 5");
  expect_error_contains([&] { index_select(x, 0, ids({-7}, {1})); }, "index -7 is out of range");
  expect_error_contains([&] { index_select(x, 0, ids({1}, {1, 1})); }, "index must be 1-d, got [1, 1]");
  expect_error_contains([&] { gather(x, 1, ids({0, 3}, {1, 2})); }, "gather: index 3 is out of range for dimension 1 of size 3");
  expect_error_contains([&] { gather(x, 1, ids({0, 1}, {2})); }, "gather: index has 1 dims but input has 2");
  expect_error_contains([&] { gather(x, 1, ids({0, 0, 0, 0, 0, 0, 0}, {7, 1})); }, "exceeds input shape [5, 3]");
  expect_error_contains([&] { x.select(0, 5); }, "select: index 5 out of range for dimension 0 of size 5");
  expect_error_contains([&] { index_select(x, 0, zeros({2})); }, "index_select: index must be i64 or i32, got f32");
  expect_error_contains([&] { gather(x, 0, zeros({2, 3})); }, "gather: index must be i64 or i32, got f32");
}

TEST(OpsErrors, OtherUserErrors) {
  Generator g(1);
  expect_error_contains([&] { dropout(ones({3}), 1.0, true, g); }, "dropout: p must be in [0, 1), got 1");
  expect_error_contains([&] { exp(Tensor::from_vector<int64_t>({1}, {1})); }, "Exp: needs a floating tensor, got i64");
  expect_error_contains([&] { zeros({3}, DType::I64).requires_grad_(); }, "only floating tensors can require gradients");
}
