// The fused recurrent CUDA generalized delta rule (generalized_delta_cuda, rwkv7's time mix) against the CPU
// token-by-token reference (generalized_delta_rule_reference): output, final state and the gradients of q, k, v,
// lw, a, b and the initial state, at lengths around the 16-token chunk (1, 15, 16, 17, 63, 200), with and
// without an initial state, B = 1 and 2, Dk = 32 / 64 / 128, Dv = 32 .. 128 (and Dk != Dv), bf16, f16 and f32;
// the dispatch from generalized_delta_rule() (the kernel only with the decay bound, SEQMIX_GDR_CUDA=0 for the
// op composition); the rwkv7 mixer on the GPU against the CPU; and 65,536 tokens with decays at both ends of
// rwkv7's range and b near 0 / near its largest, finite and in agreement with the op composition.
//
// Inputs as the rwkv7 mixer makes them: a = -kk, b = kk * iclr (kk a unit vector), lw = -e^{-softplus(-x) - 1/2}.
// Tolerances (max |cuda - ref| / max(max |ref|, 1e-3)): f32 1e-3 (all arithmetic f32 on both sides; the CPU
// emulation scripts/gdr_emulate.sh agrees with an f64 recurrence to 1e-6); bf16 / f16 inputs 2e-2 (the outputs and
// gradients are rounded to 16 bits once; the arithmetic is f32).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "autograd/node.h"
#include "core/ops.h"
#include "layers/mixers/common/delta_rule.h"
#include "layers/mixers/common/generalized_delta_cuda.h"
#include "layers/mixers/rwkv7/rwkv7.h"
#include "support/gpu_compare.h"
#include "support/module_testing.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::testing;
using seqmix::mixers::DeltaOptions;
using seqmix::mixers::DeltaResult;
using seqmix::mixers::generalized_delta_cuda;
using seqmix::mixers::generalized_delta_rule;
using seqmix::mixers::generalized_delta_rule_reference;

namespace {

struct GdrCase {
  int64_t B, T, H, Dk, Dv;
  bool init;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const GdrCase& c) {
  return os << "B=" << c.B << " T=" << c.T << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv << " init=" << c.init << " "
            << dtype_name(c.dtype);
}

double tolerance(DType dt) { return dt == DType::F32 ? 1e-3 : 2e-2; }

DeltaOptions bounded_options(int64_t Dk) {
  DeltaOptions o;
  o.scale = 1.0 / std::sqrt(double(Dk));
  o.min_log_decay = -std::exp(-0.5) * (1.0 + 1e-6);
  return o;
}

struct Inputs {
  Tensor q, k, v, lw, a, b;  // f32 on the CPU, q, k, v, a, b already rounded to the test dtype
};

// rwkv7's decay, a and b; `spread` scales the pre-activations (large: decays at the ends of the range, iclr 0 / 1).
Inputs make_inputs(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, DType dt, uint64_t seed, double spread = 1.0) {
  Generator g(seed);
  Inputs x;
  auto rounded = [&](const Tensor& t) { return dt == DType::F32 ? t : t.to(dt).to(DType::F32); };
  x.q = rounded(randn({B, T, H, Dk}, g, DType::F32));
  x.k = rounded(randn({B, T, H, Dk}, g, DType::F32) * 0.5);
  x.v = rounded(randn({B, T, H, Dv}, g, DType::F32));
  x.lw = neg(exp(affine(neg(softplus(neg(randn({B, T, H, Dk}, g, DType::F32) * spread))), 1.0, -0.5)));
  Tensor kk = mixers::l2_normalize(randn({B, T, H, Dk}, g, DType::F32), 1e-12);
  x.a = rounded(neg(kk));
  x.b = rounded(mul(kk, sigmoid(randn({B, T, H, Dk}, g, DType::F32) * spread)));
  return x;
}

struct Leaves {
  Tensor q, k, v, lw, a, b, s0;
};

Leaves leaves_of(const Inputs& x, const Tensor& s0, bool gpu, DType dt) {
  auto put = [&](const Tensor& t, DType d) { return leaf(gpu ? to_gpu(t, d) : t); };
  return {put(x.q, dt), put(x.k, dt), put(x.v, dt), put(x.lw, DType::F32), put(x.a, dt), put(x.b, dt),
          s0.defined() ? put(s0, DType::F32) : Tensor()};
}

void expect_grads_close(const Leaves& d, const Leaves& r, double tol) {
  expect_grad_close(d.q, r.q, tol, "dq");
  expect_grad_close(d.k, r.k, tol, "dk");
  expect_grad_close(d.v, r.v, tol, "dv");
  expect_grad_close(d.lw, r.lw, tol, "dlw");
  expect_grad_close(d.a, r.a, tol, "da");
  expect_grad_close(d.b, r.b, tol, "db");
  expect_grad_close(d.s0, r.s0, tol, "d initial state");
}

// The two CUDA kernels: the fused recurrent one (generalized_delta_cuda) and the chunked tensor-core form
// (generalized_delta_chunked_cuda), each called directly.
enum class Kernel { Recurrent, Chunked };
const char* kernel_name(Kernel k) { return k == Kernel::Chunked ? "chunked" : "recurrent"; }
bool kernel_supported(Kernel k, const Tensor& q, const Tensor& kk, const Tensor& v, const Tensor& lw, const Tensor& a,
                      const Tensor& b, const Tensor& s0, const DeltaOptions& opt) {
  return k == Kernel::Chunked ? mixers::generalized_delta_chunked_supported(q, kk, v, lw, a, b, s0, opt)
                              : mixers::generalized_delta_cuda_supported(q, kk, v, lw, a, b, s0, opt);
}
DeltaResult run_kernel(Kernel k, const Tensor& q, const Tensor& kk, const Tensor& v, const Tensor& lw, const Tensor& a,
                       const Tensor& b, const Tensor& s0, const DeltaOptions& opt) {
  return k == Kernel::Chunked ? mixers::generalized_delta_chunked_cuda(q, kk, v, lw, a, b, s0, opt)
                              : generalized_delta_cuda(q, kk, v, lw, a, b, s0, opt);
}

void check_against_cpu(const GdrCase& c, Kernel kern) {
  SCOPED_TRACE(::testing::PrintToString(c) + " " + kernel_name(kern));
  const DType dt = c.dtype;
  const int64_t B = c.B, T = c.T, H = c.H, Dk = c.Dk, Dv = c.Dv;
  Inputs x = make_inputs(B, T, H, Dk, Dv, dt, 41);
  Tensor s0 = c.init ? random_rounded({B, H, Dk, Dv}, 46, DType::F32) : Tensor();
  Tensor dout = random_rounded({B, T, H, Dv}, 47, dt);
  Tensor dfin = random_rounded({B, H, Dk, Dv}, 48, DType::F32);
  const DeltaOptions opt = bounded_options(Dk);

  Leaves r = leaves_of(x, s0, false, dt);
  DeltaResult ref = generalized_delta_rule_reference(r.q, r.k, r.v, r.lw, r.a, r.b, r.s0, opt);
  autograd::backward({ref.o, ref.final_state}, {dout, dfin});

  Leaves d = leaves_of(x, s0, true, dt);
  ASSERT_TRUE(kernel_supported(kern, d.q, d.k, d.v, d.lw, d.a, d.b, d.s0, opt));
  DeltaResult got = run_kernel(kern, d.q, d.k, d.v, d.lw, d.a, d.b, d.s0, opt);
  ASSERT_NO_FATAL_FAILURE(assert_mixer_result(got, dt, {B, T, H, Dv}));
  autograd::backward({got.o, got.final_state}, {to_gpu(dout, dt), to_gpu(dfin, DType::F32)});

  // f32 inputs: the chunked kernel's products take f32 operands only where their shared memory fits (Dk, Dv <= 64),
  // else bf16 operands, with bf16's tolerance
  const double tol = kern == Kernel::Chunked && std::max(Dk, Dv) > 64 ? tolerance(DType::BF16) : tolerance(dt);
  EXPECT_LT(floored_rel_err(got.o, ref.o), tol) << "o";
  EXPECT_LT(floored_rel_err(got.final_state, ref.final_state), tol) << "final state";
  expect_grads_close(d, r, tol);
}

}  // namespace

class GeneralizedDeltaGpuVsCpu : public ::testing::TestWithParam<GdrCase> {};

TEST_P(GeneralizedDeltaGpuVsCpu, OutputStateAndGradientsMatch) {
  SKIP_WITHOUT_CUDA();
  check_against_cpu(GetParam(), Kernel::Recurrent);
  check_against_cpu(GetParam(), Kernel::Chunked);
}

INSTANTIATE_TEST_SUITE_P(Bf16, GeneralizedDeltaGpuVsCpu,
                         ::testing::Values(GdrCase{1, 1, 2, 64, 64, false, kBF}, GdrCase{1, 1, 2, 64, 64, true, kBF},
                                           GdrCase{2, 15, 2, 64, 64, true, kBF}, GdrCase{1, 16, 2, 128, 128, false, kBF},
                                           GdrCase{2, 17, 2, 32, 32, true, kBF}, GdrCase{1, 63, 3, 128, 128, true, kBF},
                                           GdrCase{2, 200, 2, 64, 64, false, kBF},
                                           // Dk != Dv
                                           GdrCase{1, 65, 2, 64, 128, true, kBF}, GdrCase{2, 33, 2, 128, 32, false, kBF},
                                           GdrCase{1, 40, 2, 32, 96, true, kBF}));

INSTANTIATE_TEST_SUITE_P(F16, GeneralizedDeltaGpuVsCpu,
                         ::testing::Values(GdrCase{1, 65, 2, 64, 64, true, kF16}, GdrCase{2, 31, 2, 128, 64, false, kF16}));

INSTANTIATE_TEST_SUITE_P(F32, GeneralizedDeltaGpuVsCpu,
                         ::testing::Values(GdrCase{1, 1, 2, 64, 64, true, kF32}, GdrCase{2, 63, 2, 64, 64, false, kF32},
                                           GdrCase{1, 17, 2, 32, 64, true, kF32}, GdrCase{1, 200, 2, 128, 128, true, kF32},
                                           GdrCase{2, 100, 1, 128, 32, true, kF32}));

// generalized_delta_rule() takes the kernel only when the caller bounds the decays, the op composition without
// the bound or under SEQMIX_GDR_CUDA=0, and the two agree.
TEST(GeneralizedDeltaGpu, DispatchFromGeneralizedDeltaRule) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 2, T = 70, H = 2, D = 64;
  Inputs x = make_inputs(B, T, H, D, D, kBF, 9);
  Leaves d = leaves_of(x, Tensor(), true, kBF);
  const DeltaOptions bounded = bounded_options(D);
  DeltaOptions unbounded = bounded;
  unbounded.min_log_decay = -1e300;
  DeltaResult fused = generalized_delta_rule(d.q, d.k, d.v, d.lw, d.a, d.b, Tensor(), bounded);
  ASSERT_TRUE(fused.o.grad_fn() != nullptr);
  EXPECT_EQ(fused.o.grad_fn()->name(), "generalized_delta_chunked_cuda");
  DeltaResult comp = generalized_delta_rule(d.q, d.k, d.v, d.lw, d.a, d.b, Tensor(), unbounded);
  ASSERT_TRUE(comp.o.grad_fn() != nullptr);
  EXPECT_NE(comp.o.grad_fn()->name(), "generalized_delta_chunked_cuda");
  EXPECT_NE(comp.o.grad_fn()->name(), "generalized_delta_cuda");
  DeltaResult rec;
  {
    ScopedEnv env("SEQMIX_GDR_CHUNKED", "0");
    EXPECT_FALSE(mixers::generalized_delta_chunked_enabled());
    rec = generalized_delta_rule(d.q, d.k, d.v, d.lw, d.a, d.b, Tensor(), bounded);
    EXPECT_EQ(rec.o.grad_fn()->name(), "generalized_delta_cuda");
  }
  {
    ScopedEnv env("SEQMIX_GDR_CUDA", "0");
    EXPECT_FALSE(mixers::generalized_delta_cuda_enabled());
    DeltaResult off = generalized_delta_rule(d.q, d.k, d.v, d.lw, d.a, d.b, Tensor(), bounded);
    EXPECT_NE(off.o.grad_fn()->name(), "generalized_delta_cuda");
    EXPECT_NE(off.o.grad_fn()->name(), "generalized_delta_chunked_cuda");
  }
  EXPECT_LT(floored_rel_err(fused.o, comp.o), 2e-2);
  EXPECT_LT(floored_rel_err(fused.final_state, comp.final_state), 2e-3);
  EXPECT_LT(floored_rel_err(rec.o, comp.o), 2e-2);
  EXPECT_LT(floored_rel_err(rec.final_state, comp.final_state), 1e-3);
}

// The rwkv7 mixer (token shift, LoRA decays, the kernel, GroupNorm, channel mix) on the GPU against the CPU,
// forward and the gradients of every parameter, f32.
TEST(GeneralizedDeltaGpu, Rwkv7MixerMatchesCpu) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t d = 64, B = 2, T = 37;
  mixers::Rwkv7Config cfg;
  cfg.head_size = 32;
  Generator g1(3), g2(3);
  mixers::Rwkv7 cpu(tiny_mixer_ctx(g1, d, 1, 2), cfg), gpu(tiny_mixer_ctx(g2, d, 1, 2), cfg);
  gpu.to(Device::cuda());
  Generator gx(4);
  Tensor x = randn({B, T, d}, gx, DType::F32), dy = randn({B, T, d}, gx, DType::F32);
  Tensor xc = leaf(x), xg = leaf(x.to(Device::cuda()));
  Tensor yc = cpu.forward(xc), yg = gpu.forward(xg);
  ASSERT_TRUE(yg.is_cuda());
  autograd::backward({yc}, {dy});
  autograd::backward({yg}, {dy.to(Device::cuda())});
  EXPECT_LT(floored_rel_err(yg, yc), 1e-3) << "y";
  EXPECT_LT(floored_rel_err(xg.grad(), xc.grad()), 1e-3) << "dx";
  auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
  ASSERT_EQ(pc.size(), pg.size());
  for (size_t i = 0; i < pc.size(); ++i) {
    ASSERT_EQ(pc[i].first, pg[i].first);
    ASSERT_TRUE(pg[i].second.grad().defined()) << pg[i].first;
    EXPECT_LT(floored_rel_err(pg[i].second.grad(), pc[i].second.grad()), 2e-3) << pg[i].first;
  }
}

// 65,536 tokens (B = 1, bf16) with decays at both ends of rwkv7's range (w near e^{-e^{-1/2}} and near 1) and b
// near 0 / near |kk|, token by token: finite, and output, final state and every gradient agree with the op
// composition (f32 on the GPU) on the same inputs.
TEST(GeneralizedDeltaGpu, LongSequenceExtremeDecaysStayFinite) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t T = 65536, H = 2, D = 64;
  Inputs x = make_inputs(1, T, H, D, D, kBF, 7, /*spread=*/30.0);
  for (Kernel kern : {Kernel::Recurrent, Kernel::Chunked}) {
  SCOPED_TRACE(kernel_name(kern));
  Leaves d = leaves_of(x, Tensor(), true, kBF);
  const DeltaOptions opt = bounded_options(D);
  DeltaResult r = run_kernel(kern, d.q, d.k, d.v, d.lw, d.a, d.b, Tensor(), opt);
  Generator gen(8);
  Tensor dout = randn({1, T, H, D}, gen, DType::F32).to(kBF).to(Device::cuda());
  Tensor dfin = randn({1, H, D, D}, gen, DType::F32).to(Device::cuda());
  autograd::backward({r.o, r.final_state}, {dout, dfin});
  expect_all_finite(r.o, "o");
  expect_all_finite(r.final_state, "final state");
  for (auto [t, name] : {std::pair{d.q, "dq"}, {d.k, "dk"}, {d.v, "dv"}, {d.lw, "dlw"}, {d.a, "da"}, {d.b, "db"}})
    expect_all_finite(t.grad(), name);
  Leaves c = leaves_of(x, Tensor(), true, kBF);
  DeltaOptions unbounded = opt;
  unbounded.min_log_decay = -1e300;
  DeltaResult comp = generalized_delta_rule(c.q, c.k, c.v, c.lw, c.a, c.b, Tensor(), unbounded);
  autograd::backward({comp.o, comp.final_state}, {dout, dfin});
  EXPECT_LT(floored_rel_err(r.o, comp.o), 2e-2) << "o";
  EXPECT_LT(floored_rel_err(r.final_state, comp.final_state), 2e-2) << "final state";
  expect_grads_close(d, c, 2e-2);
  }
}
