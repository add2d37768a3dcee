// Philox on the GPU against the CPU and against core/random.h itself:
// - uniforms: bit-for-bit equal (f32 and bf16, any range, contiguous or strided outputs, odd sizes and
//   nonzero offsets), and equal to philox_uniform(seed, offset, i);
// - normals: within 1e-5 * (1 + |z|) (the device uses sqrtf/logf/cospif, the CPU double math);
// - dropout: the same mask exactly, kept values equal (f32 multiply on both sides), p = 0 and p = 1.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/kernels.h"
#include "core/ops.h"
#include "core/random.h"

using namespace seqmix;

namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device"

void expect_close(const Tensor& got, const Tensor& want, double rtol, double atol, const std::string& what) {
  ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
  std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  size_t bad = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!(std::abs(g[i] - w[i]) <= atol + rtol * std::abs(w[i])) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " cuda " << g[i] << " cpu " << w[i];
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << g.size() << " elements differ";
}

struct Case {
  std::string name;
  Shape base;
  std::function<Tensor(const Tensor&)> view;
};
std::vector<Case> cases() {
  auto id = [](const Tensor& t) { return t; };
  return {
      {"3x37x61", {3, 37, 61}, id},
      {"odd 4k+1", {4097}, id},
      {"odd 4k+3", {4099}, id},
      {"one element", {1}, id},
      {"zero elements", {0}, id},
      {"transposed", {61, 37, 3}, [](const Tensor& t) { return t.transpose(0, 2); }},
      {"sliced with step", {3, 74, 61}, [](const Tensor& t) { return t.slice(1, 1, 74, 2); }},
      {"large", {(1 << 20) + 5}, id},
  };
}

}  // namespace

TEST(CudaRandom, UniformMatchesCpuExactly) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cases()) {
      for (auto [lo, hi] : {std::pair{0.0, 1.0}, std::pair{-2.0, 3.0}, std::pair{-0.02, 0.02}}) {
        for (uint64_t offset : {uint64_t(0), uint64_t(12345)}) {
          uint64_t seed = 0x1234567890abcdefull;
          Tensor cpu_base = zeros(c.base, dt), gpu_base = zeros(c.base, dt, Device::cuda());
          kernels::uniform_(c.view(cpu_base), seed, offset, lo, hi);
          kernels::uniform_(c.view(gpu_base), seed, offset, lo, hi);
          expect_close(gpu_base, cpu_base, 0, 0,
                       std::string("uniform ") + dtype_name(dt) + " " + c.name + " [" + std::to_string(lo) + ", " +
                           std::to_string(hi) + ") offset " + std::to_string(offset));
        }
      }
    }
  }
}

TEST(CudaRandom, UniformIsThePhiloxMapping) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = 42, offset = 7;
  const int64_t n = 1003;
  Tensor t = empty({n}, DType::F32, Device::cuda());
  kernels::uniform_(t, seed, offset, 0.0, 1.0);
  std::vector<float> v = t.to_vector<float>();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(v[i], philox_uniform(seed, offset, uint64_t(i))) << "element " << i;
    ASSERT_GT(v[i], 0.f);
    ASSERT_LT(v[i], 1.f);
  }
}

TEST(CudaRandom, NormalMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cases()) {
      for (auto [mean, std] : {std::pair{0.0, 1.0}, std::pair{1.5, 0.02}}) {
        uint64_t seed = 99, offset = 5;
        Tensor cpu_base = zeros(c.base, dt), gpu_base = zeros(c.base, dt, Device::cuda());
        kernels::normal_(c.view(cpu_base), seed, offset, mean, std);
        kernels::normal_(c.view(gpu_base), seed, offset, mean, std);
        // f32: 1e-5 relative to the value plus 1e-5 * std absolute; bf16: one bf16 rounding step
        double rtol = dt == DType::F32 ? 1e-5 : 1e-2, atol = dt == DType::F32 ? 1e-5 * std : 1e-2 * std;
        expect_close(gpu_base, cpu_base, rtol, atol,
                     std::string("normal ") + dtype_name(dt) + " " + c.name + " mean " + std::to_string(mean));
      }
    }
  }
}

TEST(CudaRandom, NormalMoments) {
  SKIP_WITHOUT_CUDA();
  Tensor t = empty({1 << 20}, DType::F32, Device::cuda());
  kernels::normal_(t, 3, 0, 0.0, 1.0);
  std::vector<float> v = t.to_vector<float>();
  double s = 0, s2 = 0;
  for (float x : v) {
    s += x;
    s2 += double(x) * x;
  }
  double m = s / double(v.size()), var = s2 / double(v.size()) - m * m;
  EXPECT_NEAR(m, 0.0, 5e-3);
  EXPECT_NEAR(var, 1.0, 5e-3);
}

TEST(CudaRandom, DropoutMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cases()) {
      for (double p : {0.0, 0.1, 0.5, 1.0}) {
        Tensor base = ones(c.base, DType::F32);
        kernels::uniform_(base, 77, 0, -1.0, 1.0);
        base = base.to(dt);
        Tensor x = c.view(base), xg = c.view(base.cuda());
        Tensor want = kernels::dropout(x, p, 1234, 17), got = kernels::dropout(xg, p, 1234, 17);
        std::string what = std::string("dropout ") + dtype_name(dt) + " " + c.name + " p " + std::to_string(p);
        expect_close(got, want, 0, 0, what);
        // the mask: zeros exactly where the CPU has zeros (inputs are never 0)
        std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
        for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i] == 0.0, w[i] == 0.0) << what << " element " << i;
      }
    }
  }
}
