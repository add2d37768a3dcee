// matmul and linear. Transposed operands reach the GEMM as flags, never as copies.
#include "autograd/node.h"
#include "core/ops.h"

namespace seqmix {

using autograd::needs_grad;
using autograd::record;
using autograd::Tensors;

namespace {
// Presents a (.., r, c) operand to the kernel: unit stride in its last dim, transposed flag otherwise.
Tensor as_gemm_operand(const Tensor& t, bool& trans) {
  trans = false;
  int n = t.dim();
  if (t.stride(n - 1) == 1 && t.stride(n - 2) >= t.size(n - 1)) return t;
  if (t.stride(n - 2) == 1 && t.stride(n - 1) >= t.size(n - 2)) {
    trans = true;
    return t.transpose(-1, -2);
  }
  return t.contiguous();
}

// Raw product of logical a [.., m, k] and b [.., k, n] (no autograd). Batch dims broadcast.
Tensor mm_raw(const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(a.size(-1) == b.size(-2), "matmul: shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()),
               " do not match (inner dimensions ", a.size(-1), " and ", b.size(-2), ")");
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb);
  int64_t m = a.size(-2), n = b.size(-1), k = a.size(-1);
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  int64_t nb = shape_numel(batch);
  // b shared across the batch and a foldable into rows: one big GEMM [nb*m, k] @ [k, n]
  if (bb.empty() && nb > 1 && a.is_contiguous()) {
    bool tb;
    Tensor b2 = as_gemm_operand(b, tb);
    Tensor out = kernels::matmul(a.reshape({nb * m, k}), b2, false, tb, Tensor(), false);
    return out.view(out_shape);
  }
  auto to3 = [&](const Tensor& t, const Shape& tb_shape, int64_t r, int64_t c) {
    if (tb_shape.empty() || nb == 1) return t.reshape({r, c});
    Shape full = batch;
    full.push_back(r);
    full.push_back(c);
    Tensor e = t.expand(full);
    // a batch that is pure broadcast stays stride-0; otherwise fold the batch into one dim
    if (shape_numel(tb_shape) == 1) return t.reshape({1, r, c}).expand({nb, r, c});
    return e.reshape({nb, r, c});
  };
  bool ta, tb;
  Tensor a3 = as_gemm_operand(to3(a, ba, m, k), ta);
  Tensor b3 = as_gemm_operand(to3(b, bb, k, n), tb);
  Tensor out = kernels::matmul(a3, b3, ta, tb, Tensor(), false);
  return out.view(out_shape);
}
}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  SEQMIX_CHECK(a_in.dim() >= 1 && b_in.dim() >= 1, "matmul: 0-d operands are not supported");
  SEQMIX_CHECK(a_in.dtype() == b_in.dtype(), "matmul: dtypes differ (", dtype_name(a_in.dtype()), " and ",
               dtype_name(b_in.dtype()), ")");
  Tensor a = a_in.dim() == 1 ? a_in.unsqueeze(0) : a_in;
  Tensor b = b_in.dim() == 1 ? b_in.unsqueeze(1) : b_in;
  Tensor out;
  {
    autograd::NoGradGuard no_grad;
    out = mm_raw(a.detach(), b.detach());
  }
  if (needs_grad({&a, &b})) {
    Tensor as = a.detach(), bs = b.detach();
    record("matmul", {a, b}, {out}, [as, bs](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      Tensors r(2);
      if (need[0]) r[0] = sum_to(mm_raw(g[0], bs.transpose(-1, -2)), as.shape());
      if (need[1]) r[1] = sum_to(mm_raw(as.transpose(-1, -2), g[0]), bs.shape());
      return r;
    });
  }
  if (a_in.dim() == 1) out = out.squeeze(-2);
  if (b_in.dim() == 1) out = out.squeeze(-1);
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  SEQMIX_CHECK(weight.dim() == 2 && x.size(-1) == weight.size(1), "linear: input of shape ", shape_str(x.shape()),
               " does not match weight of shape ", shape_str(weight.shape()), " (expected last dim ", weight.size(1), ")");
  SEQMIX_CHECK(x.dtype() == weight.dtype(), "linear: input is ", dtype_name(x.dtype()), " but weight is ",
               dtype_name(weight.dtype()));
  int64_t in = weight.size(1), outf = weight.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = outf;
  Tensor x2 = x.detach().reshape({-1, in});
  // the GEMM (and the weight-gradient GEMM in backward) reads x2 row-major: unit stride, full rows
  if (!(x2.stride(1) == 1 && x2.stride(0) >= std::max<int64_t>(in, 1))) x2 = x2.clone();
  bool tw;
  Tensor w2 = as_gemm_operand(weight.detach(), tw);  // the kernel computes x2 @ weight^T
  Tensor y = kernels::matmul(x2, w2, false, !tw, Tensor(), false);
  if (bias.defined()) y = kernels::binary(BinaryOp::Add, y, bias.detach());
  y = y.view(out_shape);
  if (needs_grad({&x, &weight, &bias})) {
    Tensor ws = weight.detach();
    Shape xs = x.shape();
    bool has_bias = bias.defined();
    record("linear", {x, weight, bias}, {y}, [x2, ws, xs, in, outf, has_bias](const Tensors& g, const std::vector<bool>& need) -> Tensors {
      Tensor g2 = g[0].reshape({-1, outf});
      bool tg;
      Tensor g2k = as_gemm_operand(g2, tg);
      Tensors r(3);
      if (need[0]) r[0] = kernels::matmul(g2k, ws.contiguous(), tg, false, Tensor(), false).view(xs);
      if (need[1]) r[1] = kernels::matmul(g2k, x2, !tg, false, Tensor(), false);
      if (has_bias && need[2]) r[2] = kernels::reduce(ReduceOp::Sum, g2, 0, false);
      return r;
    });
  }
  return y;
}

}  // namespace seqmix
