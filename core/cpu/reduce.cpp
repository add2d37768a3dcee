// CPU reductions and scans over one dim, on the contiguous [outer, n, inner] decomposition.
#include <cmath>
#include <limits>

#include "core/cpu/cpu_utils.h"
#include "core/kernels.h"

namespace seqmix::cpu {

namespace {
Shape reduced_shape(const Shape& s, int dim, bool keepdim) {
  Shape out = s;
  if (keepdim) out[dim] = 1;
  else out.erase(out.begin() + dim);
  return out;
}
}  // namespace

Tensor reduce(ReduceOp op, const Tensor& x_in, int dim, bool keepdim) {
  Tensor x = x_in.contiguous();
  Around r = around(x.shape(), dim);
  SEQMIX_CHECK(r.n > 0 || op == ReduceOp::Sum || op == ReduceOp::Mean, "reduction over an empty dimension ", dim, " of ",
               shape_str(x.shape()));
  Tensor out = Tensor::empty(reduced_shape(x.shape(), dim, keepdim), x.dtype(), x.device());
  SEQMIX_DISPATCH_ALL(x.dtype(), "reduce", [&]<typename T>() {
    using A = std::conditional_t<std::is_integral_v<T>, double, acc_t<T>>;
    const T* p = static_cast<const T*>(x.data_ptr());
    T* o = static_cast<T*>(out.data_ptr());
_Pragma("omp parallel for collapse(2) if (r.outer * r.inner > 1024 && r.outer * r.inner * r.n > (1 << 15))")
    for (int64_t a = 0; a < r.outer; ++a) {
      for (int64_t c = 0; c < r.inner; ++c) {
        const T* base = p + a * r.n * r.inner + c;
        A acc = A(0);
        switch (op) {
          case ReduceOp::Sum:
          case ReduceOp::Mean:
            acc = 0;
            for (int64_t i = 0; i < r.n; ++i) acc += load_as<A>(base[i * r.inner]);
            if (op == ReduceOp::Mean) acc /= A(r.n > 0 ? r.n : 1);
            break;
          case ReduceOp::Max:
            acc = load_as<A>(base[0]);
            for (int64_t i = 1; i < r.n; ++i) acc = std::max(acc, load_as<A>(base[i * r.inner]));
            break;
          case ReduceOp::Min:
            acc = load_as<A>(base[0]);
            for (int64_t i = 1; i < r.n; ++i) acc = std::min(acc, load_as<A>(base[i * r.inner]));
            break;
          case ReduceOp::LogSumExp: {
            A m = load_as<A>(base[0]);
            for (int64_t i = 1; i < r.n; ++i) m = std::max(m, load_as<A>(base[i * r.inner]));
            A s = 0;
            if (std::isinf(double(m))) {
              acc = m;
              break;
            }
            for (int64_t i = 0; i < r.n; ++i) s += std::exp(load_as<A>(base[i * r.inner]) - m);
            acc = m + std::log(s);
            break;
          }
        }
        o[a * r.inner + c] = store_as<T>(acc);
      }
    }
  });
  return out;
}

Tensor argmax(const Tensor& x_in, int dim, bool keepdim) {
  Tensor x = x_in.contiguous();
  Around r = around(x.shape(), dim);
  SEQMIX_CHECK(r.n > 0, "argmax over an empty dimension");
  Tensor out = Tensor::empty(reduced_shape(x.shape(), dim, keepdim), DType::I64, x.device());
  int64_t* o = out.data<int64_t>();
  SEQMIX_DISPATCH_ALL(x.dtype(), "argmax", [&]<typename T>() {
    using A = std::conditional_t<std::is_integral_v<T>, double, acc_t<T>>;
    const T* p = static_cast<const T*>(x.data_ptr());
    for (int64_t a = 0; a < r.outer; ++a)
      for (int64_t c = 0; c < r.inner; ++c) {
        const T* base = p + a * r.n * r.inner + c;
        int64_t best = 0;
        A bv = load_as<A>(base[0]);
        for (int64_t i = 1; i < r.n; ++i) {
          A v = load_as<A>(base[i * r.inner]);
          if (v > bv) {
            bv = v;
            best = i;
          }
        }
        o[a * r.inner + c] = best;
      }
  });
  return out;
}

Tensor sum_all(const Tensor& x_in) {
  Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty({}, x.dtype(), x.device());
  SEQMIX_DISPATCH_ALL(x.dtype(), "sum", [&]<typename T>() {
    using A = std::conditional_t<std::is_integral_v<T>, double, std::conditional_t<std::is_same_v<T, double>, double, double>>;
    const T* p = static_cast<const T*>(x.data_ptr());
    A acc = 0;
    int64_t n = x.numel();
_Pragma("omp parallel for reduction(+ : acc) if (n > 65536)")
    for (int64_t i = 0; i < n; ++i) acc += load_as<A>(p[i]);
    *static_cast<T*>(out.data_ptr()) = store_as<T>(acc);
  });
  return out;
}

Tensor cumsum(const Tensor& x_in, int dim, bool reverse) {
  Tensor x = x_in.contiguous();
  Around r = around(x.shape(), dim);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "cumsum", [&]<typename T>() {
    using A = acc_t<T>;
    const T* p = static_cast<const T*>(x.data_ptr());
    T* o = static_cast<T*>(out.data_ptr());
    for (int64_t a = 0; a < r.outer; ++a)
      for (int64_t c = 0; c < r.inner; ++c) {
        A acc = 0;
        for (int64_t k = 0; k < r.n; ++k) {
          int64_t i = reverse ? r.n - 1 - k : k;
          int64_t at = (a * r.n + i) * r.inner + c;
          acc += load_as<A>(p[at]);
          o[at] = store_as<T>(acc);
        }
      }
  });
  return out;
}

}  // namespace seqmix::cpu
