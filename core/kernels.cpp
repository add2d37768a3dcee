// Dispatchers: route each kernel to the backend of its tensors' device, after checking that all
// tensor arguments live on that device.
#include "core/kernels.h"

namespace seqmix {

#ifdef SEQMIX_WITH_CUDA
namespace cuda {
void select_device(int index);  // core/cuda/runtime.cpp
}
#define SEQMIX_ROUTE(DEV, CALL)          \
  do {                                   \
    if ((DEV).is_cuda()) {               \
      cuda::select_device((DEV).index);  \
      return cuda::CALL;                 \
    }                                    \
    return cpu::CALL;                    \
  } while (0)
#else
#define SEQMIX_ROUTE(DEV, CALL) return cpu::CALL
#endif

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    SEQMIX_CHECK(da == db || da == 1 || db == 1, "shapes ", shape_str(a), " and ", shape_str(b), " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {
void same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t || !t->defined()) continue;
    if (!first) {
      first = t;
      continue;
    }
    SEQMIX_CHECK(t->device() == first->device(), op, ": tensors on different devices (", first->device().str(), " and ",
                 t->device().str(), ")");
  }
}
}  // namespace

namespace kernels {

void fill(const Tensor& out, double value) { SEQMIX_ROUTE(out.device(), fill(out, value)); }
void copy(const Tensor& dst, const Tensor& src) {
  same_device("copy", {&dst, &src});
  SEQMIX_ROUTE(dst.device(), copy(dst, src));
}
Tensor unary(UnaryOp op, const Tensor& x) { SEQMIX_ROUTE(x.device(), unary(op, x)); }
Tensor unary_backward(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y) {
  same_device(op_name(op), {&g, &x, &y});
  SEQMIX_ROUTE(g.device(), unary_backward(op, g, x, y));
}
Tensor affine(const Tensor& x, double alpha, double beta) { SEQMIX_ROUTE(x.device(), affine(x, alpha, beta)); }
Tensor pow_scalar(const Tensor& x, double p) { SEQMIX_ROUTE(x.device(), pow_scalar(x, p)); }
Tensor clamp(const Tensor& x, double lo, double hi) { SEQMIX_ROUTE(x.device(), clamp(x, lo, hi)); }
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  same_device(op_name(op), {&a, &b});
  SEQMIX_ROUTE(a.device(), binary(op, a, b));
}
Tensor binary_backward(BinaryOp op, int which, const Tensor& g, const Tensor& a, const Tensor& b) {
  same_device(op_name(op), {&g, &a, &b});
  SEQMIX_ROUTE(g.device(), binary_backward(op, which, g, a, b));
}
Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  same_device(op_name(op), {&a, &b});
  SEQMIX_ROUTE(a.device(), compare(op, a, b));
}
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  same_device("where", {&cond, &a, &b});
  SEQMIX_ROUTE(a.device(), where(cond, a, b));
}
Tensor reduce(ReduceOp op, const Tensor& x, int dim, bool keepdim) { SEQMIX_ROUTE(x.device(), reduce(op, x, dim, keepdim)); }
Tensor argmax(const Tensor& x, int dim, bool keepdim) { SEQMIX_ROUTE(x.device(), argmax(x, dim, keepdim)); }
Tensor sum_all(const Tensor& x) { SEQMIX_ROUTE(x.device(), sum_all(x)); }
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out, bool accumulate) {
  same_device("matmul", {&a, &b, &out});
  SEQMIX_ROUTE(a.device(), matmul(a, b, trans_a, trans_b, out, accumulate));
}
Tensor softmax(const Tensor& x) { SEQMIX_ROUTE(x.device(), softmax(x)); }
Tensor log_softmax(const Tensor& x) { SEQMIX_ROUTE(x.device(), log_softmax(x)); }
Tensor softmax_backward(const Tensor& g, const Tensor& y) {
  same_device("softmax_backward", {&g, &y});
  SEQMIX_ROUTE(g.device(), softmax_backward(g, y));
}
Tensor log_softmax_backward(const Tensor& g, const Tensor& y) {
  same_device("log_softmax_backward", {&g, &y});
  SEQMIX_ROUTE(g.device(), log_softmax_backward(g, y));
}
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  same_device("cross_entropy", {&logits, &targets});
  SEQMIX_ROUTE(logits.device(), cross_entropy(logits, targets, ignore_index));
}
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t ignore_index,
                              const Tensor& grad_loss, const Tensor& count) {
  same_device("cross_entropy_backward", {&logits, &targets, &lse, &grad_loss, &count});
  SEQMIX_ROUTE(logits.device(), cross_entropy_backward(logits, targets, lse, ignore_index, grad_loss, count));
}
NormResult layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  same_device("layer_norm", {&x, &weight, &bias});
  SEQMIX_ROUTE(x.device(), layernorm(x, weight, bias, eps));
}
NormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean,
                             const Tensor& rstd, bool need_weight_grads) {
  same_device("layer_norm_backward", {&g, &x, &weight, &mean, &rstd});
  SEQMIX_ROUTE(x.device(), layernorm_backward(g, x, weight, mean, rstd, need_weight_grads));
}
NormResult rmsnorm(const Tensor& x, const Tensor& weight, double eps) {
  same_device("rms_norm", {&x, &weight});
  SEQMIX_ROUTE(x.device(), rmsnorm(x, weight, eps));
}
NormGrads rmsnorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                           bool need_weight_grad) {
  same_device("rms_norm_backward", {&g, &x, &weight, &rstd});
  SEQMIX_ROUTE(x.device(), rmsnorm_backward(g, x, weight, rstd, need_weight_grad));
}
Tensor embedding(const Tensor& weight, const Tensor& ids) {
  same_device("embedding", {&weight, &ids});
  SEQMIX_ROUTE(weight.device(), embedding(weight, ids));
}
Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_embeddings) {
  same_device("embedding_backward", {&g, &ids});
  SEQMIX_ROUTE(g.device(), embedding_backward(g, ids, num_embeddings));
}
Tensor cumsum(const Tensor& x, int dim, bool reverse) { SEQMIX_ROUTE(x.device(), cumsum(x, dim, reverse)); }
Tensor cat(const std::vector<Tensor>& inputs, int dim) {
  SEQMIX_CHECK(!inputs.empty(), "cat: no tensors given");
  for (const Tensor& t : inputs) same_device("cat", {&inputs[0], &t});
  SEQMIX_ROUTE(inputs[0].device(), cat(inputs, dim));
}
Tensor index_select(const Tensor& x, int dim, const Tensor& index) {
  same_device("index_select", {&x, &index});
  SEQMIX_ROUTE(x.device(), index_select(x, dim, index));
}
Tensor index_add(const Shape& shape, int dim, const Tensor& index, const Tensor& src) {
  same_device("index_add", {&index, &src});
  SEQMIX_ROUTE(src.device(), index_add(shape, dim, index, src));
}
Tensor gather(const Tensor& x, int dim, const Tensor& index) {
  same_device("gather", {&x, &index});
  SEQMIX_ROUTE(x.device(), gather(x, dim, index));
}
Tensor scatter_add(const Shape& shape, int dim, const Tensor& index, const Tensor& src) {
  same_device("scatter_add", {&index, &src});
  SEQMIX_ROUTE(src.device(), scatter_add(shape, dim, index, src));
}
void uniform_(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi) {
  SEQMIX_ROUTE(out.device(), uniform_(out, seed, offset, lo, hi));
}
void normal_(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double std) {
  SEQMIX_ROUTE(out.device(), normal_(out, seed, offset, mean, std));
}
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  SEQMIX_ROUTE(x.device(), dropout(x, p, seed, offset));
}
Tensor conv1d_causal(const Tensor& x, const Tensor& w, const Tensor& bias) {
  same_device("conv1d_causal", {&x, &w, &bias});
  SEQMIX_ROUTE(x.device(), conv1d_causal(x, w, bias));
}
void conv1d_causal_backward(const Tensor& g, const Tensor& x, const Tensor& w, Tensor* dx, Tensor* dw, Tensor* dbias) {
  same_device("conv1d_causal_backward", {&g, &x, &w});
  SEQMIX_ROUTE(x.device(), conv1d_causal_backward(g, x, w, dx, dw, dbias));
}
Tensor fft_conv(const Tensor& x, const Tensor& k) {
  same_device("fft_conv", {&x, &k});
  SEQMIX_ROUTE(x.device(), fft_conv(x, k));
}
void fft_conv_backward(const Tensor& g, const Tensor& x, const Tensor& k, Tensor* dx, Tensor* dk) {
  same_device("fft_conv_backward", {&g, &x, &k});
  SEQMIX_ROUTE(x.device(), fft_conv_backward(g, x, k, dx, dk));
}
MaxplusScanResult maxplus_scan(const Tensor& logf, const Tensor& ig, const Tensor& m0, DType out_dtype) {
  same_device("maxplus_scan", {&logf, &ig, &m0});
  // the argument checks of every backend
  SEQMIX_CHECK(logf.dim() == 3 && logf.shape() == ig.shape(), "maxplus_scan: logf and ig must be [B, T, H] of one shape; got ",
               shape_str(logf.shape()), " and ", shape_str(ig.shape()));
  SEQMIX_CHECK(logf.dtype() == ig.dtype() && is_floating(ig.dtype()), "maxplus_scan: logf and ig need one float dtype; got ",
               dtype_name(logf.dtype()), " and ", dtype_name(ig.dtype()));
  SEQMIX_CHECK(is_floating(out_dtype), "maxplus_scan: out_dtype must be floating, got ", dtype_name(out_dtype));
  if (m0.defined())
    SEQMIX_CHECK(m0.dtype() == DType::F64 && m0.shape() == Shape({ig.size(0), ig.size(2)}), "maxplus_scan: m0 must be f64 [",
                 ig.size(0), ", ", ig.size(2), "]; got ", dtype_name(m0.dtype()), " ", shape_str(m0.shape()));
  SEQMIX_ROUTE(ig.device(), maxplus_scan(logf, ig, m0, out_dtype));
}

}  // namespace kernels

const char* op_name(UnaryOp op) {
  switch (op) {
#define SEQMIX_CASE(Name, ...) case UnaryOp::Name: return #Name;
    SEQMIX_UNARY_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return "?";
}
const char* op_name(BinaryOp op) {
  switch (op) {
#define SEQMIX_CASE(Name, ...) case BinaryOp::Name: return #Name;
    SEQMIX_BINARY_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return "?";
}
const char* op_name(CompareOp op) {
  switch (op) {
#define SEQMIX_CASE(Name, ...) case CompareOp::Name: return #Name;
    SEQMIX_COMPARE_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return "?";
}

}  // namespace seqmix
