// The double-precision oracle of the delta-rule emulation harness (scripts/delta_emulate.cc): runs
// seqmix::mixers::delta_rule_reference (token by token) in f64 on the CPU and backpropagates through it.
// Compiled as its own translation unit against the seqmix libraries (the harness TU redefines CUDA built-ins).
#include <cmath>
#include <vector>

#include "autograd/node.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/mixers/common/delta_rule.h"

namespace delta_emu {

struct RefIO {
  int B, T, H, Dk, Dv;
  double scale;
  std::vector<double> q, k, v, beta, g, s0, dout, dfinal;     // g, s0 empty: none
  std::vector<double> o, fin, dq, dk, dv, dbeta, dg, ds0;     // out
};

// The inputs of tests/gpu/test_delta_rule_gpu.cpp (check_against_cpu) for one case, drawn the same way
// (seqmix's Generator, the same seeds and roundings), so that the emulation runs exactly the GPU test's data.
// dt: 0 f32, 1 bf16, 2 f16.
void gpu_test_inputs(RefIO& r, bool gated, bool init, int dt_code) {
  using namespace seqmix;
  const DType dt = dt_code == 1 ? DType::BF16 : dt_code == 2 ? DType::F16 : DType::F32;
  const int64_t B = r.B, T = r.T, H = r.H, Dk = r.Dk, Dv = r.Dv;
  auto random_rounded = [](const Shape& s, uint64_t seed, DType d) {
    Generator g(seed);
    Tensor t = randn(s, g, DType::F32);
    return d == DType::F32 ? t : t.to(d).to(DType::F32);
  };
  auto vec = [](const Tensor& t) { return t.to(DType::F64).to_vector<double>(); };
  r.q = vec(random_rounded({B, T, H, Dk}, 31, dt));
  r.k = vec(random_rounded({B, T, H, Dk}, 32, dt));
  r.v = vec(random_rounded({B, T, H, Dv}, 33, dt));
  Generator gb(34), gg(35);
  r.beta = vec(sigmoid(randn({B, T, H}, gb, DType::F32)));
  r.g = gated ? vec(logsigmoid(randn({B, T, H}, gg, DType::F32) + 2.0)) : std::vector<double>();
  r.s0 = init ? vec(random_rounded({B, H, Dk, Dv}, 36, DType::F32)) : std::vector<double>();
  r.dout = vec(random_rounded({B, T, H, Dv}, 37, dt));
  r.dfinal = vec(random_rounded({B, H, Dk, Dv}, 38, DType::F32));
  r.scale = 1.0 / std::sqrt(double(Dk));
}

void reference(RefIO& r) {
  using namespace seqmix;
  const int64_t B = r.B, T = r.T, H = r.H, Dk = r.Dk, Dv = r.Dv;
  auto leaf = [](const std::vector<double>& x, const Shape& s) {
    Tensor t = Tensor::from_vector<double>(x, s);
    t.requires_grad_(true);
    return t;
  };
  Tensor q = leaf(r.q, {B, T, H, Dk}), k = leaf(r.k, {B, T, H, Dk}), v = leaf(r.v, {B, T, H, Dv});
  Tensor beta = leaf(r.beta, {B, T, H});
  Tensor g = r.g.empty() ? Tensor() : leaf(r.g, {B, T, H});
  Tensor s0 = r.s0.empty() ? Tensor() : leaf(r.s0, {B, H, Dk, Dv});
  mixers::DeltaOptions opt;
  opt.scale = r.scale;
  mixers::DeltaResult res = mixers::delta_rule_reference(q, k, v, beta, g, s0, opt);
  r.o = res.o.to_vector<double>();
  r.fin = res.final_state.to_vector<double>();
  autograd::backward({res.o, res.final_state},
                     {Tensor::from_vector<double>(r.dout, {B, T, H, Dv}), Tensor::from_vector<double>(r.dfinal, {B, H, Dk, Dv})});
  r.dq = q.grad().to_vector<double>();
  r.dk = k.grad().to_vector<double>();
  r.dv = v.grad().to_vector<double>();
  r.dbeta = beta.grad().to_vector<double>();
  if (g.defined()) r.dg = g.grad().to_vector<double>();
  if (s0.defined()) r.ds0 = s0.grad().to_vector<double>();
}

}  // namespace delta_emu
