// Finite-difference gradient check in f64 on the CPU: compares autograd's gradient of
// L = sum(f(inputs) * R) (R a fixed random tensor) with central differences, element by element.
#pragma once
#include <functional>
#include <string>

#include "autograd/node.h"

namespace seqmix::autograd {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-6;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-4;
  uint64_t seed = 1234;  // for the projection R
};

struct GradcheckResult {
  bool ok = true;
  std::string message;  // the worst mismatch: input, element index, analytic, numeric
};

// `inputs`: f64 CPU tensors; those with requires_grad() are checked, the others held fixed.
// `f` may return several outputs; each is projected and summed.
GradcheckResult gradcheck(const std::function<Tensors(const Tensors&)>& f, const Tensors& inputs,
                          const GradcheckOptions& opt = {});
GradcheckResult gradcheck(const std::function<Tensor(const Tensors&)>& f, const Tensors& inputs,
                          const GradcheckOptions& opt = {});

}  // namespace seqmix::autograd
