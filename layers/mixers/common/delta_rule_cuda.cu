// Fused chunked CUDA delta rule (semantics in delta_rule.h; interface in delta_rule_cuda.h; kernel bodies in
// delta_rule_cuda.cuh, which the CPU emulation scripts/delta_emulate.cc compiles for the host):
//     S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,   o_t = scale S_t^T q_t,   a_t = e^{g_t},
// q, k L2-normalized per head inside (q^ = q r_q, r_q = (|q|^2 + eps)^{-1/2}).
//
// Chunked (WY / UT) form, own derivation and code. Chunks of C = 64 tokens (the last one padded with
// q = k = v = b = g = 0: such tokens leave the state alone); S_n is the state entering chunk n; inside a chunk
// (local t, s) G_t = sum_{s<=t} g_s (inclusive, f32), Gamma_ts = e^{G_t - G_s} (s <= t: exponent <= 0),
// G_C = G_{C-1}:
//     A   = strict_lower(diag(b) K K^T (.) Gamma),   T = (I + A)^{-1}   (f32, blocked: the 16 x 16 diagonal
//           blocks by forward substitution, a thread per column; then the off-diagonal blocks by block distance)
//     X   = diag(b e^G) K,   Y = diag(b) V,   W = T X,   U = T Y
//     U'  = U - W S_n                                       (the "new values" b_t (v_t - a_t.. S^T k_t))
//     P   = (Q K^T) (.) Gamma (.) lower-inclusive,   Qg = diag(e^G) Q,   Kd = diag(e^{G_C - G}) K
//     O   = scale (Qg S_n + P U'),   S_{n+1} = e^{G_C} S_n + Kd^T U'
// Kernels: fwd_prep (per chunk: A, T, W, U, Kd, G_C; T saved), fwd_state (sequential over chunks per (batch, head,
// 32 or 16 value columns): U' and every S_n in f32), fwd_out (per chunk: O).
//
// Backward (dO includes the scale; dS' = dS_{n+1}, the gradient of the state leaving chunk n):
//     dU'  = P^T dO + Kd dS'                                 (needs dS': the reverse sequential pass)
//     dS_n = e^{G_C} dS' + Qg^T dO - W^T dU'                  (S_n enters O, S_{n+1} and U')
//     dW   = -dU' S_n^T,   dX = T^T dW,   dY = T^T dU'
//     dA   = -(dX W^T + dY U^T) on the strict lower part      (dT = dW X^T + dY.., dA = -T^T dT T^T, T X = W)
//     dq^  = e^G (dO S_n^T) + F K,                 F = (dO U'^T) (.) Gamma (.) lower-inclusive
//     dk^  = b e^G dX + E K + E^T K + F^T Q + Kd',   E = dA (.) diag(b) Gamma,  Kd' = diag(e^{G_C - G}) U' dS'^T
//     dv   = b dY
//     db_t = e^{G_t} dX_t.k^_t + dY_t.v_t + sum_{s<t} dA_ts (k^_t.k^_s) Gamma_ts
//     dq   = r_q (dq^ - q^ (q^.dq^)),  the same for k
// The decays: every use of G_t multiplies a vector of token t by e^{+G_t} or e^{-G_t}, so dL/dG_t is the dot of
// that vector with its gradient along that path, with the sign of the exponent:
//     dG_t = q^_t.dq^_t + k^_t.(b e^G dX + E K)_t - k^_t.(E^T K + F^T Q + Kd')_t
//            + [t = C-1] (e^{G_C} <dS', S_n> + sum_s k^_s.Kd'_s)      (G_C in S_{n+1} and in Kd)
//     dg_t = sum_{t' >= t in the chunk} dG_t'                              (G is a cumulative sum of g)
// (the k^.Kd' terms are added with the same rounded values on both sides, so that they cancel exactly where
// they should: dg = 0 at T = 1 without an initial state). Kernels: bwd_prep (per chunk: P^T dO, Qg),
// bwd_state (reverse sequential: dU' and every dS_{n+1} in f32, d initial state), bwd_wy (per chunk: T, W as saved, U
// again; dW, dX, dY, dA; dv, dbeta, the WY parts of dk^ and dG), bwd_out (per chunk: F, dq^, the rest of
// dk^ and dG; dq, dk through the normalization; dg).
//
// Memory: O(T (Dk + Dv + C)) activations (W, Kd, U', T saved; dU', Qg, dq^, dk^ in the backward) plus one
// state per chunk (S_n saved; dS_{n+1} in the backward). The sequential kernels keep the state in f32; what they
// save for the other kernels (S_n, U', dS_{n+1}, dU') is stored in the operand type, since every later use of it is
// an operand of a product (bf16: half the bytes of f32 for the largest buffers; one dot product, e^{G_C} <dS', S_n>
// in dG, now reads the rounded values).
// Products: every C x C, C x D and D x D product in shared memory; bf16 -> f32 tensor cores (tc_tiles.cuh: a warp
// per 16 x 16 output tile, ldmatrix + mma.sync, most epilogues straight from the accumulator registers, a few
// through a per-warp f32 scratch tile), or plain f32 products for f32 operands. Row-wise work (the L2
// normalization and its backward) takes a warp per row with shuffle sums, several rows' loads in flight per warp;
// plain tile copies go by cp.async, several tiles in flight at once, and converting tile loads issue a few 16-byte
// loads per thread before their shared-memory stores (one global round trip per batch, not per piece); the walks
// over tiles and pieces use shifts, not divisions, for power-of-two shapes. The epilogues that add to a global f32
// buffer (dk^) load a lane's values together before storing, and bwd_wy (E K + E^T K) and bwd_out (F^T Q + Kd')
// add two products in one such pass (mm_pieces_ab). The sequential kernels load the next chunk's W, Kd (and Qg,
// and dO's columns for 16-bit inputs) and their f32 U / dU columns into registers while the current chunk's
// products run (RowPrefetch, ColPrefetch; launch bounds 256 x 2: 128 registers, two CTAs per SM); the U / dU
// columns go to shared memory, so that the epilogue's read-modify-write reads them there.
// 256 threads per CTA. Dynamic shared memory (bytes, C = 64; delta_cuda::Lay*):
//                       grid            Dk=Dv=64 bf16   Dk=Dv=128 bf16   Dk=Dv=64 f32 operands
//     fwd_prep          (N, H, B)            46,080          55,040            66,304
//     fwd_state         (Dv/32, H, B)        71,680         110,592           114,688
//     fwd_out           (N, H, B)            49,920          70,400            88,832
//     bwd_prep          (N, H, B)            39,296          55,680            66,944
//     bwd_state         (Dv/32, H, B)        71,680         110,592           114,688
//     bwd_wy            (N, H, B)            99,584         107,776           122,112
//     bwd_out           (N, H, B)            57,728         107,904           103,808
// (Dv/16 column tiles when Dv is not a multiple of 32.) fwd_out forms O 32 (or 16) value columns at a time from
// two piece buffers of S_n and U' (launch bounds 256 x 3: 80 registers, three CTAs per SM at Dk = Dv = 128);
// fwd_prep loads Y into A's space once T is formed and bwd_prep dO into K's once P is formed (launch bounds 256 x
// 4: 64 registers, four CTAs per SM).
// bwd_out keeps U' in the state's buffer until S_n is loaded and diag(e^{G_C - G}) U' in dO's once dq^ is done,
// so that two of its CTAs fit on an H100 SM at Dk = Dv = 128.
// bwd_wy keeps K and T (then E) for the whole kernel and four C x D slots whose contents follow its phases (S_n,
// then W, dX, Y / dY, U, dW, P = dX W^T in f32; dA continues from P), so that it also runs two CTAs per SM; it
// loads T and W as fwd_prep saved them (no second inversion; W and later V in flight in registers during the
// product before the barrier that frees their buffer).
// f32 operands stay limited to the shapes where bwd_wy's former layout fitted (307 KB at Dk = Dv = 128: f32
// inputs with a head dim above 64 run on bf16 operands; see op_f32_fits).
// The per-row dot products of the epilogues (dbeta, dG) are shared-memory atomics: the backward's dbeta and dg
// are not bitwise deterministic (f32 order of sums).
//
// Status: verified on the lent H100 (tests/gpu/test_delta_rule_gpu.cpp: outputs, final state and every gradient
// against the CPU reference, f32 / bf16 / f16, odd lengths, initial states; 65,536 tokens with extreme gates) and
// by CPU emulation (scripts/delta_emulate.sh: the kernel bodies compiled for the host, the products emulated on whole
// tiles, against delta_rule_reference in f64 at T = 1, 63, 64, 65, 200, 130, 257, with / without g and S_0,
// B = 1, 2, Dk = Dv = 16, 64, 128 and Dk != Dv: f32 operands <= 3e-5 relative, bf16 operands <= 1.4e-2; no data
// race under ThreadSanitizer with 256 threads per block). delta_rule() dispatches here unless SEQMIX_DELTA_CUDA=0.
#include "layers/mixers/common/delta_rule_cuda.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "autograd/function.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#include "core/ops.h"
#include "layers/mixers/common/delta_rule_cuda.cuh"
#include "layers/mixers/common/delta_cuda_host.h"
#include "layers/mixers/common/kernel_grads.h"

namespace seqmix::mixers {

namespace {

using delta_cuda::Geo;
using delta_cuda::Ptrs;

Geo make_geo(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv, const DeltaOptions& opt, bool gated) {
  return delta_geo<Geo>(B, T, H, Dk, Dv, opt.scale, opt.norm_eps, gated);
}

// The shared memory bwd_wy took with f32 operands before its buffers were shared (K, dU', max(S_n, W + U), X, Y,
// dW, T, A, K K^T, scratch, five rows). f32 operands stay limited to the shapes where that fitted: bwd_wy now fits
// in less (Dk = Dv = 128: 204 KB), but the f32 FFMA products at one CTA per SM would be slower than bf16 tensor
// cores for those shapes, and they have not run on a GPU there.
size_t legacy_wy_f32_bytes(const Geo& g) {
  const delta_cuda::Ld l(g);
  delta_cuda::Bump m;
  const size_t C = size_t(g.C), ck = C * l.k * 4, cv = C * l.v * 4, s = size_t(g.Dk) * l.v * 4;
  const size_t wu = delta_cuda::align128(ck) + cv;
  for (size_t b : {ck, cv, s > wu ? s : wu, ck, cv, ck, C * l.c * 4, C * l.cf * 4, C * l.cf * 4,
                   size_t(delta_cuda::kThreads / 32) * delta_cuda::kScrTile * 4, C * 4, C * 4, C * 4, C * 4, C * 4})
    m.take(b);
  return m.o;
}

bool op_f32_fits(const Geo& g) {
  return delta_cuda::max_smem<float>(g) <= delta_smem_limit() && legacy_wy_f32_bytes(g) <= delta_smem_limit();
}

struct Saved {
  Tensor q, k, v, beta, g, s0;  // prepared inputs (contiguous; q, k, v in one dtype; beta, g, s0 f32)
  Tensor W, Kd, Un, states, gC, Tm;  // forward buffers in the operand dtype (Un: U'; Tm each chunk's T), gC f32
};

struct DeltaFunction : autograd::CustomFunction {
  Geo geo{};
  bool op_f32 = false;
  DType q_dtype = DType::F32, k_dtype = DType::F32, v_dtype = DType::F32, b_dtype = DType::F32, g_dtype = DType::F32,
        s0_dtype = DType::F32;
  std::string name() const override { return "delta_rule_cuda"; }
  autograd::Tensors backward(const autograd::Tensors& grads) override;
};

autograd::Tensors DeltaFunction::backward(const autograd::Tensors& grads) {
  const autograd::Tensors& s = saved();  // q, k, v, beta, g, s0, W, Kd, Un, states, gC, Tm
  Tensor dout = grads.size() > 0 ? grads[0] : Tensor();
  Tensor dfinal = grads.size() > 1 ? grads[1] : Tensor();
  if (!dout.defined() && !dfinal.defined()) return autograd::Tensors(6);
  const Tensor &q = s[0], &k = s[1], &v = s[2], &beta = s[3], &g = s[4], &s0 = s[5];
  const Geo& geo = this->geo;
  const Device dev = v.device();
  Tensor dq, dk, dv, dbeta, dg, ds0;
  {
    autograd::NoGradGuard ng;
    ::seqmix::cuda::select_device(dev.index);
    kernel_output_grads(dout, dfinal, v);
    const int64_t B = geo.B, T = geo.T, H = geo.H, Dk = geo.Dk, Dv = geo.Dv, Tp = int64_t(geo.N) * geo.C;
    const DType opdt = op_f32 ? DType::F32 : DType::BF16;
    Tensor dU = Tensor::empty({B, H, Tp, Dv}, DType::F32, dev);
    Tensor dUn = Tensor::empty({B, H, Tp, Dv}, opdt, dev);
    Tensor Qg = Tensor::empty({B, H, Tp, Dk}, opdt, dev);
    Tensor dH = Tensor::empty({B, H, int64_t(geo.N), Dk, Dv}, opdt, dev);
    Tensor dqh = Tensor::empty({B, H, Tp, Dk}, DType::F32, dev);
    Tensor dkh = Tensor::empty({B, H, Tp, Dk}, DType::F32, dev);
    Tensor dGp = Tensor::empty({B, H, Tp}, DType::F32, dev);
    dq = Tensor::empty(q.shape(), q.dtype(), dev);
    dk = Tensor::empty(k.shape(), k.dtype(), dev);
    dv = Tensor::empty(v.shape(), v.dtype(), dev);
    dbeta = Tensor::empty({B, T, H}, DType::F32, dev);
    if (geo.gated) dg = Tensor::empty({B, T, H}, DType::F32, dev);
    ds0 = Tensor::empty({B, H, Dk, Dv}, DType::F32, dev);
    cudaStream_t st = ::seqmix::cuda::current_stream();
    delta_dispatch(v.dtype(), op_f32, [&]<class IN, class OP>() {
      Ptrs<IN, OP> p{};
      p.q = data_or_null<const IN>(q);
      p.k = data_or_null<const IN>(k);
      p.v = data_or_null<const IN>(v);
      p.dout = data_or_null<const IN>(dout);
      p.beta = data_or_null<const float>(beta);
      p.g = data_or_null<const float>(g);
      p.s0 = data_or_null<const float>(s0);
      p.dfinal = data_or_null<const float>(dfinal);
      p.W = data_or_null<OP>(s[6]);
      p.Kd = data_or_null<OP>(s[7]);
      p.Qg = data_or_null<OP>(Qg);
      p.Un = data_or_null<OP>(s[8]);
      p.states = data_or_null<OP>(s[9]);
      p.gC = data_or_null<float>(s[10]);
      p.Tm = data_or_null<OP>(s[11]);
      p.dU = data_or_null<float>(dU);
      p.dUn = data_or_null<OP>(dUn);
      p.dH = data_or_null<OP>(dH);
      p.dqh = data_or_null<float>(dqh);
      p.dkh = data_or_null<float>(dkh);
      p.dGp = data_or_null<float>(dGp);
      p.dq = data_or_null<IN>(dq);
      p.dk = data_or_null<IN>(dk);
      p.dv = data_or_null<IN>(dv);
      p.dbeta = data_or_null<float>(dbeta);
      p.dg = data_or_null<float>(dg);
      p.ds0 = data_or_null<float>(ds0);
      delta_cuda::backward<IN, OP>(geo, p, st);
    });
  }
  autograd::Tensors out(6);
  auto as = [](const Tensor& t, DType dt) { return t.dtype() == dt ? t : t.to(dt); };
  if (needs_input_grad(0)) out[0] = as(dq, q_dtype);
  if (needs_input_grad(1)) out[1] = as(dk, k_dtype);
  if (needs_input_grad(2)) out[2] = as(dv, v_dtype);
  if (needs_input_grad(3)) out[3] = as(dbeta, b_dtype);
  if (needs_input_grad(4) && dg.defined()) out[4] = as(dg, g_dtype);
  if (needs_input_grad(5)) out[5] = as(ds0, s0_dtype);
  return out;
}

}  // namespace

bool delta_rule_cuda_enabled() {
  const char* e = std::getenv("SEQMIX_DELTA_CUDA");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

bool delta_rule_cuda_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& g,
                               const Tensor& s0, const DeltaOptions& opt) {
  if (!q.defined() || !k.defined() || !v.defined() || !beta.defined()) return false;
  if (!q.is_cuda() || !k.is_cuda() || !v.is_cuda() || !beta.is_cuda()) return false;
  if (g.defined() && !g.is_cuda()) return false;
  if (s0.defined() && !s0.is_cuda()) return false;
  for (const Tensor* t : {&q, &k, &v})
    if (t->dtype() != DType::BF16 && t->dtype() != DType::F16 && t->dtype() != DType::F32) return false;
  if (q.dim() != 4 || k.shape() != q.shape() || v.dim() != 4) return false;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dk = q.size(3), Dv = v.size(3);
  if (v.size(0) != B || v.size(1) != T || v.size(2) != H) return false;
  if (beta.shape() != (Shape{B, T, H}) || (g.defined() && g.shape() != beta.shape())) return false;
  if (s0.defined() && s0.shape() != (Shape{B, H, Dk, Dv})) return false;
  if (Dk % 16 != 0 || Dv % 16 != 0 || Dk < 16 || Dv < 16 || Dk > 128 || Dv > 128) return false;
  if (opt.chunk != 64 || !opt.normalize_qk) return false;
  if (B > 65535 || H > 65535 || T > (int64_t(1) << 30)) return false;
  const Geo geo = make_geo(B, std::max<int64_t>(T, 1), H, Dk, Dv, opt, g.defined());
  return delta_cuda::max_smem<__nv_bfloat16>(geo) <= delta_smem_limit();
}

DeltaResult delta_rule_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& beta_in,
                            const Tensor& g_in, const Tensor& s0_in, const DeltaOptions& opt) {
  SEQMIX_CHECK(delta_rule_cuda_supported(q_in, k_in, v_in, beta_in, g_in, s0_in, opt),
               "delta_rule (CUDA): unsupported inputs (CUDA tensors, bf16/f16/f32 q, k, v [B, T, H, D], beta / g [B, T, H], "
               "Dk, Dv multiples of 16 up to 128, chunk 64, normalized q and k); got q ",
               shape_str(q_in.shape()), " v ", shape_str(v_in.shape()));
  const int64_t B = q_in.size(0), T = q_in.size(1), H = q_in.size(2), Dk = q_in.size(3), Dv = v_in.size(3);
  const Device dev = v_in.device();
  ::seqmix::cuda::select_device(dev.index);
  const DType dt = v_in.dtype();
  Saved sv;
  Geo geo = make_geo(B, T, H, Dk, Dv, opt, g_in.defined());
  const bool op_f32 = dt == DType::F32 && op_f32_fits(geo);
  const bool want_grad = T > 0 && autograd::needs_grad({&q_in, &k_in, &v_in, &beta_in, &g_in, &s0_in});
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
    sv.beta = prep(beta_in, DType::F32);
    if (g_in.defined()) sv.g = prep(g_in, DType::F32);
    if (s0_in.defined()) sv.s0 = prep(s0_in, DType::F32);
    res.o = Tensor::empty({B, T, H, Dv}, dt, dev);
    res.final_state = Tensor::empty({B, H, Dk, Dv}, DType::F32, dev);
    if (T == 0) {
      if (sv.s0.defined()) res.final_state.copy_(sv.s0);
      else res.final_state.zero_();
    } else {
      const int64_t Tp = int64_t(geo.N) * geo.C;
      const DType opdt = op_f32 ? DType::F32 : DType::BF16;
      sv.W = Tensor::empty({B, H, Tp, Dk}, opdt, dev);
      sv.Kd = Tensor::empty({B, H, Tp, Dk}, opdt, dev);
      if (want_grad) sv.Tm = Tensor::empty({B, H, Tp, int64_t(geo.C)}, opdt, dev);  // for bwd_wy only
      const Tensor U = Tensor::empty({B, H, Tp, Dv}, DType::F32, dev);  // the forward's own
      sv.Un = Tensor::empty({B, H, Tp, Dv}, opdt, dev);
      sv.states = Tensor::empty({B, H, int64_t(geo.N), Dk, Dv}, opdt, dev);
      sv.gC = Tensor::empty({B, H, int64_t(geo.N)}, DType::F32, dev);
      cudaStream_t st = ::seqmix::cuda::current_stream();
      delta_dispatch(dt, op_f32, [&]<class IN, class OP>() {
        Ptrs<IN, OP> p{};
        p.q = data_or_null<const IN>(sv.q);
        p.k = data_or_null<const IN>(sv.k);
        p.v = data_or_null<const IN>(sv.v);
        p.beta = data_or_null<const float>(sv.beta);
        p.g = data_or_null<const float>(sv.g);
        p.s0 = data_or_null<const float>(sv.s0);
        p.W = data_or_null<OP>(sv.W);
        p.Kd = data_or_null<OP>(sv.Kd);
        p.Tm = data_or_null<OP>(sv.Tm);
        p.U = data_or_null<float>(U);
        p.Un = data_or_null<OP>(sv.Un);
        p.states = data_or_null<OP>(sv.states);
        p.gC = data_or_null<float>(sv.gC);
        p.final_s = data_or_null<float>(res.final_state);
        p.o = data_or_null<IN>(res.o);
        delta_cuda::forward<IN, OP>(geo, p, st);
      });
    }
  }
  const Tensor final_out = opt.want_final_state ? res.final_state : Tensor();
  if (want_grad) {
    auto fn = std::make_shared<DeltaFunction>();
    fn->geo = geo;
    fn->op_f32 = op_f32;
    fn->q_dtype = q_in.dtype();
    fn->k_dtype = k_in.dtype();
    fn->v_dtype = v_in.dtype();
    fn->b_dtype = beta_in.dtype();
    fn->g_dtype = g_in.defined() ? g_in.dtype() : DType::F32;
    fn->s0_dtype = s0_in.defined() ? s0_in.dtype() : DType::F32;
    fn->save_for_backward({sv.q, sv.k, sv.v, sv.beta, sv.g, sv.s0, sv.W, sv.Kd, sv.Un, sv.states, sv.gC, sv.Tm});
    autograd::CustomFunction::attach(fn, {q_in, k_in, v_in, beta_in, g_in, s0_in},
                                     opt.want_final_state ? autograd::Tensors{res.o, final_out} : autograd::Tensors{res.o});
  }
  res.final_state = final_out;
  return res;
}

}  // namespace seqmix::mixers
