#include <algorithm>

#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix {

using autograd::needs_grad;
using autograd::record;
using autograd::Tensors;

namespace {
// The gradient of a reduction over `dim` brought back to the input's shape (a broadcast view).
Tensor unreduce(const Tensor& g, const Shape& in_shape, int dim, bool keepdim) {
  Tensor gk = keepdim ? g : g.unsqueeze(dim);
  return gk.expand(in_shape);
}
}  // namespace

Tensor sum(const Tensor& x) {
  Tensor out = kernels::sum_all(x);
  if (needs_grad({&x})) {
    Shape s = x.shape();
    record("sum", {x}, {out}, [s](const Tensors& g, const std::vector<bool>&) -> Tensors { return {g[0].expand(s)}; });
  }
  return out;
}

Tensor sum(const Tensor& x, int dim, bool keepdim) {
  dim = x.normalize_dim(dim);
  if (x.dim() == 0) return x.clone();  // dim 0 of a 0-d tensor: the identity (the kernels need a real dim)
  Tensor out = kernels::reduce(ReduceOp::Sum, x, dim, keepdim);
  if (needs_grad({&x})) {
    Shape s = x.shape();
    record("sum_dim", {x}, {out}, [=](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {unreduce(g[0], s, dim, keepdim)};
    });
  }
  return out;
}

Tensor sum(const Tensor& x, const std::vector<int>& dims, bool keepdim) {
  std::vector<int> ds;
  for (int d : dims) ds.push_back(x.normalize_dim(d));
  std::sort(ds.rbegin(), ds.rend());
  Tensor out = x;
  for (int d : ds) out = sum(out, d, keepdim);
  return out;
}

Tensor mean(const Tensor& x) { return sum(x) * (1.0 / double(std::max<int64_t>(x.numel(), 1))); }

Tensor mean(const Tensor& x, int dim, bool keepdim) {
  dim = x.normalize_dim(dim);
  if (x.dim() == 0) return x.clone();
  return sum(x, dim, keepdim) * (1.0 / double(x.shape()[dim]));
}

static Tensor extremum(ReduceOp op, const Tensor& x, int dim, bool keepdim) {
  dim = x.normalize_dim(dim);
  if (x.dim() == 0) return x.clone();
  Tensor out = kernels::reduce(op, x, dim, keepdim);
  if (needs_grad({&x})) {
    // gradient goes to the first extremum: the index from argmax of x (or of -x for min)
    Tensor idx = kernels::argmax(op == ReduceOp::Max ? x.detach() : kernels::unary(UnaryOp::Neg, x.detach()), dim, true);
    Shape s = x.shape();
    record(op == ReduceOp::Max ? "max" : "min", {x}, {out}, [=](const Tensors& g, const std::vector<bool>&) -> Tensors {
      Tensor gk = keepdim ? g[0] : g[0].unsqueeze(dim);
      return {kernels::scatter_add(s, dim, idx, gk.contiguous())};
    });
  }
  return out;
}
Tensor max(const Tensor& x, int dim, bool keepdim) { return extremum(ReduceOp::Max, x, dim, keepdim); }
Tensor min(const Tensor& x, int dim, bool keepdim) { return extremum(ReduceOp::Min, x, dim, keepdim); }

Tensor argmax(const Tensor& x, int dim, bool keepdim) {
  dim = x.normalize_dim(dim);
  if (x.dim() == 0) return zeros({}, DType::I64, x.device());
  return kernels::argmax(x, dim, keepdim);
}

Tensor logsumexp(const Tensor& x, int dim, bool keepdim) {
  dim = x.normalize_dim(dim);
  if (x.dim() == 0) return x.clone();
  Tensor out = kernels::reduce(ReduceOp::LogSumExp, x, dim, keepdim);
  if (needs_grad({&x})) {
    Tensor xs = x.detach(), os = out.detach();
    record("logsumexp", {x}, {out}, [=](const Tensors& g, const std::vector<bool>&) -> Tensors {
      Tensor lse = keepdim ? os : os.unsqueeze(dim);
      Tensor gk = keepdim ? g[0] : g[0].unsqueeze(dim);
      return {mul(gk, exp(sub(xs, lse)))};
    });
  }
  return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  int lead = x.dim() - int(shape.size());
  SEQMIX_CHECK(lead >= 0, "sum_to: cannot reduce ", shape_str(x.shape()), " to ", shape_str(shape));
  Tensor out = x;
  for (int i = 0; i < lead; ++i) out = sum(out, 0, false);
  for (int i = 0; i < int(shape.size()); ++i) {
    if (shape[i] == 1 && out.shape()[i] != 1) out = sum(out, i, true);
  }
  SEQMIX_CHECK(out.shape() == shape, "sum_to: cannot reduce ", shape_str(x.shape()), " to ", shape_str(shape));
  return out;
}

}  // namespace seqmix
