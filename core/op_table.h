// The elementwise op tables: each op declared once, with its scalar forward and derivative. The CPU
// kernels, the CUDA kernels and autograd all expand these same tables (see core/kernels.h).
// Formulas are written for a compute type T (float, or double on the CPU); helpers in core/scalar_math.h.
#pragma once
#include "core/scalar_math.h"

// X(Name, forward f(x), derivative df/dx given x and y = f(x))
#define SEQMIX_UNARY_OPS(X)                                                              \
  X(Neg, -x, T(-1))                                                                      \
  X(Abs, (x < T(0) ? -x : x), (x < T(0) ? T(-1) : (x > T(0) ? T(1) : T(0))))             \
  X(Exp, sm::exp(x), y)                                                                  \
  X(Log, sm::log(x), T(1) / x)                                                           \
  X(Sqrt, sm::sqrt(x), T(0.5) / y)                                                       \
  X(Rsqrt, T(1) / sm::sqrt(x), T(-0.5) * y * y * y)                                      \
  X(Reciprocal, T(1) / x, -y * y)                                                        \
  X(Square, x * x, T(2) * x)                                                             \
  X(Sin, sm::sin(x), sm::cos(x))                                                         \
  X(Cos, sm::cos(x), -sm::sin(x))                                                        \
  X(Tanh, sm::tanh(x), T(1) - y * y)                                                     \
  X(Sigmoid, sm::sigmoid(x), y * (T(1) - y))                                             \
  X(LogSigmoid, -sm::softplus(-x), sm::sigmoid(-x))                                      \
  X(Relu, (x > T(0) ? x : T(0)), (x > T(0) ? T(1) : T(0)))                               \
  X(Silu, x * sm::sigmoid(x), sm::sigmoid(x) * (T(1) + x * (T(1) - sm::sigmoid(x))))     \
  X(Gelu, sm::gelu_tanh(x), sm::gelu_tanh_grad(x))                                       \
  X(Softplus, sm::softplus(x), sm::sigmoid(x))                                           \
  X(Elu, (x > T(0) ? x : sm::expm1(x)), (x > T(0) ? T(1) : y + T(1)))                    \
  X(EluPlusOne, (x > T(0) ? x + T(1) : sm::exp(x)), (x > T(0) ? T(1) : y))

// X(Name, forward f(a, b), df/da, df/db) — out = f(a, b) with broadcasting.
#define SEQMIX_BINARY_OPS(X)                                          \
  X(Add, a + b, T(1), T(1))                                           \
  X(Sub, a - b, T(1), T(-1))                                          \
  X(Mul, a * b, b, a)                                                 \
  X(Div, a / b, T(1) / b, -a / (b * b))                               \
  X(Maximum, (a >= b ? a : b), (a >= b ? T(1) : T(0)), (a >= b ? T(0) : T(1))) \
  X(Minimum, (a <= b ? a : b), (a <= b ? T(1) : T(0)), (a <= b ? T(0) : T(1))) \
  X(Pow, sm::pow(a, b), b * sm::pow(a, b - T(1)), sm::pow(a, b) * sm::log(a))

// X(Name, predicate(a, b)) — comparisons produce u8 (0 or 1) and have no gradient.
#define SEQMIX_COMPARE_OPS(X) \
  X(Eq, a == b)               \
  X(Ne, a != b)               \
  X(Lt, a < b)                \
  X(Le, a <= b)               \
  X(Gt, a > b)                \
  X(Ge, a >= b)

namespace seqmix {
#define SEQMIX_ENUM_ENTRY(Name, ...) Name,
enum class UnaryOp : uint8_t { SEQMIX_UNARY_OPS(SEQMIX_ENUM_ENTRY) };
enum class BinaryOp : uint8_t { SEQMIX_BINARY_OPS(SEQMIX_ENUM_ENTRY) };
enum class CompareOp : uint8_t { SEQMIX_COMPARE_OPS(SEQMIX_ENUM_ENTRY) };
#undef SEQMIX_ENUM_ENTRY
const char* op_name(UnaryOp op);
const char* op_name(BinaryOp op);
const char* op_name(CompareOp op);

// Scalar evaluation of the tables, shared by both backends.
template <typename T>
SEQMIX_HD T unary_forward(UnaryOp op, T x) {
  switch (op) {
#define SEQMIX_CASE(Name, F, D) case UnaryOp::Name: return (F);
    SEQMIX_UNARY_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return x;
}
template <typename T>
SEQMIX_HD T unary_derivative(UnaryOp op, T x, T y) {
  switch (op) {
#define SEQMIX_CASE(Name, F, D) case UnaryOp::Name: return (D);
    SEQMIX_UNARY_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return y;
}
template <typename T>
SEQMIX_HD T binary_forward(BinaryOp op, T a, T b) {
  switch (op) {
#define SEQMIX_CASE(Name, F, DA, DB) case BinaryOp::Name: return (F);
    SEQMIX_BINARY_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return a;
}
// which = 0: df/da, which = 1: df/db
template <typename T>
SEQMIX_HD T binary_derivative(BinaryOp op, int which, T a, T b) {
  switch (op) {
#define SEQMIX_CASE(Name, F, DA, DB) case BinaryOp::Name: return which == 0 ? T(DA) : T(DB);
    SEQMIX_BINARY_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return a;
}
template <typename T>
SEQMIX_HD bool compare(CompareOp op, T a, T b) {
  switch (op) {
#define SEQMIX_CASE(Name, P) case CompareOp::Name: return (P);
    SEQMIX_COMPARE_OPS(SEQMIX_CASE)
#undef SEQMIX_CASE
  }
  return false;
}

}  // namespace seqmix
