// CPU elementwise kernels: one strided loop per kind, the op chosen from the shared tables.
#include <cstring>

#include "core/cpu/cpu_utils.h"
#include "core/kernels.h"

namespace seqmix::cpu {

Shape broadcast_strides(const Tensor& t, const Shape& out_shape) {
  int lead = int(out_shape.size()) - t.dim();
  SEQMIX_CHECK(lead >= 0, "cannot broadcast ", shape_str(t.shape()), " to ", shape_str(out_shape));
  Shape st(out_shape.size(), 0);
  for (int i = 0; i < t.dim(); ++i) {
    int64_t s = t.shape()[i];
    SEQMIX_CHECK(s == out_shape[i + lead] || s == 1, "cannot broadcast ", shape_str(t.shape()), " to ", shape_str(out_shape));
    st[i + lead] = (s == 1 && out_shape[i + lead] != 1) ? 0 : t.strides()[i];
  }
  return st;
}

namespace {
bool dense(const Tensor& t, const Shape& shape) { return t.shape() == shape && t.is_contiguous(); }

// out[i] = f(in0[i]) for one floating dtype, contiguous output.
template <typename T, typename F>
void map1(const Tensor& out, const Tensor& a, F f) {
  T* o = static_cast<T*>(out.data_ptr());
  const T* pa = static_cast<const T*>(a.data_ptr());
  int64_t n = out.numel();
  if (dense(a, out.shape())) {
_Pragma("omp parallel for if (n > 65536)")
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i]);
    return;
  }
  strided_for_each<1>(out.shape(), {broadcast_strides(a, out.shape())}, [&](int64_t i, const std::array<int64_t, 1>& off) { o[i] = f(pa[off[0]]); });
}

template <typename TO, typename TA, typename TB, typename F>
void map2(const Tensor& out, const Tensor& a, const Tensor& b, F f) {
  TO* o = static_cast<TO*>(out.data_ptr());
  const TA* pa = static_cast<const TA*>(a.data_ptr());
  const TB* pb = static_cast<const TB*>(b.data_ptr());
  int64_t n = out.numel();
  if (dense(a, out.shape()) && dense(b, out.shape())) {
_Pragma("omp parallel for if (n > 65536)")
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
    return;
  }
  strided_for_each<2>(out.shape(), {broadcast_strides(a, out.shape()), broadcast_strides(b, out.shape())},
                      [&](int64_t i, const std::array<int64_t, 2>& off) { o[i] = f(pa[off[0]], pb[off[1]]); });
}

template <typename TO, typename T1, typename T2, typename T3, typename F>
void map3(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& c, F f) {
  TO* o = static_cast<TO*>(out.data_ptr());
  const T1* pa = static_cast<const T1*>(a.data_ptr());
  const T2* pb = static_cast<const T2*>(b.data_ptr());
  const T3* pc = static_cast<const T3*>(c.data_ptr());
  int64_t n = out.numel();
  if (dense(a, out.shape()) && dense(b, out.shape()) && dense(c, out.shape())) {
_Pragma("omp parallel for if (n > 65536)")
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i], pc[i]);
    return;
  }
  strided_for_each<3>(out.shape(), {broadcast_strides(a, out.shape()), broadcast_strides(b, out.shape()), broadcast_strides(c, out.shape())},
                      [&](int64_t i, const std::array<int64_t, 3>& off) { o[i] = f(pa[off[0]], pb[off[1]], pc[off[2]]); });
}

void check_float(const Tensor& t, const char* op) {
  SEQMIX_CHECK(is_floating(t.dtype()), op, ": needs a floating tensor, got ", dtype_name(t.dtype()));
}
}  // namespace

void fill(const Tensor& out, double value) {
  SEQMIX_DISPATCH_ALL(out.dtype(), "fill", [&]<typename T>() {
    T v = store_as<T>(value);
    T* o = static_cast<T*>(out.data_ptr());
    if (out.is_contiguous()) {
      int64_t n = out.numel();
      for (int64_t i = 0; i < n; ++i) o[i] = v;
      return;
    }
    strided_for_each<1>(out.shape(), {out.strides()}, [&](int64_t, const std::array<int64_t, 1>& off) { o[off[0]] = v; });
  });
}

void copy(const Tensor& dst, const Tensor& src) {
  Shape src_strides = broadcast_strides(src, dst.shape());
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && dense(src, dst.shape())) {
    std::memcpy(dst.data_ptr(), src.data_ptr(), dst.nbytes());
    return;
  }
  SEQMIX_DISPATCH_ALL(dst.dtype(), "copy", [&]<typename TD>() {
    SEQMIX_DISPATCH_ALL(src.dtype(), "copy", [&]<typename TS>() {
      TD* d = static_cast<TD*>(dst.data_ptr());
      const TS* s = static_cast<const TS*>(src.data_ptr());
      auto conv = [](TS v) {
        if constexpr (std::is_same_v<TS, TD>) return v;
        else if constexpr (std::is_integral_v<TS> && std::is_integral_v<TD>) return static_cast<TD>(v);
        else return store_as<TD>(load_as<double>(v));
      };
      strided_for_each<2>(dst.shape(), {dst.strides(), src_strides},
                          [&](int64_t, const std::array<int64_t, 2>& off) { d[off[0]] = conv(s[off[1]]); });
    });
  });
}

Tensor unary(UnaryOp op, const Tensor& x) {
  check_float(x, op_name(op));
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_DISPATCH_FLOAT(x.dtype(), op_name(op), [&]<typename T>() {
    using A = acc_t<T>;
    map1<T>(out, x, [op](T v) { return store_as<T>(unary_forward<A>(op, load_as<A>(v))); });
  });
  return out;
}

Tensor unary_backward(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_CHECK(g.dtype() == x.dtype() && y.dtype() == x.dtype(), op_name(op), " backward: dtypes differ");
  SEQMIX_DISPATCH_FLOAT(x.dtype(), op_name(op), [&]<typename T>() {
    using A = acc_t<T>;
    map3<T, T, T, T>(out, g, x, y, [op](T gv, T xv, T yv) {
      return store_as<T>(load_as<A>(gv) * unary_derivative<A>(op, load_as<A>(xv), load_as<A>(yv)));
    });
  });
  return out;
}

Tensor affine(const Tensor& x, double alpha, double beta) {
  check_float(x, "affine");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "affine", [&]<typename T>() {
    using A = acc_t<T>;
    A a = A(alpha), b = A(beta);
    map1<T>(out, x, [a, b](T v) { return store_as<T>(a * load_as<A>(v) + b); });
  });
  return out;
}

Tensor pow_scalar(const Tensor& x, double p) {
  check_float(x, "pow");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "pow", [&]<typename T>() {
    using A = acc_t<T>;
    A pp = A(p);
    map1<T>(out, x, [pp](T v) { return store_as<T>(sm::pow(load_as<A>(v), pp)); });
  });
  return out;
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  check_float(x, "clamp");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "clamp", [&]<typename T>() {
    using A = acc_t<T>;
    A l = A(lo), h = A(hi);
    map1<T>(out, x, [l, h](T v) {
      A a = load_as<A>(v);
      return store_as<T>(a < l ? l : (a > h ? h : a));
    });
  });
  return out;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(a.dtype() == b.dtype(), op_name(op), ": dtypes differ (", dtype_name(a.dtype()), ", ", dtype_name(b.dtype()), ")");
  Shape shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  SEQMIX_DISPATCH_ALL(a.dtype(), op_name(op), [&]<typename T>() {
    if constexpr (std::is_integral_v<T>) {
      map2<T, T, T>(out, a, b, [op](T x, T y) { return binary_forward<T>(op, x, y); });
    } else {
      using A = acc_t<T>;
      map2<T, T, T>(out, a, b, [op](T x, T y) { return store_as<T>(binary_forward<A>(op, load_as<A>(x), load_as<A>(y))); });
    }
  });
  return out;
}

Tensor binary_backward(BinaryOp op, int which, const Tensor& g, const Tensor& a, const Tensor& b) {
  Tensor out = Tensor::empty(g.shape(), g.dtype(), g.device());
  SEQMIX_DISPATCH_FLOAT(g.dtype(), op_name(op), [&]<typename T>() {
    using A = acc_t<T>;
    map3<T, T, T, T>(out, g, a, b, [op, which](T gv, T av, T bv) {
      return store_as<T>(load_as<A>(gv) * binary_derivative<A>(op, which, load_as<A>(av), load_as<A>(bv)));
    });
  });
  return out;
}

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(a.dtype() == b.dtype(), op_name(op), ": dtypes differ");
  Shape shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, DType::U8, a.device());
  SEQMIX_DISPATCH_ALL(a.dtype(), op_name(op), [&]<typename T>() {
    using A = std::conditional_t<std::is_integral_v<T>, T, acc_t<T>>;
    map2<uint8_t, T, T>(out, a, b, [op](T x, T y) { return uint8_t(compare<A>(op, load_as<A>(x), load_as<A>(y)) ? 1 : 0); });
  });
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(a.dtype() == b.dtype(), "where: dtypes differ");
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape()), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  SEQMIX_DISPATCH_ALL(a.dtype(), "where", [&]<typename T>() {
    map3<T, uint8_t, T, T>(out, cond, a, b, [](uint8_t c, T x, T y) { return c ? x : y; });
  });
  return out;
}

}  // namespace seqmix::cpu
