// The delta-rule engine: chunked (WY / UT form) == token-by-token reference on odd lengths, with and
// without an initial state, in f32 and f64; f64 gradient checks of every form; one-token steps; long
// sequences with extreme gates stay finite.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "layers/mixers/common/delta_rule.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::mixers;
using autograd::gradcheck;
using autograd::Tensors;
using seqmix::testing::random_f64;
using seqmix::testing::rel_error;

namespace {

struct Inputs {
  Tensor q, k, v, beta, g, s0;
};

// beta in (0, 1), g <= 0 (decays in (0.4, 1)).
Inputs make_inputs(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, uint64_t seed, DType dt, bool grad) {
  Inputs in;
  in.q = random_f64({B, T, H, Dk}, seed, false);
  in.k = random_f64({B, T, H, Dk}, seed + 1, false);
  in.v = random_f64({B, T, H, Dv}, seed + 2, false);
  in.beta = sigmoid(random_f64({B, T, H}, seed + 3, false));
  in.g = logsigmoid(affine(random_f64({B, T, H}, seed + 4, false), 1.0, 2.0));
  in.s0 = random_f64({B, H, Dk, Dv}, seed + 5, false);
  for (Tensor* t : {&in.q, &in.k, &in.v, &in.beta, &in.g, &in.s0}) {
    *t = t->to(dt).contiguous();
    if (grad) t->requires_grad_(true);
  }
  return in;
}

struct GInputs {
  Tensor q, k, v, lw, a, b, s0;
};

// rwkv7-like: a = -kk, b = kk * iclr with kk unit-norm, decays in (0, 1).
GInputs make_ginputs(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, uint64_t seed, DType dt, bool grad) {
  GInputs in;
  in.q = random_f64({B, T, H, Dk}, seed, false);
  in.k = random_f64({B, T, H, Dk}, seed + 1, false);
  in.v = random_f64({B, T, H, Dv}, seed + 2, false);
  in.lw = neg(exp(affine(random_f64({B, T, H, Dk}, seed + 3, false), 0.5, -1.0)));
  Tensor kk = l2_normalize(random_f64({B, T, H, Dk}, seed + 4, false));
  in.a = neg(kk);
  in.b = mul(kk, sigmoid(random_f64({B, T, H, Dk}, seed + 5, false)));
  in.s0 = random_f64({B, H, Dk, Dv}, seed + 6, false);
  for (Tensor* t : {&in.q, &in.k, &in.v, &in.lw, &in.a, &in.b, &in.s0}) {
    *t = t->to(dt).contiguous();
    if (grad) t->requires_grad_(true);
  }
  return in;
}

}  // namespace

TEST(DeltaRule, UnitLowerInverse) {
  Tensor A = mul(random_f64({3, 8, 8}, 1, false), Tensor::from_vector<double>([] {
                   std::vector<double> m(64);
                   for (int t = 0; t < 8; ++t)
                     for (int s = 0; s < 8; ++s) m[t * 8 + s] = s < t ? 1.0 : 0.0;
                   return m;
                 }(), {8, 8}));
  Tensor Ti = unit_lower_inverse(A);
  Tensor I = add(A, Tensor::from_vector<double>([] {
                   std::vector<double> m(64, 0.0);
                   for (int t = 0; t < 8; ++t) m[t * 8 + t] = 1.0;
                   return m;
                 }(), {8, 8}));
  Tensor prod = matmul(I, Ti);
  std::vector<double> p = prod.to_vector<double>();
  for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], (i % 64) / 8 == (i % 64) % 8 ? 1.0 : 0.0, 1e-10) << i;
}

TEST(DeltaRule, ChunkedEqualsReference) {
  autograd::NoGradGuard ng;
  for (DType dt : {DType::F32, DType::F64}) {
    double tol = dt == DType::F64 ? 1e-10 : 1e-4;
    for (int64_t T : {1, 63, 65, 200}) {
      Inputs in = make_inputs(2, T, 2, 5, 6, 10 + T, dt, false);
      for (bool gated : {false, true})
        for (bool with_s0 : {false, true}) {
          Tensor g = gated ? in.g : Tensor(), s0 = with_s0 ? in.s0 : Tensor();
          DeltaResult ref = delta_rule_reference(in.q, in.k, in.v, in.beta, g, s0);
          for (int64_t C : {16, 64}) {
            DeltaOptions opt;
            opt.chunk = C;
            DeltaResult ch = delta_rule(in.q, in.k, in.v, in.beta, g, s0, opt);
            EXPECT_LT(rel_error(ch.o, ref.o), tol) << dtype_name(dt) << " T=" << T << " gated=" << gated << " s0=" << with_s0 << " C=" << C;
            EXPECT_LT(rel_error(ch.final_state, ref.final_state), tol)
                << dtype_name(dt) << " T=" << T << " gated=" << gated << " s0=" << with_s0 << " C=" << C;
          }
        }
    }
  }
}

TEST(GeneralizedDeltaRule, ChunkedEqualsReference) {
  autograd::NoGradGuard ng;
  for (DType dt : {DType::F32, DType::F64}) {
    double tol = dt == DType::F64 ? 1e-10 : 1e-4;
    for (int64_t T : {1, 63, 65, 200}) {
      GInputs in = make_ginputs(2, T, 2, 5, 6, 20 + T, dt, false);
      for (bool with_s0 : {false, true}) {
        Tensor s0 = with_s0 ? in.s0 : Tensor();
        DeltaResult ref = generalized_delta_rule_reference(in.q, in.k, in.v, in.lw, in.a, in.b, s0);
        for (int64_t C : {16, 64}) {
          DeltaOptions opt;
          opt.chunk = C;
          DeltaResult ch = generalized_delta_rule(in.q, in.k, in.v, in.lw, in.a, in.b, s0, opt);
          EXPECT_LT(rel_error(ch.o, ref.o), tol) << dtype_name(dt) << " T=" << T << " s0=" << with_s0 << " C=" << C;
          EXPECT_LT(rel_error(ch.final_state, ref.final_state), tol) << dtype_name(dt) << " T=" << T << " s0=" << with_s0 << " C=" << C;
        }
      }
    }
  }
}

TEST(GeneralizedDeltaRule, ContainsTheDeltaRule) {
  // w = 1, a = -k, b = beta k, k' = beta k: the generalized rule is deltanet (no normalization).
  autograd::NoGradGuard ng;
  Inputs in = make_inputs(1, 9, 2, 4, 3, 7, DType::F64, false);
  DeltaOptions opt;
  opt.normalize_qk = false;
  DeltaResult d = delta_rule_reference(in.q, in.k, in.v, in.beta, Tensor(), in.s0, opt);
  Tensor bk = mul(in.k, in.beta.unsqueeze(3));
  DeltaResult gd = generalized_delta_rule_reference(in.q, bk, in.v, zeros_like(in.q), neg(in.k), bk, in.s0, opt);
  EXPECT_LT(rel_error(gd.o, d.o), 1e-12);
  EXPECT_LT(rel_error(gd.final_state, d.final_state), 1e-12);
}

TEST(DeltaRule, Gradcheck) {
  DeltaOptions opt;
  opt.chunk = 4;
  for (bool gated : {false, true}) {
    Inputs in = make_inputs(2, 7, 2, 3, 5, 40, DType::F64, true);
    Tensors inputs = {in.q, in.k, in.v, in.beta, in.s0};
    if (gated) inputs.push_back(in.g);
    auto f_chunk = [&](const Tensors& x) -> Tensors {
      DeltaResult r = delta_rule(x[0], x[1], x[2], x[3], gated ? x[5] : Tensor(), x[4], opt);
      return {r.o, r.final_state};
    };
    auto f_ref = [&](const Tensors& x) -> Tensors {
      DeltaResult r = delta_rule_reference(x[0], x[1], x[2], x[3], gated ? x[5] : Tensor(), x[4], opt);
      return {r.o, r.final_state};
    };
    autograd::GradcheckResult rc = gradcheck(f_chunk, inputs);
    EXPECT_TRUE(rc.ok) << "chunked gated=" << gated << ": " << rc.message;
    autograd::GradcheckResult rr = gradcheck(f_ref, inputs);
    EXPECT_TRUE(rr.ok) << "reference gated=" << gated << ": " << rr.message;
  }
}

TEST(GeneralizedDeltaRule, Gradcheck) {
  DeltaOptions opt;
  opt.chunk = 4;
  GInputs in = make_ginputs(2, 7, 2, 3, 5, 50, DType::F64, true);
  Tensors inputs = {in.q, in.k, in.v, in.lw, in.a, in.b, in.s0};
  autograd::GradcheckResult rc = gradcheck(
      [&](const Tensors& x) -> Tensors {
        DeltaResult r = generalized_delta_rule(x[0], x[1], x[2], x[3], x[4], x[5], x[6], opt);
        return {r.o, r.final_state};
      },
      inputs);
  EXPECT_TRUE(rc.ok) << "chunked: " << rc.message;
  autograd::GradcheckResult rr = gradcheck(
      [&](const Tensors& x) -> Tensors {
        DeltaResult r = generalized_delta_rule_reference(x[0], x[1], x[2], x[3], x[4], x[5], x[6], opt);
        return {r.o, r.final_state};
      },
      inputs);
  EXPECT_TRUE(rr.ok) << "reference: " << rr.message;
}

TEST(DeltaRule, StepsContinueAChunkedPrefix) {
  // chunked over a prefix, then one-token steps from its final state == the reference over everything
  autograd::NoGradGuard ng;
  Inputs in = make_inputs(2, 11, 2, 4, 3, 60, DType::F64, false);
  DeltaResult full = delta_rule_reference(in.q, in.k, in.v, in.beta, in.g, in.s0);
  DeltaOptions opt;
  opt.chunk = 4;
  auto pre = [&](const Tensor& t) { return t.narrow(1, 0, 6); };
  DeltaResult head = delta_rule(pre(in.q), pre(in.k), pre(in.v), pre(in.beta), pre(in.g), in.s0, opt);
  EXPECT_LT(rel_error(head.o, full.o.narrow(1, 0, 6)), 1e-10);
  Tensor S = head.final_state;
  for (int64_t t = 6; t < 11; ++t) {
    Tensor o = delta_rule_step(in.q.select(1, t), in.k.select(1, t), in.v.select(1, t), in.beta.select(1, t), in.g.select(1, t), S);
    EXPECT_LT(rel_error(o, full.o.select(1, t)), 1e-10) << t;
  }
  EXPECT_LT(rel_error(S, full.final_state), 1e-10);

  GInputs gi = make_ginputs(2, 11, 2, 4, 3, 61, DType::F64, false);
  DeltaResult gfull = generalized_delta_rule_reference(gi.q, gi.k, gi.v, gi.lw, gi.a, gi.b, gi.s0);
  DeltaResult ghead = generalized_delta_rule(pre(gi.q), pre(gi.k), pre(gi.v), pre(gi.lw), pre(gi.a), pre(gi.b), gi.s0, opt);
  Tensor GS = ghead.final_state;
  for (int64_t t = 6; t < 11; ++t) {
    Tensor o = generalized_delta_rule_step(gi.q.select(1, t), gi.k.select(1, t), gi.v.select(1, t), gi.lw.select(1, t),
                                           gi.a.select(1, t), gi.b.select(1, t), GS);
    EXPECT_LT(rel_error(o, gfull.o.select(1, t)), 1e-10) << t;
  }
  EXPECT_LT(rel_error(GS, gfull.final_state), 1e-10);
}

namespace {
bool all_finite(const Tensor& t) {
  for (double x : t.to_vector<double>())
    if (!std::isfinite(x)) return false;
  return true;
}

// [1, T, 1, n] (n = 0: [1, T, 1]) filled with one value per quarter of the sequence: each quarter is one of
// the four extreme combinations (gate near 0 or 1) x (decay near 0 or 1), 16,384 tokens each at T = 65,536.
Tensor quarters(int64_t T, int64_t n, const std::vector<double>& values) {
  std::vector<float> x;
  int64_t per = std::max<int64_t>(n, 1);
  x.reserve(size_t(T * per));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < per; ++i) x.push_back(float(values[size_t(t * 4 / T)]));
  return n > 0 ? Tensor::from_vector<float>(x, {1, T, 1, n}) : Tensor::from_vector<float>(x, {1, T, 1});
}
const double kLo = 1e-6, kHi = 1.0 - 1e-6;
const std::vector<double> kGates{kLo, kLo, kHi, kHi}, kDecays{kLo, kHi, kLo, kHi};
std::vector<double> logs(const std::vector<double>& v) {
  std::vector<double> out;
  for (double x : v) out.push_back(std::log(x));
  return out;
}
}  // namespace

// B = 1, H = 1, tiny heads, T = 65,536 in f32: beta near 0 and near 1, decays near 0 and near 1 (one quarter
// of the sequence per combination, so every regime runs for 16,384 tokens); outputs, final state and every
// gradient stay finite.
TEST(DeltaRule, LongSequenceExtremeGatesStayFinite) {
  const int64_t T = 65536;
  Generator gen(7);
  Tensor q = randn({1, T, 1, 2}, gen).requires_grad_(true);
  Tensor k = randn({1, T, 1, 2}, gen).requires_grad_(true);
  Tensor v = randn({1, T, 1, 2}, gen).requires_grad_(true);
  Tensor beta = quarters(T, 0, kGates).requires_grad_(true);
  Tensor g = quarters(T, 0, logs(kDecays)).requires_grad_(true);
  DeltaOptions opt;
  opt.chunk = 32;
  DeltaResult r = delta_rule(q, k, v, beta, g, Tensor(), opt);
  EXPECT_TRUE(all_finite(r.o) && all_finite(r.final_state));
  add(sum(r.o), sum(r.final_state)).backward();
  for (Tensor* t : {&q, &k, &v, &beta, &g}) EXPECT_TRUE(all_finite(t->grad()));
}

TEST(GeneralizedDeltaRule, LongSequenceExtremeGatesStayFinite) {
  const int64_t T = 65536;
  Generator gen(8);
  Tensor q = randn({1, T, 1, 2}, gen).requires_grad_(true);
  Tensor k = randn({1, T, 1, 2}, gen).requires_grad_(true);
  Tensor v = randn({1, T, 1, 2}, gen).requires_grad_(true);
  Tensor kk = l2_normalize(randn({1, T, 1, 2}, gen));
  Tensor a = neg(kk).requires_grad_(true);
  Tensor b = mul(kk, quarters(T, 2, kGates)).requires_grad_(true);  // rwkv7's b = kk * iclr
  Tensor lw = quarters(T, 2, logs(kDecays)).requires_grad_(true);
  DeltaOptions opt;
  opt.chunk = 16;
  DeltaResult r = generalized_delta_rule(q, k, v, lw, a, b, Tensor(), opt);
  EXPECT_TRUE(all_finite(r.o) && all_finite(r.final_state));
  add(sum(r.o), sum(r.final_state)).backward();
  for (Tensor* t : {&q, &k, &v, &lw, &a, &b}) EXPECT_TRUE(all_finite(t->grad()));
}
