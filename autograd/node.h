// Autograd graph: every differentiable op records a Node whose backward maps the gradients of its
// outputs to the gradients of its inputs. Leaves (parameters) end in an AccumulateGrad node.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace seqmix::autograd {

using Tensors = std::vector<Tensor>;

struct Node;
struct Edge {
  std::shared_ptr<Node> node;  // null: this input needs no gradient
  int input_nr = 0;            // which output of `node` the input was
};

struct Node {
  virtual ~Node() = default;
  // grads: one per output of the forward op (undefined where no gradient flowed).
  // Returns one gradient per forward input (undefined where none is needed).
  virtual Tensors apply(Tensors&& grads) = 0;
  // Frees saved tensors once backward has used them (unless the graph is retained).
  virtual void release_saved() {}
  virtual std::string name() const = 0;
  bool needs_input_grad(size_t i) const { return i < next_edges.size() && next_edges[i].node != nullptr; }

  std::vector<Edge> next_edges;  // one per forward input
  int num_outputs = 1;
  uint64_t sequence_nr = 0;  // creation order: the engine runs later nodes first
};

// The backward of one recorded op: grads of the outputs -> grads of the inputs. `needs[i]` tells
// whether input i wants a gradient (skip the work when not).
using BackwardFn = std::function<Tensors(const Tensors& grads, const std::vector<bool>& needs)>;

struct FunctionNode : Node {
  FunctionNode(std::string name, BackwardFn fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  Tensors apply(Tensors&& grads) override;
  void release_saved() override { fn_ = nullptr; }
  std::string name() const override { return name_; }

 private:
  std::string name_;
  BackwardFn fn_;
};

// Sink of a leaf: adds the incoming gradient to leaf.grad and calls the leaf's grad-ready hooks.
struct AccumulateGrad : Node {
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  Tensors apply(Tensors&& grads) override;
  std::string name() const override { return "AccumulateGrad"; }
  DType leaf_dtype() const { return leaf_->dtype; }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

// ---- grad mode ----
bool grad_enabled();
void set_grad_enabled(bool on);
struct NoGradGuard {
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};
struct EnableGradGuard {
  EnableGradGuard() : prev_(grad_enabled()) { set_grad_enabled(true); }
  ~EnableGradGuard() { set_grad_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// ---- recording (used by ops) ----
// True when grad mode is on and any input requires a gradient.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const Tensors& inputs);
// Makes `outputs` non-leaf results of a new FunctionNode with edges to `inputs`. Call only when
// needs_grad(inputs). Capture in `fn` only what backward needs (detached tensors: see Tensor::detach).
void record(const char* name, const Tensors& inputs, const Tensors& outputs, BackwardFn fn);
// Custom functions (fused kernels with a hand-written backward) record a Node of their own type.
void record_node(std::shared_ptr<Node> node, const Tensors& inputs, const Tensors& outputs);
// The edge a tensor contributes as an input (its grad_fn, or its leaf's AccumulateGrad).
Edge edge_of(const Tensor& t);

// ---- backward ----
// Runs the graph from `roots` with the given output gradients (undefined = ones for a scalar root).
// Iterative (no recursion), so graphs of any depth run. Saved tensors are freed unless retain_graph.
void backward(const Tensors& roots, const Tensors& grads, bool retain_graph = false);

// Gradients of `outputs` w.r.t. `inputs` without touching .grad (used by recompute and gradcheck).
Tensors grad(const Tensors& outputs, const Tensors& inputs, const Tensors& grad_outputs,
             bool retain_graph = false);

}  // namespace seqmix::autograd
