// The differentiable op library. Each op runs its forward through the backend kernels
// (core/kernels.h) and, when an input requires a gradient, records its backward (autograd/node.h).
// Backward formulas live next to their forward in core/ops/*.cpp, one short closure each.
#pragma once
#include <optional>
#include <vector>

#include "core/kernels.h"
#include "core/random.h"
#include "core/tensor.h"

namespace seqmix {

// ---- creation ----
Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::cpu());
Tensor arange(int64_t n, DType dtype = DType::I64, Device device = Device::cpu());
Tensor scalar_tensor(double value, DType dtype = DType::F32, Device device = Device::cpu());  // 0-d
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
// Random tensors from a Philox generator (same numbers on every device for the same generator state).
Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::F32, Device device = Device::cpu());
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::F32, Device device = Device::cpu());
Tensor& uniform_(Tensor& t, Generator& gen, double lo = 0.0, double hi = 1.0);
Tensor& normal_(Tensor& t, Generator& gen, double mean = 0.0, double std = 1.0);

// ---- elementwise (broadcasting) ----
Tensor unary(UnaryOp op, const Tensor& x);
Tensor neg(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor square(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor logsigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x);  // tanh approximation
Tensor softplus(const Tensor& x);
Tensor elu(const Tensor& x);
Tensor elu_plus_one(const Tensor& x);  // elu(x) + 1, the linear-attention feature map

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& x, double p);
Tensor affine(const Tensor& x, double alpha, double beta);  // alpha * x + beta
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// comparisons: u8 results, no gradient
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);

Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double s);
Tensor operator-(const Tensor& a, double s);
Tensor operator*(const Tensor& a, double s);
Tensor operator/(const Tensor& a, double s);
Tensor operator+(double s, const Tensor& a);
Tensor operator-(double s, const Tensor& a);
Tensor operator*(double s, const Tensor& a);

// ---- reductions ----
Tensor sum(const Tensor& x);  // all elements -> 0-d
Tensor sum(const Tensor& x, const std::vector<int>& dims, bool keepdim = false);
Tensor sum(const Tensor& x, int dim, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, int dim, bool keepdim = false);
Tensor max(const Tensor& x, int dim, bool keepdim = false);  // gradient to the first maximum
Tensor min(const Tensor& x, int dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int dim, bool keepdim = false);
Tensor logsumexp(const Tensor& x, int dim, bool keepdim = false);
// Sums a broadcast gradient back to `shape` (the reverse of broadcasting).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- linear algebra ----
// matmul: [.., m, k] @ [.., k, n] with broadcast batch dims; 1-d operands as in numpy.
Tensor matmul(const Tensor& a, const Tensor& b);
// linear: x [.., in] @ weight[out, in]^T + bias[out] (bias may be undefined)
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- neural-network ops ----
Tensor softmax(const Tensor& x, int dim = -1);
Tensor log_softmax(const Tensor& x, int dim = -1);
// logits [.., V], targets [..] (i64/i32): mean over targets != ignore_index. Fused: keeps only the
// row log-sum-exp for backward, never the probability tensor.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);
Tensor embedding(const Tensor& weight, const Tensor& ids);
// Inverted dropout with a Philox mask; the mask is regenerated in backward (never stored).
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);
Tensor cumsum(const Tensor& x, int dim, bool reverse = false);
Tensor conv1d_causal(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor());
Tensor fft_conv(const Tensor& x, const Tensor& k);
// Max-plus scan over dim 1 of logf, ig [B, T, H]: m_t = max(logf_t + m_{t-1}, ig_t), m_0 = m0 [B, H] f64
// (zeros when undefined), in f64 (core/kernels.h). Not differentiable: the results carry no gradient.
MaxplusScanResult maxplus_scan(const Tensor& logf, const Tensor& ig, const Tensor& m0 = Tensor(), DType out_dtype = DType::F64);

// ---- joining, splitting, indexing ----
Tensor cat(const std::vector<Tensor>& xs, int dim);
Tensor stack(const std::vector<Tensor>& xs, int dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int dim);
std::vector<Tensor> chunk(const Tensor& x, int chunks, int dim);
Tensor index_select(const Tensor& x, int dim, const Tensor& index);
Tensor gather(const Tensor& x, int dim, const Tensor& index);

// ---- dtype ----
Tensor cast(const Tensor& x, DType dtype);  // differentiable (x.to(dtype))

}  // namespace seqmix
