// Causal softmax attention as one fused, differentiable op: the core of the `attention` mixer (the
// Module adds projections, RoPE and the KV cache on top of it).
//
//   q [B, Tq, H, D], k / v [B, Tk, Hkv, D], H % Hkv == 0 (grouped-query attention: query head h reads
//   kv head h / (H / Hkv)). Causal and bottom-right aligned: query i (0-based) sees the keys
//   j <= i + (Tk - Tq), so Tq == 1 decodes one token against a cache of Tk keys. window > 0 further
//   keeps only the keys j > i + (Tk - Tq) - window (sliding window of `window` keys, itself included);
//   window <= 0: unlimited. A query that sees no key (only when Tq > Tk) gets a zero output.
//   scale: the logit scale, 0 = 1 / sqrt(D).
//   Inputs may be strided views (e.g. slices of a fused [B, T, (H + 2 Hkv) * D] projection) as long as
//   the last dim has unit stride. The output o [B, Tq, H, D] is contiguous, in the inputs' dtype.
//
// Differentiable w.r.t. q, k and v (a custom autograd function that saves q, k, v, o and the row
// log-sum-exp lse [B, H, Tq]; backward recomputes the probabilities from lse, never storing Tq x Tk).
//
// Backends:
//   CPU  (reference.cpp): per-(b, h) loops, OpenMP over heads; f64 computes in double, f32 / bf16 / f16
//        in float. The oracle every fast path is tested against, and the CPU training path.
//   CUDA (flash_attention.cu): bf16 with D in {64, 128}: fused flash-style forward and backward on tensor
//        cores (mma.sync m16n8k16, f32 accumulation and softmax statistics). Other dtypes (f32, f64,
//        f16) and head dims (D <= 256) take a slower fused SIMT path (one warp per row, same math),
//        correct but not fast.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace seqmix::mixers {

// The differentiable op (see above).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale = 0, int64_t window = 0);

// ---- the op's two halves, without autograd (for benchmarks and tests) ----

struct AttentionForward {
  Tensor o;    // [B, Tq, H, D] contiguous, the inputs' dtype
  Tensor lse;  // [B, H, Tq] natural-log log-sum-exp of the scaled logits of each row (f32; f64 for f64
               // inputs). +inf for a row that sees no key.
};
struct AttentionGrads {
  Tensor dq, dk, dv;  // contiguous, shaped and typed like q, k, v
};

// `scale` here is the resolved scale (no 0 default). Inputs as for attention().
AttentionForward attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window);
// o and lse from attention_forward on the same inputs; dout [B, Tq, H, D] (any strides).
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& dout, double scale, int64_t window);

// The scale attention() uses for a given `scale` argument and head dim.
double attention_scale(double scale, int64_t head_dim);

// ---- backend entry points (implementation detail; called by attention_forward/_backward) ----
namespace attention_impl {

// Problem geometry shared by both backends.
struct Dims {
  int64_t B = 0, Tq = 0, Tk = 0, H = 0, Hkv = 0, D = 0;
  int64_t window = 0;
  double scale = 1;
};

// CPU (reference.cpp). Inputs: q/k/v (and o/dout) in f32 or f64 with unit last-dim stride (any other
// strides); outputs are pre-allocated contiguous tensors of the same dtype; lse in the same dtype.
void cpu_forward(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse);
void cpu_backward(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                  const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv);

#ifdef SEQMIX_WITH_CUDA
// CUDA (flash_attention.cu). Inputs with unit last-dim stride; o/dq/dk/dv pre-allocated contiguous in the
// inputs' dtype, lse f32 (f64 for f64 inputs). Launches on cuda::current_stream() of the current device.
void cuda_forward(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse);
void cuda_backward(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                   const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv);
// Whether cuda_forward/_backward take the tensor-core flash kernels for these inputs (else the SIMT path).
bool cuda_uses_flash(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v);
#endif

}  // namespace attention_impl

}  // namespace seqmix::mixers
