// Custom functions: a fused kernel with a hand-written backward. Subclass, compute the forward
// yourself (under no_grad), then attach the node with CustomFunction::attach.
//
//   struct MyOp : autograd::CustomFunction {
//     std::string name() const override { return "my_op"; }
//     Tensors backward(const Tensors& grads) override { auto& s = saved(); ... }
//   };
//   Tensor y = my_kernel(x);
//   if (autograd::needs_grad({x})) {
//     auto fn = std::make_shared<MyOp>();
//     fn->save_for_backward({x});
//     autograd::CustomFunction::attach(fn, {x}, {y});
//   }
#pragma once
#include "autograd/node.h"

namespace seqmix::autograd {

struct CustomFunction : Node {
  // grads: one per output (undefined where none flowed); return one gradient per input.
  virtual Tensors backward(const Tensors& grads) = 0;

  // Keeps detached handles (no autograd history, so no reference cycles through the graph).
  void save_for_backward(const Tensors& ts);
  const Tensors& saved() const;
  void release_saved() override {
    saved_.clear();
    released_ = true;
  }
  Tensors apply(Tensors&& grads) override;

  static void attach(const std::shared_ptr<CustomFunction>& fn, const Tensors& inputs, const Tensors& outputs) {
    record_node(fn, inputs, outputs);
  }

 private:
  Tensors saved_;
  bool released_ = false;
};

}  // namespace seqmix::autograd
