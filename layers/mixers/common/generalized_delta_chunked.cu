// Chunked CUDA generalized delta rule (rwkv7's time mix; semantics in delta_rule.h, interface in
// generalized_delta_cuda.h; kernel bodies in dplr_cuda.cuh, which the CPU emulation scripts/dplr_emulate.cc
// compiles for the host):
//     S_t = diag(w_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,   o_t = scale S_t^T q_t,   w_t = e^{lw_t}.
// Own derivation and code. Chunks of C = 64 tokens (the last one padded with zeros and lw = 0); S_n enters chunk n;
// inside a chunk G_t = sum_{s<=t} lw_s per key (inclusive, f32), G_{-1} = 0, G_C = G_{C-1}, and
//     Ae = diag(e^{G_{t-1}}) A,  Qe = diag(e^{G_t}) Q,  Bi = diag(e^{-G_t}) B,  Ki = diag(e^{-G_t}) K  (rows t),
//     Bd = diag(e^{G_C}) Bi,  Kv = diag(e^{G_C}) Ki  (as column scalings of the key index),
//     L_ab = strict_lower(Ae Bi^T),  L_ak = strict_lower(Ae Ki^T),  P_b = lower(Qe Bi^T),  P_k = lower(Qe Ki^T),
// (entry (t, s): sum_j x_t[j] y_s[j] e^{G_t'[j] - G_s[j]}, the pairwise decays; the bound lw >= -0.61 keeps both
// factors inside f32's and bf16's range at C = 64, so no sub-chunks). With U'_t = a_t^T S_{t-1} (the rows the
// rank-one part writes):
//     U'  = T (Ae S_n + L_ak V),  T = (I - L_ab)^{-1}    ->   U' = U - W S_n,  W = -T Ae,  U = (T L_ak) V
//     O   = scale (Qe S_n + P_b U' + P_k V)
//     S_{n+1} = diag(e^{G_C}) S_n + Bd^T U' + Kv^T V  =  diag(e^{G_C}) (S_n + Bi^T U' + Ki^T V)
// which is the delta rule's chunk recurrence with per-key decays and a second write term, so fwd_state and
// bwd_state are the delta rule's kernels (delta_rule_cuda.cuh, with DplrPtrs).
// Backward (dO includes the scale; dS' = dS_{n+1}; dS'g = diag(e^{G_C}) dS'):
//     dU'  = P_b^T dO + Bd dS'                      (bwd_prep: P_b^T dO; bwd_state: the rest, sequentially)
//     dS_n = diag(e^{G_C}) dS' + Qe^T dO - W^T dU'
//     dX   = T^T dU'                                (U' = T X, X = Ae S_n + L_ak V)
//     dv   = P_k^T dO + Ki dS'g + L_ak^T dX
//     dP_b = dO U'^T, dP_k = dO V^T (lower),  dL_ab = dX U'^T, dL_ak = dX V^T (strictly lower)
//     dQe  = dO S_n^T + dP_b Bi + dP_k Ki,          dAe = dX S_n^T + dL_ab Bi + dL_ak Ki
//     dBi  = dP_b^T Qe + dL_ab^T Ae + U' dS'g^T,    dKi = dP_k^T Qe + dL_ak^T Ae + V dS'g^T
//     dq = e^{G_t} dQe,  da = e^{G_{t-1}} dAe,  db = e^{-G_t} dBi,  dk = e^{-G_t} dKi
//     dG_t = q.dq - b.db - k.dk + a_{t+1}.da_{t+1} + [t = C-1] <dS', S_{n+1}>,   dlw_t = sum_{t' >= t} dG_t'
// (G_C enters only through S_{n+1} = diag(e^{G_C}) (..), hence the last term). Kernels: fwd_prep, fwd_state,
// fwd_out; bwd_prep, bwd_state, bwd_val (dX, dv, the four C x C gradients, the S_{n+1} parts of dBi / dKi),
// bwd_key (dQe, dAe, the rest of dBi / dKi, then dq, da, db, dk, dG in shared memory and its reverse sum, dlw).
// Memory: W, Bd, Kv, Ae, Bi, Ki, Qe, U' (T x D, operand type), T per chunk, S_n per chunk (operand type); the
// backward adds dU' / dX (operand type), dU (f32), dS_{n+1} per chunk, the four C x C gradients and two f32 T x Dk
// gradient buffers (bwd_val's parts of dBi, dKi).
// 256 threads per CTA; fwd_out, bwd_val and bwd_key (one CTA per SM at Dk = Dv = 128) 512. Dynamic shared memory
// (bytes, C = 64; scripts/dplr_emulate.sh --smem prints the emulation's, which adds 20,480 to the three 512-thread
// kernels for the scratch tiles that only its epilogues use):
//                       grid            Dk=Dv=64 bf16   Dk=Dv=128 bf16   Dk=Dv=64 f32 operands
//     fwd_prep          (N, H, B)            72,960          97,536           120,832
//     fwd_state         (Dv/32, H, B)        71,936         111,104           114,944
//     fwd_out           (N, H, B)            91,136         174,080           164,864
//     bwd_prep          (N, H, B)            47,104          71,680            83,968
//     bwd_state         (Dv/32, H, B)        71,936         111,104           114,944
//     bwd_val           (N, H, B)           110,080         201,728           202,240
//     bwd_key           (N, H, B)           126,976         226,304           219,136
// f32 inputs take f32 operands where every kernel fits (head dims up to 64), else bf16 operands.
// Status: verified by CPU emulation (scripts/dplr_emulate.sh: every kernel body on the host against
// generalized_delta_rule_reference in f64, odd lengths, initial states, Dk != Dv, decays at the bound and near 1; f32
// operands <= 8e-5 relative, bf16 <= 1.3e-2; ThreadSanitizer at the real block sizes) and on the lent H100
// (tests/gpu/test_generalized_delta_gpu.cpp, racecheck). B=4 T=4096 H=16 D=128 bf16 fwd+bwd: 4.08 ms (1.26x deltanet's
// chunked kernel) against the recurrent kernel's 10.47 (docs/PERF.md, sessions 10 and 11).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "autograd/function.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#include "core/ops.h"
#include "layers/mixers/common/delta_cuda_host.h"
#include "layers/mixers/common/dplr_cuda.cuh"
#include "layers/mixers/common/generalized_delta_cuda.h"
#include "layers/mixers/common/kernel_grads.h"

namespace seqmix::mixers {

namespace {

using delta_cuda::DplrPtrs;
using delta_cuda::Geo;

Geo make_geo(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, const DeltaOptions& opt) {
  return delta_geo<Geo>(B, T, H, Dk, Dv, opt.scale, 0.0, false);
}

bool op_f32_fits(const Geo& g) { return delta_cuda::gen_max_smem<float>(g) <= delta_smem_limit(); }

// The forward's buffers the backward reads (operand dtype unless noted).
struct Saved {
  Tensor q, k, v, lw, a, b, s0;                       // prepared inputs (q, k, v, a, b in v's dtype; lw, s0 f32)
  Tensor W, Bd, Kv, Ae, Bi, Ki, Qe, Tm, Un, states;  // hp [B, H, N C, D]; Tm [B, H, N C, C]; states [B, H, N, Dk, Dv]
  Tensor gCk, final_s;                                // f32 [B, H, N, Dk], [B, H, Dk, Dv]
};

template <class IN, class OP>
DplrPtrs<IN, OP> saved_ptrs(const Saved& s) {
  DplrPtrs<IN, OP> p{};
  set_gdr_inputs<IN>(p, s.q, s.k, s.v, s.lw, s.a, s.b, s.s0);
  p.W = data_or_null<OP>(s.W);
  p.Kd = data_or_null<OP>(s.Bd);
  p.Kv = data_or_null<OP>(s.Kv);
  p.Ae = data_or_null<OP>(s.Ae);
  p.Bi = data_or_null<OP>(s.Bi);
  p.Ki = data_or_null<OP>(s.Ki);
  p.Qg = data_or_null<OP>(s.Qe);
  p.Tm = data_or_null<OP>(s.Tm);
  p.Un = data_or_null<OP>(s.Un);
  p.states = data_or_null<OP>(s.states);
  p.gCk = data_or_null<float>(s.gCk);
  p.final_s = data_or_null<float>(s.final_s);
  return p;
}

struct GenChunkedFunction : autograd::CustomFunction {
  Geo geo{};
  bool op_f32 = false;
  Saved sv;
  DType dtypes[7] = {};  // of q, k, v, lw, a, b, s0 as given
  std::string name() const override { return "generalized_delta_chunked_cuda"; }
  autograd::Tensors backward(const autograd::Tensors& grads) override;
};

autograd::Tensors GenChunkedFunction::backward(const autograd::Tensors& grads) {
  Tensor dout = grads.size() > 0 ? grads[0] : Tensor();
  Tensor dfinal = grads.size() > 1 ? grads[1] : Tensor();
  if (!dout.defined() && !dfinal.defined()) return autograd::Tensors(7);
  const Geo& g = geo;
  const Device dev = sv.v.device();
  Tensor dq, dk, dv, dlw, da, db, ds0;
  {
    autograd::NoGradGuard ng;
    ::seqmix::cuda::select_device(dev.index);
    kernel_output_grads(dout, dfinal, sv.v);
    const int64_t B = g.B, H = g.H, Dk = g.Dk, Dv = g.Dv, N = g.N, C = g.C, Tp = N * C;
    const DType opdt = op_f32 ? DType::F32 : DType::BF16;
    Tensor dU = Tensor::empty({B, H, Tp, Dv}, DType::F32, dev);
    Tensor dUn = Tensor::empty({B, H, Tp, Dv}, opdt, dev);
    Tensor dH = Tensor::empty({B, H, N, Dk, Dv}, opdt, dev);
    Tensor dX = Tensor::empty({B, H, Tp, Dv}, opdt, dev);
    Tensor dL = Tensor::empty({B, H, N, 4, C, C}, opdt, dev);
    Tensor dBt = Tensor::empty({B, H, Tp, Dk}, DType::F32, dev);
    Tensor dKt = Tensor::empty({B, H, Tp, Dk}, DType::F32, dev);
    Tensor dGC = Tensor::empty({B, H, N, Dk}, DType::F32, dev);
    dq = Tensor::empty(sv.q.shape(), sv.q.dtype(), dev);
    dk = Tensor::empty(sv.k.shape(), sv.k.dtype(), dev);
    dv = Tensor::empty(sv.v.shape(), sv.v.dtype(), dev);
    da = Tensor::empty(sv.a.shape(), sv.a.dtype(), dev);
    db = Tensor::empty(sv.b.shape(), sv.b.dtype(), dev);
    dlw = Tensor::empty(sv.lw.shape(), DType::F32, dev);
    ds0 = Tensor::empty({B, H, Dk, Dv}, DType::F32, dev);
    cudaStream_t st = ::seqmix::cuda::current_stream();
    delta_dispatch(sv.v.dtype(), op_f32, [&]<class IN, class OP>() {
      DplrPtrs<IN, OP> p = saved_ptrs<IN, OP>(sv);
      p.dout = data_or_null<const IN>(dout);
      p.dfinal = data_or_null<const float>(dfinal);
      p.dU = data_or_null<float>(dU);
      p.dUn = data_or_null<OP>(dUn);
      p.dH = data_or_null<OP>(dH);
      p.dX = data_or_null<OP>(dX);
      p.dL = data_or_null<OP>(dL);
      p.dBt = data_or_null<float>(dBt);
      p.dKt = data_or_null<float>(dKt);
      p.dGC = data_or_null<float>(dGC);
      p.dq = data_or_null<IN>(dq);
      p.dk = data_or_null<IN>(dk);
      p.dv = data_or_null<IN>(dv);
      p.da = data_or_null<IN>(da);
      p.db = data_or_null<IN>(db);
      p.dlw = data_or_null<float>(dlw);
      p.ds0 = data_or_null<float>(ds0);
      delta_cuda::gen_backward<IN, OP>(g, p, st);
    });
  }
  autograd::Tensors out(7);
  const Tensor* gs[7] = {&dq, &dk, &dv, &dlw, &da, &db, &ds0};
  for (int m = 0; m < 7; ++m)
    if (needs_input_grad(size_t(m)) && gs[m]->defined())
      out[size_t(m)] = gs[m]->dtype() == dtypes[m] ? *gs[m] : gs[m]->to(dtypes[m]);
  return out;
}

}  // namespace

bool generalized_delta_chunked_enabled() {
  const char* e = std::getenv("SEQMIX_GDR_CHUNKED");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

bool generalized_delta_chunked_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw,
                                         const Tensor& a, const Tensor& b, const Tensor& s0, const DeltaOptions& opt) {
  if (!gdr_inputs_ok(q, k, v, lw, a, b, s0, opt, kGdrMinLogDecay)) return false;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3), Dv = v.size(3);
  if (Dk % 16 != 0 || Dv % 16 != 0 || Dk < 16 || Dv < 16 || Dk > 128 || Dv > 128) return false;
  if (B > 65535 || H > 65535 || T > (int64_t(1) << 30)) return false;
  const Geo geo = make_geo(B, std::max<int64_t>(T, 1), H, Dk, Dv, opt);
  return delta_cuda::gen_max_smem<__nv_bfloat16>(geo) <= delta_smem_limit();
}

DeltaResult generalized_delta_chunked_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& lw_in,
                                           const Tensor& a_in, const Tensor& b_in, const Tensor& s0_in,
                                           const DeltaOptions& opt) {
  SEQMIX_CHECK(generalized_delta_chunked_supported(q_in, k_in, v_in, lw_in, a_in, b_in, s0_in, opt),
               "generalized_delta_rule (chunked CUDA): unsupported inputs (CUDA tensors, bf16/f16/f32 q, k, a, b [B, T, H, "
               "Dk], v [B, T, H, Dv], lw [B, T, H, Dk], Dk, Dv multiples of 16 up to 128, opt.min_log_decay >= ",
               kGdrMinLogDecay, "); got q ", shape_str(q_in.shape()), " v ", shape_str(v_in.shape()), " min_log_decay ",
               opt.min_log_decay);
  const int64_t B = q_in.size(0), T = q_in.size(1), H = q_in.size(2), Dk = q_in.size(3), Dv = v_in.size(3);
  const Device dev = v_in.device();
  ::seqmix::cuda::select_device(dev.index);
  const DType dt = v_in.dtype();
  const Geo geo = make_geo(B, T, H, Dk, Dv, opt);
  const bool op_f32 = dt == DType::F32 && op_f32_fits(geo);
  const bool want_grad = T > 0 && autograd::needs_grad({&q_in, &k_in, &v_in, &lw_in, &a_in, &b_in, &s0_in});
  Saved sv;
  DeltaResult res;
  {
    autograd::NoGradGuard ng;
    auto prep = [&](const Tensor& t, DType want) {
      Tensor x = t.detach();
      if (x.dtype() != want) x = x.to(want);
      return x.contiguous();
    };
    sv.q = prep(q_in, dt);
    sv.k = prep(k_in, dt);
    sv.v = prep(v_in, dt);
    sv.a = prep(a_in, dt);
    sv.b = prep(b_in, dt);
    sv.lw = prep(lw_in, DType::F32);
    if (s0_in.defined()) sv.s0 = prep(s0_in, DType::F32);
    res.o = Tensor::empty({B, T, H, Dv}, dt, dev);
    res.final_state = Tensor::empty({B, H, Dk, Dv}, DType::F32, dev);
    if (T == 0) {
      if (sv.s0.defined()) res.final_state.copy_(sv.s0);
      else res.final_state.zero_();
    } else {
      const int64_t N = geo.N, Tp = N * geo.C;
      const DType opdt = op_f32 ? DType::F32 : DType::BF16;
      auto hp = [&](int64_t D) { return Tensor::empty({B, H, Tp, D}, opdt, dev); };
      sv.W = hp(Dk);
      sv.Bd = hp(Dk);
      sv.Kv = hp(Dk);
      sv.Bi = hp(Dk);
      sv.Ki = hp(Dk);
      if (want_grad) {
        sv.Ae = hp(Dk);
        sv.Qe = hp(Dk);
        sv.Tm = hp(geo.C);
      }
      const Tensor U = Tensor::empty({B, H, Tp, Dv}, DType::F32, dev);  // the forward's own
      sv.Un = hp(Dv);
      sv.states = Tensor::empty({B, H, N, Dk, Dv}, opdt, dev);
      sv.gCk = Tensor::empty({B, H, N, Dk}, DType::F32, dev);
      sv.final_s = res.final_state.detach();  // (not the output itself: no reference cycle through its grad_fn)
      cudaStream_t st = ::seqmix::cuda::current_stream();
      delta_dispatch(dt, op_f32, [&]<class IN, class OP>() {
        DplrPtrs<IN, OP> p = saved_ptrs<IN, OP>(sv);
        p.U = data_or_null<float>(U);
        p.o = data_or_null<IN>(res.o);
        delta_cuda::gen_forward<IN, OP>(geo, p, st);
      });
    }
  }
  const Tensor final_out = opt.want_final_state ? res.final_state : Tensor();
  if (want_grad) {
    auto fn = std::make_shared<GenChunkedFunction>();
    fn->geo = geo;
    fn->op_f32 = op_f32;
    fn->sv = sv;
    const Tensor* ins[7] = {&q_in, &k_in, &v_in, &lw_in, &a_in, &b_in, &s0_in};
    for (int m = 0; m < 7; ++m) fn->dtypes[m] = ins[m]->defined() ? ins[m]->dtype() : DType::F32;
    autograd::CustomFunction::attach(fn, {q_in, k_in, v_in, lw_in, a_in, b_in, s0_in},
                                     opt.want_final_state ? autograd::Tensors{res.o, final_out} : autograd::Tensors{res.o});
  }
  res.final_state = final_out;
  return res;
}

}  // namespace seqmix::mixers
