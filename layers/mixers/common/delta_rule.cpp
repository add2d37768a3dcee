#include "layers/mixers/common/delta_rule.h"

#include <cmath>

#include "autograd/function.h"
#include "core/ops.h"
#ifdef SEQMIX_WITH_CUDA
#include "layers/mixers/common/delta_rule_cuda.h"
#include "layers/mixers/common/generalized_delta_cuda.h"
#endif

namespace seqmix::mixers {

namespace {

DType work_dtype(const Tensor& x) { return x.dtype() == DType::F64 ? DType::F64 : DType::F32; }

Tensor as_work(const Tensor& x, DType dt) {
  if (!x.defined()) return x;
  return x.dtype() == dt ? x : cast(x, dt);
}

// [B, T, H, ...] -> [B, H, T_padded, ...] with zeros appended along T.
Tensor to_heads_padded(const Tensor& x, int64_t Tp) {
  Tensor y;
  if (x.dim() == 4)
    y = x.permute({0, 2, 1, 3});
  else
    y = x.permute({0, 2, 1});
  int64_t T = y.size(2);
  if (Tp > T) {
    Shape s = y.shape();
    s[2] = Tp - T;
    y = cat({y, zeros(s, y.dtype(), y.device())}, 2);
  }
  return y.contiguous();
}

// 0/1 masks [C, C]: lower triangle including (incl) or excluding the diagonal.
Tensor tri_mask(int64_t C, bool incl, DType dt, Device dev) {
  std::vector<double> m(size_t(C * C), 0.0);
  for (int64_t t = 0; t < C; ++t)
    for (int64_t s = 0; s < C; ++s) m[size_t(t * C + s)] = (incl ? s <= t : s < t) ? 1.0 : 0.0;
  return Tensor::from_vector<double>(m, {C, C}).to(dt).to(dev);
}

void check_chunk(int64_t C) {
  SEQMIX_CHECK(C >= 1 && (C & (C - 1)) == 0, "delta rule: chunk must be a power of two, got ", C);
}

Tensor initial_or_zeros(const Tensor& s0, int64_t B, int64_t H, int64_t Dk, int64_t Dv, DType dt, Device dev) {
  if (!s0.defined()) return zeros({B, H, Dk, Dv}, dt, dev);
  SEQMIX_CHECK(s0.dim() == 4 && s0.size(0) == B && s0.size(1) == H && s0.size(2) == Dk && s0.size(3) == Dv,
               "delta rule: initial_state must be [", B, ", ", H, ", ", Dk, ", ", Dv, "], got ", shape_str(s0.shape()));
  return as_work(s0, dt);
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  SEQMIX_CHECK(q.dim() == 4 && k.shape() == q.shape() && v.dim() == 4 && v.size(0) == q.size(0) && v.size(1) == q.size(1) &&
                   v.size(2) == q.size(2),
               "delta rule: q, k must be [B, T, H, Dk] and v [B, T, H, Dv]; got ", shape_str(q.shape()), ", ",
               shape_str(k.shape()), ", ", shape_str(v.shape()));
}

// o scaled by opt.scale, in v's dtype.
Tensor scaled_like_v(Tensor o, const Tensor& v, const DeltaOptions& opt) {
  if (opt.scale != 1.0) o = o * opt.scale;
  return o.dtype() == v.dtype() ? o : cast(o, v.dtype());
}

DeltaResult make_result(const Tensor& o, const Tensor& S, const DeltaOptions& opt) {
  DeltaResult r;
  r.o = o;
  if (opt.want_final_state) r.final_state = S;
  return r;
}

// The token-by-token references: S from the initial state, o_t = step(t, S) (which advances S), stacked.
template <typename Step>
DeltaResult run_steps(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& initial_state,
                      const DeltaOptions& opt, Step step) {
  check_qkv(q, k, v);
  DType dt = work_dtype(q);
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3), Dv = v.size(3);
  Tensor S = initial_or_zeros(initial_state, B, H, Dk, Dv, dt, q.device());
  std::vector<Tensor> outs;
  outs.reserve(size_t(T));
  for (int64_t t = 0; t < T; ++t) outs.push_back(step(t, S));
  return make_result(T > 0 ? stack(outs, 1) : zeros({B, 0, H, Dv}, v.dtype(), v.device()), S, opt);
}

// The chunked forms' result from the per-chunk outputs [B, H, C, Dv] of the padded length Tp.
DeltaResult chunked_result(const std::vector<Tensor>& outs, int64_t B, int64_t H, int64_t Tp, int64_t T, int64_t Dv,
                           const Tensor& v, const Tensor& S, const DeltaOptions& opt) {
  Tensor o = stack(outs, 2).reshape({B, H, Tp, Dv}).narrow(2, 0, T).permute({0, 2, 1, 3});
  return make_result(scaled_like_v(o, v, opt).contiguous(), S, opt);
}

// Slices of x along `dim` as one autograd node whose backward stacks the slices' gradients (per-slice
// select() would each scatter into a full-size zero gradient: quadratic in the number of chunks).
struct UnbindFn : autograd::CustomFunction {
  Shape slice_shape;
  DType dtype;
  Device device = Device::cpu();
  int dim = 0;
  std::string name() const override { return "unbind"; }
  autograd::Tensors backward(const autograd::Tensors& grads) override {
    autograd::Tensors gs;
    gs.reserve(grads.size());
    for (const Tensor& g : grads) gs.push_back(g.defined() ? g : zeros(slice_shape, dtype, device));
    return {stack(gs, dim)};
  }
};

std::vector<Tensor> unbind(const Tensor& x, int dim) {
  dim = x.normalize_dim(dim);
  Tensor xd = x.detach();
  std::vector<Tensor> out;
  for (int64_t i = 0; i < x.size(dim); ++i) out.push_back(xd.select(dim, i));
  if (autograd::needs_grad({&x})) {
    auto fn = std::make_shared<UnbindFn>();
    fn->slice_shape = out.empty() ? Shape{} : out[0].shape();
    fn->dtype = x.dtype();
    fn->device = x.device();
    fn->dim = dim;
    autograd::CustomFunction::attach(fn, {x}, out);
  }
  return out;
}

}  // namespace

Tensor l2_normalize(const Tensor& x, double eps) { return mul(x, rsqrt(sum(square(x), -1, true) + eps)); }

Tensor unit_lower_inverse(const Tensor& A) {
  int64_t C = A.size(-1);
  check_chunk(C);
  Shape lead(A.shape().begin(), A.shape().end() - 2);
  Shape s1 = lead;
  s1.insert(s1.end(), {C, 1, 1});
  Tensor Ti = ones(s1, A.dtype(), A.device());  // the C diagonal blocks of size 1
  Shape flat = lead;
  flat.push_back(C * C);
  Tensor Af = A.reshape(flat);
  int nd = int(lead.size());
  for (int64_t s = 1; s < C; s *= 2) {
    int64_t nb2 = C / (2 * s);
    Shape ps = lead;
    ps.insert(ps.end(), {nb2, 2, s, s});
    Tensor pairs = Ti.reshape(ps);
    Tensor T11 = pairs.select(nd + 1, 0), T22 = pairs.select(nd + 1, 1);  // [..., nb2, s, s]
    // A21 of pair p: rows (2p+1)s.., columns 2p s..
    std::vector<int64_t> idx;
    idx.reserve(size_t(nb2 * s * s));
    for (int64_t p = 0; p < nb2; ++p)
      for (int64_t i = 0; i < s; ++i)
        for (int64_t j = 0; j < s; ++j) idx.push_back(((2 * p + 1) * s + i) * C + 2 * p * s + j);
    Tensor index = Tensor::from_vector<int64_t>(idx, {int64_t(idx.size())}).to(A.device());
    Shape bs = lead;
    bs.insert(bs.end(), {nb2, s, s});
    Tensor A21 = index_select(Af, nd, index).reshape(bs);
    Tensor X = neg(matmul(matmul(T22, A21), T11));
    Tensor top = cat({T11, zeros_like(T11)}, -1);
    Tensor bot = cat({X, T22}, -1);
    Ti = cat({top, bot}, -2);  // [..., nb2, 2s, 2s]
  }
  Shape out = lead;
  out.insert(out.end(), {C, C});
  return Ti.reshape(out);
}

// ---------------------------------------------------------------------------------------------------
// delta rule

Tensor delta_rule_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g, Tensor& state,
                       const DeltaOptions& opt) {
  DType dt = work_dtype(q);
  int64_t B = q.size(0), H = q.size(1), Dk = q.size(2), Dv = v.size(2);
  Tensor qw = as_work(q, dt), kw = as_work(k, dt), vw = as_work(v, dt), bw = as_work(beta, dt);
  if (opt.normalize_qk) {
    qw = l2_normalize(qw, opt.norm_eps);
    kw = l2_normalize(kw, opt.norm_eps);
  }
  Tensor S = state.defined() ? as_work(state, dt) : zeros({B, H, Dk, Dv}, dt, q.device());
  if (g.defined()) S = mul(S, exp(as_work(g, dt)).view({B, H, 1, 1}));
  Tensor kS = matmul(kw.unsqueeze(2), S);  // [B, H, 1, Dv]
  Tensor u = mul(bw.view({B, H, 1, 1}), sub(vw.unsqueeze(2), kS));
  S = add(S, matmul(kw.unsqueeze(3), u));
  state = S;
  return scaled_like_v(matmul(qw.unsqueeze(2), S).squeeze(2), v, opt);
}

DeltaResult delta_rule_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g,
                                 const Tensor& initial_state, const DeltaOptions& opt) {
  return run_steps(q, k, v, initial_state, opt, [&](int64_t t, Tensor& S) {
    return delta_rule_step(q.select(1, t), k.select(1, t), v.select(1, t), beta.select(1, t),
                           g.defined() ? g.select(1, t) : Tensor(), S, opt);
  });
}

DeltaResult delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g,
                       const Tensor& initial_state, const DeltaOptions& opt) {
  check_qkv(q, k, v);
  int64_t C = opt.chunk;
  check_chunk(C);
  DType dt = work_dtype(q);
  Device dev = q.device();
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3), Dv = v.size(3);
  SEQMIX_CHECK(beta.dim() == 3 && beta.size(0) == B && beta.size(1) == T && beta.size(2) == H, "delta_rule: beta must be [",
               B, ", ", T, ", ", H, "], got ", shape_str(beta.shape()));
  SEQMIX_CHECK(!g.defined() || g.shape() == beta.shape(), "delta_rule: g must be [B, T, H] like beta, got ",
               shape_str(g.shape()));
#ifdef SEQMIX_WITH_CUDA
  // The fused chunked CUDA kernel (delta_rule_cuda.cu; SEQMIX_DELTA_CUDA=0 forces this op composition). f32
  // inputs take it only where its f32 operands fit (head dims <= 64): above that it would round them to bf16.
  const bool f32_exact = v.dtype() != DType::F32 || (Dk <= 64 && Dv <= 64);
  if (T > 0 && q.is_cuda() && f32_exact && delta_rule_cuda_enabled() &&
      delta_rule_cuda_supported(q, k, v, beta, g, initial_state, opt))
    return delta_rule_cuda(q, k, v, beta, g, initial_state, opt);
#endif
  Tensor S = initial_or_zeros(initial_state, B, H, Dk, Dv, dt, dev);
  if (T == 0) return make_result(zeros({B, 0, H, Dv}, v.dtype(), dev), S, opt);
  int64_t N = (T + C - 1) / C, Tp = N * C;
  Tensor qw = as_work(q, dt), kw = as_work(k, dt);
  if (opt.normalize_qk) {
    qw = l2_normalize(qw, opt.norm_eps);
    kw = l2_normalize(kw, opt.norm_eps);
  }
  // [B, H, N, C, D]; padded tokens have k = v = 0, beta = 0, g = 0: they leave the state alone.
  Tensor Q = to_heads_padded(qw, Tp).view({B, H, N, C, Dk});
  Tensor K = to_heads_padded(kw, Tp).view({B, H, N, C, Dk});
  Tensor V = to_heads_padded(as_work(v, dt), Tp).view({B, H, N, C, Dv});
  Tensor be = to_heads_padded(as_work(beta, dt), Tp).view({B, H, N, C, 1});
  Tensor strict = tri_mask(C, false, dt, dev), incl = tri_mask(C, true, dt, dev);

  Tensor KKt = matmul(K, K.transpose(-1, -2));  // [B, H, N, C, C]
  Tensor QKt = matmul(Q, K.transpose(-1, -2));
  Tensor Kb = mul(K, be);
  Tensor A, P, Wsrc, Qs, Kend, dend;
  if (g.defined()) {
    Tensor G = cumsum(to_heads_padded(as_work(g, dt), Tp).view({B, H, N, C}), -1);  // inclusive, <= 0
    Tensor Gt = G.unsqueeze(-1), Gs = G.unsqueeze(-2);
    // exp(G_t - G_s) on and below the diagonal (the exponent is zeroed above it, so nothing overflows)
    Tensor Gamma = mul(exp(mul(sub(Gt, Gs), incl)), incl);
    A = mul(mul(KKt, be), mul(Gamma, strict));
    P = mul(QKt, Gamma);
    Tensor eG = exp(G).unsqueeze(-1);  // [B, H, N, C, 1]
    Wsrc = mul(Kb, eG);
    Qs = mul(Q, eG);
    Tensor Glast = G.narrow(-1, C - 1, 1);  // [B, H, N, 1]
    Kend = mul(K, exp(sub(Glast, G)).unsqueeze(-1));
    dend = exp(Glast).unsqueeze(-1);  // [B, H, N, 1, 1]
  } else {
    A = mul(mul(KKt, be), strict);
    P = mul(QKt, incl);
    Wsrc = Kb;
    Qs = Q;
    Kend = K;
  }
  Tensor Tinv = unit_lower_inverse(A);
  Tensor W = matmul(Tinv, Wsrc);         // [B, H, N, C, Dk]
  Tensor U = matmul(Tinv, mul(V, be));   // [B, H, N, C, Dv]
  auto Us = unbind(U, 2), Ws = unbind(W, 2), Qss = unbind(Qs, 2), Ps = unbind(P, 2);
  auto KendTs = unbind(Kend.transpose(-1, -2), 2);  // [B, H, Dk, C] each
  std::vector<Tensor> dends;
  if (dend.defined()) dends = unbind(dend, 2);
  std::vector<Tensor> outs;
  outs.reserve(size_t(N));
  for (int64_t n = 0; n < N; ++n) {
    Tensor Un = sub(Us[n], matmul(Ws[n], S));  // [B, H, C, Dv]
    outs.push_back(add(matmul(Qss[n], S), matmul(Ps[n], Un)));
    Tensor upd = matmul(KendTs[n], Un);
    S = dend.defined() ? add(mul(S, dends[n]), upd) : add(S, upd);
  }
  return chunked_result(outs, B, H, Tp, T, Dv, v, S, opt);
}

// ---------------------------------------------------------------------------------------------------
// generalized delta rule

Tensor generalized_delta_rule_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a,
                                   const Tensor& b, Tensor& state, const DeltaOptions& opt) {
  DType dt = work_dtype(q);
  int64_t B = q.size(0), H = q.size(1), Dk = q.size(2), Dv = v.size(2);
  Tensor S = state.defined() ? as_work(state, dt) : zeros({B, H, Dk, Dv}, dt, q.device());
  Tensor aS = matmul(as_work(a, dt).unsqueeze(2), S);  // [B, H, 1, Dv]: a^T S_{t-1}
  S = add(mul(S, exp(as_work(lw, dt)).unsqueeze(3)),
          add(matmul(as_work(b, dt).unsqueeze(3), aS), matmul(as_work(k, dt).unsqueeze(3), as_work(v, dt).unsqueeze(2))));
  state = S;
  return scaled_like_v(matmul(as_work(q, dt).unsqueeze(2), S).squeeze(2), v, opt);
}

DeltaResult generalized_delta_rule_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw,
                                             const Tensor& a, const Tensor& b, const Tensor& initial_state,
                                             const DeltaOptions& opt) {
  return run_steps(q, k, v, initial_state, opt, [&](int64_t t, Tensor& S) {
    return generalized_delta_rule_step(q.select(1, t), k.select(1, t), v.select(1, t), lw.select(1, t), a.select(1, t),
                                       b.select(1, t), S, opt);
  });
}

// Within a chunk (local t, L_t = inclusive cumulative log decay per key channel, L_{-1} = 0), with
// z_t = S_{t-1}^T a_t:
//   S_t = diag(e^{L_t}) S_0 + sum_{s<=t} diag(e^{L_t - L_s}) (b_s z_s^T + k_s v_s^T)
//   z_t = (a_t e^{L_{t-1}})^T S_0 + sum_{s<t} [a_t . e^{L_{t-1}-L_s} b_s] z_s + [a_t . e^{L_{t-1}-L_s} k_s] v_s
//   => Z = (I - Mab)^{-1} (Atilde S_0 + Mak V) = W S_0 + U
//   o_t = (q_t e^{L_t})^T S_0 + sum_{s<=t} [q_t . e^{L_t-L_s} b_s] z_s + [q_t . e^{L_t-L_s} k_s] v_s
//   S_C = diag(e^{L_last}) S_0 + (b e^{L_last - L})^T Z + (k e^{L_last - L})^T V
// The pairwise decays e^{L_t - L_s} (s <= t; strict: e^{L_{t-1} - L_s}, s < t) are never a product of
// e^{L} and e^{-L}: diagonal sub-blocks form them explicitly, the rest factor through a reference point
// between the two rows (see `pair` below), so any decay in (0, 1] is safe.
DeltaResult generalized_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a,
                                   const Tensor& b, const Tensor& initial_state, const DeltaOptions& opt) {
  check_qkv(q, k, v);
  int64_t C = opt.chunk;
  check_chunk(C);
  DType dt = work_dtype(q);
  Device dev = q.device();
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3), Dv = v.size(3);
  for (const Tensor* t : {&lw, &a, &b})
    SEQMIX_CHECK(t->shape() == q.shape(), "generalized_delta_rule: lw, a, b must be [B, T, H, Dk] like q, got ",
                 shape_str(t->shape()));
#ifdef SEQMIX_WITH_CUDA
  // The CUDA kernels when the caller bounds the decays (rwkv7): the chunked tensor-core form
  // (generalized_delta_chunked.cu; SEQMIX_GDR_CHUNKED=0 skips it), else the fused recurrent kernel
  // (generalized_delta_cuda.cu); SEQMIX_GDR_CUDA=0 forces this op composition.
  if (T > 0 && q.is_cuda() && generalized_delta_cuda_enabled()) {
    if (generalized_delta_chunked_enabled() && generalized_delta_chunked_supported(q, k, v, lw, a, b, initial_state, opt))
      return generalized_delta_chunked_cuda(q, k, v, lw, a, b, initial_state, opt);
    if (generalized_delta_cuda_supported(q, k, v, lw, a, b, initial_state, opt))
      return generalized_delta_cuda(q, k, v, lw, a, b, initial_state, opt);
  }
#endif
  Tensor S = initial_or_zeros(initial_state, B, H, Dk, Dv, dt, dev);
  if (T == 0) return make_result(zeros({B, 0, H, Dv}, v.dtype(), dev), S, opt);
  int64_t N = (T + C - 1) / C, Tp = N * C;
  Tensor Q = to_heads_padded(as_work(q, dt), Tp).view({B, H, N, C, Dk});
  Tensor K = to_heads_padded(as_work(k, dt), Tp).view({B, H, N, C, Dk});
  Tensor V = to_heads_padded(as_work(v, dt), Tp).view({B, H, N, C, Dv});
  Tensor Aa = to_heads_padded(as_work(a, dt), Tp).view({B, H, N, C, Dk});
  Tensor Bb = to_heads_padded(as_work(b, dt), Tp).view({B, H, N, C, Dk});
  Tensor LW = to_heads_padded(as_work(lw, dt), Tp).view({B, H, N, C, Dk});
  Tensor L = cumsum(LW, 3);        // inclusive
  Tensor Lex = sub(L, LW);         // exclusive (L_{t-1})
  // M[t, s] = sum_c x[t,c] y[s,c] e^{P_tc - L_sc} (P = L with s <= t, or P = Lex with s < t), in sub-chunks of
  // `sb` rows: a diagonal block forms its pairwise decays explicitly ([.., sb, sb, Dk]); the pairs of block
  // I with all earlier rows go through one matmul with the reference R = L at the last row before I, as
  // (x e^{P - R}) (y e^{R - L})^T: both exponents <= 0 (L falls along the chunk), so nothing overflows, and
  // the memory is C * sb * Dk per chunk instead of C * C * Dk.
  const int64_t sb = std::max<int64_t>(1, std::min<int64_t>(16, C / 4)), nsub = C / sb;
  Tensor diag_incl = tri_mask(sb, true, dt, dev).view({sb, sb, 1});
  Tensor diag_strict = tri_mask(sb, false, dt, dev).view({sb, sb, 1});
  auto pair = [&](const Tensor& x, const Tensor& y, bool strict) {
    const Tensor& P = strict ? Lex : L;
    const Tensor& mask = strict ? diag_strict : diag_incl;
    std::vector<Tensor> rows;
    for (int64_t i = 0; i < nsub; ++i) {
      const int64_t r0 = i * sb;
      Tensor xi = x.narrow(3, r0, sb), Pi = P.narrow(3, r0, sb), Li = L.narrow(3, r0, sb), yi = y.narrow(3, r0, sb);
      Tensor Dii = mul(exp(mul(sub(Pi.unsqueeze(4), Li.unsqueeze(3)), mask)), mask);  // [.., sb, sb, Dk]
      Tensor diagb = sum(mul(mul(xi.unsqueeze(4), Dii), yi.unsqueeze(3)), -1);       // [.., sb, sb]
      std::vector<Tensor> parts;
      if (i > 0) {
        Tensor R = L.narrow(3, r0 - 1, 1);
        Tensor xs = mul(xi, exp(sub(Pi, R))), ys = mul(y.narrow(3, 0, r0), exp(sub(R, L.narrow(3, 0, r0))));
        parts.push_back(matmul(xs, ys.transpose(-1, -2)));  // [.., sb, r0]
      }
      parts.push_back(diagb);
      if (r0 + sb < C) parts.push_back(zeros({B, H, N, sb, C - r0 - sb}, dt, dev));
      rows.push_back(parts.size() == 1 ? parts[0] : cat(parts, 4));
    }
    return nsub == 1 ? rows[0] : cat(rows, 3);
  };
  Tensor Mab = pair(Aa, Bb, true), Mak = pair(Aa, K, true);
  Tensor Mqb = pair(Q, Bb, false), Mqk = pair(Q, K, false);
  Tensor Tinv = unit_lower_inverse(neg(Mab));
  Tensor W = matmul(Tinv, mul(Aa, exp(Lex)));  // [B, H, N, C, Dk]
  Tensor U = matmul(Tinv, matmul(Mak, V));     // [B, H, N, C, Dv]
  Tensor Qs = mul(Q, exp(L));
  Tensor OV = matmul(Mqk, V);  // [B, H, N, C, Dv]
  Tensor Llast = L.narrow(3, C - 1, 1);  // [B, H, N, 1, Dk]
  Tensor toend = exp(sub(Llast, L));
  Tensor BendT = mul(Bb, toend).transpose(-1, -2);           // [B, H, N, Dk, C]
  Tensor KV = matmul(mul(K, toend).transpose(-1, -2), V);    // [B, H, N, Dk, Dv]
  Tensor dend = exp(Llast).transpose(-1, -2);                // [B, H, N, Dk, 1]
  auto Ws = unbind(W, 2), Us = unbind(U, 2), Qss = unbind(Qs, 2), Mqbs = unbind(Mqb, 2), OVs = unbind(OV, 2);
  auto dends = unbind(dend, 2), BendTs = unbind(BendT, 2), KVs = unbind(KV, 2);
  std::vector<Tensor> outs;
  outs.reserve(size_t(N));
  for (int64_t n = 0; n < N; ++n) {
    Tensor Zn = add(matmul(Ws[n], S), Us[n]);  // [B, H, C, Dv]
    outs.push_back(add(add(matmul(Qss[n], S), matmul(Mqbs[n], Zn)), OVs[n]));
    S = add(add(mul(S, dends[n]), matmul(BendTs[n], Zn)), KVs[n]);
  }
  return chunked_result(outs, B, H, Tp, T, Dv, v, S, opt);
}

}  // namespace seqmix::mixers
