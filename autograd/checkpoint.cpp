#include "autograd/checkpoint.h"

#include "core/ops.h"

namespace seqmix::autograd {

Tensors checkpoint(const std::function<Tensors(const Tensors&)>& fn, const Tensors& inputs, Generator* gen) {
  if (!grad_enabled()) return fn(inputs);
  Generator before = gen ? *gen : Generator();
  Tensors outs;
  {
    NoGradGuard ng;
    Tensors detached;
    for (const Tensor& t : inputs) detached.push_back(t.defined() ? t.detach() : Tensor());
    outs = fn(detached);
  }
  Generator after = gen ? *gen : Generator();
  std::vector<bool> input_requires;
  for (const Tensor& t : inputs) input_requires.push_back(t.defined() && t.requires_grad());
  auto fn_copy = fn;
  Tensors saved_inputs;
  for (const Tensor& t : inputs) saved_inputs.push_back(t.defined() ? t.detach() : Tensor());
  // Outputs are recorded even when no input requires grad: parameters inside fn may.
  record("checkpoint", inputs, outs,
         [fn_copy, saved_inputs, input_requires, gen, before, after](const Tensors& grads, const std::vector<bool>&) -> Tensors {
           EnableGradGuard eg;
           Tensors leaves;
           for (size_t i = 0; i < saved_inputs.size(); ++i) {
             Tensor l = saved_inputs[i].defined() ? saved_inputs[i].detach() : Tensor();
             if (input_requires[i]) l.requires_grad_(true);
             leaves.push_back(l);
           }
           if (gen) *gen = before;
           Tensors re = fn_copy(leaves);
           if (gen) *gen = after;
           Tensors roots, gs;
           for (size_t i = 0; i < re.size(); ++i) {
             if (!re[i].requires_grad()) continue;
             roots.push_back(re[i]);
             gs.push_back(i < grads.size() && grads[i].defined() ? grads[i] : zeros_like(re[i]));
           }
           if (!roots.empty()) backward(roots, gs, false);
           Tensors out;
           for (size_t i = 0; i < leaves.size(); ++i) out.push_back(input_requires[i] ? leaves[i].grad() : Tensor());
           return out;
         });
  return outs;
}

}  // namespace seqmix::autograd
