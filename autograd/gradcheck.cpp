#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "core/ops.h"

namespace seqmix::autograd {

namespace {
double projected(const std::function<Tensors(const Tensors&)>& f, const Tensors& inputs, const Tensors& proj) {
  NoGradGuard ng;
  Tensors outs = f(inputs);
  double total = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    if (!outs[i].defined() || !is_floating(outs[i].dtype())) continue;
    total += sum(mul(outs[i].to(DType::F64), proj[i])).item();
  }
  return total;
}
}  // namespace

GradcheckResult gradcheck(const std::function<Tensors(const Tensors&)>& f, const Tensors& inputs, const GradcheckOptions& opt) {
  for (const Tensor& t : inputs)
    SEQMIX_CHECK(!t.defined() || !t.requires_grad() || (t.dtype() == DType::F64 && t.is_cpu()),
                 "gradcheck: inputs that require grad must be f64 CPU tensors");
  // Analytic gradients of L = sum_i sum(out_i * R_i).
  Tensors outs = f(inputs);
  Generator gen(opt.seed);
  Tensors proj;
  Tensor loss;
  for (const Tensor& o : outs) {
    if (!o.defined() || !is_floating(o.dtype())) {
      proj.push_back(Tensor());
      continue;
    }
    Tensor r = randn(o.shape(), gen, DType::F64);
    proj.push_back(r);
    Tensor term = sum(mul(o.to(DType::F64), r));
    loss = loss.defined() ? add(loss, term) : term;
  }
  SEQMIX_CHECK(loss.defined(), "gradcheck: the function returned no floating output");
  Tensors wrt;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) wrt.push_back(t);
  SEQMIX_CHECK(!wrt.empty(), "gradcheck: no input requires grad");
  GradcheckResult res;
  if (!loss.requires_grad()) {
    res.ok = false;
    res.message = "the output does not depend on any input that requires grad (no graph recorded)";
    return res;
  }
  Tensors analytic = grad({loss}, wrt, {Tensor()});

  // Numeric gradients by central differences, perturbing each element in place.
  double worst = -1;
  for (size_t w = 0; w < wrt.size(); ++w) {
    Tensor x = wrt[w];
    if (analytic[w].shape() != x.shape()) {  // a backward bug: report it rather than read past the gradient
      res.ok = false;
      res.message = "input " + std::to_string(w) + " (shape " + shape_str(x.shape()) + "): the analytic gradient has shape " +
                    shape_str(analytic[w].shape());
      return res;
    }
    Tensor a = analytic[w].contiguous().to(DType::F64);
    std::vector<double> av = a.to_vector<double>();
    SEQMIX_CHECK(x.is_contiguous(), "gradcheck: inputs must be contiguous");
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double orig = p[i];
      p[i] = orig + opt.eps;
      double lp = projected(f, inputs, proj);
      p[i] = orig - opt.eps;
      double lm = projected(f, inputs, proj);
      p[i] = orig;
      double num = (lp - lm) / (2 * opt.eps);
      double err = std::abs(av[i] - num);
      double tol = opt.atol + opt.rtol * std::abs(num);
      if (!(err <= tol) && err - tol > worst) {
        worst = err - tol;
        std::ostringstream os;
        os << "input " << w << " (shape " << shape_str(x.shape()) << ") element " << i << ": analytic " << av[i]
           << ", numeric " << num << ", |diff| " << err << " > tolerance " << tol;
        res.ok = false;
        res.message = os.str();
      }
    }
  }
  return res;
}

GradcheckResult gradcheck(const std::function<Tensor(const Tensors&)>& f, const Tensors& inputs, const GradcheckOptions& opt) {
  return gradcheck(std::function<Tensors(const Tensors&)>([&](const Tensors& in) { return Tensors{f(in)}; }), inputs, opt);
}

}  // namespace seqmix::autograd
