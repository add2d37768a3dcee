// Joining, splitting and indexing.
#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix {

using autograd::needs_grad;
using autograd::record;
using autograd::Tensors;

Tensor cat(const std::vector<Tensor>& xs, int dim) {
  SEQMIX_CHECK(!xs.empty(), "cat: no tensors given");
  dim = xs[0].normalize_dim(dim);
  std::vector<Tensor> ds;
  std::vector<int64_t> sizes;
  for (const Tensor& t : xs) {
    SEQMIX_CHECK(t.dim() == xs[0].dim() && t.dtype() == xs[0].dtype(), "cat: tensor of shape ", shape_str(t.shape()), " (",
                 dtype_name(t.dtype()), ") does not match ", shape_str(xs[0].shape()), " (", dtype_name(xs[0].dtype()), ")");
    for (int d = 0; d < t.dim(); ++d)
      SEQMIX_CHECK(d == dim || t.shape()[d] == xs[0].shape()[d], "cat: shapes ", shape_str(xs[0].shape()), " and ",
                   shape_str(t.shape()), " differ outside dimension ", dim);
    ds.push_back(t.detach());
    sizes.push_back(t.shape()[dim]);
  }
  Tensor out = kernels::cat(ds, dim);
  if (needs_grad(xs)) {
    record("cat", xs, {out}, [sizes, dim](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      Tensors r(sizes.size());
      int64_t start = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (need[i]) r[i] = g[0].narrow(dim, start, sizes[i]);
        start += sizes[i];
      }
      return r;
    });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& xs, int dim) {
  SEQMIX_CHECK(!xs.empty(), "stack: no tensors given");
  int n = xs[0].dim();
  if (dim < 0) dim += n + 1;
  std::vector<Tensor> us;
  for (const Tensor& t : xs) us.push_back(t.unsqueeze(dim));
  return cat(us, dim);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int dim) {
  dim = x.normalize_dim(dim);
  int64_t total = 0;
  for (int64_t s : sizes) {
    SEQMIX_CHECK(s >= 0, "split: size ", s, " is negative");
    total += s;
  }
  SEQMIX_CHECK(total == x.shape()[dim], "split: sizes add up to ", total, " but dimension ", dim, " has size ", x.shape()[dim]);
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(dim, start, s));
    start += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int chunks, int dim) {
  SEQMIX_CHECK(chunks > 0, "chunk: the number of chunks must be positive, got ", chunks);
  dim = x.normalize_dim(dim);
  int64_t n = x.shape()[dim];
  int64_t each = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t s = 0; s < n; s += each) sizes.push_back(std::min(each, n - s));
  return split(x, sizes, dim);
}

Tensor index_select(const Tensor& x, int dim, const Tensor& index) {
  dim = x.normalize_dim(dim);
  SEQMIX_CHECK(index.dim() == 1, "index_select: index must be 1-d, got ", shape_str(index.shape()));
  SEQMIX_CHECK(index.dtype() == DType::I64 || index.dtype() == DType::I32, "index_select: index must be i64 or i32, got ",
               dtype_name(index.dtype()));
  Tensor out = kernels::index_select(x.detach(), dim, index);
  if (needs_grad({&x})) {
    Shape s = x.shape();
    Tensor is = index.detach();
    record("index_select", {x}, {out}, [s, dim, is](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {kernels::index_add(s, dim, is, g[0].contiguous())};
    });
  }
  return out;
}

Tensor gather(const Tensor& x, int dim, const Tensor& index) {
  dim = x.normalize_dim(dim);
  SEQMIX_CHECK(index.dim() == x.dim(), "gather: index has ", index.dim(), " dims but input has ", x.dim());
  SEQMIX_CHECK(index.dtype() == DType::I64 || index.dtype() == DType::I32, "gather: index must be i64 or i32, got ",
               dtype_name(index.dtype()));
  Tensor out = kernels::gather(x.detach(), dim, index);
  if (needs_grad({&x})) {
    Shape s = x.shape();
    Tensor is = index.detach();
    record("gather", {x}, {out}, [s, dim, is](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {kernels::scatter_add(s, dim, is, g[0].contiguous())};
    });
  }
  return out;
}

}  // namespace seqmix
