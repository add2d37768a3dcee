#include "layers/mixers/common/recurrent_mixer.h"

#include <cmath>

#include "layers/mixers/common/recurrence_step.h"

namespace seqmix::mixers {

ShortConv::ShortConv(int64_t channels, int64_t kernel, Generator& gen, bool activation)
    : channels_(channels), kernel_(kernel), activation_(activation) {
  SEQMIX_CHECK(kernel >= 1, "short convolution: kernel size must be >= 1, got ", kernel);
  Tensor w = empty({channels, kernel});
  double bound = 1.0 / std::sqrt(double(kernel));  // PyTorch's default for a depthwise conv (fan_in = K)
  uniform_(w, gen, -bound, bound);
  weight = register_parameter("weight", w);
  bias = register_parameter("bias", zeros({channels}));
}

Tensor ShortConv::forward(const Tensor& x, Tensor* cache) const {
  int64_t T = x.size(1);
  Tensor w = cast_param(weight), b = cast_param(bias);
  Tensor xe = x;
  if (cache && cache->defined()) xe = cat({cache->to(x.dtype()), x}, 1);
  Tensor y = conv1d_causal(xe, w, b);
  if (xe.size(1) != T) y = y.narrow(1, xe.size(1) - T, T);
  if (cache) {
    int64_t keep = std::min<int64_t>(kernel_ - 1, xe.size(1));
    *cache = keep > 0 ? xe.narrow(1, xe.size(1) - keep, keep).detach().contiguous() : Tensor();
  }
  return activation_ ? silu(y) : y;
}

Tensor token_shift(const Tensor& x, Tensor* last) {
  int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  Tensor first = (last && last->defined()) ? last->to(x.dtype()) : zeros({B, 1, C}, x.dtype(), x.device());
  Tensor prev = T > 1 ? cat({first, x.narrow(1, 0, T - 1)}, 1) : first;
  if (last) *last = x.narrow(1, T - 1, 1).detach().contiguous();
  return prev;
}

Tensor gate_precision(const Tensor& x) {
  if (x.dtype() == DType::F64 || x.dtype() == DType::F32) return x;
  return cast(x, DType::F32);
}

DType gate_dtype(const Tensor& x) { return x.dtype() == DType::F64 ? DType::F64 : DType::F32; }

Tensor as_dtype(const Tensor& t, DType dt) { return t.dtype() == dt ? t : cast(t, dt); }

Tensor head_norm(const Tensor& x, bool rms, double eps) {
  return rms ? rms_norm(x, Tensor(), eps) : layer_norm(x, Tensor(), Tensor(), eps);
}

Tensor run_recurrence(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus, RecurrentState* st,
                      double scale, int64_t chunk) {
  RecurrenceOptions opt;
  opt.scale = scale;
  opt.chunk = chunk;
  if (!st) {
    opt.want_final_state = false;
    return linear_recurrence(q, k, v, g, bonus, Tensor(), opt).o;
  }
  RecurrenceResult r = linear_recurrence_step(q, k, v, g, bonus, st->S, opt);
  st->S = r.final_state.detach();
  return r.o;
}

Tensor split_heads(const Tensor& x, int64_t heads) { return x.view({x.size(0), x.size(1), heads, x.size(2) / heads}); }

Tensor merge_heads(const Tensor& x) { return x.reshape({x.size(0), x.size(1), x.size(2) * x.size(3)}); }

Tensor run_head_recurrence(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus, int64_t heads,
                           RecurrentState* st, double scale, int64_t chunk) {
  return run_recurrence(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), g.defined() ? split_heads(g, heads) : g,
                        bonus, st, scale, chunk);
}

Tensor head_rms_norm(const Tensor& o, const Tensor& weight, double eps) { return merge_heads(rms_norm(o, weight, eps)); }

Tensor group_norm(const Tensor& o, const Tensor& weight, const Tensor& bias, double eps) {
  return add(mul(merge_heads(head_norm(o, false, eps)), weight), bias);
}

double recurrence_flops(int64_t heads, int64_t dk, int64_t dv, int64_t chunk) {
  return double(heads) * (4.0 * double(dk) * double(dv) + double(chunk) * double(dk + dv));
}

}  // namespace seqmix::mixers
