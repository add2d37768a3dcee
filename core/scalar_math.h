// Scalar math usable from host and device code, for float and double.
#pragma once
#include <cmath>

#include "core/dtype.h"

namespace seqmix::sm {

#if defined(__CUDA_ARCH__)
SEQMIX_HD float exp(float x) { return ::expf(x); }
SEQMIX_HD float log(float x) { return ::logf(x); }
SEQMIX_HD float sqrt(float x) { return ::sqrtf(x); }
SEQMIX_HD float sin(float x) { return ::sinf(x); }
SEQMIX_HD float cos(float x) { return ::cosf(x); }
SEQMIX_HD float tanh(float x) { return ::tanhf(x); }
SEQMIX_HD float expm1(float x) { return ::expm1f(x); }
SEQMIX_HD float log1p(float x) { return ::log1pf(x); }
SEQMIX_HD float pow(float a, float b) { return ::powf(a, b); }
SEQMIX_HD double exp(double x) { return ::exp(x); }
SEQMIX_HD double log(double x) { return ::log(x); }
SEQMIX_HD double sqrt(double x) { return ::sqrt(x); }
SEQMIX_HD double sin(double x) { return ::sin(x); }
SEQMIX_HD double cos(double x) { return ::cos(x); }
SEQMIX_HD double tanh(double x) { return ::tanh(x); }
SEQMIX_HD double expm1(double x) { return ::expm1(x); }
SEQMIX_HD double log1p(double x) { return ::log1p(x); }
SEQMIX_HD double pow(double a, double b) { return ::pow(a, b); }
#else
using std::cos;
using std::exp;
using std::expm1;
using std::log;
using std::log1p;
using std::pow;
using std::sin;
using std::sqrt;
using std::tanh;
#endif

template <typename T>
SEQMIX_HD T sigmoid(T x) {
  // stable for large |x|
  if (x >= T(0)) return T(1) / (T(1) + exp(-x));
  T e = exp(x);
  return e / (T(1) + e);
}
template <typename T>
SEQMIX_HD T softplus(T x) {
  // log(1 + e^x) without overflow
  return x > T(20) ? x : (x < T(-20) ? exp(x) : log1p(exp(x)));
}
// GELU, tanh approximation (as in GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
template <typename T>
SEQMIX_HD T gelu_tanh(T x) {
  const T c = T(0.7978845608028654), k = T(0.044715);
  return T(0.5) * x * (T(1) + tanh(c * (x + k * x * x * x)));
}
template <typename T>
SEQMIX_HD T gelu_tanh_grad(T x) {
  const T c = T(0.7978845608028654), k = T(0.044715);
  T u = c * (x + k * x * x * x);
  T th = tanh(u);
  T du = c * (T(1) + T(3) * k * x * x);
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * du;
}

}  // namespace seqmix::sm
