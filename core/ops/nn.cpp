// Neural-network ops over fused kernels: softmax, cross-entropy, norms, embedding, dropout, cumsum,
// causal convolutions. Each saves only what its backward kernel reads.
#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix {

using autograd::needs_grad;
using autograd::record;
using autograd::Tensors;

namespace {
// Runs a last-dim kernel on `dim` by moving it last (a view), then moving the result back.
template <typename F>
Tensor on_last_dim(const Tensor& x, int dim, F f) {
  dim = x.normalize_dim(dim);
  if (dim == x.dim() - 1) return f(x.contiguous());
  Tensor y = f(x.transpose(dim, -1).contiguous());
  return y.transpose(dim, -1);
}

// A norm's weight or bias as its kernel reads it: [D] of the input's dtype, contiguous (undefined
// stays undefined).
Tensor norm_param(const char* op, const char* what, const Tensor& p, const Tensor& x) {
  if (!p.defined()) return Tensor();
  int64_t d = x.dim() ? x.size(-1) : 1;
  SEQMIX_CHECK(p.dim() == 1 && p.size(0) == d, op, ": ", what, " of shape ", shape_str(p.shape()),
               " does not match input of shape ", shape_str(x.shape()), " (expected [", d, "])");
  SEQMIX_CHECK(p.dtype() == x.dtype(), op, ": ", what, " is ", dtype_name(p.dtype()), " but the input is ",
               dtype_name(x.dtype()));
  return p.detach().contiguous();
}
}  // namespace

Tensor softmax(const Tensor& x, int dim) {
  Tensor y;
  {
    autograd::NoGradGuard ng;
    y = on_last_dim(x.detach(), dim, [](const Tensor& t) { return kernels::softmax(t); });
  }
  if (needs_grad({&x})) {
    Tensor ys = y.detach();
    record("softmax", {x}, {y}, [ys, dim](const Tensors& g, const std::vector<bool>&) -> Tensors {
      int d = ys.normalize_dim(dim);
      if (d == ys.dim() - 1) return {kernels::softmax_backward(g[0].contiguous(), ys.contiguous())};
      Tensor r = kernels::softmax_backward(g[0].transpose(d, -1).contiguous(), ys.transpose(d, -1).contiguous());
      return {r.transpose(d, -1)};
    });
  }
  return y;
}

Tensor log_softmax(const Tensor& x, int dim) {
  Tensor y;
  {
    autograd::NoGradGuard ng;
    y = on_last_dim(x.detach(), dim, [](const Tensor& t) { return kernels::log_softmax(t); });
  }
  if (needs_grad({&x})) {
    Tensor ys = y.detach();
    record("log_softmax", {x}, {y}, [ys, dim](const Tensors& g, const std::vector<bool>&) -> Tensors {
      int d = ys.normalize_dim(dim);
      if (d == ys.dim() - 1) return {kernels::log_softmax_backward(g[0].contiguous(), ys.contiguous())};
      Tensor r = kernels::log_softmax_backward(g[0].transpose(d, -1).contiguous(), ys.transpose(d, -1).contiguous());
      return {r.transpose(d, -1)};
    });
  }
  return y;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  int64_t v = logits.size(-1);
  SEQMIX_CHECK(targets.numel() * v == logits.numel(), "cross_entropy: logits of shape ", shape_str(logits.shape()),
               " do not match targets of shape ", shape_str(targets.shape()));
  SEQMIX_CHECK(targets.dtype() == DType::I64 || targets.dtype() == DType::I32, "cross_entropy: targets must be i64 or i32 ids, got ",
               dtype_name(targets.dtype()));
  Tensor l2 = logits.detach().reshape({-1, v}).contiguous();
  Tensor t1 = targets.detach().reshape({-1}).contiguous();
  CrossEntropyResult r = kernels::cross_entropy(l2, t1, ignore_index);
  if (needs_grad({&logits})) {
    Shape ls = logits.shape();
    Tensor lse = r.lse, count = r.count;
    record("cross_entropy", {logits}, {r.loss}, [=](const Tensors& g, const std::vector<bool>&) -> Tensors {
      Tensor gl = g[0].to(lse.dtype());  // f32, or f64 for f64 logits
      return {kernels::cross_entropy_backward(l2, t1, lse, ignore_index, gl, count).view(ls)};
    });
  }
  return r.loss;
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  Tensor xc = x.detach().contiguous();
  Tensor ws = norm_param("layer_norm", "weight", weight, x), bs = norm_param("layer_norm", "bias", bias, x);
  NormResult r = kernels::layernorm(xc, ws, bs, eps);
  if (needs_grad({&x, &weight, &bias})) {
    Tensor mean = r.mean, rstd = r.rstd;
    record("layer_norm", {x, weight, bias}, {r.y}, [=](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      NormGrads ng = kernels::layernorm_backward(g[0].contiguous(), xc, ws, mean, rstd, need[1] || need[2]);
      return {need[0] ? ng.dx : Tensor(), need[1] ? ng.dweight : Tensor(), need[2] ? ng.dbias : Tensor()};
    });
  }
  return r.y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  Tensor xc = x.detach().contiguous();
  Tensor ws = norm_param("rms_norm", "weight", weight, x);
  NormResult r = kernels::rmsnorm(xc, ws, eps);
  if (needs_grad({&x, &weight})) {
    Tensor rstd = r.rstd;
    record("rms_norm", {x, weight}, {r.y}, [=](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      NormGrads ng = kernels::rmsnorm_backward(g[0].contiguous(), xc, ws, rstd, need[1]);
      return {need[0] ? ng.dx : Tensor(), need[1] ? ng.dweight : Tensor()};
    });
  }
  return r.y;
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  SEQMIX_CHECK(weight.dim() == 2, "embedding: weight must be [num_embeddings, dim], got ", shape_str(weight.shape()));
  SEQMIX_CHECK(ids.dtype() == DType::I64 || ids.dtype() == DType::I32, "embedding: ids must be i64 or i32, got ",
               dtype_name(ids.dtype()));
  Tensor out = kernels::embedding(weight.detach().contiguous(), ids.contiguous());
  if (needs_grad({&weight})) {
    Tensor is = ids.detach().contiguous();
    int64_t n = weight.size(0), d = weight.size(1);
    record("embedding", {weight}, {out}, [is, n, d](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {kernels::embedding_backward(g[0].contiguous().view({-1, d}), is.view({-1}), n)};
    });
  }
  return out;
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  if (!training || p <= 0.0) return x;
  SEQMIX_CHECK(p < 1.0, "dropout: p must be in [0, 1), got ", p);
  uint64_t seed = gen.seed, offset = gen.take((uint64_t(x.numel()) + 3) / 4);
  Tensor y = kernels::dropout(x, p, seed, offset);
  if (needs_grad({&x})) {
    record("dropout", {x}, {y}, [p, seed, offset](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {kernels::dropout(g[0], p, seed, offset)};
    });
  }
  return y;
}

Tensor cumsum(const Tensor& x, int dim, bool reverse) {
  dim = x.normalize_dim(dim);
  if (x.dim() == 0) return x.clone();  // dim 0 of a 0-d tensor: the identity (the kernel needs a real dim)
  Tensor y = kernels::cumsum(x, dim, reverse);
  if (needs_grad({&x})) {
    record("cumsum", {x}, {y}, [dim, reverse](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {kernels::cumsum(g[0], dim, !reverse)};
    });
  }
  return y;
}

MaxplusScanResult maxplus_scan(const Tensor& logf, const Tensor& ig, const Tensor& m0, DType out_dtype) {
  // a constant: nothing is recorded, and detached inputs keep the kernels' contiguous() copies off the graph
  return kernels::maxplus_scan(logf.detach(), ig.detach(), m0.defined() ? m0.detach() : Tensor(), out_dtype);
}

Tensor conv1d_causal(const Tensor& x, const Tensor& w, const Tensor& bias) {
  SEQMIX_CHECK(x.dim() == 3 && w.dim() == 2 && x.size(2) == w.size(0), "conv1d_causal: x must be [B, T, C] and w [C, K]; got ",
               shape_str(x.shape()), " and ", shape_str(w.shape()));
  SEQMIX_CHECK(w.dtype() == x.dtype(), "conv1d_causal: w is ", dtype_name(w.dtype()), " but x is ", dtype_name(x.dtype()));
  SEQMIX_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == x.size(2) && bias.dtype() == x.dtype()),
               "conv1d_causal: bias of shape ", shape_str(bias.shape()), " (", dtype_name(bias.dtype()),
               ") does not match x of shape ", shape_str(x.shape()), " (", dtype_name(x.dtype()), ")");
  Tensor xc = x.detach().contiguous(), wc = w.detach().contiguous();
  Tensor y = kernels::conv1d_causal(xc, wc, bias.defined() ? bias.detach().contiguous() : Tensor());
  if (needs_grad({&x, &w, &bias})) {
    record("conv1d_causal", {x, w, bias}, {y}, [xc, wc](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      Tensor dx, dw, db;
      kernels::conv1d_causal_backward(g[0].contiguous(), xc, wc, need[0] ? &dx : nullptr, need[1] ? &dw : nullptr,
                                      need[2] ? &db : nullptr);
      return {dx, dw, db};
    });
  }
  return y;
}

Tensor fft_conv(const Tensor& x, const Tensor& k) {
  SEQMIX_CHECK(x.dim() == 3 && k.dim() == 2 && x.size(2) == k.size(0) && k.size(1) <= x.size(1),
               "fft_conv: x must be [B, T, C] and k [C, L] with L <= T; got ", shape_str(x.shape()), " and ", shape_str(k.shape()));
  Tensor xc = x.detach().contiguous(), kc = k.detach().contiguous();
  Tensor y = kernels::fft_conv(xc, kc);
  if (needs_grad({&x, &k})) {
    record("fft_conv", {x, k}, {y}, [xc, kc](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      Tensor dx, dk;
      kernels::fft_conv_backward(g[0].contiguous(), xc, kc, need[0] ? &dx : nullptr, need[1] ? &dk : nullptr);
      return {dx, dk};
    });
  }
  return y;
}

}  // namespace seqmix
