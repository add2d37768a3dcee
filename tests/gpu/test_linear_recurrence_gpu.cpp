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
#include "support/gpu_compare.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::testing;
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
  bool g_grad = true;      // false: g is a constant (retnet's fixed decays), the kernel skips every dg buffer
};

std::ostream& operator<<(std::ostream& os, const LrCase& c) {
  const char* d = c.decay == DecayKind::None ? "none" : c.decay == DecayKind::Head ? "head" : "channel";
  return os << "B=" << c.B << " T=" << c.T << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv << " decay=" << d
            << " bonus=" << c.bonus << " init=" << c.init << " " << dtype_name(c.dtype) << " strength=" << c.strength
            << (c.g_grad ? "" : " g-constant");
}

// Log-decays in (-inf, 0): log(sigmoid(x + 2)) * strength, f32 (typical value -0.13 per token).
Tensor random_log_decay(const Shape& s, uint64_t seed, double strength) {
  Generator g(seed);
  return logsigmoid(randn(s, g, DType::F32) + 2.0) * strength;
}

// f32 with strong decays (strength > 1): the cumulative log-decays reach |G| ~ 170 within a chunk, whose f32
// rounding (~1e-5 absolute) enters every exponent exp(G_t - G_s) of the chunked form, while the reference
// multiplies per-token decays; 5e-4 there.
double tolerance(DType dt, double strength = 1.0) {
  if (dt != DType::F32) return 2e-2;
  return strength > 1.0 ? 5e-4 : 1e-4;
}

// Relative error; where the reference is (near) zero everywhere, the absolute error.
double err(const Tensor& got, const Tensor& want) { return floored_rel_err(got, want); }

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
  Leaves r{leaf(q), leaf(k), leaf(v), g.defined() ? (c.g_grad ? leaf(g) : g) : Tensor(), u.defined() ? leaf(u) : Tensor(),
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
  if (g.defined()) d.g = c.g_grad ? leaf(to_gpu(g, DType::F32)) : to_gpu(g, DType::F32);
  if (u.defined()) d.u = leaf(to_gpu(u, DType::F32));
  if (s0.defined()) d.s0 = leaf(to_gpu(s0, DType::F32));
  RecurrenceResult got = linear_recurrence_cuda(d.q, d.k, d.v, d.g, d.u, d.s0, opt);
  ASSERT_NO_FATAL_FAILURE(assert_mixer_result(got, dt, {B, T, H, Dv}));
  autograd::backward({got.o, got.final_state}, {to_gpu(dout, dt), to_gpu(dfin, DType::F32)});

  const double tol = tolerance(dt, c.strength);
  expect_mixer_close(got, ref, d, r, tol);
  if (c.g_grad) ASSERT_NO_FATAL_FAILURE(expect_grad_close(d.g, r.g, tol, "dg", /*same_shape=*/true));
  else if (d.g.defined()) EXPECT_FALSE(d.g.grad().defined()) << "a constant g got a gradient";
  ASSERT_NO_FATAL_FAILURE(expect_grad_close(d.u, r.u, tol, "d bonus"));
  expect_grad_close(d.s0, r.s0, tol, "d initial state");
}

}  // namespace

class LinearRecurrenceGpuVsCpu : public ::testing::TestWithParam<LrCase> {};

TEST_P(LinearRecurrenceGpuVsCpu, OutputStateAndGradientsMatch) {
  SKIP_WITHOUT_CUDA();
  check_against_cpu(GetParam());
}

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
        LrCase{1, 257, 2, 64, 64, kChan, false, true, kBF, 20.0}, LrCase{1, 200, 2, 64, 64, kHead, true, false, kBF, 20.0},
        // constant decays (no dg buffers or kernels): retnet's case, and per-channel with a bonus
        LrCase{2, 200, 2, 128, 128, kHead, false, true, kBF, 1.0, false},
        LrCase{1, 257, 2, 64, 64, kChan, true, true, kBF, 1.0, false}));

INSTANTIATE_TEST_SUITE_P(
    F32, LinearRecurrenceGpuVsCpu,
    ::testing::Values(LrCase{1, 1, 2, 64, 64, kChan, true, true, kF32}, LrCase{2, 63, 2, 64, 64, kChan, false, true, kF32},
                      LrCase{1, 65, 2, 128, 128, kChan, true, false, kF32}, LrCase{2, 200, 1, 64, 64, kHead, false, true, kF32},
                      LrCase{1, 257, 2, 64, 64, kNone, true, true, kF32}, LrCase{2, 257, 2, 5, 33, kChan, true, true, kF32},
                      LrCase{1, 65, 2, 33, 5, kHead, true, false, kF32}, LrCase{2, 200, 2, 5, 33, kNone, false, false, kF32},
                      LrCase{1, 257, 2, 64, 64, kChan, true, true, kF32, 20.0},
                      LrCase{2, 65, 2, 64, 64, kHead, true, true, kF32, 1.0, false}));

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
  expect_all_finite(r.o, "o");
  expect_all_finite(r.final_state, "final state");
  expect_all_finite(qd.grad(), "dq");
  expect_all_finite(kd.grad(), "dk");
  expect_all_finite(vd.grad(), "dv");
  expect_all_finite(gd.grad(), "dg");
  expect_all_finite(ud.grad(), "d bonus");
  // The tail against the reference (f32 on the CPU, the same bf16-rounded inputs).
  auto last = [&](const Tensor& t) { return t.narrow(1, T - tail, tail).to(DType::F32).contiguous(); };
  RecurrenceResult ref = linear_recurrence_reference(last(q), last(k), last(v), last(g), u, Tensor(), RecurrenceOptions{});
  Tensor got_tail = to_cpu_f32(r.o).narrow(1, T - tail + 32, tail - 32).contiguous();
  Tensor ref_tail = ref.o.narrow(1, 32, tail - 32).contiguous();
  EXPECT_LT(err(got_tail, ref_tail), 2e-2) << "tail outputs";
}
