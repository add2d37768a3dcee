// Module: named parameters, buffers and submodules, train/eval mode, device moves, parameter counts
// and a printable summary. Parameters are f32 master weights; forward passes cast them to the
// compute dtype (bf16 on the GPU) through `Module::cast_param`, so gradients arrive in f32.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix {

// The dtype forward passes compute in (thread-local; f32 by default, bf16 for mixed precision).
DType compute_dtype();
struct ComputeDtypeGuard {
  explicit ComputeDtypeGuard(DType dt);
  ~ComputeDtypeGuard();
  ComputeDtypeGuard(const ComputeDtypeGuard&) = delete;
  ComputeDtypeGuard& operator=(const ComputeDtypeGuard&) = delete;

 private:
  DType prev_;
};

class Module {
 public:
  virtual ~Module() = default;
  virtual std::string type_name() const = 0;

  // Recursive, with dotted names ("layers.3.mixer.q_proj.weight").
  std::vector<std::pair<std::string, Tensor>> named_parameters(const std::string& prefix = "") const;
  std::vector<std::pair<std::string, Tensor>> named_buffers(const std::string& prefix = "") const;
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves parameters and buffers (in place: handles held elsewhere stay valid).
  void to(Device device);
  Device device() const;
  std::string summary() const;  // a tree of modules with their parameter counts

 protected:
  // Return handles that share data with the registered tensor (keep them as members).
  Tensor register_parameter(const std::string& name, Tensor t);  // sets requires_grad
  Tensor register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }
  // The parameter in the current compute dtype (a differentiable cast when it differs).
  static Tensor cast_param(const Tensor& p);

 private:
  void summary_into(std::string& out, const std::string& name, int depth) const;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace seqmix
