#include "core/tensor.h"

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix {

using autograd::needs_grad;
using autograd::record;
using autograd::Tensors;

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int i = int(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) SEQMIX_CHECK(d >= 0, "negative size in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  SEQMIX_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
               " values do not fill shape ", shape_str(shape));
  Tensor t = Tensor::empty(shape, dtype_of<T>::value, Device::cpu());
  std::copy(values.begin(), values.end(), t.data<T>());
  return device.is_cpu() ? t : t.to(device);
}
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<bf16>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&, Device);

int Tensor::normalize_dim(int d) const {
  int n = dim();
  int r = d < 0 ? d + std::max(n, 1) : d;
  SEQMIX_CHECK(r >= 0 && r < std::max(n, 1), "dimension ", d, " out of range for a tensor of shape ", shape_str(shape()));
  return r;
}

int64_t Tensor::size(int d) const { return impl_->shape[normalize_dim(d)]; }
int64_t Tensor::stride(int d) const { return impl_->strides[normalize_dim(d)]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // nothing to lay out
  int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

// ---- views ----

static Shape infer_shape(const Shape& shape, int64_t numel) {
  Shape out = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      SEQMIX_CHECK(infer < 0, "view: only one dimension can be -1 in ", shape_str(shape));
      infer = int(i);
    } else {
      known *= out[i];
    }
  }
  if (infer >= 0) {
    SEQMIX_CHECK(known > 0 && numel % known == 0, "view: shape ", shape_str(shape), " is invalid for ", numel, " elements");
    out[infer] = numel / known;
  }
  SEQMIX_CHECK(shape_numel(out) == numel, "view: shape ", shape_str(shape), " is invalid for ", numel, " elements");
  return out;
}

// Strides for viewing (shape, strides) as new_shape without a copy, if possible.
static bool view_strides(const Shape& shape, const Shape& strides, const Shape& new_shape, Shape& out) {
  out.assign(new_shape.size(), 0);
  if (shape_numel(shape) == 0 || shape.empty()) {
    out = contiguous_strides(new_shape);
    return true;
  }
  // Walk groups of old dims that are contiguous among themselves and match groups of new dims.
  int64_t view_d = int64_t(new_shape.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape ns = infer_shape(shape, numel());
  Shape st;
  SEQMIX_CHECK(view_strides(this->shape(), strides(), ns, st), "view: cannot view a tensor of shape ",
               shape_str(this->shape()), " with strides ", shape_str(strides()), " as ", shape_str(ns),
               " without a copy; use reshape()");
  Tensor out = make_view(*this, ns, st, offset());
  if (needs_grad({this})) {
    Shape in_shape = this->shape();
    record("view", {*this}, {out}, [in_shape](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {g[0].reshape(in_shape)};
    });
  }
  return out;
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape ns = infer_shape(shape, numel());
  Shape st;
  if (view_strides(this->shape(), strides(), ns, st)) return view(ns);
  return contiguous().view(ns);
}

Tensor Tensor::flatten(int start, int end) const {
  if (dim() == 0) return reshape({1});
  int s = normalize_dim(start), e = normalize_dim(end);
  Shape ns;
  for (int i = 0; i < s; ++i) ns.push_back(shape()[i]);
  int64_t m = 1;
  for (int i = s; i <= e; ++i) m *= shape()[i];
  ns.push_back(m);
  for (int i = e + 1; i < dim(); ++i) ns.push_back(shape()[i]);
  return reshape(ns);
}

Tensor Tensor::permute(const std::vector<int>& order) const {
  SEQMIX_CHECK(int(order.size()) == dim(), "permute: order has ", order.size(), " entries for a ", dim(), "-d tensor");
  Shape ns(dim()), st(dim());
  std::vector<int> inverse(dim(), -1);
  for (int i = 0; i < dim(); ++i) {
    int d = normalize_dim(order[i]);
    SEQMIX_CHECK(inverse[d] < 0, "permute: dimension ", d, " repeated");
    inverse[d] = i;
    ns[i] = shape()[d];
    st[i] = strides()[d];
  }
  Tensor out = make_view(*this, ns, st, offset());
  if (needs_grad({this})) {
    record("permute", {*this}, {out}, [inverse](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {g[0].permute(inverse)};
    });
  }
  return out;
}

Tensor Tensor::transpose(int a, int b) const {
  std::vector<int> order(dim());
  for (int i = 0; i < dim(); ++i) order[i] = i;
  std::swap(order[normalize_dim(a)], order[normalize_dim(b)]);
  return permute(order);
}

Tensor Tensor::slice(int d, int64_t start, int64_t end, int64_t step) const {
  d = normalize_dim(d);
  SEQMIX_CHECK(step > 0, "slice: step must be positive");
  int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape ns = shape(), st = strides();
  ns[d] = (end - start + step - 1) / step;
  st[d] = strides()[d] * step;
  Tensor out = make_view(*this, ns, st, offset() + start * strides()[d]);
  if (needs_grad({this})) {
    Shape in_shape = shape();
    DType dt = dtype();
    Device dev = device();
    record("slice", {*this}, {out}, [=](const Tensors& g, const std::vector<bool>&) -> Tensors {
      Tensor gi = zeros(in_shape, dt, dev);
      gi.slice(d, start, end, step).copy_(g[0]);
      return {gi};
    });
  }
  return out;
}

Tensor Tensor::select(int d, int64_t index) const {
  d = normalize_dim(d);
  int64_t n = shape()[d];
  if (index < 0) index += n;
  SEQMIX_CHECK(index >= 0 && index < n, "select: index ", index, " out of range for dimension ", d, " of size ", n);
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& shape) const {
  SEQMIX_CHECK(int(shape.size()) >= dim(), "expand: cannot expand ", shape_str(this->shape()), " to ", shape_str(shape));
  int lead = int(shape.size()) - dim();
  Shape ns(shape.size()), st(shape.size());
  for (int i = 0; i < int(shape.size()); ++i) {
    int j = i - lead;
    int64_t cur = j >= 0 ? this->shape()[j] : 1;
    int64_t want = shape[i] == -1 ? cur : shape[i];
    SEQMIX_CHECK(j >= 0 || shape[i] != -1, "expand: -1 is not allowed for a new leading dimension");
    SEQMIX_CHECK(cur == want || cur == 1, "expand: cannot expand ", shape_str(this->shape()), " to ", shape_str(shape));
    ns[i] = want;
    st[i] = (j >= 0 && cur == want) ? strides()[j] : 0;
  }
  Tensor out = make_view(*this, ns, st, offset());
  if (needs_grad({this})) {
    Shape in_shape = this->shape();
    record("expand", {*this}, {out}, [in_shape](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {sum_to(g[0], in_shape)};
    });
  }
  return out;
}

Tensor Tensor::unsqueeze(int d) const {
  int n = dim();
  if (d < 0) d += n + 1;
  SEQMIX_CHECK(d >= 0 && d <= n, "unsqueeze: dimension out of range");
  Shape ns = shape();
  ns.insert(ns.begin() + d, 1);
  return view(ns);
}

Tensor Tensor::squeeze(int d) const {
  d = normalize_dim(d);
  if (shape()[d] != 1) return *this;
  Shape ns = shape();
  ns.erase(ns.begin() + d);
  return view(ns);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), dtype(), device());
  kernels::copy(out, *this);
  if (needs_grad({this})) {
    record("clone", {*this}, {out}, [](const Tensors& g, const std::vector<bool>&) -> Tensors { return {g[0]}; });
  }
  return out;
}

#ifdef SEQMIX_WITH_CUDA
namespace cuda {
void copy_between_devices(const Tensor& dst, const Tensor& src);  // core/cuda/runtime.cpp
}
#endif

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
#ifdef SEQMIX_WITH_CUDA
  Tensor src = contiguous();
  Tensor out = Tensor::empty(shape(), dtype(), dev);
  cuda::copy_between_devices(out, src);
  if (needs_grad({this})) {
    Device from = device();
    record("to_device", {*this}, {out}, [from](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {g[0].to(from)};
    });
  }
  return out;
#else
  SEQMIX_FAIL("cannot move a tensor to ", dev.str(), ": this seqmix was built without CUDA; use --device cpu");
#endif
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), dt, device());
  kernels::copy(out, *this);
  if (needs_grad({this}) && is_floating(dt)) {
    // A leaf's gradient goes back in the cast's dtype: AccumulateGrad converts it once, where it is stored
    // (a parameter's bf16 gradient lands in a bf16 data-parallel bucket with no f32 round trip, or becomes
    // the leaf's f32 gradient with no extra copy). Other inputs get their own dtype back here.
    const DType from = dtype();
    const bool leaf = is_leaf();
    record("cast", {*this}, {out}, [from, leaf](const Tensors& g, const std::vector<bool>&) -> Tensors {
      return {leaf ? g[0] : g[0].to(from)};
    });
  }
  return out;
}

Tensor& Tensor::fill_(double value) {
  kernels::fill(*this, value);
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  Tensor s = src;
  if (s.device() != device()) s = s.to(device());
  kernels::copy(*this, s);
  return *this;
}

void Tensor::set_data(const Tensor& other) {
  SEQMIX_CHECK(other.defined(), "set_data: the new data is undefined");
  impl_->storage = other.impl_->storage;
  impl_->shape = other.impl_->shape;
  impl_->strides = other.impl_->strides;
  impl_->offset = other.impl_->offset;
  impl_->dtype = other.impl_->dtype;
  if (impl_->autograd) impl_->autograd->grad.reset();
}

double Tensor::item() const {
  SEQMIX_CHECK(numel() == 1, "item(): tensor of shape ", shape_str(shape()), " has ", numel(), " elements, not 1");
  Tensor c = cpu().to(DType::F64).contiguous();
  return *c.data<double>();
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = cpu().to(dtype_of<T>::value).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<double> Tensor::to_vector() const;
template std::vector<float> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;

std::string Tensor::str(int max_per_dim) const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream os;
  os << "Tensor(shape=" << shape_str(shape()) << ", dtype=" << dtype_name(dtype()) << ", device=" << device().str();
  if (requires_grad()) os << ", requires_grad";
  os << ")\n";
  std::vector<double> v = to_vector<double>();
  Shape strides = contiguous_strides(shape());
  os << std::setprecision(5);
  // Recursive print over dims, eliding the middle of long dims.
  std::function<void(int, int64_t, int)> rec = [&](int d, int64_t base, int indent) {
    if (d == dim()) {
      os << v[base];
      return;
    }
    os << "[";
    int64_t n = shape()[d];
    for (int64_t i = 0; i < n; ++i) {
      if (n > 2 * max_per_dim && i == max_per_dim) {
        os << "...";
        i = n - max_per_dim - 1;
        if (d + 1 < dim()) os << ",\n" << std::string(indent + 1, ' ');
        else os << ", ";
        continue;
      }
      if (i) os << (d + 1 < dim() ? ",\n" + std::string(indent + 1, ' ') : ", ");
      rec(d + 1, base + i * strides[d], indent + 1);
    }
    os << "]";
  };
  rec(0, 0, 0);
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

// ---- autograd ----

AutogradMeta& Tensor::autograd_meta() {
  if (!impl_->autograd) impl_->autograd = std::make_unique<AutogradMeta>();
  return *impl_->autograd;
}

Tensor& Tensor::requires_grad_(bool on) {
  SEQMIX_CHECK(!on || is_floating(dtype()), "requires_grad: only floating tensors can require gradients, got ", dtype_name(dtype()));
  SEQMIX_CHECK(is_leaf(), "requires_grad_: only leaf tensors can change requires_grad (use detach())");
  autograd_meta().requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const {
  if (!impl_->autograd || !impl_->autograd->grad) return Tensor();
  return *impl_->autograd->grad;
}

void Tensor::set_grad(const Tensor& g) {
  if (!g.defined()) {
    if (impl_->autograd) impl_->autograd->grad.reset();
    return;
  }
  SEQMIX_CHECK(g.shape() == shape(), "set_grad: gradient shape ", shape_str(g.shape()), " does not match ", shape_str(shape()));
  autograd_meta().grad = std::make_shared<Tensor>(g);
}

std::shared_ptr<autograd::Node> Tensor::grad_fn() const {
  return impl_->autograd ? impl_->autograd->grad_fn : nullptr;
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  autograd::backward({*this}, {grad}, retain_graph);
}

Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

void Tensor::register_grad_ready_hook(GradHook hook) {
  SEQMIX_CHECK(is_leaf() && requires_grad(), "register_grad_ready_hook: only leaves that require grad have gradients to report");
  autograd_meta().grad_ready_hooks.push_back(std::move(hook));
}

void Tensor::set_grad_sink(const Tensor& sink) {
  if (!sink.defined()) {
    if (impl_->autograd) impl_->autograd->grad_sink.reset();
    return;
  }
  SEQMIX_CHECK(is_leaf() && requires_grad(), "set_grad_sink: only leaves that require grad get gradients");
  SEQMIX_CHECK(sink.shape() == shape() && is_floating(sink.dtype()) && sink.device() == device(), "set_grad_sink: a sink ",
               shape_str(sink.shape()), " ", dtype_name(sink.dtype()), " on ", sink.device().str(), " for a leaf ", shape_str(shape()),
               " on ", device().str());
  autograd_meta().grad_sink = std::make_shared<Tensor>(sink);
}

void Tensor::set_name(const std::string& name) { autograd_meta().name = name; }
const std::string& Tensor::name() const {
  static const std::string empty_name;
  return impl_->autograd ? impl_->autograd->name : empty_name;
}

}  // namespace seqmix
