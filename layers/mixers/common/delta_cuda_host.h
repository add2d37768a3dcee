// Host-side pieces shared by the delta-rule CUDA launchers (delta_rule_cuda.cu, generalized_delta_cuda.cu,
// generalized_delta_chunked.cu): the shared-memory budget, the element-type dispatch, the chunked kernels' Geo, and
// the input checks and pointers of the two generalized-rule kernels. Include from .cu files only (after the kernel
// header that defines delta_cuda::Geo).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/tensor.h"
#include "layers/mixers/common/delta_rule.h"

namespace seqmix::mixers {

// Dynamic shared memory a chunked delta-rule kernel may ask for: the opt-in maximum less a margin for static
// shared memory.
inline size_t delta_smem_limit() { return size_t(::seqmix::cuda::max_shared_memory_optin()) - 1024; }

// f(IN, OP) for the chunked kernels: IN = the element type of the inputs; OP = the operand type (bf16 unless f32
// operands fit and the input is f32).
template <class F>
void delta_dispatch(DType in, bool op_f32, F&& f) {
  if (in == DType::BF16) f.template operator()<__nv_bfloat16, __nv_bfloat16>();
  else if (in == DType::F16) f.template operator()<__half, __nv_bfloat16>();
  else if (op_f32) f.template operator()<float, float>();
  else f.template operator()<float, __nv_bfloat16>();
}

// The chunked kernels' geometry: C = 64, N = ceil(T / 64) chunks, 32 value columns per sequential CTA (16 when Dv is
// not a multiple of 32).
template <class Geo>
Geo delta_geo(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, double scale, double eps, bool gated) {
  Geo g{};
  g.B = int(B);
  g.T = int(T);
  g.H = int(H);
  g.Dk = int(Dk);
  g.Dv = int(Dv);
  g.C = 64;
  g.N = int((T + 63) / 64);
  g.DVT = Dv % 32 == 0 ? 32 : 16;
  g.scale = float(scale);
  g.eps = float(eps);
  g.gated = gated;
  return g;
}

// The checks both generalized-rule kernels make: CUDA tensors; q, k, v, a, b of bf16, f16 or f32; lw not f64;
// q, k, lw, a, b [B, T, H, Dk], v [B, T, H, Dv], s0 [B, H, Dk, Dv] or undefined; the caller's decay bound.
inline bool gdr_inputs_ok(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a,
                          const Tensor& b, const Tensor& s0, const DeltaOptions& opt, double min_log_decay) {
  for (const Tensor* t : {&q, &k, &v, &lw, &a, &b})
    if (!t->defined() || !t->is_cuda()) return false;
  if (s0.defined() && !s0.is_cuda()) return false;
  for (const Tensor* t : {&q, &k, &v, &a, &b})
    if (t->dtype() != DType::BF16 && t->dtype() != DType::F16 && t->dtype() != DType::F32) return false;
  if (lw.dtype() == DType::F64) return false;
  if (q.dim() != 4 || v.dim() != 4) return false;
  for (const Tensor* t : {&k, &lw, &a, &b})
    if (t->shape() != q.shape()) return false;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3), Dv = v.size(3);
  if (v.size(0) != B || v.size(1) != T || v.size(2) != H) return false;
  if (s0.defined() && s0.shape() != (Shape{B, H, Dk, Dv})) return false;
  return opt.min_log_decay >= min_log_decay;
}

// The inputs every generalized-rule kernel reads (p's fields q, k, v, a, b of IN; lw, s0 f32).
template <class IN, class P>
void set_gdr_inputs(P& p, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a,
                    const Tensor& b, const Tensor& s0) {
  p.q = data_or_null<const IN>(q);
  p.k = data_or_null<const IN>(k);
  p.v = data_or_null<const IN>(v);
  p.a = data_or_null<const IN>(a);
  p.b = data_or_null<const IN>(b);
  p.lw = data_or_null<const float>(lw);
  p.s0 = data_or_null<const float>(s0);
}

}  // namespace seqmix::mixers
