// CPU joining and indexing kernels.
#include <cstring>

#include "core/cpu/cpu_utils.h"
#include "core/kernels.h"

namespace seqmix::cpu {

namespace {
int64_t index_at(const Tensor& idx, int64_t i) {
  return idx.dtype() == DType::I64 ? idx.data<int64_t>()[i] : int64_t(idx.data<int32_t>()[i]);
}
int64_t checked(int64_t v, int64_t n, const char* op, int dim) {
  int64_t i = v < 0 ? v + n : v;
  SEQMIX_CHECK(i >= 0 && i < n, op, ": index ", v, " is out of range for dimension ", dim, " of size ", n);
  return i;
}
}  // namespace

Tensor cat(const std::vector<Tensor>& inputs, int dim) {
  Shape shape = inputs[0].shape();
  int64_t total = 0;
  for (const Tensor& t : inputs) total += t.shape()[dim];
  shape[dim] = total;
  Tensor out = Tensor::empty(shape, inputs[0].dtype(), inputs[0].device());
  int64_t start = 0;
  for (const Tensor& t : inputs) {
    int64_t n = t.shape()[dim];
    Shape st = out.strides();
    copy(make_view(out, t.shape(), st, start * st[dim]), t);
    start += n;
  }
  return out;
}

Tensor index_select(const Tensor& x_in, int dim, const Tensor& index_in) {
  Tensor x = x_in.contiguous(), index = index_in.contiguous();
  Around r = around(x.shape(), dim);
  int64_t k = index.numel();
  Shape shape = x.shape();
  shape[dim] = k;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  size_t es = x.element_size(), row = size_t(r.inner) * es;
  const char* px = static_cast<const char*>(x.data_ptr());
  char* po = static_cast<char*>(out.data_ptr());
  for (int64_t a = 0; a < r.outer; ++a)
    for (int64_t j = 0; j < k; ++j) {
      int64_t i = checked(index_at(index, j), r.n, "index_select", dim);
      std::memcpy(po + (a * k + j) * row, px + (a * r.n + i) * row, row);
    }
  return out;
}

Tensor index_add(const Shape& shape, int dim, const Tensor& index_in, const Tensor& src_in) {
  Tensor src = src_in.contiguous(), index = index_in.contiguous();
  Around r = around(shape, dim);
  int64_t k = index.numel();
  Tensor out = Tensor::empty(shape, src.dtype(), src.device());
  SEQMIX_DISPATCH_FLOAT(src.dtype(), "index_add", [&]<typename T>() {
    using A = acc_t<T>;
    std::vector<A> acc(size_t(shape_numel(shape)), A(0));
    const T* ps = static_cast<const T*>(src.data_ptr());
    for (int64_t a = 0; a < r.outer; ++a)
      for (int64_t j = 0; j < k; ++j) {
        int64_t i = checked(index_at(index, j), r.n, "index_add", dim);
        for (int64_t c = 0; c < r.inner; ++c) acc[(a * r.n + i) * r.inner + c] += load_as<A>(ps[(a * k + j) * r.inner + c]);
      }
    T* o = static_cast<T*>(out.data_ptr());
    for (size_t i = 0; i < acc.size(); ++i) o[i] = store_as<T>(acc[i]);
  });
  return out;
}

Tensor gather(const Tensor& x_in, int dim, const Tensor& index_in) {
  Tensor x = x_in.contiguous(), index = index_in.contiguous();
  Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
  Shape xs = contiguous_strides(x.shape());
  int nd = x.dim();
  for (int d = 0; d < nd; ++d)
    if (d != dim)
      SEQMIX_CHECK(index.shape()[d] <= x.shape()[d], "gather: index shape ", shape_str(index.shape()), " exceeds input shape ",
                   shape_str(x.shape()), " outside dimension ", dim);
  size_t es = x.element_size();
  const char* px = static_cast<const char*>(x.data_ptr());
  char* po = static_cast<char*>(out.data_ptr());
  Shape idx(nd, 0);
  int64_t n = index.numel();
  for (int64_t i = 0; i < n; ++i) {
    int64_t off = 0;
    for (int d = 0; d < nd; ++d)
      off += (d == dim ? checked(index_at(index, i), x.shape()[dim], "gather", dim) : idx[d]) * xs[d];
    std::memcpy(po + i * es, px + off * es, es);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < index.shape()[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

Tensor scatter_add(const Shape& shape, int dim, const Tensor& index_in, const Tensor& src_in) {
  Tensor src = src_in.contiguous(), index = index_in.contiguous();
  SEQMIX_CHECK(src.shape() == index.shape(), "scatter_add: src shape ", shape_str(src.shape()), " differs from index shape ",
               shape_str(index.shape()));
  Tensor out = Tensor::empty(shape, src.dtype(), src.device());
  Shape os = contiguous_strides(shape);
  int nd = int(shape.size());
  SEQMIX_DISPATCH_FLOAT(src.dtype(), "scatter_add", [&]<typename T>() {
    using A = acc_t<T>;
    std::vector<A> acc(size_t(shape_numel(shape)), A(0));
    const T* ps = static_cast<const T*>(src.data_ptr());
    Shape idx(nd, 0);
    int64_t n = index.numel();
    for (int64_t i = 0; i < n; ++i) {
      int64_t off = 0;
      for (int d = 0; d < nd; ++d) off += (d == dim ? checked(index_at(index, i), shape[dim], "scatter_add", dim) : idx[d]) * os[d];
      acc[off] += load_as<A>(ps[i]);
      for (int d = nd - 1; d >= 0; --d) {
        if (++idx[d] < index.shape()[d]) break;
        idx[d] = 0;
      }
    }
    T* o = static_cast<T*>(out.data_ptr());
    for (size_t i = 0; i < acc.size(); ++i) o[i] = store_as<T>(acc[i]);
  });
  return out;
}

}  // namespace seqmix::cpu
