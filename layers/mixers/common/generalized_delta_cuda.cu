// Fused recurrent CUDA generalized delta rule (semantics in delta_rule.h; interface in generalized_delta_cuda.h;
// kernel bodies in generalized_delta_cuda.cuh, which the CPU emulation scripts/gdr_emulate.cc compiles for the
// host). Per batch, head and value column i, the column s = S[:, i] (Dk keys) evolves on its own:
//     sa_t = a_t . s_{t-1},   s_t = w_t (.) s_{t-1} + b_t sa_t + k_t v_t[i],   o_t[i] = scale q_t . s_t,
// so the forward keeps the state in registers (a CTA per 32 value columns; a thread holds 2 columns x 16 keys,
// 8 lanes per column group; a token costs two lane sums and no barrier) and reads each 16-token chunk of q, k,
// w, a, b, v from shared memory, the next chunk arriving by cp.async meanwhile. It saves sa_t and the state
// after every chunk (f32) for the backward.
//
// Backward (G_t = dL/dS_t including o_t's term, G_T = d final state):
//     G_t += scale q_t do_t^T,   dq_t = scale S_t do_t,   dsa_t = G_t^T b_t,   dv_t = G_t^T k_t,
//     dk_t = G_t v_t,   db_t = G_t sa_t,   dw_t = (G_t (.) S_{t-1}) 1,   da_t = S_{t-1} dsa_t,
//     G_{t-1} = diag(w_t) G_t + a_t dsa_t^T,   dlw_t = w_t (.) dw_t,   d initial state = G_{-1}.
// The per-value sums (dsa, dv) and the per-key sums (dq, dk, dw, da, db) run over different indices, so G is
// held twice, by three kernels:
//   gdr_bwd_seq   the reverse recurrence, value-major as the forward: dsa, dv, and G entering each chunk (saved);
//   gdr_bwd_keys  every (chunk, value slice, head, batch) at once, key-major (a thread per key, 32 value columns
//                 of G and S in registers): the per-key sums of its slice, to a scratch buffer;
//   gdr_finish    the slices' sum (fixed order: deterministic).
// S_{t-1} comes from S_t by inverting the step, S_{t-1} = (S_t - b sa^T - k v^T) / w, inside a 16-token chunk,
// from the exact state saved at its end: this needs w bounded away from 0 (generalized_delta_cuda.h). Memory:
// sa and dsa (T Dv f32), one f32 state and one f32 G per 16 tokens, the slices' partial sums.
// Measured alternatives (docs/PERF.md): one backward kernel for both passes (slower: latency bound by one CTA
// per slice), summing the slices inside it (+2.5 ms), other thread layouts (SEQMIX_GDR_FWD / SEQMIX_GDR_BWD).
//
// This is a recurrent kernel, not the chunked WY form of delta_rule_cuda.cu: the per-token work is
// O(Dk Dv) FMAs on CUDA cores, with no tensor cores. generalized_delta_rule() now takes the chunked tensor-core form
// (generalized_delta_chunked.cu) first; this kernel runs where that one does not apply (head dims not multiples of 16
// or above 128) and under SEQMIX_GDR_CHUNKED=0.
#include "layers/mixers/common/generalized_delta_cuda.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "autograd/function.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#include "core/ops.h"
#include "layers/mixers/common/delta_cuda_host.h"
#include "layers/mixers/common/generalized_delta_cuda.cuh"
#include "layers/mixers/common/kernel_grads.h"

namespace seqmix::mixers {

namespace {

using gdr_cuda::Geo;
using gdr_cuda::Ptrs;

template <class F>
void dispatch(DType in, F&& f) {
  if (in == DType::BF16) f.template operator()<__nv_bfloat16>();
  else if (in == DType::F16) f.template operator()<__half>();
  else f.template operator()<float>();
}

// The inputs every kernel reads: q, k, v, a, b (IN), lw, s0 (f32).
template <class IN>
Ptrs<IN> input_ptrs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw, const Tensor& a, const Tensor& b,
                    const Tensor& s0) {
  Ptrs<IN> p{};
  set_gdr_inputs<IN>(p, q, k, v, lw, a, b, s0);
  return p;
}

Geo make_geo(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, const DeltaOptions& opt) {
  Geo g{};
  g.B = int(B);
  g.T = int(T);
  g.H = int(H);
  g.Dk = int(Dk);
  g.Dv = int(Dv);
  g.nch = int((T + gdr_cuda::kCh - 1) / gdr_cuda::kCh);
  g.scale = float(opt.scale);
  // thread layouts (keys x value columns per thread) of the forward and of the backward's value-major pass:
  // SEQMIX_GDR_FWD / SEQMIX_GDR_BWD = 16x2 (default), 8x2, 8x4 or 32x1, for timing them
  auto layout = [](const char* name, int& kt, int& vt) {
    kt = 16;
    vt = 2;
    if (const char* e = std::getenv(name)) {
      int a = 0, b = 0;
      if (std::sscanf(e, "%dx%d", &a, &b) == 2) {
        kt = a;
        vt = b;
      }
    }
  };
  layout("SEQMIX_GDR_FWD", g.kt, g.vt);
  layout("SEQMIX_GDR_BWD", g.kt_bwd, g.vt_bwd);
  return g;
}

struct GdrFunction : autograd::CustomFunction {
  Geo geo{};
  DType dtypes[7] = {};  // q, k, v, lw, a, b, s0 as given
  std::string name() const override { return "generalized_delta_cuda"; }
  autograd::Tensors backward(const autograd::Tensors& grads) override;
};

autograd::Tensors GdrFunction::backward(const autograd::Tensors& grads) {
  const autograd::Tensors& s = saved();  // q, k, v, lw, a, b, s0, sa, ckpt
  Tensor dout = grads.size() > 0 ? grads[0] : Tensor();
  Tensor dfinal = grads.size() > 1 ? grads[1] : Tensor();
  if (!dout.defined() && !dfinal.defined()) return autograd::Tensors(7);
  const Tensor &q = s[0], &k = s[1], &v = s[2], &lw = s[3], &a = s[4], &b = s[5], &s0 = s[6];
  const Device dev = v.device();
  Tensor dq, dk, dv, dlw, da, db, ds0;
  {
    autograd::NoGradGuard ng;
    ::seqmix::cuda::select_device(dev.index);
    kernel_output_grads(dout, dfinal, v);
    const int64_t B = geo.B, T = geo.T, H = geo.H, Dk = geo.Dk, nsl = geo.Dv / gdr_cuda::kVs;
    const int64_t part_bytes = nsl * (v.dtype() == DType::F32 ? 20 : 12) * B * T * H * Dk;  // see gdr_cuda::PartT
    Tensor part = Tensor::empty({part_bytes}, DType::U8, dev);
    Tensor dsa = Tensor::empty({B, T, H, int64_t(geo.Dv)}, DType::F32, dev);
    Tensor gck = Tensor::empty({B, H, int64_t(geo.nch), Dk, int64_t(geo.Dv)}, DType::F32, dev);
    dq = Tensor::empty(q.shape(), q.dtype(), dev);
    dk = Tensor::empty(k.shape(), k.dtype(), dev);
    dv = Tensor::empty(v.shape(), v.dtype(), dev);
    da = Tensor::empty(a.shape(), a.dtype(), dev);
    db = Tensor::empty(b.shape(), b.dtype(), dev);
    dlw = Tensor::empty(lw.shape(), DType::F32, dev);
    if (needs_input_grad(6)) ds0 = Tensor::empty({B, H, Dk, int64_t(geo.Dv)}, DType::F32, dev);
    cudaStream_t st = ::seqmix::cuda::current_stream();
    dispatch(v.dtype(), [&]<class IN>() {
      Ptrs<IN> p = input_ptrs<IN>(q, k, v, lw, a, b, s0);
      p.sa = data_or_null<float>(s[7]);
      p.ckpt = data_or_null<float>(s[8]);
      p.dout = data_or_null<const IN>(dout);
      p.dfinal = data_or_null<const float>(dfinal);
      p.part = data_or_null<unsigned char>(part);
      p.dsa = data_or_null<float>(dsa);
      p.gck = data_or_null<float>(gck);
      p.dv = data_or_null<IN>(dv);
      p.ds0 = data_or_null<float>(ds0);
      p.dq = data_or_null<IN>(dq);
      p.dk = data_or_null<IN>(dk);
      p.da = data_or_null<IN>(da);
      p.db = data_or_null<IN>(db);
      p.dlw = data_or_null<float>(dlw);
      gdr_cuda::backward<IN>(geo, p, st);
    });
  }
  autograd::Tensors out(7);
  auto as = [](const Tensor& t, DType dt) { return t.dtype() == dt ? t : t.to(dt); };
  const Tensor* gs[7] = {&dq, &dk, &dv, &dlw, &da, &db, &ds0};
  for (int m = 0; m < 7; ++m)
    if (needs_input_grad(size_t(m)) && gs[m]->defined()) out[size_t(m)] = as(*gs[m], dtypes[m]);
  return out;
}

}  // namespace

bool generalized_delta_cuda_enabled() {
  const char* e = std::getenv("SEQMIX_GDR_CUDA");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

bool generalized_delta_cuda_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lw,
                                      const Tensor& a, const Tensor& b, const Tensor& s0, const DeltaOptions& opt) {
  if (!gdr_inputs_ok(q, k, v, lw, a, b, s0, opt, kGdrMinLogDecay)) return false;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3), Dv = v.size(3);
  if (Dk != 32 && Dk != 64 && Dk != 128) return false;
  if (Dv % gdr_cuda::kVs != 0 || Dv < gdr_cuda::kVs || Dv > 4096) return false;
  if (B > 65535 || H > 65535 || T > (int64_t(1) << 30) || B * T * H * std::max(Dk, Dv) > (int64_t(1) << 40)) return false;
  return gdr_cuda::max_smem<float>(int(Dk)) <= size_t(::seqmix::cuda::max_shared_memory_optin());
}

DeltaResult generalized_delta_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& lw_in,
                                   const Tensor& a_in, const Tensor& b_in, const Tensor& s0_in, const DeltaOptions& opt) {
  SEQMIX_CHECK(generalized_delta_cuda_supported(q_in, k_in, v_in, lw_in, a_in, b_in, s0_in, opt),
               "generalized_delta_rule (CUDA): unsupported inputs (CUDA tensors, bf16/f16/f32 q, k, v, a, b [B, T, H, D], "
               "Dk in {32, 64, 128}, Dv a multiple of 32, opt.min_log_decay >= ", kGdrMinLogDecay, "); got q ",
               shape_str(q_in.shape()), " v ", shape_str(v_in.shape()));
  const int64_t B = q_in.size(0), T = q_in.size(1), H = q_in.size(2), Dk = q_in.size(3), Dv = v_in.size(3);
  const Device dev = v_in.device();
  ::seqmix::cuda::select_device(dev.index);
  const DType dt = v_in.dtype();
  const Geo geo = make_geo(B, T, H, Dk, Dv, opt);
  const bool want_grad = T > 0 && autograd::needs_grad({&q_in, &k_in, &v_in, &lw_in, &a_in, &b_in, &s0_in});
  Tensor q, k, v, lw, a, b, s0, sa, ckpt;
  DeltaResult res;
  {
    autograd::NoGradGuard ng;
    auto prep = [&](const Tensor& t, DType want) {
      Tensor x = t.detach();
      if (x.dtype() != want) x = x.to(want);
      return x.contiguous();
    };
    q = prep(q_in, dt);
    k = prep(k_in, dt);
    v = prep(v_in, dt);
    a = prep(a_in, dt);
    b = prep(b_in, dt);
    lw = prep(lw_in, DType::F32);
    if (s0_in.defined()) s0 = prep(s0_in, DType::F32);
    res.o = Tensor::empty({B, T, H, Dv}, dt, dev);
    res.final_state = Tensor::empty({B, H, Dk, Dv}, DType::F32, dev);
    if (T == 0) {
      if (s0.defined()) res.final_state.copy_(s0);
      else res.final_state.zero_();
    } else {
      if (want_grad) {
        sa = Tensor::empty({B, T, H, Dv}, DType::F32, dev);
        ckpt = Tensor::empty({B, H, int64_t(geo.nch), Dk, Dv}, DType::F32, dev);
      }
      cudaStream_t st = ::seqmix::cuda::current_stream();
      dispatch(dt, [&]<class IN>() {
        Ptrs<IN> p = input_ptrs<IN>(q, k, v, lw, a, b, s0);
        p.o = data_or_null<IN>(res.o);
        p.sa = data_or_null<float>(sa);
        p.ckpt = data_or_null<float>(ckpt);
        p.final_s = data_or_null<float>(res.final_state);
        gdr_cuda::forward<IN>(geo, p, st);
      });
    }
  }
  const Tensor final_out = opt.want_final_state ? res.final_state : Tensor();
  if (want_grad) {
    auto fn = std::make_shared<GdrFunction>();
    fn->geo = geo;
    const Tensor* ins[7] = {&q_in, &k_in, &v_in, &lw_in, &a_in, &b_in, &s0_in};
    for (int m = 0; m < 7; ++m) fn->dtypes[m] = ins[m]->defined() ? ins[m]->dtype() : DType::F32;
    fn->save_for_backward({q, k, v, lw, a, b, s0, sa, ckpt});
    autograd::CustomFunction::attach(fn, {q_in, k_in, v_in, lw_in, a_in, b_in, s0_in},
                                     opt.want_final_state ? autograd::Tensors{res.o, final_out} : autograd::Tensors{res.o});
  }
  res.final_state = final_out;
  return res;
}

}  // namespace seqmix::mixers
