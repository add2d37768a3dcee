#include "autograd/function.h"

namespace seqmix::autograd {

void CustomFunction::save_for_backward(const Tensors& ts) {
  saved_.clear();
  for (const Tensor& t : ts) saved_.push_back(t.defined() ? t.detach() : Tensor());
}

const Tensors& CustomFunction::saved() const {
  SEQMIX_CHECK(!released_, "autograd: ", name(), " was already run backward and its saved tensors freed (use retain_graph=true)");
  return saved_;
}

Tensors CustomFunction::apply(Tensors&& grads) {
  Tensors out = backward(grads);
  out.resize(next_edges.size());
  return out;
}

}  // namespace seqmix::autograd
