// Elementwise ops. Backward of every table op is one fused kernel (unary_backward / binary_backward)
// followed, for broadcast inputs, by sum_to.
#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix {

using autograd::needs_grad;
using autograd::record;
using autograd::Tensors;

namespace {
int rank(DType t) {
  switch (t) {
    case DType::F64: return 6;
    case DType::F32: return 5;
    case DType::BF16: return 4;
    case DType::F16: return 3;
    case DType::I64: return 2;
    case DType::I32: return 1;
    default: return 0;
  }
}
// Result dtype of a binary op: floating beats integral, wider beats narrower; bf16 with f16 -> f32.
DType promote(DType a, DType b) {
  if (a == b) return a;
  if ((a == DType::BF16 && b == DType::F16) || (a == DType::F16 && b == DType::BF16)) return DType::F32;
  return rank(a) >= rank(b) ? a : b;
}
}  // namespace

Tensor unary(UnaryOp op, const Tensor& x) {
  SEQMIX_CHECK(is_floating(x.dtype()), op_name(op), ": needs a floating tensor, got ", dtype_name(x.dtype()));
  Tensor y = kernels::unary(op, x);
  if (needs_grad({&x})) {
    Tensor xs = x.detach(), ys = y.detach();
    record(op_name(op), {x}, {y}, [op, xs, ys](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {kernels::unary_backward(op, g[0], xs, ys)};
    });
  }
  return y;
}

Tensor neg(const Tensor& x) { return unary(UnaryOp::Neg, x); }
Tensor abs(const Tensor& x) { return unary(UnaryOp::Abs, x); }
Tensor exp(const Tensor& x) { return unary(UnaryOp::Exp, x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::Log, x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::Sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary(UnaryOp::Rsqrt, x); }
Tensor reciprocal(const Tensor& x) { return unary(UnaryOp::Reciprocal, x); }
Tensor square(const Tensor& x) { return unary(UnaryOp::Square, x); }
Tensor sin(const Tensor& x) { return unary(UnaryOp::Sin, x); }
Tensor cos(const Tensor& x) { return unary(UnaryOp::Cos, x); }
Tensor tanh(const Tensor& x) { return unary(UnaryOp::Tanh, x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::Sigmoid, x); }
Tensor logsigmoid(const Tensor& x) { return unary(UnaryOp::LogSigmoid, x); }
Tensor relu(const Tensor& x) { return unary(UnaryOp::Relu, x); }
Tensor silu(const Tensor& x) { return unary(UnaryOp::Silu, x); }
Tensor gelu(const Tensor& x) { return unary(UnaryOp::Gelu, x); }
Tensor softplus(const Tensor& x) { return unary(UnaryOp::Softplus, x); }
Tensor elu(const Tensor& x) { return unary(UnaryOp::Elu, x); }
Tensor elu_plus_one(const Tensor& x) { return unary(UnaryOp::EluPlusOne, x); }

Tensor binary(BinaryOp op, const Tensor& a_in, const Tensor& b_in) {
  DType dt = promote(a_in.dtype(), b_in.dtype());
  Tensor a = a_in.dtype() == dt ? a_in : cast(a_in, dt);
  Tensor b = b_in.dtype() == dt ? b_in : cast(b_in, dt);
  Tensor out = kernels::binary(op, a, b);
  if (needs_grad({&a, &b})) {
    Tensor as = a.detach(), bs = b.detach();
    record(op_name(op), {a, b}, {out}, [op, as, bs](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      Tensors r(2);
      // add/sub need no kernel: the gradient is g (negated for sub's b), reduced to the input shape
      if (op == BinaryOp::Add || op == BinaryOp::Sub) {
        if (need[0]) r[0] = sum_to(g[0], as.shape());
        if (need[1]) r[1] = sum_to(op == BinaryOp::Add ? g[0] : neg(g[0]), bs.shape());
        return r;
      }
      for (int i = 0; i < 2; ++i)
        if (need[i]) r[i] = sum_to(kernels::binary_backward(op, i, g[0], as, bs), i == 0 ? as.shape() : bs.shape());
      return r;
    });
  }
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Div, a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Minimum, a, b); }
Tensor pow(const Tensor& a, const Tensor& b) { return binary(BinaryOp::Pow, a, b); }

Tensor affine(const Tensor& x, double alpha, double beta) {
  Tensor y = kernels::affine(x, alpha, beta);
  if (needs_grad({&x})) {
    record("affine", {x}, {y}, [alpha](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {alpha == 1.0 ? g[0] : kernels::affine(g[0], alpha, 0.0)};
    });
  }
  return y;
}

Tensor pow(const Tensor& x, double p) {
  Tensor y = kernels::pow_scalar(x, p);
  if (needs_grad({&x})) {
    Tensor xs = x.detach();
    record("pow", {x}, {y}, [xs, p](const Tensors& g, const std::vector<bool>&) -> Tensors {
      if (p == 0.0) return {zeros_like(g[0])};  // not 0 * x^-1, which is NaN at x = 0
      return {mul(g[0], affine(kernels::pow_scalar(xs, p - 1.0), p, 0.0))};
    });
  }
  return y;
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  Tensor y = kernels::clamp(x, lo, hi);
  if (needs_grad({&x})) {
    Tensor xs = x.detach();
    record("clamp", {x}, {y}, [xs, lo, hi](const Tensors& g, const std::vector<bool>&) -> Tensors {
      Tensor inside = kernels::where(kernels::compare(CompareOp::Ge, xs, full({}, lo, xs.dtype(), xs.device())),
                                     kernels::compare(CompareOp::Le, xs, full({}, hi, xs.dtype(), xs.device())),
                                     zeros({}, DType::U8, xs.device()));
      return {kernels::where(inside, g[0], zeros({}, g[0].dtype(), g[0].device()))};
    });
  }
  return y;
}

Tensor where(const Tensor& cond, const Tensor& a_in, const Tensor& b_in) {
  SEQMIX_CHECK(cond.dtype() == DType::U8, "where: condition must be u8, got ", dtype_name(cond.dtype()));
  DType dt = promote(a_in.dtype(), b_in.dtype());
  Tensor a = a_in.dtype() == dt ? a_in : cast(a_in, dt);
  Tensor b = b_in.dtype() == dt ? b_in : cast(b_in, dt);
  Tensor out = kernels::where(cond, a, b);
  if (needs_grad({&a, &b})) {
    Tensor cs = cond.detach();
    Shape sa = a.shape(), sb = b.shape();
    record("where", {a, b}, {out}, [cs, sa, sb](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      Tensor zero = zeros({}, g[0].dtype(), g[0].device());
      Tensors r(2);
      if (need[0]) r[0] = sum_to(kernels::where(cs, g[0], zero), sa);
      if (need[1]) r[1] = sum_to(kernels::where(cs, zero, g[0]), sb);
      return r;
    });
  }
  return out;
}

static Tensor compare_op(CompareOp op, const Tensor& a, const Tensor& b) {
  DType dt = promote(a.dtype(), b.dtype());
  return kernels::compare(op, a.dtype() == dt ? a : a.to(dt), b.dtype() == dt ? b : b.to(dt));
}
Tensor eq(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare_op(CompareOp::Ge, a, b); }

Tensor operator-(const Tensor& x) { return neg(x); }
Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double s) { return affine(a, 1.0, s); }
Tensor operator-(const Tensor& a, double s) { return affine(a, 1.0, -s); }
Tensor operator*(const Tensor& a, double s) { return affine(a, s, 0.0); }
Tensor operator/(const Tensor& a, double s) { return affine(a, 1.0 / s, 0.0); }
Tensor operator+(double s, const Tensor& a) { return affine(a, 1.0, s); }
Tensor operator-(double s, const Tensor& a) { return affine(a, -1.0, s); }
Tensor operator*(double s, const Tensor& a) { return affine(a, s, 0.0); }

Tensor cast(const Tensor& x, DType dtype) { return x.to(dtype); }

}  // namespace seqmix
