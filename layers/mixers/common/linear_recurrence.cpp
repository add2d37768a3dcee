// CPU forms of the shared gated-linear-recurrence engine (linear_recurrence.h): the token-by-token
// reference and the chunked form, both composed from the op library (autograd comes from the parts),
// plus the dispatcher that sends CUDA tensors to the CUDA chunked kernel.
//
// Chunked form, per chunk of C tokens (t, s index positions inside the chunk, G the inclusive cumulative
// sum of the log-decays g inside the chunk, Gq = G, or G - g (exclusive) when there is a bonus):
//   intra:  o_t += sum_{s <= t} (sum_d q_t[d] k_s[d] exp(Gq_t[d] - G_s[d])) v_s      (s < t with a bonus)
//   inter:  o_t += (q_t * exp(Gq_t))^T S_prev
//   bonus:  o_t += (sum_d q_t[d] u[d] k_t[d]) v_t
//   state:  S_next = diag(exp(G_C)) S_prev + sum_s (k_s * exp(G_C - G_s)) v_s^T
// Every decay factor is exp of a difference of cumulative log-decays that is <= 0 (masked entries are
// replaced by 0 before the exp, so nothing overflows and no inf meets a zero gradient). With a decay per
// key channel the intra term is an elementwise product over [C, C, Dk] followed by a sum over Dk (the same
// multiply-adds as the masked matmul q k^T, exact at any decay strength); with a decay per head (or none)
// it is a real masked matmul. The chunk-to-chunk state passing runs in f32 (f64 for f64 inputs).
// linear_recurrence keeps only its inputs for backward and recomputes the chunked form there.
#include "layers/mixers/common/linear_recurrence.h"

#include "autograd/checkpoint.h"
#include "core/ops.h"
#include "layers/mixers/common/recurrence_step.h"
#ifdef SEQMIX_WITH_CUDA
#include "layers/mixers/common/linear_recurrence_cuda.h"
#endif

namespace seqmix::mixers {

namespace {

enum class Decay { None, Head, Channel };

struct Dims {
  int64_t B, T, H, Dk, Dv;
  Decay decay;
  DType acc;  // accumulation dtype: f64 for f64 inputs, f32 otherwise
};

Dims check_inputs(const char* who, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus,
                  const Tensor& s0) {
  SEQMIX_CHECK(q.defined() && k.defined() && v.defined(), who, ": q, k and v are required");
  SEQMIX_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, who, ": q, k, v must be [B, T, H, D]; got ", shape_str(q.shape()),
               ", ", shape_str(k.shape()), ", ", shape_str(v.shape()));
  Dims d{q.size(0), q.size(1), q.size(2), q.size(3), v.size(3), Decay::None, DType::F32};
  SEQMIX_CHECK(k.shape() == q.shape(), who, ": k ", shape_str(k.shape()), " must match q ", shape_str(q.shape()));
  SEQMIX_CHECK(v.size(0) == d.B && v.size(1) == d.T && v.size(2) == d.H, who, ": v ", shape_str(v.shape()),
               " does not match q ", shape_str(q.shape()));
  if (g.defined()) {
    if (g.dim() == 4) {
      SEQMIX_CHECK(g.shape() == q.shape(), who, ": g ", shape_str(g.shape()), " must be [B, T, H, Dk] = ", shape_str(q.shape()));
      d.decay = Decay::Channel;
    } else {
      SEQMIX_CHECK(g.dim() == 3 && g.size(0) == d.B && g.size(1) == d.T && g.size(2) == d.H, who, ": g ", shape_str(g.shape()),
                   " must be [B, T, H, Dk] or [B, T, H]");
      d.decay = Decay::Head;
    }
  }
  if (bonus.defined())
    SEQMIX_CHECK(bonus.dim() == 2 && bonus.size(0) == d.H && bonus.size(1) == d.Dk, who, ": bonus ", shape_str(bonus.shape()),
                 " must be [H, Dk] = [", d.H, ", ", d.Dk, "]");
  if (s0.defined())
    SEQMIX_CHECK(s0.dim() == 4 && s0.size(0) == d.B && s0.size(1) == d.H && s0.size(2) == d.Dk && s0.size(3) == d.Dv, who,
                 ": initial_state ", shape_str(s0.shape()), " must be [B, H, Dk, Dv] = [", d.B, ", ", d.H, ", ", d.Dk, ", ", d.Dv, "]");
  SEQMIX_CHECK(is_floating(q.dtype()) && is_floating(k.dtype()) && is_floating(v.dtype()), who, ": q, k, v must be floating point");
  d.acc = (q.dtype() == DType::F64 || v.dtype() == DType::F64) ? DType::F64 : DType::F32;
  return d;
}

Tensor to_dtype(const Tensor& x, DType dt) {
  if (!x.defined() || x.dtype() == dt) return x;
  return cast(x, dt);
}

}  // namespace

RecurrenceResult linear_recurrence_reference(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& g_in,
                                             const Tensor& bonus_in, const Tensor& s0, const RecurrenceOptions& opt) {
  Dims d = check_inputs("linear_recurrence_reference", q_in, k_in, v_in, g_in, bonus_in, s0);
  Tensor q = to_dtype(q_in, d.acc), k = to_dtype(k_in, d.acc), v = to_dtype(v_in, d.acc);
  Tensor g = to_dtype(g_in, d.acc), u = to_dtype(bonus_in, d.acc);
  Tensor S = s0.defined() ? to_dtype(s0, d.acc) : zeros({d.B, d.H, d.Dk, d.Dv}, d.acc, q.device());
  Tensor uu = u.defined() ? u.unsqueeze(-1) : Tensor();  // [H, Dk, 1]
  std::vector<Tensor> outs;
  outs.reserve(size_t(d.T));
  for (int64_t t = 0; t < d.T; ++t) {
    Tensor qt = q.select(1, t).unsqueeze(-2);                             // [B, H, 1, Dk]
    Tensor kv = mul(k.select(1, t).unsqueeze(-1), v.select(1, t).unsqueeze(-2));  // [B, H, Dk, Dv]
    Tensor ot;
    if (u.defined()) ot = matmul(qt, add(S, mul(uu, kv)));
    if (d.decay == Decay::Channel) S = mul(exp(g.select(1, t)).unsqueeze(-1), S);
    else if (d.decay == Decay::Head) S = mul(exp(g.select(1, t)).unsqueeze(-1).unsqueeze(-1), S);
    S = add(S, kv);
    if (!u.defined()) ot = matmul(qt, S);
    outs.push_back(ot.squeeze(-2));  // [B, H, Dv]
  }
  RecurrenceResult r;
  if (d.T == 0) {
    r.o = zeros({d.B, 0, d.H, d.Dv}, v_in.dtype(), q.device());
  } else {
    Tensor o = stack(outs, 1);
    if (opt.scale != 1.0) o = o * opt.scale;
    r.o = to_dtype(o, v_in.dtype());
  }
  if (opt.want_final_state) r.final_state = S;
  return r;
}

namespace {

RecurrenceResult chunked_cpu(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& g_in, const Tensor& bonus_in,
                             const Tensor& s0, const RecurrenceOptions& opt) {
  Dims d = check_inputs("linear_recurrence", q_in, k_in, v_in, g_in, bonus_in, s0);
  SEQMIX_CHECK(opt.chunk >= 1, "linear_recurrence: chunk must be >= 1, got ", opt.chunk);
  const int64_t B = d.B, T = d.T, H = d.H, Dk = d.Dk, Dv = d.Dv;
  Device dev = q_in.device();
  RecurrenceResult r;
  if (T == 0) {
    r.o = zeros({B, 0, H, Dv}, v_in.dtype(), dev);
    if (opt.want_final_state) r.final_state = s0.defined() ? to_dtype(s0, d.acc) : zeros({B, H, Dk, Dv}, d.acc, dev);
    return r;
  }
  const int64_t C = std::min(opt.chunk, T);
  const int64_t N = (T + C - 1) / C, Tp = N * C, pad = Tp - T;
  const bool has_bonus = bonus_in.defined();

  // [B, T, H, D] -> zero-padded to Tp -> [B, H, N, C, D]. Padded tokens have k = 0 and g = 0: they leave
  // the state unchanged, so the final state is exact.
  auto prep = [&](const Tensor& x) {
    Tensor a = to_dtype(x, d.acc);
    if (pad > 0) {
      Shape s = a.shape();
      s[1] = pad;
      a = cat({a, zeros(s, d.acc, dev)}, 1);
    }
    if (a.dim() == 4) return a.reshape({B, N, C, H, a.size(3)}).permute({0, 3, 1, 2, 4}).contiguous();
    return a.reshape({B, N, C, H}).permute({0, 3, 1, 2}).contiguous();  // per-head decay: [B, H, N, C]
  };
  Tensor qc = prep(q_in), kc = prep(k_in), vc = prep(v_in);

  // causal mask inside a chunk: s <= t (s < t with a bonus, whose diagonal term is separate)
  std::vector<uint8_t> mv(size_t(C * C));
  std::vector<double> mf(size_t(C * C));
  for (int64_t t = 0; t < C; ++t)
    for (int64_t s = 0; s < C; ++s) {
      bool on = has_bonus ? s < t : s <= t;
      mv[size_t(t * C + s)] = on;
      mf[size_t(t * C + s)] = on;
    }
  Tensor mask = Tensor::from_vector<uint8_t>(mv, {C, C}).to(dev);
  Tensor maskf = Tensor::from_vector<double>(mf, {C, C}).to(dev, d.acc);
  Tensor zero = zeros({}, d.acc, dev);

  Tensor A;             // [B, H, N, C, C] decayed attention scores inside each chunk
  Tensor q_inter;       // [B, H, N, C, Dk] queries decayed from the chunk start
  Tensor k_state;       // [B, H, N, C, Dk] keys decayed to the chunk end
  Tensor chunk_decay;   // per chunk, multiplies the state: [B, H, N, Dk, 1] or [B, H, N, 1, 1]
  if (d.decay == Decay::Channel) {
    Tensor gc = prep(g_in);                       // [B, H, N, C, Dk]
    Tensor G = cumsum(gc, 3);                     // inclusive
    Tensor Gq = has_bonus ? sub(G, gc) : G;       // exclusive with a bonus
    Tensor Glast = G.narrow(3, C - 1, 1);         // [B, H, N, 1, Dk]
    Tensor D = sub(Gq.unsqueeze(4), G.unsqueeze(3));  // [B, H, N, C(t), C(s), Dk]
    Tensor E = mul(exp(where(mask.unsqueeze(-1), D, zero)), maskf.unsqueeze(-1));
    A = sum(mul(mul(qc.unsqueeze(4), kc.unsqueeze(3)), E), -1);
    q_inter = mul(qc, exp(Gq));
    k_state = mul(kc, exp(sub(Glast, G)));
    chunk_decay = exp(Glast).transpose(-2, -1);  // [B, H, N, Dk, 1]
  } else if (d.decay == Decay::Head) {
    Tensor gc = prep(g_in);                  // [B, H, N, C]
    Tensor G = cumsum(gc, 3);
    Tensor Gq = has_bonus ? sub(G, gc) : G;
    Tensor Glast = G.narrow(3, C - 1, 1);    // [B, H, N, 1]
    Tensor D = sub(Gq.unsqueeze(4), G.unsqueeze(3));  // [B, H, N, C, C]
    Tensor E = mul(exp(where(mask, D, zero)), maskf);
    A = mul(matmul(qc, kc.transpose(-2, -1)), E);
    q_inter = mul(qc, exp(Gq).unsqueeze(-1));
    k_state = mul(kc, exp(sub(Glast, G)).unsqueeze(-1));
    chunk_decay = exp(Glast).unsqueeze(-1);  // [B, H, N, 1, 1]
  } else {
    A = mul(matmul(qc, kc.transpose(-2, -1)), maskf);
    q_inter = qc;
    k_state = kc;
  }
  Tensor o = matmul(A, vc);  // [B, H, N, C, Dv]
  if (has_bonus) {
    Tensor u = to_dtype(bonus_in, d.acc).view({1, H, 1, 1, Dk});
    o = add(o, mul(sum(mul(mul(qc, u), kc), -1, true), vc));
  }

  // state passing across chunks (sequential over N, f32/f64)
  Tensor U = matmul(k_state.transpose(-2, -1), vc);  // [B, H, N, Dk, Dv]
  Tensor S = s0.defined() ? to_dtype(s0, d.acc) : Tensor();
  std::vector<Tensor> entering;
  entering.reserve(size_t(N));
  for (int64_t n = 0; n < N; ++n) {
    entering.push_back(S.defined() ? S : zeros({B, H, Dk, Dv}, d.acc, dev));
    Tensor Un = U.select(2, n);
    if (!S.defined()) S = Un;
    else if (chunk_decay.defined()) S = add(mul(chunk_decay.select(2, n), S), Un);
    else S = add(S, Un);
  }
  if (N > 1 || s0.defined()) o = add(o, matmul(q_inter, stack(entering, 2)));
  if (opt.scale != 1.0) o = o * opt.scale;
  o = o.permute({0, 2, 3, 1, 4}).reshape({B, Tp, H, Dv});
  if (pad > 0) o = o.narrow(1, 0, T);
  r.o = to_dtype(o, v_in.dtype());
  if (opt.want_final_state) r.final_state = S;
  return r;
}

}  // namespace

RecurrenceResult linear_recurrence(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus,
                                   const Tensor& initial_state, const RecurrenceOptions& opt) {
  SEQMIX_CHECK(q.defined(), "linear_recurrence: q is required");
  if (q.is_cuda()) {
#ifdef SEQMIX_WITH_CUDA
    return linear_recurrence_cuda(q, k, v, g, bonus, initial_state, opt);
#else
    SEQMIX_FAIL("linear_recurrence: CUDA tensors in a build without CUDA");
#endif
  }
  // Training on the CPU: the chunked form runs without recording its intermediates (they are several times
  // the size of the inputs: the [C, C, Dk] decay tensors); backward recomputes them (activation recompute
  // through autograd::checkpoint), so only the inputs are kept between forward and backward.
  bool any_grad = autograd::needs_grad({&q, &k, &v, &g, &bonus, &initial_state});
  if (!any_grad || q.size(1) == 0) return chunked_cpu(q, k, v, g, bonus, initial_state, opt);
  RecurrenceOptions inner = opt;
  inner.want_final_state = true;
  autograd::Tensors outs = autograd::checkpoint(
      [inner](const autograd::Tensors& in) -> autograd::Tensors {
        RecurrenceResult r = chunked_cpu(in[0], in[1], in[2], in[3], in[4], in[5], inner);
        return {r.o, r.final_state};
      },
      {q, k, v, g, bonus, initial_state});
  RecurrenceResult r;
  r.o = outs[0];
  if (opt.want_final_state) r.final_state = outs[1];
  return r;
}

RecurrenceResult linear_recurrence_step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& bonus,
                                        const Tensor& state, const RecurrenceOptions& opt) {
  SEQMIX_CHECK(q.defined() && q.dim() == 4, "linear_recurrence_step: q must be [B, T, H, Dk]");
  if (q.size(1) != 1) {
    RecurrenceOptions o = opt;
    o.want_final_state = true;
    return linear_recurrence(q, k, v, g, bonus, state, o);
  }
  // one token: S' = diag(exp(g)) S + k v^T; o = scale * S'^T q (or S^T q + (q.u.k) v with a bonus)
  Dims d = check_inputs("linear_recurrence_step", q, k, v, g, bonus, state);
  DType acc = state.defined() ? state.dtype() : d.acc;
  Tensor qt = to_dtype(q.select(1, 0), acc).unsqueeze(-2);  // [B, H, 1, Dk]
  Tensor kt = to_dtype(k.select(1, 0), acc), vt = to_dtype(v.select(1, 0), acc);
  Tensor S = state.defined() ? state : zeros({d.B, d.H, d.Dk, d.Dv}, acc, q.device());
  Tensor kv = mul(kt.unsqueeze(-1), vt.unsqueeze(-2));
  Tensor ot;
  if (bonus.defined()) ot = matmul(qt, add(S, mul(to_dtype(bonus, acc).unsqueeze(-1), kv)));
  if (d.decay == Decay::Channel) S = mul(exp(to_dtype(g.select(1, 0), acc)).unsqueeze(-1), S);
  else if (d.decay == Decay::Head) S = mul(exp(to_dtype(g.select(1, 0), acc)).unsqueeze(-1).unsqueeze(-1), S);
  S = add(S, kv);
  if (!bonus.defined()) ot = matmul(qt, S);
  if (opt.scale != 1.0) ot = ot * opt.scale;
  RecurrenceResult r;
  r.o = to_dtype(ot.squeeze(-2).unsqueeze(1), v.dtype());  // [B, 1, H, Dv]
  r.final_state = S;
  return r;
}

}  // namespace seqmix::mixers
