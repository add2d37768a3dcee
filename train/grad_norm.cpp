#include "train/grad_norm.h"

#include <cmath>

#include "core/ops.h"

namespace seqmix::train {

namespace {

constexpr int64_t kCpuBlock = 4096;

// Sum of squares of a contiguous f32 buffer: 8 f32 lanes within blocks of kCpuBlock elements, the
// blocks summed in double in order (deterministic for any thread count).
double sumsq_cpu(const float* x, int64_t n) {
  const int64_t nblocks = (n + kCpuBlock - 1) / kCpuBlock;
  std::vector<double> partial(size_t(nblocks), 0.0);
#pragma omp parallel for schedule(static) if (nblocks > 4)
  for (int64_t b = 0; b < nblocks; ++b) {
    const float* p = x + b * kCpuBlock;
    const int64_t len = std::min(kCpuBlock, n - b * kCpuBlock);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
      for (int l = 0; l < 8; ++l) acc[l] += p[i + l] * p[i + l];
    for (; i < len; ++i) acc[0] += p[i] * p[i];
    double s = 0;
    for (int l = 0; l < 8; ++l) s += double(acc[l]);
    partial[size_t(b)] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

// The gradient as a contiguous f32 tensor (itself when it already is one).
Tensor f32_contiguous(const Tensor& g) {
  Tensor c = g.dtype() == DType::F32 ? g : g.to(DType::F32);
  return c.contiguous();
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params) { return grad_norm(params, Tensor(), nullptr); }

double grad_norm(const std::vector<Tensor>& params, const Tensor& extra, std::vector<double>* extra_out) {
  SEQMIX_CHECK(!extra.defined() || (extra.dtype() == DType::F64 && extra.is_contiguous() && extra_out),
               "grad_norm: `extra` must be a contiguous f64 tensor with somewhere to go");
  double total = 0;
  std::vector<detail::GradRef> cuda_refs;
  std::vector<Tensor> keep;
  int cuda_index = -1;
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    // CUDA bf16 gradients (data-parallel buckets reduced in bf16) are read as they are
    const bool bf16 = g.is_cuda() && g.dtype() == DType::BF16 && g.is_contiguous();
    Tensor c = bf16 ? g : f32_contiguous(g);
    if (c.is_cuda()) {
      SEQMIX_CHECK(cuda_index < 0 || cuda_index == c.device().index,
                   "grad_norm: gradients on more than one CUDA device (cuda:", cuda_index, " and ",
                   c.device().str(), ")");
      cuda_index = c.device().index;
      keep.push_back(c);
      if (bf16) cuda_refs.push_back({nullptr, c.numel(), static_cast<const uint16_t*>(c.data_ptr())});
      else cuda_refs.push_back({c.data<float>(), c.numel()});
    } else {
      total += sumsq_cpu(c.data<float>(), c.numel());
    }
  }
  const bool extra_with_norm = extra.defined() && extra.is_cuda() && !cuda_refs.empty() && extra.device().index == cuda_index;
  if (!cuda_refs.empty()) {
#ifdef SEQMIX_WITH_CUDA
    if (extra_with_norm) {
      extra_out->assign(size_t(extra.numel()), 0.0);
      total += detail::grad_sumsq_cuda(cuda_refs, extra.data<double>(), size_t(extra.numel()), extra_out->data());
    } else {
      total += detail::grad_sumsq_cuda(cuda_refs);
    }
#else
    SEQMIX_FAIL("grad_norm: CUDA gradients but this seqmix was built without CUDA");
#endif
  }
  if (extra.defined() && !extra_with_norm) *extra_out = extra.cpu().to_vector<double>();
  return std::sqrt(total);
}

void scale_grads(const std::vector<Tensor>& params, double factor) {
  const float f = float(factor);
  std::vector<detail::GradRef> cuda_refs;
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    if (g.dtype() != DType::F32 || !g.is_contiguous()) {  // the general (slower) path
      g.copy_(affine(g, factor, 0.0));
      continue;
    }
    if (g.is_cuda()) {
      cuda_refs.push_back({g.data<float>(), g.numel()});
    } else {
      float* x = g.data<float>();
      const int64_t n = g.numel();
#pragma omp parallel for schedule(static) if (n >= 65536)
      for (int64_t i = 0; i < n; ++i) x[i] *= f;
    }
  }
  if (!cuda_refs.empty()) {
#ifdef SEQMIX_WITH_CUDA
    detail::scale_cuda(cuda_refs, f);
#else
    SEQMIX_FAIL("scale_grads: CUDA gradients but this seqmix was built without CUDA");
#endif
  }
}

double clip_factor(double norm, double max_norm) {
  return max_norm > 0 && std::isfinite(norm) && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  const double norm = grad_norm(params);
  const double f = clip_factor(norm, max_norm);
  if (f != 1.0) scale_grads(params, f);
  return norm;
}

}  // namespace seqmix::train
