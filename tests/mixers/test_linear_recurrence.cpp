// The shared gated-linear-recurrence engine on the CPU: chunked == token-by-token reference (output and
// final state) at odd lengths, with and without decay / bonus / initial state; f64 gradient checks;
// one-token steps; stability over 65,536 tokens with strong and near-1 decays.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "layers/mixers/common/linear_recurrence.h"
#include "layers/mixers/common/recurrence_step.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::mixers;
using autograd::Tensors;
using seqmix::testing::rel_error;

namespace {

enum class DecayMode { None, Head, Channel };

struct Inputs {
  Tensor q, k, v, g, u, s0;
};

// log-decays in [log(0.5), log(0.999)] roughly: logsigmoid of a shifted normal
Inputs make_inputs(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, DecayMode mode, bool bonus, bool init, DType dt,
                   uint64_t seed, bool requires_grad = false) {
  Generator gen(seed);
  Inputs in;
  in.q = randn({B, T, H, Dk}, gen, dt);
  in.k = randn({B, T, H, Dk}, gen, dt);
  in.v = randn({B, T, H, Dv}, gen, dt);
  if (mode == DecayMode::Channel) in.g = logsigmoid(affine(randn({B, T, H, Dk}, gen, dt), 1.0, 3.0));
  if (mode == DecayMode::Head) in.g = logsigmoid(affine(randn({B, T, H}, gen, dt), 1.0, 3.0));
  if (bonus) in.u = randn({H, Dk}, gen, dt);
  if (init) in.s0 = randn({B, H, Dk, Dv}, gen, dt == DType::F64 ? DType::F64 : DType::F32);
  if (requires_grad)
    for (Tensor* t : {&in.q, &in.k, &in.v, &in.g, &in.u, &in.s0})
      if (t->defined()) t->requires_grad_(true);
  return in;
}

const char* mode_name(DecayMode m) { return m == DecayMode::None ? "none" : m == DecayMode::Head ? "head" : "channel"; }

}  // namespace

TEST(LinearRecurrence, ChunkedEqualsReferenceF32AndF64) {
  for (DType dt : {DType::F32, DType::F64}) {
    double tol = dt == DType::F32 ? 1e-5 : 1e-10;
    for (int64_t T : {1, 63, 65, 200})
      for (DecayMode mode : {DecayMode::None, DecayMode::Head, DecayMode::Channel})
        for (bool bonus : {false, true})
          for (bool init : {false, true}) {

            Inputs in = make_inputs(2, T, 2, 4, 3, mode, bonus, init, dt, 100 + uint64_t(T));
            RecurrenceOptions ro;
            ro.scale = 0.5;
            auto ref = linear_recurrence_reference(in.q, in.k, in.v, in.g, in.u, in.s0, ro);
            for (int64_t chunk : {16, 64}) {
              ro.chunk = chunk;
              auto got = linear_recurrence(in.q, in.k, in.v, in.g, in.u, in.s0, ro);
              std::string what = std::string(dtype_name(dt)) + " T=" + std::to_string(T) + " decay=" + mode_name(mode) +
                                 " bonus=" + std::to_string(bonus) + " init=" + std::to_string(init) + " chunk=" + std::to_string(chunk);
              ASSERT_EQ(got.o.shape(), in.v.shape()) << what;
              EXPECT_EQ(got.o.dtype(), dt) << what;
              EXPECT_LT(rel_error(got.o, ref.o), tol) << what;
              EXPECT_LT(rel_error(got.final_state, ref.final_state), tol) << what;
            }
          }
  }
}

TEST(LinearRecurrence, GradcheckF64AllInputs) {
  for (DecayMode mode : {DecayMode::Channel, DecayMode::Head, DecayMode::None})
    for (bool bonus : {false, true}) {
      Inputs in = make_inputs(2, 7, 2, 3, 5, mode, bonus, true, DType::F64, 7, true);
      Tensors xs{in.q, in.k, in.v, in.s0};
      if (in.g.defined()) xs.push_back(in.g);
      if (in.u.defined()) xs.push_back(in.u);
      auto unpack = [&](const Tensors& x, Tensor& g, Tensor& u) {
        size_t i = 4;
        g = in.g.defined() ? x[i++] : Tensor();
        u = in.u.defined() ? x[i++] : Tensor();
      };
      for (bool chunked : {true, false}) {
        auto f = [&](const Tensors& x) -> Tensors {
          Tensor g, u;
          unpack(x, g, u);
          RecurrenceOptions ro;
          ro.chunk = 4;
          ro.scale = 0.7;
          auto r = chunked ? linear_recurrence(x[0], x[1], x[2], g, u, x[3], ro) : linear_recurrence_reference(x[0], x[1], x[2], g, u, x[3], ro);
          return {r.o, r.final_state};
        };
        auto res = autograd::gradcheck(f, xs);
        EXPECT_TRUE(res.ok) << mode_name(mode) << " bonus=" << bonus << " chunked=" << chunked << ": " << res.message;
      }
    }
}

TEST(LinearRecurrence, StepsContinueTheSequence) {
  for (bool bonus : {false, true}) {
    Inputs in = make_inputs(2, 9, 2, 4, 3, DecayMode::Channel, bonus, true, DType::F32, 21);
    RecurrenceOptions ro;
    ro.chunk = 4;
    auto full = linear_recurrence(in.q, in.k, in.v, in.g, in.u, in.s0, ro);
    // a prompt of 4 tokens (chunked from the state), then one token at a time
    auto part = [&](const Tensor& x, int64_t a, int64_t n) { return x.defined() ? x.narrow(1, a, n) : x; };
    auto r = linear_recurrence_step(part(in.q, 0, 4), part(in.k, 0, 4), part(in.v, 0, 4), part(in.g, 0, 4), in.u, in.s0, ro);
    EXPECT_LT(rel_error(r.o, full.o.narrow(1, 0, 4)), 1e-5);
    Tensor S = r.final_state;
    for (int64_t t = 4; t < 9; ++t) {
      auto s = linear_recurrence_step(part(in.q, t, 1), part(in.k, t, 1), part(in.v, t, 1), part(in.g, t, 1), in.u, S, ro);
      EXPECT_LT(rel_error(s.o, full.o.narrow(1, t, 1)), 1e-5) << "bonus=" << bonus << " t=" << t;
      S = s.final_state;
    }
    EXPECT_LT(rel_error(S, full.final_state), 1e-5);
  }
}

TEST(LinearRecurrence, ShapeErrorsAreClear) {
  Inputs in = make_inputs(1, 3, 2, 4, 3, DecayMode::None, false, false, DType::F32, 3);
  seqmix::testing::expect_error_contains(
      [&] { linear_recurrence(in.q, in.k, in.v, zeros({1, 3, 5}), Tensor(), Tensor()); }, "must be [B, T, H, Dk] or [B, T, H]");
  seqmix::testing::expect_error_contains(
      [&] { linear_recurrence(in.q, in.k, in.v, Tensor(), zeros({2, 5}), Tensor()); }, "bonus");
}

TEST(LinearRecurrence, LongSequenceStrongAndWeakDecaysStayFinite) {
  // T = 65,536, B = H = 1, small Dk/Dv: decays near 1e-3 per step on some channels, near 1 on others.
  const int64_t T = 65536, Dk = 2, Dv = 2;
  Generator gen(5);
  std::vector<float> gv(size_t(T * Dk));
  for (int64_t t = 0; t < T; ++t) {
    gv[size_t(t * Dk)] = float(std::log(1e-3));    // strong decay
    gv[size_t(t * Dk + 1)] = -1e-6f;               // nearly none
  }
  for (bool per_channel : {true, false}) {
    Tensor q = randn({1, T, 1, Dk}, gen).requires_grad_(true);
    Tensor k = randn({1, T, 1, Dk}, gen).requires_grad_(true);
    Tensor v = randn({1, T, 1, Dv}, gen).requires_grad_(true);
    Tensor g = per_channel ? Tensor::from_vector<float>(gv, {1, T, 1, Dk}) : full({1, T, 1}, std::log(1e-3));
    g.requires_grad_(true);
    Tensor u = randn({1, Dk}, gen).requires_grad_(true);
    RecurrenceOptions ro;
    auto r = linear_recurrence(q, k, v, g, per_channel ? u : Tensor(), Tensor(), ro);
    Tensor loss = add(sum(square(r.o)) * (1.0 / double(T)), sum(r.final_state) * 1e-3);
    loss.backward();
    auto finite = [](const Tensor& t) {
      for (float x : t.to_vector<float>())
        if (!std::isfinite(x)) return false;
      return true;
    };
    EXPECT_TRUE(finite(r.o)) << "per_channel=" << per_channel;
    EXPECT_TRUE(finite(r.final_state));
    for (const Tensor* t : {&q, &k, &v, &g}) EXPECT_TRUE(finite(t->grad())) << "per_channel=" << per_channel;
    if (per_channel) {
      EXPECT_TRUE(finite(u.grad()));
    }
  }
}

TEST(LinearRecurrence, ChunkedGradientsEqualReferenceGradientsOverManyChunks) {
  // T = 37 with chunk 8: five chunks (the last one partial); every input's gradient, f64
  for (DecayMode mode : {DecayMode::Channel, DecayMode::Head})
    for (bool bonus : {false, true}) {
      Inputs in = make_inputs(2, 37, 2, 3, 4, mode, bonus, true, DType::F64, 11, true);
      Tensors xs{in.q, in.k, in.v, in.s0, in.g};
      if (bonus) xs.push_back(in.u);
      Tensor w = seqmix::testing::random_f64({2, 37, 2, 4}, 12, false), ws = seqmix::testing::random_f64({2, 2, 3, 4}, 13, false);
      auto grads_of = [&](bool chunked) {
        RecurrenceOptions ro;
        ro.chunk = 8;
        auto r = chunked ? linear_recurrence(in.q, in.k, in.v, in.g, in.u, in.s0, ro) : linear_recurrence_reference(in.q, in.k, in.v, in.g, in.u, in.s0, ro);
        Tensor loss = add(sum(mul(r.o, w)), sum(mul(r.final_state, ws)));
        return autograd::grad({loss}, xs, {Tensor()});
      };
      Tensors a = grads_of(true), b = grads_of(false);
      for (size_t i = 0; i < xs.size(); ++i)
        EXPECT_LT(rel_error(a[i], b[i]), 1e-10) << mode_name(mode) << " bonus=" << bonus << " input " << i;
    }
}
