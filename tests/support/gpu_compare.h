// Shared by the GPU suites: skipping without a device, reproducible random CPU inputs, and the
// element-wise CUDA-vs-CPU comparison (NaN == NaN and equal infinities count as agreement).
#pragma once
#include <gtest/gtest.h>

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

}  // namespace seqmix::testing
