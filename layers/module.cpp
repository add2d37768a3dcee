#include "layers/module.h"

#include <sstream>

namespace seqmix {

namespace {
thread_local DType t_compute_dtype = DType::F32;
}

DType compute_dtype() { return t_compute_dtype; }
ComputeDtypeGuard::ComputeDtypeGuard(DType dt) : prev_(t_compute_dtype) { t_compute_dtype = dt; }
ComputeDtypeGuard::~ComputeDtypeGuard() { t_compute_dtype = prev_; }

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  t.requires_grad_(true);
  params_.emplace_back(name, t);
  return params_.back().second;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, t);
  return buffers_.back().second;
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, p] : params_) out.emplace_back(prefix + n, p);
  for (auto& [n, c] : children_) {
    auto sub = c->named_parameters(prefix + n + ".");
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, b] : buffers_) out.emplace_back(prefix + n, b);
  for (auto& [n, c] : children_) {
    auto sub = c->named_buffers(prefix + n + ".");
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, p] : named_parameters()) out.push_back(p);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::to(Device device) {
  for (auto& [n, p] : params_)
    if (p.device() != device) p.set_data(p.detach().to(device));
  for (auto& [n, b] : buffers_)
    if (b.device() != device) b.set_data(b.to(device));
  for (auto& [n, c] : children_) c->to(device);
}

Device Module::device() const {
  auto ps = named_parameters();
  return ps.empty() ? Device::cpu() : ps.front().second.device();
}

Tensor Module::cast_param(const Tensor& p) {
  DType dt = compute_dtype();
  return p.dtype() == dt ? p : cast(p, dt);
}

void Module::summary_into(std::string& out, const std::string& name, int depth) const {
  int64_t own = 0;
  for (auto& [n, p] : params_) own += p.numel();
  std::ostringstream os;
  os << std::string(depth * 2, ' ') << (name.empty() ? "" : name + ": ") << type_name() << "  (" << num_parameters() << " params)\n";
  out += os.str();
  for (auto& [n, c] : children_) c->summary_into(out, n, depth + 1);
}

std::string Module::summary() const {
  std::string out;
  summary_into(out, "", 0);
  return out;
}

}  // namespace seqmix
