// The attention op: argument checks, backend dispatch and the autograd function.
#include "layers/mixers/attention/attention_op.h"

#include <cmath>
#include <limits>

#include "autograd/function.h"
#include "core/ops.h"

#ifdef SEQMIX_WITH_CUDA
namespace seqmix::cuda {
void select_device(int index);  // core/cuda/runtime.cpp
}
#endif

namespace seqmix::mixers {

namespace {

using attention_impl::Dims;

Dims check_inputs(const char* what, const Tensor& q, const Tensor& k, const Tensor& v, int64_t window) {
  SEQMIX_CHECK(q.defined() && k.defined() && v.defined(), what, ": q, k and v must be defined tensors");
  SEQMIX_CHECK(q.dim() == 4, what, ": q must be [B, Tq, H, D], got ", shape_str(q.shape()));
  SEQMIX_CHECK(k.dim() == 4, what, ": k must be [B, Tk, Hkv, D], got ", shape_str(k.shape()));
  SEQMIX_CHECK(v.shape() == k.shape(), what, ": v must have k's shape ", shape_str(k.shape()), ", got ",
               shape_str(v.shape()));
  SEQMIX_CHECK(k.size(0) == q.size(0), what, ": q ", shape_str(q.shape()), " and k ", shape_str(k.shape()),
               " have different batch sizes");
  SEQMIX_CHECK(k.size(3) == q.size(3), what, ": q ", shape_str(q.shape()), " and k ", shape_str(k.shape()),
               " have different head dims");
  SEQMIX_CHECK(k.size(2) > 0 && q.size(2) % k.size(2) == 0, what, ": the number of query heads (", q.size(2),
               ") must be a multiple of the number of kv heads (", k.size(2), ")");
  SEQMIX_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), what, ": q, k and v must have one dtype, got ",
               dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), ", ", dtype_name(v.dtype()));
  SEQMIX_CHECK(is_floating(q.dtype()), what, ": floating inputs required, got ", dtype_name(q.dtype()));
  SEQMIX_CHECK(q.device() == k.device() && q.device() == v.device(), what, ": q, k and v must be on one device, got ",
               q.device().str(), ", ", k.device().str(), ", ", v.device().str());
  Dims d;
  d.B = q.size(0);
  d.Tq = q.size(1);
  d.H = q.size(2);
  d.D = q.size(3);
  d.Tk = k.size(1);
  d.Hkv = k.size(2);
  d.window = window > 0 ? window : 0;
  return d;
}

// Unit stride in the last dim (every backend needs it); other strides are passed through.
Tensor unit_last(const Tensor& t) { return t.stride(-1) == 1 || t.size(-1) == 1 ? t : t.contiguous(); }

DType lse_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }
DType cpu_compute_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

#ifdef SEQMIX_WITH_CUDA
void select(const Tensor& t) {
  if (t.is_cuda()) cuda::select_device(t.device().index);
}
#endif

struct AttentionFunction : autograd::CustomFunction {
  double scale = 1;
  int64_t window = 0;
  std::string name() const override { return "attention"; }
  autograd::Tensors backward(const autograd::Tensors& grads) override {
    if (grads.empty() || !grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    const autograd::Tensors& s = saved();  // q, k, v, o, lse
    Tensor g = grads[0];
    if (g.dtype() != s[3].dtype()) g = g.to(s[3].dtype());
    AttentionGrads r = attention_backward(s[0], s[1], s[2], s[3], s[4], g, scale, window);
    return {needs_input_grad(0) ? r.dq : Tensor(), needs_input_grad(1) ? r.dk : Tensor(),
            needs_input_grad(2) ? r.dv : Tensor()};
  }
};

}  // namespace

double attention_scale(double scale, int64_t head_dim) {
  if (scale != 0) return scale;
  SEQMIX_CHECK(head_dim > 0, "attention: head dim must be positive, got ", head_dim);
  return 1.0 / std::sqrt(double(head_dim));
}

AttentionForward attention_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, double scale,
                                   int64_t window) {
  Dims d = check_inputs("attention", q_in, k_in, v_in, window);
  d.scale = scale;
  Tensor q = unit_last(q_in.detach()), k = unit_last(k_in.detach()), v = unit_last(v_in.detach());
  Device dev = q.device();
  AttentionForward r;
  r.o = Tensor::empty({d.B, d.Tq, d.H, d.D}, q.dtype(), dev);
  r.lse = Tensor::empty({d.B, d.H, d.Tq}, lse_dtype(q.dtype()), dev);
  if (r.o.numel() == 0) return r;
  if (dev.is_cuda()) {
#ifdef SEQMIX_WITH_CUDA
    select(q);
    attention_impl::cuda_forward(d, q, k, v, r.o, r.lse);
    return r;
#endif
  }
  DType ct = cpu_compute_dtype(q.dtype());
  if (ct == q.dtype()) {
    attention_impl::cpu_forward(d, q, k, v, r.o, r.lse);
  } else {  // bf16 / f16 on the CPU: compute in f32
    Tensor o32 = Tensor::empty(r.o.shape(), ct, dev);
    attention_impl::cpu_forward(d, q.to(ct), k.to(ct), v.to(ct), o32, r.lse);
    r.o.copy_(o32);
  }
  return r;
}

AttentionGrads attention_backward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& o_in,
                                  const Tensor& lse, const Tensor& dout_in, double scale, int64_t window) {
  Dims d = check_inputs("attention backward", q_in, k_in, v_in, window);
  d.scale = scale;
  SEQMIX_CHECK(o_in.shape() == q_in.shape() && dout_in.shape() == q_in.shape(),
               "attention backward: o ", shape_str(o_in.shape()), " and dout ", shape_str(dout_in.shape()),
               " must have q's shape ", shape_str(q_in.shape()));
  SEQMIX_CHECK(lse.shape() == (Shape{d.B, d.H, d.Tq}) && lse.is_contiguous() && lse.dtype() == lse_dtype(q_in.dtype()),
               "attention backward: lse must be a contiguous ", dtype_name(lse_dtype(q_in.dtype())), " [B, H, Tq] = ",
               shape_str({d.B, d.H, d.Tq}), " tensor, got ", shape_str(lse.shape()));
  Tensor q = unit_last(q_in.detach()), k = unit_last(k_in.detach()), v = unit_last(v_in.detach());
  Tensor o = unit_last(o_in.detach());
  Tensor dout = dout_in.detach();
  if (dout.dtype() != q.dtype()) dout = dout.to(q.dtype());
  dout = unit_last(dout);
  Device dev = q.device();
  AttentionGrads g;
  g.dq = Tensor::empty(q.shape(), q.dtype(), dev);
  g.dk = Tensor::empty(k.shape(), k.dtype(), dev);
  g.dv = Tensor::empty(v.shape(), v.dtype(), dev);
  if (g.dq.numel() == 0 && g.dk.numel() == 0) return g;
  if (g.dq.numel() == 0 || g.dk.numel() == 0) {  // no query or no key: every gradient is zero
    g.dq.zero_();
    g.dk.zero_();
    g.dv.zero_();
    return g;
  }
  if (dev.is_cuda()) {
#ifdef SEQMIX_WITH_CUDA
    select(q);
    attention_impl::cuda_backward(d, q, k, v, o, lse, dout, g.dq, g.dk, g.dv);
    return g;
#endif
  }
  DType ct = cpu_compute_dtype(q.dtype());
  if (ct == q.dtype()) {
    attention_impl::cpu_backward(d, q, k, v, o, lse, dout, g.dq, g.dk, g.dv);
  } else {
    Tensor dq = Tensor::empty(q.shape(), ct, dev), dk = Tensor::empty(k.shape(), ct, dev),
           dv = Tensor::empty(v.shape(), ct, dev);
    attention_impl::cpu_backward(d, q.to(ct), k.to(ct), v.to(ct), o.to(ct), lse, dout.to(ct), dq, dk, dv);
    g.dq.copy_(dq);
    g.dk.copy_(dk);
    g.dv.copy_(dv);
  }
  return g;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window) {
  SEQMIX_CHECK(q.defined() && q.dim() == 4, "attention: q must be [B, Tq, H, D]");
  double s = attention_scale(scale, q.size(3));
  AttentionForward r;
  {
    autograd::NoGradGuard ng;
    r = attention_forward(q, k, v, s, window);
  }
  if (autograd::needs_grad({&q, &k, &v})) {
    auto fn = std::make_shared<AttentionFunction>();
    fn->scale = s;
    fn->window = window > 0 ? window : 0;
    fn->save_for_backward({unit_last(q.detach()), unit_last(k.detach()), unit_last(v.detach()), r.o, r.lse});
    autograd::CustomFunction::attach(fn, {q, k, v}, {r.o});
  }
  return r.o;
}

}  // namespace seqmix::mixers
