// The fused chunked CUDA delta rule (delta_rule_cuda) against the CPU token-by-token reference
// (delta_rule_reference): output, final state and the gradients of q, k, v, beta, g and the initial state, at
// lengths around the chunk size (1, 63, 64, 65, 130, 200, 257), with and without a decay g and an initial state,
// B = 1 and 2, head dims 16 / 64 / 128 (and Dk != Dv), bf16, f16 and f32; the dispatch from delta_rule() under
// SEQMIX_DELTA_CUDA (on by default, =0 for the op composition); and a 65,536-token run with beta near 0 / near 1 and decays near 0 / near 1 that must
// stay finite and agree with the op composition on the GPU.
//
// Tolerances (max |cuda - ref| / max(max |ref|, 1e-3) over each tensor): bf16 / f16 inputs, and f32 inputs with
// a head dim above 64 (bf16 tensor-core operands) 3e-2: one bf16 rounding per derived operand (T, W, U, U',
// states, dA, F, E) with f32 accumulation; the CPU emulation of the same kernels (scripts/delta_emulate.sh)
// stays below 1.4e-2 on these inputs. f32 inputs with head dims <= 64 (f32 operands) 1e-3 (the emulation:
// 3e-5).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "autograd/node.h"
#include "core/ops.h"
#include "layers/mixers/common/delta_rule.h"
#include "layers/mixers/common/delta_rule_cuda.h"
#include "support/gpu_compare.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::testing;
using seqmix::mixers::delta_rule;
using seqmix::mixers::delta_rule_cuda;
using seqmix::mixers::delta_rule_reference;
using seqmix::mixers::DeltaOptions;
using seqmix::mixers::DeltaResult;

namespace {

struct DrCase {
  int64_t B, T, H, Dk, Dv;
  bool gated, init;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const DrCase& c) {
  return os << "B=" << c.B << " T=" << c.T << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv << " gated=" << c.gated
            << " init=" << c.init << " " << dtype_name(c.dtype);
}

double tolerance(const DrCase& c) { return c.dtype == DType::F32 && c.Dk <= 64 && c.Dv <= 64 ? 1e-3 : 3e-2; }

// Relative error; where the reference is (near) zero everywhere, the absolute error.
double err(const Tensor& got, const Tensor& want) { return floored_rel_err(got, want); }

struct Leaves {
  Tensor q, k, v, beta, g, s0;
};

void check_against_cpu(const DrCase& c) {
  SCOPED_TRACE(::testing::PrintToString(c));
  const DType dt = c.dtype;
  const int64_t B = c.B, T = c.T, H = c.H, Dk = c.Dk, Dv = c.Dv;
  Tensor q = random_rounded({B, T, H, Dk}, 31, dt);
  Tensor k = random_rounded({B, T, H, Dk}, 32, dt);
  Tensor v = random_rounded({B, T, H, Dv}, 33, dt);
  Generator gb(34), gg(35);
  Tensor beta = sigmoid(randn({B, T, H}, gb, DType::F32));
  Tensor g = c.gated ? logsigmoid(randn({B, T, H}, gg, DType::F32) + 2.0) : Tensor();  // decays mostly in (0.5, 1)
  Tensor s0 = c.init ? random_rounded({B, H, Dk, Dv}, 36, DType::F32) : Tensor();
  Tensor dout = random_rounded({B, T, H, Dv}, 37, dt);
  Tensor dfin = random_rounded({B, H, Dk, Dv}, 38, DType::F32);
  DeltaOptions opt;
  opt.scale = 1.0 / std::sqrt(double(Dk));

  Leaves r{leaf(q), leaf(k), leaf(v), leaf(beta), g.defined() ? leaf(g) : Tensor(), s0.defined() ? leaf(s0) : Tensor()};
  DeltaResult ref = delta_rule_reference(r.q, r.k, r.v, r.beta, r.g, r.s0, opt);
  autograd::backward({ref.o, ref.final_state}, {dout, dfin});

  Leaves d{leaf(to_gpu(q, dt)), leaf(to_gpu(k, dt)), leaf(to_gpu(v, dt)), leaf(to_gpu(beta, DType::F32)),
           g.defined() ? leaf(to_gpu(g, DType::F32)) : Tensor(), s0.defined() ? leaf(to_gpu(s0, DType::F32)) : Tensor()};
  ASSERT_TRUE(mixers::delta_rule_cuda_supported(d.q, d.k, d.v, d.beta, d.g, d.s0, opt));
  DeltaResult got = delta_rule_cuda(d.q, d.k, d.v, d.beta, d.g, d.s0, opt);
  ASSERT_NO_FATAL_FAILURE(assert_mixer_result(got, dt, {B, T, H, Dv}));
  autograd::backward({got.o, got.final_state}, {to_gpu(dout, dt), to_gpu(dfin, DType::F32)});

  const double tol = tolerance(c);
  expect_mixer_close(got, ref, d, r, tol);
  ASSERT_NO_FATAL_FAILURE(expect_grad_close(d.beta, r.beta, tol, "dbeta"));
  ASSERT_NO_FATAL_FAILURE(expect_grad_close(d.g, r.g, tol, "dg", /*same_shape=*/true));
  expect_grad_close(d.s0, r.s0, tol, "d initial state");
}

}  // namespace

class DeltaRuleGpuVsCpu : public ::testing::TestWithParam<DrCase> {};

TEST_P(DeltaRuleGpuVsCpu, OutputStateAndGradientsMatch) {
  SKIP_WITHOUT_CUDA();
  check_against_cpu(GetParam());
}

INSTANTIATE_TEST_SUITE_P(
    Bf16, DeltaRuleGpuVsCpu,
    ::testing::Values(
        // gated_deltanet (decay) and deltanet (none), every length around the chunk, with / without S_0
        DrCase{1, 1, 2, 64, 64, true, false, kBF}, DrCase{1, 1, 2, 64, 64, false, true, kBF},
        DrCase{2, 63, 2, 64, 64, true, true, kBF}, DrCase{1, 64, 2, 128, 128, false, false, kBF},
        DrCase{2, 65, 2, 128, 128, true, false, kBF}, DrCase{1, 200, 2, 64, 64, true, true, kBF},
        DrCase{2, 200, 2, 16, 16, false, true, kBF}, DrCase{1, 257, 2, 128, 128, true, true, kBF},
        DrCase{2, 130, 1, 64, 64, false, false, kBF},
        // Dk != Dv
        DrCase{1, 130, 2, 64, 128, true, true, kBF}, DrCase{2, 65, 2, 128, 32, false, true, kBF},
        DrCase{1, 100, 2, 16, 48, true, false, kBF}));

INSTANTIATE_TEST_SUITE_P(F16, DeltaRuleGpuVsCpu,
                         ::testing::Values(DrCase{1, 65, 2, 64, 64, true, true, kF16},
                                           DrCase{2, 200, 2, 128, 128, false, false, kF16}));

INSTANTIATE_TEST_SUITE_P(
    F32, DeltaRuleGpuVsCpu,
    ::testing::Values(DrCase{1, 1, 2, 64, 64, true, true, kF32}, DrCase{2, 63, 2, 64, 64, true, false, kF32},
                      DrCase{1, 65, 2, 32, 64, false, true, kF32}, DrCase{2, 200, 1, 16, 16, true, true, kF32},
                      // head dim 128: bf16 tensor-core operands (f32 operands do not fit in shared memory)
                      DrCase{1, 130, 2, 128, 128, true, true, kF32}));

// delta_rule() takes the kernel by default, the op composition under SEQMIX_DELTA_CUDA=0, and the two agree.
TEST(DeltaRuleGpu, DispatchFromDeltaRule) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 2, T = 150, H = 2, D = 64;
  Generator gen(9);
  Tensor q = randn({B, T, H, D}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor k = randn({B, T, H, D}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor v = randn({B, T, H, D}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor beta = sigmoid(randn({B, T, H}, gen, DType::F32)).to(Device::cuda());
  Tensor g = logsigmoid(randn({B, T, H}, gen, DType::F32) + 2.0).to(Device::cuda());
  DeltaOptions opt;
  opt.scale = 0.125;
  Tensor ql = leaf(q);
  DeltaResult comp, fused;
  {
    ScopedEnv env("SEQMIX_DELTA_CUDA", "0");
    EXPECT_FALSE(mixers::delta_rule_cuda_enabled());
    comp = delta_rule(q, k, v, beta, g, Tensor(), opt);
    env.set(nullptr);
    EXPECT_TRUE(mixers::delta_rule_cuda_enabled());
    fused = delta_rule(ql, k, v, beta, g, Tensor(), opt);
  }
  ASSERT_TRUE(fused.o.grad_fn() != nullptr);
  EXPECT_EQ(fused.o.grad_fn()->name(), "delta_rule_cuda");
  DeltaResult direct = delta_rule_cuda(q, k, v, beta, g, Tensor(), opt);
  EXPECT_EQ(err(fused.o, direct.o), 0.0);  // the forward is deterministic
  EXPECT_GT(err(comp.o, direct.o), 0.0);   // SEQMIX_DELTA_CUDA=0 really took the op composition
  EXPECT_LT(err(fused.o, comp.o), 3e-2);
  EXPECT_LT(err(fused.final_state, comp.final_state), 3e-2);
}

TEST(DeltaRuleGpu, NoFinalStateRequested) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  Generator gen(5);
  Tensor q = randn({1, 70, 2, 64}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor k = randn({1, 70, 2, 64}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor v = randn({1, 70, 2, 64}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor beta = sigmoid(randn({1, 70, 2}, gen, DType::F32)).to(Device::cuda());
  Tensor g = logsigmoid(randn({1, 70, 2}, gen, DType::F32)).to(Device::cuda());
  q.requires_grad_(true);
  g.requires_grad_(true);
  DeltaOptions opt;
  opt.want_final_state = false;
  DeltaResult r = delta_rule_cuda(q, k, v, beta, g, Tensor(), opt);
  EXPECT_FALSE(r.final_state.defined());
  sum(r.o.to(DType::F32)).backward();
  ASSERT_TRUE(q.grad().defined());
  ASSERT_TRUE(g.grad().defined());
  for (float x : to_cpu_f32(g.grad()).to_vector<float>()) ASSERT_TRUE(std::isfinite(x));
}

// 65,536 tokens (B = 1, bf16) with beta near 0 or near 1 and decays near 1 (g ~ -1e-4) or near 0 (g ~ -30),
// mixed token by token: everything finite, and output, final state and every gradient agree with the op
// composition (delta_rule with SEQMIX_DELTA_CUDA=0, f32 on the GPU) on the same inputs.
TEST(DeltaRuleGpu, LongSequenceExtremeGatesStayFinite) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 65536, H = 2, D = 64;
  Generator gen(7);
  Tensor q = randn({1, T, H, D}, gen, DType::F32).to(DType::BF16);
  Tensor k = randn({1, T, H, D}, gen, DType::F32).to(DType::BF16);
  Tensor v = randn({1, T, H, D}, gen, DType::F32).to(DType::BF16);
  // sigmoid(1000 x) is 0 or 1 (but for a few x near 0): beta 5e-5 or 1 - 5e-5, g -1e-4 (decay ~1) or -30 (~0)
  Tensor beta = affine(sigmoid(randn({1, T, H}, gen, DType::F32) * 1000.0), 1.0 - 1e-4, 5e-5);
  Tensor g = affine(sigmoid(randn({1, T, H}, gen, DType::F32) * 1000.0), -30.0 + 1e-4, -1e-4);
  Tensor qd = leaf(q.to(Device::cuda())), kd = leaf(k.to(Device::cuda())), vd = leaf(v.to(Device::cuda()));
  Tensor bd = leaf(beta.to(Device::cuda())), gd = leaf(g.to(Device::cuda()));
  DeltaOptions opt;
  opt.scale = 0.125;
  DeltaResult r = delta_rule_cuda(qd, kd, vd, bd, gd, Tensor(), opt);
  Tensor dout = randn({1, T, H, D}, gen, DType::F32).to(DType::BF16).to(Device::cuda());
  Tensor dfin = randn({1, H, D, D}, gen, DType::F32).to(Device::cuda());
  autograd::backward({r.o, r.final_state}, {dout, dfin});
  expect_all_finite(r.o, "o");
  expect_all_finite(r.final_state, "final state");
  expect_all_finite(qd.grad(), "dq");
  expect_all_finite(kd.grad(), "dk");
  expect_all_finite(vd.grad(), "dv");
  expect_all_finite(bd.grad(), "dbeta");
  expect_all_finite(gd.grad(), "dg");
  // the op composition (chunked WY form as ops, f32) on the same inputs
  Tensor qc = leaf(qd), kc = leaf(kd), vc = leaf(vd), bc = leaf(bd), gc = leaf(gd);
  DeltaResult c;
  {
    ScopedEnv env("SEQMIX_DELTA_CUDA", "0");
    c = delta_rule(qc, kc, vc, bc, gc, Tensor(), opt);
  }
  autograd::backward({c.o, c.final_state}, {dout, dfin});
  EXPECT_LT(err(r.o, c.o), 3e-2) << "o";
  EXPECT_LT(err(r.final_state, c.final_state), 3e-2) << "final state";
  EXPECT_LT(err(qd.grad(), qc.grad()), 3e-2) << "dq";
  EXPECT_LT(err(kd.grad(), kc.grad()), 3e-2) << "dk";
  EXPECT_LT(err(vd.grad(), vc.grad()), 3e-2) << "dv";
  EXPECT_LT(err(bd.grad(), bc.grad()), 3e-2) << "dbeta";
  EXPECT_LT(err(gd.grad(), gc.grad()), 3e-2) << "dg";
}
