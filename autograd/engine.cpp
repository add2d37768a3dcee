// The backward engine: dependency counts from an iterative DFS, then nodes run in a ready queue
// ordered by creation (latest first) so leaves' gradients become ready roughly in reverse layer
// order, which lets data-parallel all-reduce start early.
#include <atomic>
#include <queue>
#include <unordered_map>

#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix::autograd {

namespace {
thread_local bool t_grad_enabled = true;
std::atomic<uint64_t> g_sequence{0};

// Sums the gradients reaching one input of `node`. A leaf's may arrive in a narrower dtype than the leaf's (a
// cast passes its gradient back unconverted, see Tensor::to): the sum is formed in the leaf's dtype.
Tensor accumulate(const Node* node, const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  SEQMIX_CHECK(a.shape() == b.shape(), "autograd: gradients of one tensor have different shapes ",
               shape_str(a.shape()), " and ", shape_str(b.shape()));
  auto* acc = dynamic_cast<const AccumulateGrad*>(node);
  const DType dt = acc ? acc->leaf_dtype() : a.dtype();
  return add(a.dtype() == dt ? a : a.to(dt), b.dtype() == dt ? b : b.to(dt));
}

struct Capture {
  Node* node;
  int input_nr;
};

// Runs the graph. With captures, the gradients reaching (node, input_nr) are returned instead of
// running those nodes.
Tensors run(const Tensors& roots, const Tensors& grads, bool retain_graph, const std::vector<Capture>& captures) {
  SEQMIX_CHECK(roots.size() == grads.size(), "backward: ", roots.size(), " roots but ", grads.size(), " gradients");
  NoGradGuard no_grad;

  // Root edges and their initial gradients.
  std::unordered_map<Node*, Tensors> buffers;
  std::unordered_map<Node*, int> deps;
  std::vector<std::shared_ptr<Node>> root_nodes;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    SEQMIX_CHECK(r.requires_grad(), "backward: tensor ", i, " does not require grad and has no grad_fn");
    Tensor g = grads[i];
    if (!g.defined()) {
      SEQMIX_CHECK(r.numel() == 1, "backward: a gradient must be given for a non-scalar output of shape ",
                   shape_str(r.shape()));
      g = ones(r.shape(), r.dtype(), r.device());
    }
    SEQMIX_CHECK(g.shape() == r.shape(), "backward: gradient shape ", shape_str(g.shape()),
                 " does not match output shape ", shape_str(r.shape()));
    Edge e = edge_of(r);
    auto& buf = buffers[e.node.get()];
    buf.resize(e.node->num_outputs);
    buf[e.input_nr] = accumulate(e.node.get(), buf[e.input_nr], g);
    root_nodes.push_back(e.node);
  }

  // Dependency counts over the reachable graph (iterative DFS: deep graphs don't overflow the stack).
  std::unordered_map<Node*, bool> seen;
  std::vector<Node*> stack;
  for (auto& n : root_nodes) {
    if (!seen[n.get()]) {
      seen[n.get()] = true;
      stack.push_back(n.get());
    }
  }
  std::unordered_map<Node*, bool> is_capture;
  for (auto& c : captures) is_capture[c.node] = true;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (is_capture.count(n)) continue;  // not run, so its inputs are not reached through it
    for (auto& e : n->next_edges) {
      if (!e.node) continue;
      deps[e.node.get()]++;
      if (!seen[e.node.get()]) {
        seen[e.node.get()] = true;
        stack.push_back(e.node.get());
      }
    }
  }

  auto later_first = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) {
    return a->sequence_nr < b->sequence_nr;
  };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(later_first)> ready(later_first);
  {
    std::unordered_map<Node*, bool> queued;
    for (auto& n : root_nodes)
      if (deps[n.get()] == 0 && !queued[n.get()]) {
        queued[n.get()] = true;
        ready.push(n);
      }
  }

  Tensors captured(captures.size());
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    Tensors in = std::move(buffers[node.get()]);
    buffers.erase(node.get());
    in.resize(node->num_outputs);
    if (is_capture.count(node.get())) {
      for (size_t c = 0; c < captures.size(); ++c)
        if (captures[c].node == node.get()) {
          Tensor g = in[captures[c].input_nr];
          auto* acc = dynamic_cast<const AccumulateGrad*>(node.get());  // a leaf's may come in a cast's dtype
          captured[c] = acc && g.defined() && g.dtype() != acc->leaf_dtype() ? g.to(acc->leaf_dtype()) : g;
        }
      continue;
    }
    Tensors out = node->apply(std::move(in));
    if (!retain_graph) node->release_saved();
    SEQMIX_CHECK(out.size() == node->next_edges.size(), "autograd: ", node->name(), " returned ", out.size(),
                 " gradients for ", node->next_edges.size(), " inputs");
    for (size_t i = 0; i < out.size(); ++i) {
      const Edge& e = node->next_edges[i];
      if (!e.node) continue;
      auto& buf = buffers[e.node.get()];
      buf.resize(e.node->num_outputs);
      if (out[i].defined()) buf[e.input_nr] = accumulate(e.node.get(), buf[e.input_nr], out[i]);
      if (--deps[e.node.get()] == 0) ready.push(e.node);
    }
  }
  return captured;
}
}  // namespace

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool on) { t_grad_enabled = on; }

Tensors FunctionNode::apply(Tensors&& grads) {
  SEQMIX_CHECK(fn_ != nullptr, "autograd: backward through ", name_,
               " a second time; its saved tensors were freed (pass retain_graph=true to the first backward)");
  std::vector<bool> needs(next_edges.size());
  for (size_t i = 0; i < needs.size(); ++i) needs[i] = next_edges[i].node != nullptr;
  return fn_(grads, needs);
}

Tensors AccumulateGrad::apply(Tensors&& grads) {
  Tensor g = grads.empty() ? Tensor() : grads[0];
  if (!g.defined()) return {};
  Tensor leaf(leaf_);
  AutogradMeta& meta = leaf.autograd_meta();
  if (g.device() != leaf.device()) g = g.to(leaf.device());
  const bool has_grad = meta.grad && meta.grad->defined();
  if (meta.grad_sink) {
    // Written straight where the caller wants it (data parallel: its bucket), no fresh tensor; copy_
    // converts a gradient of another dtype on the way.
    Tensor sink = *meta.grad_sink;
    sink.copy_(has_grad ? add(*meta.grad, g.to(leaf.dtype())) : g);
    meta.grad.reset();
    for (auto& hook : meta.grad_ready_hooks) hook(sink);
    return {};
  }
  const bool converted = g.dtype() != leaf.dtype();
  if (converted) g = g.to(leaf.dtype());  // a fresh contiguous tensor
  if (has_grad) {
    *meta.grad = add(*meta.grad, g);
  } else {
    // A fresh tensor, never an alias of a gradient used elsewhere, so in-place updates are safe.
    meta.grad = std::make_shared<Tensor>(converted ? g : g.contiguous().same(g) ? g.clone() : g.contiguous());
  }
  for (auto& hook : meta.grad_ready_hooks) hook(*meta.grad);
  return {};
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const Tensors& inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Edge edge_of(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  AutogradMeta& meta = const_cast<Tensor&>(t).autograd_meta();
  if (meta.grad_fn) return {meta.grad_fn, meta.output_nr};
  std::shared_ptr<Node> acc = meta.accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    acc->sequence_nr = g_sequence++;
    meta.accumulator = acc;
  }
  return {acc, 0};
}

void record_node(std::shared_ptr<Node> node, const Tensors& inputs, const Tensors& outputs) {
  node->sequence_nr = g_sequence++;
  node->num_outputs = int(outputs.size());
  node->next_edges.clear();
  for (const Tensor& in : inputs) node->next_edges.push_back(edge_of(in));
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined()) continue;
    AutogradMeta& meta = const_cast<Tensor&>(outputs[i]).autograd_meta();
    meta.requires_grad = true;
    meta.grad_fn = node;
    meta.output_nr = int(i);
  }
}

void record(const char* name, const Tensors& inputs, const Tensors& outputs, BackwardFn fn) {
  record_node(std::make_shared<FunctionNode>(name, std::move(fn)), inputs, outputs);
}

void backward(const Tensors& roots, const Tensors& grads, bool retain_graph) {
  run(roots, grads, retain_graph, {});
}

Tensors grad(const Tensors& outputs, const Tensors& inputs, const Tensors& grad_outputs, bool retain_graph) {
  std::vector<Capture> captures;
  for (const Tensor& in : inputs) {
    SEQMIX_CHECK(in.requires_grad(), "autograd::grad: an input does not require grad");
    Edge e = edge_of(in);
    captures.push_back({e.node.get(), e.input_nr});
  }
  Tensors gouts = grad_outputs;
  gouts.resize(outputs.size());
  Tensors result = run(outputs, gouts, retain_graph, captures);
  for (size_t i = 0; i < result.size(); ++i)
    if (!result[i].defined()) result[i] = zeros(inputs[i].shape(), inputs[i].dtype(), inputs[i].device());
  return result;
}

}  // namespace seqmix::autograd
