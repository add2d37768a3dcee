// The double-precision oracle of the chunked generalized-delta-rule emulation (scripts/dplr_emulate.cc): runs
// seqmix::mixers::generalized_delta_rule_reference (token by token) in f64 on the CPU and backpropagates through it.
// Its own translation unit, against the seqmix libraries (the harness TU redefines CUDA built-ins).
#include <cmath>
#include <vector>

#include "autograd/node.h"
#include "core/ops.h"
#include "layers/mixers/common/delta_rule.h"

namespace dplr_emu {

struct RefIO {
  int B, T, H, Dk, Dv;
  double scale;
  std::vector<double> q, k, v, lw, a, b, s0, dout, dfinal;  // s0 empty: none
  std::vector<double> o, fin, dq, dk, dv, dlw, da, db, ds0;  // out
};

void reference(RefIO& r) {
  using namespace seqmix;
  const int64_t B = r.B, T = r.T, H = r.H, Dk = r.Dk, Dv = r.Dv;
  auto leaf = [](const std::vector<double>& x, const Shape& s) {
    Tensor t = Tensor::from_vector<double>(x, s);
    t.requires_grad_(true);
    return t;
  };
  const Shape ks{B, T, H, Dk};
  Tensor q = leaf(r.q, ks), k = leaf(r.k, ks), v = leaf(r.v, {B, T, H, Dv}), lw = leaf(r.lw, ks), a = leaf(r.a, ks),
         b = leaf(r.b, ks);
  Tensor s0 = r.s0.empty() ? Tensor() : leaf(r.s0, {B, H, Dk, Dv});
  mixers::DeltaOptions opt;
  opt.scale = r.scale;
  mixers::DeltaResult res = mixers::generalized_delta_rule_reference(q, k, v, lw, a, b, s0, opt);
  r.o = res.o.to_vector<double>();
  r.fin = res.final_state.to_vector<double>();
  autograd::backward({res.o, res.final_state},
                     {Tensor::from_vector<double>(r.dout, {B, T, H, Dv}), Tensor::from_vector<double>(r.dfinal, {B, H, Dk, Dv})});
  r.dq = q.grad().to_vector<double>();
  r.dk = k.grad().to_vector<double>();
  r.dv = v.grad().to_vector<double>();
  r.dlw = lw.grad().to_vector<double>();
  r.da = a.grad().to_vector<double>();
  r.db = b.grad().to_vector<double>();
  if (s0.defined()) r.ds0 = s0.grad().to_vector<double>();
}

}  // namespace dplr_emu
