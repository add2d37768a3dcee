// Checks shared by the tests of the recurrent mixers: module gradcheck in f64, step-by-step generation
// equals the full forward, and a long sequence stays finite in output and gradients.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "autograd/gradcheck.h"
#include "layers/mixers/mixer.h"
#include "support/module_testing.h"
#include "support/test_util.h"

namespace seqmix::testing {

// f64 gradient check of the mixer's forward over its input and every parameter.
inline void expect_mixer_gradcheck(Mixer& m, int64_t B, int64_t T, int64_t d, uint64_t seed) {
  ComputeDtypeGuard cg(DType::F64);
  autograd::Tensors inputs{random_f64({B, T, d}, seed)};
  for (const Tensor& p : params_to_f64(m)) inputs.push_back(p);
  autograd::GradcheckOptions opt;
  opt.atol = 1e-6;
  opt.rtol = 1e-4;
  auto r = autograd::gradcheck([&](const autograd::Tensors& in) { return m.forward(in[0]); }, inputs, opt);
  EXPECT_TRUE(r.ok) << m.type_name() << ": " << r.message;
  // back to f32 for later uses of the module
  for (auto& [name, p] : m.named_parameters()) {
    Tensor t = p;
    t.set_data(p.detach().to(DType::F32));
  }
}

// A prompt of `prompt` tokens, then one token at a time, equals the full forward (f32).
inline void expect_steps_equal_forward(Mixer& m, int64_t B, int64_t T, int64_t d, int64_t prompt, uint64_t seed, double tol = 2e-5) {
  Tensor x = random_f64({B, T, d}, seed, false).to(DType::F32);
  autograd::NoGradGuard ng;
  Tensor full = m.forward(x);
  auto st = m.init_state(B, T, Device::cpu(), DType::F32);
  Tensor first = m.step(x.narrow(1, 0, prompt), *st);
  EXPECT_LT(rel_error(first, full.narrow(1, 0, prompt)), tol) << m.type_name();
  for (int64_t t = prompt; t < T; ++t) {
    Tensor y = m.step(x.narrow(1, t, 1), *st);
    EXPECT_LT(rel_error(y, full.narrow(1, t, 1)), tol) << m.type_name() << " position " << t;
  }
}

inline bool all_finite(const Tensor& t) {
  if (!t.defined()) return true;
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return false;
  return true;
}

// Forward + backward over T tokens (B = 1) with inputs of standard deviation `input_scale`: no NaN/inf in
// the output, the input gradient or any parameter gradient.
inline void expect_long_sequence_finite(Mixer& m, int64_t T, int64_t d, double input_scale, uint64_t seed) {
  Generator g(seed);
  Tensor x = (randn({1, T, d}, g) * input_scale).requires_grad_(true);
  for (auto& p : m.parameters()) p.set_grad(Tensor());
  Tensor y = m.forward(x);
  EXPECT_TRUE(all_finite(y)) << m.type_name() << ": non-finite output";
  Tensor loss = sum(square(y)) * (1.0 / double(T));
  loss.backward();
  EXPECT_TRUE(all_finite(x.grad())) << m.type_name() << ": non-finite input gradient";
  for (auto& [name, p] : m.named_parameters()) EXPECT_TRUE(all_finite(p.grad())) << m.type_name() << ": non-finite gradient of " << name;
}

}  // namespace seqmix::testing
