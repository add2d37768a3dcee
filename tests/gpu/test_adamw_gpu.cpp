// The fused CUDA AdamW and the multi-tensor gradient norm / scaling against the CPU paths: odd sizes,
// misaligned (offset) tensors, more tensors than one launch holds, matrices (decayed) and vectors.
#include <cmath>
#include <limits>

#include "support/test_util.h"
#include "train/grad_norm.h"
#include "train/optimizer.h"

namespace seqmix::train {
namespace {

using seqmix::testing::rel_error;

// A set of parameters on the CPU and an identical copy on CUDA.
struct ParamSet {
  NamedTensors cpu, gpu;
  std::vector<Tensor> cpu_list() const {
    std::vector<Tensor> v;
    for (auto& [n, t] : cpu) v.push_back(t);
    return v;
  }
  std::vector<Tensor> gpu_list() const {
    std::vector<Tensor> v;
    for (auto& [n, t] : gpu) v.push_back(t);
    return v;
  }
};

// A contiguous CUDA tensor whose data starts 4 bytes past a 16-byte boundary (the scalar path).
Tensor misaligned_cuda(const Tensor& values) {
  Tensor base = zeros({values.numel() + 1}, DType::F32, Device::cuda());
  Tensor view = base.narrow(0, 1, values.numel()).view(values.shape());
  view.copy_(values);
  return view;
}

ParamSet make_params(uint64_t seed) {
  Generator gen(seed);
  ParamSet ps;
  std::vector<Shape> shapes = {{1}, {3}, {5, 7}, {129, 33}, {1000003}, {3, 5, 7}, {257}};
  for (int k = 1; k <= 70; ++k) shapes.push_back({k});  // more tensors than one launch's table
  int idx = 0;
  for (const Shape& s : shapes) {
    Tensor c = randn(s, gen);
    Tensor g = (idx == 2 || idx == 6) ? misaligned_cuda(c) : c.cuda();
    ps.cpu.emplace_back("p" + std::to_string(idx), c);
    ps.gpu.emplace_back("p" + std::to_string(idx), g);
    ++idx;
  }
  return ps;
}

void set_same_grads(const ParamSet& ps, Generator& gen, bool misalign_some) {
  for (size_t i = 0; i < ps.cpu.size(); ++i) {
    Tensor g = randn(ps.cpu[i].second.shape(), gen);
    Tensor(ps.cpu[i].second).set_grad(g);
    Tensor gg = (misalign_some && i % 3 == 1) ? misaligned_cuda(g) : g.cuda();
    Tensor(ps.gpu[i].second).set_grad(gg);
  }
}

TEST(AdamWGpu, MatchesCpuAfterThreeSteps) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  ParamSet ps = make_params(1);
  AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
  AdamW cpu_opt(ps.cpu, cfg), gpu_opt(ps.gpu, cfg);
  Generator gen(2);
  const double lrs[3] = {1e-3, 3e-3, 2e-3};
  for (int s = 0; s < 3; ++s) {
    set_same_grads(ps, gen, /*misalign_some=*/s == 1);
    cpu_opt.step(lrs[s]);
    gpu_opt.step(lrs[s]);
  }
  for (size_t i = 0; i < ps.cpu.size(); ++i) {
    EXPECT_LE(rel_error(ps.gpu[i].second.cpu(), ps.cpu[i].second), 1e-6) << ps.cpu[i].first;
  }
  NamedTensors sc = cpu_opt.state_tensors(), sg = gpu_opt.state_tensors();
  ASSERT_EQ(sc.size(), sg.size());
  for (size_t i = 0; i < sc.size(); ++i) {
    EXPECT_TRUE(sg[i].second.is_cuda());
    EXPECT_LE(rel_error(sg[i].second.cpu(), sc[i].second), 1e-6) << sc[i].first;
  }
  // and a parameter without a gradient is left alone on the GPU too
  Tensor before = ps.gpu[0].second.cpu();
  Tensor(ps.gpu[0].second).set_grad(Tensor());
  gpu_opt.step(1e-3);
  EXPECT_EQ(ps.gpu[0].second.cpu().to_vector<float>(), before.to_vector<float>());
}

TEST(AdamWGpu, StateLoadsAcrossDevices) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  ParamSet ps = make_params(3);
  AdamW cpu_opt(ps.cpu, AdamWConfig{}), gpu_opt(ps.gpu, AdamWConfig{});
  Generator gen(4);
  set_same_grads(ps, gen, false);
  cpu_opt.step(1e-3);
  gpu_opt.load_state(cpu_opt.state_tensors(), cpu_opt.steps());  // CPU state into CUDA tensors
  EXPECT_EQ(gpu_opt.steps(), 1);
  NamedTensors sg = gpu_opt.state_tensors();
  EXPECT_TRUE(sg[0].second.is_cuda());
  EXPECT_EQ(rel_error(sg[7].second.cpu(), cpu_opt.state_tensors()[7].second), 0.0);
}

TEST(GradNormGpu, MatchesCpuAndScales) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  ParamSet ps = make_params(5);
  Generator gen(6);
  set_same_grads(ps, gen, /*misalign_some=*/true);
  const double nc = grad_norm(ps.cpu_list()), ng = grad_norm(ps.gpu_list());
  EXPECT_NEAR(ng, nc, 1e-6 * nc);
  EXPECT_EQ(ng, grad_norm(ps.gpu_list()));  // deterministic on one device

  scale_grads(ps.cpu_list(), 0.3);
  scale_grads(ps.gpu_list(), 0.3);
  for (size_t i = 0; i < ps.cpu.size(); ++i)
    EXPECT_EQ(rel_error(ps.gpu[i].second.grad().cpu(), ps.cpu[i].second.grad()), 0.0) << ps.cpu[i].first;

  const double before = grad_norm(ps.gpu_list());
  EXPECT_NEAR(clip_grad_norm(ps.gpu_list(), before / 4), before, 1e-9 * before);
  EXPECT_NEAR(grad_norm(ps.gpu_list()), before / 4, 1e-5 * before);
}

// A bf16 copy of an f32 tensor on CUDA, optionally starting 2 bytes past an 8-byte boundary (scalar path).
Tensor bf16_cuda(const Tensor& values, bool misalign) {
  Tensor base = zeros({values.numel() + 1}, DType::BF16, Device::cuda());
  Tensor view = base.narrow(0, misalign ? 1 : 0, values.numel()).view(values.shape());
  view.copy_(values);
  return view;
}

TEST(AdamWGpu, Bf16GradientsAndGradScaleMatchCpu) {
  // Data parallel with bf16 reduction hands AdamW bf16 gradient views and the clipping factor.
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  ParamSet ps = make_params(7);
  AdamW cpu_opt(ps.cpu, AdamWConfig{}), gpu_opt(ps.gpu, AdamWConfig{});
  Generator gen(8);
  for (int s = 0; s < 2; ++s) {
    for (size_t i = 0; i < ps.cpu.size(); ++i) {
      Tensor g = randn(ps.cpu[i].second.shape(), gen).to(DType::BF16).to(DType::F32);  // bf16 values
      Tensor(ps.cpu[i].second).set_grad(g);
      Tensor(ps.gpu[i].second).set_grad(bf16_cuda(g, i % 4 == 1));
    }
    cpu_opt.step(1e-3, 0.43);
    gpu_opt.step(1e-3, 0.43);
  }
  for (size_t i = 0; i < ps.cpu.size(); ++i)
    EXPECT_LE(rel_error(ps.gpu[i].second.cpu(), ps.cpu[i].second), 1e-6) << ps.cpu[i].first;
}

TEST(GradNormGpu, Bf16GradientsMatchTheirF32Values) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  ParamSet ps = make_params(9);
  Generator gen(10);
  for (size_t i = 0; i < ps.cpu.size(); ++i) {
    Tensor g = randn(ps.cpu[i].second.shape(), gen).to(DType::BF16).to(DType::F32);
    Tensor(ps.cpu[i].second).set_grad(g);
    Tensor(ps.gpu[i].second).set_grad(bf16_cuda(g, i % 5 == 2));
  }
  const double nc = grad_norm(ps.cpu_list()), ng = grad_norm(ps.gpu_list());
  EXPECT_NEAR(ng, nc, 1e-6 * nc);
  EXPECT_EQ(ng, grad_norm(ps.gpu_list()));  // deterministic
}

TEST(GradNormGpu, NanPropagates) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  Tensor p = zeros({1001}, DType::F32, Device::cuda());
  std::vector<float> g(1001, 1.0f);
  g[777] = std::numeric_limits<float>::quiet_NaN();
  p.set_grad(Tensor::from_vector<float>(g, {1001}).cuda());
  EXPECT_TRUE(std::isnan(grad_norm({p})));
  g[777] = std::numeric_limits<float>::infinity();
  p.set_grad(Tensor::from_vector<float>(g, {1001}).cuda());
  EXPECT_TRUE(std::isinf(grad_norm({p})));
}

}  // namespace
}  // namespace seqmix::train
