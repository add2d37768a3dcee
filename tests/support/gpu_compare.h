// Shared by the GPU suites: skipping without a device, reproducible random CPU inputs, the element-wise
// CUDA-vs-CPU comparison (NaN == NaN and equal infinities count as agreement), and for the kernels checked
// against a CPU reference through autograd (the sequence mixers): inputs rounded to the tested dtype, leaves,
// one relative error per tensor, gradient checks and finiteness.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/ops.h"

#define SKIP_WITHOUT_CUDA() \
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device"

namespace seqmix::testing {

// Uniform values in [lo, hi), rounded to `dt`.
inline Tensor rand_cpu(const Shape& shape, DType dt, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = d(rng);
  return Tensor::from_vector<float>(v, shape).to(dt);
}

// Small integers: exact in every dtype, with many ties (for compare / where / argmax).
inline Tensor randint_cpu(const Shape& shape, DType dt, uint32_t seed, int lo, int hi) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<double> v(size_t(shape_numel(shape)));
  for (double& x : v) x = d(rng);
  return Tensor::from_vector<double>(v, shape).to(dt);
}

// Index tensors with values in [lo, hi].
inline Tensor ids_cpu(const Shape& shape, int64_t lo, int64_t hi, DType dt, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> d(lo, hi);
  std::vector<int64_t> v(size_t(shape_numel(shape)));
  for (int64_t& x : v) x = d(rng);
  return Tensor::from_vector<int64_t>(v, shape).to(dt);
}

struct Tol {
  double rtol, atol;
};

// Passes when |got - want| <= atol + rtol |want| element by element; reports the first 5 misses.
inline void expect_close(const Tensor& got, const Tensor& want, Tol tol, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what << ": undefined result";
  ASSERT_TRUE(want.defined()) << what << ": undefined reference";
  ASSERT_TRUE(got.is_cuda()) << what;
  ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  ASSERT_EQ(g.size(), w.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    bool ok = std::abs(g[i] - w[i]) <= tol.atol + tol.rtol * std::abs(w[i]) || (std::isnan(g[i]) && std::isnan(w[i])) ||
              (std::isinf(g[i]) && g[i] == w[i]);
    if (!ok && bad++ < 5) ADD_FAILURE() << what << ": element " << i << " cuda " << g[i] << " cpu " << w[i];
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << g.size() << " elements differ";
}
inline void expect_close(const Tensor& got, const Tensor& want, double rtol, double atol, const std::string& what) {
  expect_close(got, want, Tol{rtol, atol}, what);
}

// The dtypes of the parameterized cases.
inline constexpr DType kBF = DType::BF16;
inline constexpr DType kF16 = DType::F16;
inline constexpr DType kF32 = DType::F32;

// Random normal values times `mul`, rounded to dt (on the CPU), as an f32 CPU tensor: the same values can
// then feed the f32 reference and, in dt, the kernel.
inline Tensor random_rounded(const Shape& s, uint64_t seed, DType dt, double mul = 1.0) {
  Generator g(seed);
  Tensor t = randn(s, g, DType::F32) * mul;
  return dt == DType::F32 ? t : t.to(dt).to(DType::F32);
}

// An f32 CPU tensor to the GPU in dtype dt (conversion on the CPU, then a plain copy), and back as f32.
inline Tensor to_gpu(const Tensor& t, DType dt) { return t.to(dt).to(Device::cuda()); }
inline Tensor to_cpu_f32(const Tensor& t) { return t.to(Device::cpu()).to(DType::F32); }

// A detached copy of t that requires a gradient.
inline Tensor leaf(const Tensor& t) {
  Tensor x = t.detach();
  x.requires_grad_(true);
  return x;
}

// max |got - want| / max(max |want|, 1e-3) over the tensor, both compared as f32 on the CPU: the relative
// error, or the absolute one where the reference is (near) zero everywhere; infinity where got holds a NaN
// or an infinity.
inline double floored_rel_err(const Tensor& got, const Tensor& want) {
  std::vector<float> g = to_cpu_f32(got).to_vector<float>(), w = to_cpu_f32(want).to_vector<float>();
  EXPECT_EQ(g.size(), w.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size() && i < w.size(); ++i) {
    if (!std::isfinite(g[i])) return INFINITY;
    num = std::max(num, double(std::abs(g[i] - w[i])));
    den = std::max(den, double(std::abs(w[i])));
  }
  return num / std::max(den, 1e-3);
}

// The gradient of an optional input: where `dev` (the kernel's leaf) is defined, its gradient exists, has
// the leaf's shape where `same_shape`, and is within tol (floored_rel_err) of `ref`'s (the reference's leaf).
inline void expect_grad_close(const Tensor& dev, const Tensor& ref, double tol, const std::string& what,
                              bool same_shape = false) {
  if (!dev.defined()) return;
  ASSERT_TRUE(dev.grad().defined()) << what;
  if (same_shape) {
    EXPECT_EQ(dev.grad().shape(), dev.shape()) << what;
  }
  EXPECT_LT(floored_rel_err(dev.grad(), ref.grad()), tol) << what;
}

// A sequence mixer's result on the device (o and final_state): o in dtype dt with shape o_shape, a defined f32
// final state. Fatal failures: call it in ASSERT_NO_FATAL_FAILURE.
template <class Result>
void assert_mixer_result(const Result& got, DType dt, const Shape& o_shape) {
  ASSERT_TRUE(got.o.is_cuda());
  ASSERT_EQ(got.o.dtype(), dt);
  ASSERT_EQ(got.o.shape(), o_shape);
  ASSERT_TRUE(got.final_state.defined());
  ASSERT_EQ(got.final_state.dtype(), DType::F32);
}

// A sequence mixer against its reference: o, the final state and the gradients of the leaves q, k, v
// (members of `dev` and `ref`) within tol (floored_rel_err).
template <class Result, class Leaves>
void expect_mixer_close(const Result& got, const Result& want, const Leaves& dev, const Leaves& ref, double tol) {
  EXPECT_LT(floored_rel_err(got.o, want.o), tol) << "o";
  EXPECT_LT(floored_rel_err(got.final_state, want.final_state), tol) << "final state";
  EXPECT_LT(floored_rel_err(dev.q.grad(), ref.q.grad()), tol) << "dq";
  EXPECT_LT(floored_rel_err(dev.k.grad(), ref.k.grad()), tol) << "dk";
  EXPECT_LT(floored_rel_err(dev.v.grad(), ref.v.grad()), tol) << "dv";
}

// Every element of t is finite.
inline void expect_all_finite(const Tensor& t, const std::string& what) {
  std::vector<float> x = to_cpu_f32(t).to_vector<float>();
  size_t bad = 0;
  for (float e : x) bad += !std::isfinite(e);
  EXPECT_EQ(bad, 0u) << what;
}

}  // namespace seqmix::testing
