// The output gradients of a fused recurrence kernel's backward (linear_recurrence.cu, delta_rule_cuda.cu,
// generalized_delta_cuda.cu), in the form their kernels read.
#pragma once
#include "core/ops.h"
#include "core/tensor.h"

namespace seqmix::mixers {

// dout: zeros where no gradient flowed to the output, else detached, contiguous, in v's dtype (v's shape and
// device); dfinal (the final state's gradient), if defined: detached, contiguous f32. Call under NoGradGuard.
inline void kernel_output_grads(Tensor& dout, Tensor& dfinal, const Tensor& v) {
  if (!dout.defined()) dout = zeros(v.shape(), v.dtype(), v.device());
  dout = dout.detach();
  if (dout.dtype() != v.dtype()) dout = dout.to(v.dtype());
  dout = dout.contiguous();
  if (dfinal.defined()) dfinal = dfinal.detach().to(DType::F32).contiguous();
}

}  // namespace seqmix::mixers
