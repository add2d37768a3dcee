// Tensor: a view (shape, strides, offset, dtype) over ref-counted Storage on a device, plus the
// autograd metadata (requires_grad, grad, grad_fn). Copying a Tensor copies the handle, not the data.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace seqmix {

using Shape = std::vector<int64_t>;

namespace autograd {
struct Node;
}
class Tensor;
using GradHook = std::function<void(const Tensor& grad)>;

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Tensor> grad;               // accumulated gradient of a leaf
  std::shared_ptr<autograd::Node> grad_fn;    // the node that produced this tensor (non-leaf)
  int output_nr = 0;                          // which output of grad_fn this is
  std::weak_ptr<autograd::Node> accumulator;  // a leaf's AccumulateGrad node, made on first use
  std::vector<GradHook> grad_ready_hooks;     // called after a leaf's gradient is accumulated
  std::shared_ptr<Tensor> grad_sink;          // set: backward writes the leaf's gradient here (see set_grad_sink)
  std::string name;                           // parameter name, for messages
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;
  std::unique_ptr<AutogradMeta> autograd;  // null until needed
};

std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation (see also core/ops.h for zeros/ones/randn/...) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());

  // ---- properties ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t size(int d) const;    // negative d counts from the end
  int64_t stride(int d) const;
  int dim() const { return int(impl_->shape.size()); }
  int64_t numel() const { return shape_numel(impl_->shape); }
  int64_t offset() const { return impl_->offset; }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device(); }
  bool is_cuda() const { return device().is_cuda(); }
  bool is_cpu() const { return device().is_cpu(); }
  size_t element_size() const { return dtype_size(impl_->dtype); }
  size_t nbytes() const { return size_t(numel()) * element_size(); }
  bool is_contiguous() const;
  void* data_ptr() const {
    return static_cast<char*>(impl_->storage->data()) + impl_->offset * int64_t(element_size());
  }
  template <typename T>
  T* data() const {
    SEQMIX_CHECK(dtype_of<T>::value == dtype(), "data<", dtype_name(dtype_of<T>::value), ">() on a ",
                 dtype_name(dtype()), " tensor");
    return static_cast<T*>(data_ptr());
  }
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }
  int normalize_dim(int d) const;  // -1 -> dim()-1, with a range check

  // ---- views and copies (differentiable; views share storage) ----
  Tensor view(const Shape& shape) const;     // requires compatible strides; one -1 allowed
  Tensor reshape(const Shape& shape) const;  // view when possible, else a copy
  Tensor flatten(int start = 0, int end = -1) const;
  Tensor transpose(int a, int b) const;
  Tensor t() const { return transpose(-2, -1); }
  Tensor permute(const std::vector<int>& order) const;
  Tensor slice(int dim, int64_t start, int64_t end, int64_t step = 1) const;  // python-style clamps
  Tensor narrow(int dim, int64_t start, int64_t length) const { return slice(dim, start, start + length); }
  Tensor select(int dim, int64_t index) const;  // removes dim
  Tensor expand(const Shape& shape) const;      // -1 keeps a size
  Tensor unsqueeze(int dim) const;
  Tensor squeeze(int dim) const;
  Tensor contiguous() const;  // self if already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const { return to(device).to(dtype); }
  Tensor cpu() const { return to(Device::cpu()); }
  Tensor cuda(int index = 0) const { return to(Device::cuda(index)); }

  // ---- in-place (not recorded by autograd: for optimizers, initializers and buffers) ----
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);  // broadcasting copy with dtype/device conversion
  // Makes this handle (and every copy of it) refer to `other`'s data, shape and dtype, keeping its
  // autograd identity (requires_grad, hooks, name). Used to move parameters between devices.
  void set_data(const Tensor& other);

  // ---- values ----
  double item() const;  // a one-element tensor's value
  template <typename T>
  std::vector<T> to_vector() const;  // contiguous copy to the host, converted to T
  std::string str(int max_per_dim = 6) const;

  // ---- autograd ----
  bool requires_grad() const { return impl_ && impl_->autograd && impl_->autograd->requires_grad; }
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return !impl_->autograd || !impl_->autograd->grad_fn; }
  Tensor grad() const;
  void set_grad(const Tensor& g);
  std::shared_ptr<autograd::Node> grad_fn() const;
  int output_nr() const { return impl_->autograd ? impl_->autograd->output_nr : 0; }
  // Runs backward from this tensor. A non-scalar needs an explicit gradient.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  Tensor detach() const;  // shares storage, no autograd history
  // Called with the leaf's accumulated gradient each time backward finishes accumulating into it.
  void register_grad_ready_hook(GradHook hook);
  // A caller-owned tensor of this leaf's shape (any float dtype, e.g. a view of a data-parallel bucket):
  // while set, backward writes the leaf's gradient (plus any gradient accumulated before) into it,
  // converting to its dtype, instead of making a new tensor; grad() is then left undefined and the
  // grad-ready hooks get the sink. An undefined tensor clears it.
  void set_grad_sink(const Tensor& sink);
  void set_name(const std::string& name);
  const std::string& name() const;
  AutogradMeta& autograd_meta();  // creates it when absent

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// The tensor's data as T* with no dtype check (kernel launchers pass their own element types, e.g.
// __nv_bfloat16), or nullptr for an undefined tensor (an optional input).
template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// A view of `base` sharing its storage (no autograd record; ops build differentiable views on this).
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset);

}  // namespace seqmix
