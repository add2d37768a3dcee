// The CUDA chunked linear recurrence (linear_recurrence_cuda) against the CPU token-by-token reference
// (linear_recurrence_reference): output, final state and the gradients of q, k, v, g, bonus and the initial
// state, at odd lengths around the chunk size (1, 63, 65, 200, 257), per-channel / per-head / no decay, with
// and without a bonus and an initial state, head dims 64 and 128 and odd ones (Dk=5, Dv=33), B = 1 and 2,
// bf16 and f32; strided inputs; and a 65,536-token run with strong decays (no NaN / inf).
//
// Tolerances (max |cuda - ref| / max(max |ref|, 1e-3) over each tensor): bf16 2e-2 (inputs rounded to bf16
// once and the same values feed both sides; the kernel computes in f32 and rounds o, dq, dk, dv to bf16),
// f32 1e-4 (5e-4 with strong decays, see tolerance()).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/node.h"
#include "core/ops.h"
#include "layers/mixers/common/linear_recurrence.h"
#include "layers/mixers/common/linear_recurrence_cuda.h"
#include "support/test_util.h"

using namespace seqmix;
using seqmix::mixers::linear_recurrence_cuda;
using seqmix::mixers::linear_recurrence_reference;
using seqmix::mixers::RecurrenceOptions;
using seqmix::mixers::RecurrenceResult;

namespace {

enum class DecayKind { None, Head, Channel };

struct LrCase {
  int64_t B, T, H, Dk, Dv;
  DecayKind decay;
  bool bonus, init;
  DType dtype;
  double strength = 1.0;  // multiplies the log-decays
};

std::ostream& operator<<(std::ostream& os, const LrCase& c) {
  const char* d = c.decay == DecayKind::None ? "none" : c.decay == DecayKind::Head ? "head" : "channel";
  return os << "B=" << c.B << " T=" << c.T << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv << " decay=" << d
            << " bonus=" << c.bonus << " init=" << c.init << " " << dtype_name(c.dtype) << " strength=" << c.strength;
}

// Random normal values times `mul`, rounded to dt, as an f32 CPU tensor.
Tensor random_rounded(const Shape& s, uint64_t seed, DType dt, double mul = 1.0) {
  Generator g(seed);
  Tensor t = randn(s, g, DType::F32) * mul;
  return dt == DType::F32 ? t : t.to(dt).to(DType::F32);
}

// Log-decays in (-inf, 0): log(sigmoid(x + 2)) * strength, f32 (typical value -0.13 per token).
Tensor random_log_decay(const Shape& s, uint64_t seed, double strength) {
  Generator g(seed);
  return logsigmoid(randn(s, g, DType::F32) + 2.0) * strength;
}

Tensor to_gpu(const Tensor& t, DType dt) { return t.to(dt).to(Device::cuda()); }
Tensor to_cpu_f32(const Tensor& t) { return t.to(Device::cpu()).to(DType::F32); }

// f32 with strong decays (strength > 1): the cumulative log-decays reach |G| ~ 170 within a chunk, whose f32
// rounding (~1e-5 absolute) enters every exponent exp(G_t - G_s) of the chunked form, while the reference
// multiplies per-token decays; 5e-4 there.
double tolerance(DType dt, double strength = 1.0) {
  if (dt != DType::F32) return 2e-2;
  return strength > 1.0 ? 5e-4 : 1e-4;
}

// Relative error; where the reference is (near) zero everywhere, the absolute error.
double err(const Tensor& got, const Tensor& want) {
  std::vector<float> g = to_cpu_f32(got).to_vector<float>(), w = to_cpu_f32(want).to_vector<float>();
  EXPECT_EQ(g.size(), w.size());
  double num = 0, den = 1e-6;
  for (size_t i = 0; i < g.size() && i < w.size(); ++i) {
    if (!std::isfinite(g[i])) return INFINITY;
    num = std::max(num, double(std::abs(g[i] - w[i])));
    den = std::max(den, double(std::abs(w[i])));
  }
  return num / std::max(den, 1e-3);
}

Tensor leaf(const Tensor& t) {
  Tensor x = t.detach();
  x.requires_grad_(true);
  return x;
}

struct Leaves {
  Tensor q, k, v, g, u, s0;
};

void check_against_cpu(const LrCase& c, bool strided = false) {
  SCOPED_TRACE(::testing::PrintToString(c));
  const DType dt = c.dtype;
  const int64_t B = c.B, T = c.T, H = c.H, Dk = c.Dk, Dv = c.Dv;
  // q, k scaled so that q.k is O(1); v O(1).
  Tensor q = random_rounded({B, T, H, Dk}, 21, dt, 1.0 / std::sqrt(double(Dk)));
  Tensor k = random_rounded({B, T, H, Dk}, 22, dt);
  Tensor v = random_rounded({B, T, H, Dv}, 23, dt);
  Tensor g;
  if (c.decay == DecayKind::Channel) g = random_log_decay({B, T, H, Dk}, 24, c.strength);
  if (c.decay == DecayKind::Head) g = random_log_decay({B, T, H}, 24, c.strength);
  Tensor u = c.bonus ? random_rounded({H, Dk}, 25, DType::F32) : Tensor();
  Tensor s0 = c.init ? random_rounded({B, H, Dk, Dv}, 26, DType::F32) : Tensor();
  Tensor dout = random_rounded({B, T, H, Dv}, 27, dt);
  Tensor dfin = random_rounded({B, H, Dk, Dv}, 28, DType::F32);
  RecurrenceOptions opt;
  opt.scale = 0.75;

  // CPU reference (f32)
  Leaves r{leaf(q), leaf(k), leaf(v), g.defined() ? leaf(g) : Tensor(), u.defined() ? leaf(u) : Tensor(),
           s0.defined() ? leaf(s0) : Tensor()};
  RecurrenceResult ref = linear_recurrence_reference(r.q, r.k, r.v, r.g, r.u, r.s0, opt);
  autograd::backward({ref.o, ref.final_state}, {dout, dfin});

  // CUDA
  Leaves d;
  if (strided) {  // q, k, v as views of one [B, T, H, 2 Dk + Dv] projection
    Tensor all = to_gpu(cat({q, k, v}, 3), dt);
    Tensor all_leaf = leaf(all);
    d.q = all_leaf.narrow(3, 0, Dk);
    d.k = all_leaf.narrow(3, Dk, Dk);
    d.v = all_leaf.narrow(3, 2 * Dk, Dv);
    EXPECT_FALSE(d.q.is_contiguous());
    RecurrenceResult got = linear_recurrence_cuda(d.q, d.k, d.v, Tensor(), Tensor(), Tensor(), opt);
    autograd::backward({got.o, got.final_state}, {to_gpu(dout, dt), to_gpu(dfin, DType::F32)});
    const double tol = tolerance(dt);
    EXPECT_LT(err(got.o, ref.o), tol) << "o";
    EXPECT_LT(err(got.final_state, ref.final_state), tol) << "final state";
    Tensor ga = to_cpu_f32(all_leaf.grad());
    EXPECT_LT(err(ga.narrow(3, 0, Dk), r.q.grad()), tol) << "dq";
    EXPECT_LT(err(ga.narrow(3, Dk, Dk), r.k.grad()), tol) << "dk";
    EXPECT_LT(err(ga.narrow(3, 2 * Dk, Dv), r.v.grad()), tol) << "dv";
    return;
  }
  d.q = leaf(to_gpu(q, dt));
  d.k = leaf(to_gpu(k, dt));
  d.v = leaf(to_gpu(v, dt));
  if (g.defined()) d.g = leaf(to_gpu(g, DType::F32));
  if (u.defined()) d.u = leaf(to_gpu(u, DType::F32));
  if (s0.defined()) d.s0 = leaf(to_gpu(s0, DType::F32));
  RecurrenceResult got = linear_recurrence_cuda(d.q, d.k, d.v, d.g, d.u, d.s0, opt);
  ASSERT_TRUE(got.o.is_cuda());
  ASSERT_EQ(got.o.dtype(), dt);
  ASSERT_EQ(got.o.shape(), (Shape{B, T, H, Dv}));
  ASSERT_TRUE(got.final_state.defined());
  ASSERT_EQ(got.final_state.dtype(), DType::F32);
  autograd::backward({got.o, got.final_state}, {to_gpu(dout, dt), to_gpu(dfin, DType::F32)});

  const double tol = tolerance(dt, c.strength);
  EXPECT_LT(err(got.o, ref.o), tol) << "o";
  EXPECT_LT(err(got.final_state, ref.final_state), tol) << "final state";
  EXPECT_LT(err(d.q.grad(), r.q.grad()), tol) << "dq";
  EXPECT_LT(err(d.k.grad(), r.k.grad()), tol) << "dk";
  EXPECT_LT(err(d.v.grad(), r.v.grad()), tol) << "dv";
  if (g.defined()) {
    ASSERT_TRUE(d.g.grad().defined());
    EXPECT_EQ(d.g.grad().shape(), g.shape());
    EXPECT_LT(err(d.g.grad(), r.g.grad()), tol) << "dg";
  }
  if (u.defined()) {
    ASSERT_TRUE(d.u.grad().defined());
    EXPECT_LT(err(d.u.grad(), r.u.grad()), tol) << "d bonus";
  }
  if (s0.defined()) {
    ASSERT_TRUE(d.s0.grad().defined());
    EXPECT_LT(err(d.s0.grad(), r.s0.grad()), tol) << "d initial state";
  }
}

}  // namespace

class LinearRecurrenceGpuVsCpu : public ::testing::TestWithParam<LrCase> {};

TEST_P(LinearRecurrenceGpuVsCpu, OutputStateAndGradientsMatch) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  check_against_cpu(GetParam());
}

constexpr DType kBF = DType::BF16;
constexpr DType kF32 = DType::F32;
constexpr DecayKind kNone = DecayKind::None, kHead = DecayKind::Head, kChan = DecayKind::Channel;

INSTANTIATE_TEST_SUITE_P(
    Bf16, LinearRecurrenceGpuVsCpu,
    ::testing::Values(
        // gla: per-channel decay, every length, both fast head dims, with / without initial state
        LrCase{1, 1, 2, 64, 64, kChan, false, false, kBF}, LrCase{2, 63, 2, 64, 64, kChan, false, true, kBF},
        LrCase{2, 65, 2, 128, 128, kChan, false, false, kBF}, LrCase{1, 200, 2, 128, 128, kChan, false, true, kBF},
        LrCase{2, 257, 2, 64, 64, kChan, false, true, kBF},
        // rwkv6: per-channel decay + bonus
        LrCase{1, 1, 2, 64, 64, kChan, true, true, kBF}, LrCase{2, 65, 2, 64, 64, kChan, true, false, kBF},
        LrCase{1, 257, 2, 128, 128, kChan, true, true, kBF},
        // retnet: per-head decay
        LrCase{1, 1, 2, 64, 64, kHead, false, false, kBF}, LrCase{2, 63, 2, 128, 128, kHead, false, true, kBF},
        LrCase{1, 257, 2, 64, 64, kHead, false, false, kBF}, LrCase{2, 200, 2, 64, 64, kHead, true, true, kBF},
        // linear attention: no decay
        LrCase{1, 1, 2, 64, 64, kNone, false, true, kBF}, LrCase{2, 65, 2, 128, 128, kNone, false, false, kBF},
        LrCase{1, 257, 2, 64, 64, kNone, false, true, kBF}, LrCase{2, 200, 2, 64, 64, kNone, true, false, kBF},
        // odd head dims
        LrCase{2, 65, 2, 5, 33, kChan, true, true, kBF}, LrCase{1, 257, 1, 5, 33, kHead, false, true, kBF},
        LrCase{2, 63, 2, 33, 5, kNone, false, false, kBF},
        // strong decays (exp(-G) would overflow in a naive chunked form)
        LrCase{1, 257, 2, 64, 64, kChan, false, true, kBF, 20.0}, LrCase{1, 200, 2, 64, 64, kHead, true, false, kBF, 20.0}));

INSTANTIATE_TEST_SUITE_P(
    F32, LinearRecurrenceGpuVsCpu,
    ::testing::Values(LrCase{1, 1, 2, 64, 64, kChan, true, true, kF32}, LrCase{2, 63, 2, 64, 64, kChan, false, true, kF32},
                      LrCase{1, 65, 2, 128, 128, kChan, true, false, kF32}, LrCase{2, 200, 1, 64, 64, kHead, false, true, kF32},
                      LrCase{1, 257, 2, 64, 64, kNone, true, true, kF32}, LrCase{2, 257, 2, 5, 33, kChan, true, true, kF32},
                      LrCase{1, 65, 2, 33, 5, kHead, true, false, kF32}, LrCase{2, 200, 2, 5, 33, kNone, false, false, kF32},
                      LrCase{1, 257, 2, 64, 64, kChan, true, true, kF32, 20.0}));

TEST(LinearRecurrenceGpu, StridedInputs) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  check_against_cpu(LrCase{2, 130, 2, 64, 64, kNone, false, false, kBF}, /*strided=*/true);
}

TEST(LinearRecurrenceGpu, NoFinalStateRequested) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  Generator gen(5);
  Tensor q = randn({1, 70, 2, 64}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor k = randn({1, 70, 2, 64}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor v = randn({1, 70, 2, 64}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor g = logsigmoid(randn({1, 70, 2, 64}, gen, DType::F32)).to(Device::cuda());
  q.requires_grad_(true);
  g.requires_grad_(true);
  RecurrenceOptions opt;
  opt.want_final_state = false;
  RecurrenceResult r = linear_recurrence_cuda(q, k, v, g, Tensor(), Tensor(), opt);
  EXPECT_FALSE(r.final_state.defined());
  sum(r.o.to(DType::F32)).backward();
  ASSERT_TRUE(q.grad().defined());
  ASSERT_TRUE(g.grad().defined());
  for (float x : to_cpu_f32(g.grad()).to_vector<float>()) ASSERT_TRUE(std::isfinite(x));
}

// 65,536 tokens with strong per-channel decays (log-decays down to -30 per token) and a bonus: everything
// finite, and the last tokens' outputs agree with a reference run on the last 256 tokens only (the state
// forgets within a few tokens at these decays).
TEST(LinearRecurrenceGpu, LongSequenceStrongDecaysStayFinite) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 65536, H = 2, D = 64, tail = 256;
  Generator gen(7);
  Tensor q = (randn({1, T, H, D}, gen, DType::F32) * 0.125).to(DType::BF16);
  Tensor k = randn({1, T, H, D}, gen, DType::F32).to(DType::BF16);
  Tensor v = randn({1, T, H, D}, gen, DType::F32).to(DType::BF16);
  Tensor g = logsigmoid(randn({1, T, H, D}, gen, DType::F32) * 3.0 - 2.0) * 10.0;  // mostly in [-30, -1]
  Tensor u = randn({H, D}, gen, DType::F32);
  Tensor qd = leaf(q.to(Device::cuda())), kd = leaf(k.to(Device::cuda())), vd = leaf(v.to(Device::cuda()));
  Tensor gd = leaf(g.to(Device::cuda())), ud = leaf(u.to(Device::cuda()));
  RecurrenceResult r = linear_recurrence_cuda(qd, kd, vd, gd, ud, Tensor(), RecurrenceOptions{});
  autograd::backward({r.o, r.final_state}, {ones_like(r.o), ones_like(r.final_state)});
  auto all_finite = [](const Tensor& t, const char* what) {
    std::vector<float> x = to_cpu_f32(t).to_vector<float>();
    size_t bad = 0;
    for (float e : x) bad += !std::isfinite(e);
    EXPECT_EQ(bad, 0u) << what;
  };
  all_finite(r.o, "o");
  all_finite(r.final_state, "final state");
  all_finite(qd.grad(), "dq");
  all_finite(kd.grad(), "dk");
  all_finite(vd.grad(), "dv");
  all_finite(gd.grad(), "dg");
  all_finite(ud.grad(), "d bonus");
  // The tail against the reference (f32 on the CPU, the same bf16-rounded inputs).
  auto last = [&](const Tensor& t) { return t.narrow(1, T - tail, tail).to(DType::F32).contiguous(); };
  RecurrenceResult ref = linear_recurrence_reference(last(q), last(k), last(v), last(g), u, Tensor(), RecurrenceOptions{});
  Tensor got_tail = to_cpu_f32(r.o).narrow(1, T - tail + 32, tail - 32).contiguous();
  Tensor ref_tail = ref.o.narrow(1, 32, tail - 32).contiguous();
  EXPECT_LT(err(got_tail, ref_tail), 2e-2) << "tail outputs";
}
