// The backend kernel interface: what every backend (cpu::, cuda::) implements, with no autograd.
// core/ops.h builds the differentiable ops on top of these through the dispatchers in core/kernels.cpp.
// A backend that lacks a kernel throws an explicit "not implemented on <backend>" Error.
//
// Conventions (all backends):
// - Inputs may be strided views unless a kernel says "contiguous"; outputs are new contiguous tensors
//   on the inputs' device unless written into an `out` argument.
// - Floating kernels accept f32 and bf16 (and f64 on the CPU; f16 where cheap). Reductions, softmax
//   statistics and norms accumulate in f32 (f64 for f64 inputs) and write the input dtype.
// - Index tensors are i64 or i32.
#pragma once
#include <cstdint>
#include <vector>

#include "core/op_table.h"
#include "core/tensor.h"

namespace seqmix {

enum class ReduceOp : uint8_t { Sum, Mean, Max, Min, LogSumExp };

struct NormResult {
  Tensor y, mean, rstd;  // mean is undefined for rmsnorm; mean/rstd are f32, shape [rows]
};
struct NormGrads {
  Tensor dx, dweight, dbias;  // dweight/dbias in the weight's dtype; undefined when not requested
};
struct CrossEntropyResult {
  Tensor loss;   // f32 0-d: mean over targets != ignore_index (0 when there are none)
  Tensor lse;    // f32 [N]: logsumexp of each row, kept for backward
  Tensor count;  // f32 0-d: number of targets that count (kept on the device: no host sync)
};
struct MaxplusScanResult {
  Tensor m;       // [B, T, H] m_t, in the requested dtype
  Tensor m_prev;  // [B, T, H] m_{t-1} (m_0 at t = 0), in the requested dtype
  Tensor m_last;  // [B, H] f64: m_T, the state to carry
};

// Broadcast shape of two shapes (numpy rules); throws naming both shapes when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b);

#define SEQMIX_BACKEND_KERNELS                                                                      \
  /* out[i] = value */                                                                              \
  void fill(const Tensor& out, double value);                                                       \
  /* dst = src: src broadcast to dst's shape, converted to dst's dtype; same device; dst may be a   \
     strided view */                                                                                \
  void copy(const Tensor& dst, const Tensor& src);                                                  \
  Tensor unary(UnaryOp op, const Tensor& x);                                                        \
  /* dx = g * f'(x) with y = f(x); g, x, y have one shape */                                        \
  Tensor unary_backward(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y);             \
  /* out = alpha * x + beta (any float dtype) */                                                    \
  Tensor affine(const Tensor& x, double alpha, double beta);                                        \
  /* out = x ^ p */                                                                                 \
  Tensor pow_scalar(const Tensor& x, double p);                                                     \
  Tensor clamp(const Tensor& x, double lo, double hi);                                              \
  /* broadcasting; a and b have one dtype (the ops layer casts) */                                  \
  Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);                                     \
  /* d f(a,b) / d a (which=0) or / d b (which=1), times g, at the broadcast shape (not yet reduced)*/\
  Tensor binary_backward(BinaryOp op, int which, const Tensor& g, const Tensor& a, const Tensor& b); \
  Tensor compare(CompareOp op, const Tensor& a, const Tensor& b); /* -> u8 */                       \
  Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b); /* cond u8, broadcasting */    \
  /* reduce one dim; Mean divides by its size */                                                    \
  Tensor reduce(ReduceOp op, const Tensor& x, int dim, bool keepdim);                               \
  Tensor argmax(const Tensor& x, int dim, bool keepdim); /* -> i64, first maximum */                \
  /* Sum of all elements to a 0-d tensor, accumulated in f32/f64 */                                 \
  Tensor sum_all(const Tensor& x);                                                                  \
  /* C[b] = op(A[b]) @ op(B[b]) where op transposes when trans_* is set. A: [batch?, m, k] (or its  \
     transpose), B likewise; batch dims broadcast (a batch stride of 0 is allowed). Inputs must have \
     unit stride in their last dim (the ops layer passes transposed views as flags). If `out` is    \
     given it is written (beta = 0) or accumulated into (accumulate = true). */                      \
  Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,                       \
                const Tensor& out, bool accumulate);                                               \
  /* softmax / log_softmax over the last dim (contiguous) and their backward from the output */     \
  Tensor softmax(const Tensor& x);                                                                  \
  Tensor log_softmax(const Tensor& x);                                                              \
  Tensor softmax_backward(const Tensor& g, const Tensor& y);                                        \
  Tensor log_softmax_backward(const Tensor& g, const Tensor& y);                                    \
  /* logits [N, V] contiguous, targets [N] i64/i32; rows whose target == ignore_index don't count */ \
  CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index); \
  /* dlogits = grad_loss / max(count, 1) * (softmax(logits) - onehot(target)) on counted rows, 0 on  \
     ignored rows; grad_loss and count are f32 0-d tensors on the logits' device */                 \
  Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,     \
                                int64_t ignore_index, const Tensor& grad_loss, const Tensor& count); \
  /* norms over the last dim of x [.., D] (contiguous); weight [D] (and bias [D]) may be undefined */ \
  NormResult layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);       \
  NormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight,              \
                               const Tensor& mean, const Tensor& rstd, bool need_weight_grads);     \
  NormResult rmsnorm(const Tensor& x, const Tensor& weight, double eps);                            \
  NormGrads rmsnorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight,                \
                             const Tensor& rstd, bool need_weight_grad);                           \
  /* out[..., :] = weight[ids[...], :]; weight [V, D] contiguous */                                 \
  Tensor embedding(const Tensor& weight, const Tensor& ids);                                        \
  /* dweight [V, D] (f32 accumulation, weight dtype) = scatter-add of g rows at ids */              \
  Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_embeddings);            \
  /* cumulative sum along dim (reverse: from the end) */                                            \
  Tensor cumsum(const Tensor& x, int dim, bool reverse);                                            \
  /* out = cat(inputs, dim); inputs same dtype/device, shapes equal except at dim */                \
  Tensor cat(const std::vector<Tensor>& inputs, int dim);                                           \
  /* out = x.index_select(dim, index) and its backward (scatter-add into a zero tensor of `shape`) */ \
  Tensor index_select(const Tensor& x, int dim, const Tensor& index);                               \
  Tensor index_add(const Shape& shape, int dim, const Tensor& index, const Tensor& src);            \
  /* out[i][j][k] = x[i][index[i][j][k]][k] for dim=1 (torch.gather), and its scatter-add backward */ \
  Tensor gather(const Tensor& x, int dim, const Tensor& index);                                     \
  Tensor scatter_add(const Shape& shape, int dim, const Tensor& index, const Tensor& src);          \
  /* Philox streams, identical on every backend (core/philox.h): element i of a draw uses counter   \
     (offset + i) — see philox.h for the exact mapping */                                           \
  void uniform_(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi);            \
  void normal_(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double std);          \
  /* y = x * keep / (1 - p), keep[i] = uniform(seed, offset, i) >= p; backward is the same call on g */ \
  Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset);                        \
  /* causal depthwise conv along time: x [B, T, C], w [C, K], bias [C] or undefined:               \
     y[b,t,c] = bias[c] + sum_{j<K} w[c,j] * x[b, t-K+1+j, c] (x before 0 is 0) */                   \
  Tensor conv1d_causal(const Tensor& x, const Tensor& w, const Tensor& bias);                       \
  void conv1d_causal_backward(const Tensor& g, const Tensor& x, const Tensor& w,                    \
                              Tensor* dx, Tensor* dw, Tensor* dbias);                               \
  /* causal long convolution: x [B, T, C], k [C, L] with L <= T (shorter filters are zero-padded):  \
     y[b,t,c] = sum_{s<=t, s<L} k[c,s] * x[b,t-s,c]; FFT-based (cuFFT on CUDA), f32 math */          \
  Tensor fft_conv(const Tensor& x, const Tensor& k);                                                \
  void fft_conv_backward(const Tensor& g, const Tensor& x, const Tensor& k, Tensor* dx, Tensor* dk);       \
  /* max-plus scan over T (the mLSTM stabilizer): m_t = max(logf_t + m_{t-1}, ig_t) in f64, per (b, h);  \
     logf, ig [B, T, H] of one float dtype, m0 [B, H] f64 or undefined (zeros); out_dtype any float.    \
     Sequential in f64 on every backend, so all backends agree bitwise. No gradient. Arguments are      \
     checked once, by kernels::maxplus_scan. */                                                         \
  MaxplusScanResult maxplus_scan(const Tensor& logf, const Tensor& ig, const Tensor& m0, DType out_dtype);

namespace cpu {
SEQMIX_BACKEND_KERNELS
}
#ifdef SEQMIX_WITH_CUDA
namespace cuda {
SEQMIX_BACKEND_KERNELS
}
#endif

// Dispatchers: pick the backend from the first tensor argument's device.
namespace kernels {
SEQMIX_BACKEND_KERNELS
}

}  // namespace seqmix
