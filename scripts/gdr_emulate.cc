// CPU emulation of the fused recurrent generalized-delta-rule kernels (layers/mixers/common/
// generalized_delta_cuda.cuh): the kernel bodies compiled for the host, one std::thread per CUDA thread
// (SEQMIX_EMU_THREADS=1: barriers and warp shuffles real), against an f64 recurrence written here.
// Outputs and the final state are compared elementwise; the gradients by directional derivatives: for each
// input X and a random direction D, sum(dL/dX * D) against (L(X + hD) - L(X - hD)) / 2h of the f64 recurrence,
// L = sum(o * R) + sum(S_T * R2) (R, R2 random: the kernel's dout and dfinal). Standalone (no seqmix library).
//   scripts/gdr_emulate.sh [--quick]
#include "scripts/emulate/cuda_host.h"
#define GDR_EMULATE 1
#include "layers/mixers/common/generalized_delta_cuda.cuh"

#include <cstdio>
#include <random>
#include <string>

namespace seqmix::mixers::gdr_cuda {
void emu_launch(dim3 grid, int threads, size_t smem, const std::function<void()>& body) {
  emu::launch(grid, threads, smem, body);
}
}  // namespace seqmix::mixers::gdr_cuda

using namespace seqmix::mixers::gdr_cuda;
using V = std::vector<double>;

struct Case {
  int B, T, H, Dk, Dv;
  bool s0, dfinal;
  bool bf16;
  int kt = 16, vt = 2;  // thread layout of the forward / value-major pass
};

struct Inputs {
  V q, k, v, lw, a, b, s0;  // [B, T, H, D] (s0 [B, H, Dk, Dv])
};

// o [B, T, H, Dv], final state [B, H, Dk, Dv]; S[j][i], j a key, i a value column.
void reference(const Case& c, const Inputs& x, double scale, V& o, V& fin) {
  o.assign(size_t(c.B) * c.T * c.H * c.Dv, 0.0);
  fin.assign(size_t(c.B) * c.H * c.Dk * c.Dv, 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      V S(size_t(c.Dk) * c.Dv, 0.0);
      if (c.s0)
        for (size_t e = 0; e < S.size(); ++e) S[e] = x.s0[(size_t(b) * c.H + h) * S.size() + e];
      for (int t = 0; t < c.T; ++t) {
        const size_t kb = ((size_t(b) * c.T + t) * c.H + h) * c.Dk, vb = ((size_t(b) * c.T + t) * c.H + h) * c.Dv;
        for (int i = 0; i < c.Dv; ++i) {
          double sa = 0;
          for (int j = 0; j < c.Dk; ++j) sa += x.a[kb + j] * S[size_t(j) * c.Dv + i];
          double oi = 0;
          for (int j = 0; j < c.Dk; ++j) {
            double& s = S[size_t(j) * c.Dv + i];
            s = std::exp(x.lw[kb + j]) * s + x.b[kb + j] * sa + x.k[kb + j] * x.v[vb + i];
            oi += x.q[kb + j] * s;
          }
          o[vb + i] = scale * oi;
        }
      }
      for (size_t e = 0; e < S.size(); ++e) fin[(size_t(b) * c.H + h) * S.size() + e] = S[e];
    }
}

double dot(const V& x, const V& y) {
  double s = 0;
  for (size_t e = 0; e < x.size(); ++e) s += x[e] * y[e];
  return s;
}

double rnd_round(double x, bool bf16) { return bf16 ? emu::round_to<__nv_bfloat16>(x) : double(float(x)); }

template <class IN>
bool run_case(const Case& c, std::mt19937& rng) {
  const double scale = 0.7;
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  const size_t nk = size_t(c.B) * c.T * c.H * c.Dk, nv = size_t(c.B) * c.T * c.H * c.Dv,
               ns = size_t(c.B) * c.H * c.Dk * c.Dv;
  Inputs x;
  x.q.resize(nk);
  x.k.resize(nk);
  x.a.resize(nk);
  x.b.resize(nk);
  x.lw.resize(nk);
  x.v.resize(nv);
  x.s0.resize(c.s0 ? ns : 0);
  // rwkv7-like: a = -kk, b = kk * iclr with kk a unit vector per token and head; decays in [e^{-0.6}, 1)
  for (size_t r = 0; r < nk / c.Dk; ++r) {
    double n2 = 0;
    std::vector<double> kk(size_t(c.Dk));
    for (auto& e : kk) {
      e = nd(rng);
      n2 += e * e;
    }
    for (int j = 0; j < c.Dk; ++j) {
      const size_t e = r * c.Dk + j;
      const double u = kk[size_t(j)] / std::sqrt(n2);
      x.a[e] = rnd_round(-u, c.bf16);
      x.b[e] = rnd_round(u * ud(rng), c.bf16);
      x.q[e] = rnd_round(0.5 * nd(rng), c.bf16);
      x.k[e] = rnd_round(0.3 * nd(rng), c.bf16);
      x.lw[e] = double(float(-0.6 * ud(rng) - 1e-3));
    }
  }
  for (auto& e : x.v) e = rnd_round(nd(rng), c.bf16);
  for (auto& e : x.s0) e = double(float(0.5 * nd(rng)));
  V R(nv), R2(ns);
  for (auto& e : R) e = rnd_round(nd(rng), c.bf16);
  for (auto& e : R2) e = double(float(nd(rng)));

  // ---- the kernels ----
  auto to_in = [&](const V& s) {
    std::vector<IN> d(s.size());
    for (size_t e = 0; e < s.size(); ++e) d[e] = seqmix::mixers::tc::fromf<IN>(float(s[e]));
    return d;
  };
  auto to_f = [&](const V& s) {
    std::vector<float> d(s.size());
    for (size_t e = 0; e < s.size(); ++e) d[e] = float(s[e]);
    return d;
  };
  std::vector<IN> q = to_in(x.q), k = to_in(x.k), v = to_in(x.v), a = to_in(x.a), b = to_in(x.b), dout = to_in(R);
  std::vector<float> lw = to_f(x.lw), s0 = to_f(x.s0), dfin = to_f(R2);
  Geo g{c.B, c.T, c.H, c.Dk, c.Dv, (c.T + kCh - 1) / kCh, c.kt, c.vt, c.kt, c.vt, float(scale)};
  const int nsl = c.Dv / kVs;
  std::vector<IN> o(nv), dq(nk), dk(nk), da(nk), db(nk), dv(nv);
  std::vector<float> fin(ns), sa(nv), ckpt(size_t(c.B) * c.H * g.nch * c.Dk * c.Dv), dlw(nk),
      ds0(ns);
  Ptrs<IN> p{};
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.a = a.data();
  p.b = b.data();
  p.lw = lw.data();
  p.s0 = c.s0 ? s0.data() : nullptr;
  p.o = o.data();
  p.sa = sa.data();
  p.ckpt = ckpt.data();
  p.final_s = fin.data();
  p.dout = dout.data();
  p.dfinal = c.dfinal ? dfin.data() : nullptr;
  std::vector<unsigned char> part(size_t(nsl) * (4 * sizeof(PartT<IN>) + 4) * nk);
  p.part = part.data();
  std::vector<float> dsa(nv), gck(ckpt.size());
  p.dsa = dsa.data();
  p.gck = gck.data();
  p.dv = dv.data();
  p.ds0 = ds0.data();
  p.dq = dq.data();
  p.dk = dk.data();
  p.da = da.data();
  p.db = db.data();
  p.dlw = dlw.data();
  forward<IN>(g, p, nullptr);
  backward<IN>(g, p, nullptr);

  // ---- outputs ----
  V ro, rfin;
  reference(c, x, scale, ro, rfin);
  auto back = [](const auto& s) {
    V d(s.size());
    for (size_t e = 0; e < s.size(); ++e) d[e] = double(seqmix::mixers::tc::tof(s[e]));
    return d;
  };
  const double e_o = emu::max_rel(back(o), ro), e_fin = emu::max_rel(back(fin), rfin);
  // ---- gradients: directional derivatives of L = <o, R> + [dfinal] <S_T, R2> ----
  auto loss = [&](const Inputs& xi) {
    V oo, ff;
    reference(c, xi, scale, oo, ff);
    return dot(oo, R) + (c.dfinal ? dot(ff, R2) : 0.0);
  };
  const double hstep = 1e-6;
  struct G {
    const char* name;
    V Inputs::*field;
    V grad;
  };
  std::vector<G> gs = {{"q", &Inputs::q, back(dq)},  {"k", &Inputs::k, back(dk)},   {"v", &Inputs::v, back(dv)},
                       {"lw", &Inputs::lw, back(dlw)}, {"a", &Inputs::a, back(da)}, {"b", &Inputs::b, back(db)}};
  if (c.s0) gs.push_back({"s0", &Inputs::s0, back(ds0)});
  const double tol_out = c.bf16 ? 1e-2 : 2e-4, tol_grad = c.bf16 ? 2e-2 : 1e-3;
  bool ok = e_o <= tol_out && e_fin <= 2e-4;
  std::string msg;
  char buf[160];
  for (auto& gg : gs) {
    double worst = 0;
    for (int rep = 0; rep < 2; ++rep) {
      V D((x.*gg.field).size());
      for (auto& e : D) e = nd(rng);
      if (rep == 1)  // only the first and the last tokens / a sparse set: errors that a dense direction could average out
        for (size_t e = 0; e < D.size(); ++e)
          if (ud(rng) < 0.8) D[e] = 0;
      Inputs xp = x, xm = x;
      for (size_t e = 0; e < D.size(); ++e) {
        (xp.*gg.field)[e] += hstep * D[e];
        (xm.*gg.field)[e] -= hstep * D[e];
      }
      const double fd = (loss(xp) - loss(xm)) / (2 * hstep), an = dot(gg.grad, D);
      // relative to the size of the directional derivative's terms, not to a sum that may cancel
      V absg(gg.grad.size()), absd(D.size());
      for (size_t e = 0; e < D.size(); ++e) {
        absg[e] = std::abs(gg.grad[e]);
        absd[e] = std::abs(D[e]);
      }
      const double err = std::abs(an - fd) / std::max(dot(absg, absd), 1e-6);
      worst = std::max(worst, std::isfinite(an) ? err : INFINITY);
    }
    std::snprintf(buf, sizeof buf, " d%s %.1e", gg.name, worst);
    msg += buf;
    ok = ok && worst <= tol_grad;
  }
  std::printf("%s B=%d T=%d H=%d Dk=%d Dv=%d s0=%d dfinal=%d %dx%d %s: o %.1e final %.1e |%s\n", ok ? "ok  " : "FAIL", c.B,
              c.T, c.H, c.Dk, c.Dv, int(c.s0), int(c.dfinal), c.kt, c.vt, c.bf16 ? "bf16" : "f32 ", e_o, e_fin, msg.c_str());
  return ok;
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  std::mt19937 rng(7);
  std::vector<Case> cases = {
      {1, 1, 1, 32, 32, false, false, false},  {1, 17, 2, 32, 32, true, true, false},
      {2, 40, 1, 64, 64, true, false, false},  {1, 33, 1, 128, 32, false, true, false},
      {1, 16, 1, 64, 32, true, true, false},   {1, 50, 2, 32, 96, true, true, false},
      {1, 37, 1, 128, 64, true, true, false},  {1, 21, 2, 64, 32, false, false, true},
      {2, 19, 1, 128, 32, true, true, true},   {1, 29, 1, 64, 128, true, true, true},
  };
  if (quick) cases.resize(4);
  // the other thread layouts of the forward / value-major pass
  for (auto [kt, vt] : {std::pair{8, 2}, {8, 4}, {32, 1}})
    for (Case c : {Case{1, 33, 2, 128, 64, true, true, false}, Case{2, 17, 1, 32, 32, true, true, false},
                   Case{1, 21, 1, 64, 32, false, false, true}}) {
      c.kt = kt;
      c.vt = vt;
      cases.push_back(c);
    }
  bool ok = true;
  for (const Case& c : cases) ok = (c.bf16 ? run_case<__nv_bfloat16>(c, rng) : run_case<float>(c, rng)) && ok;
  std::printf(ok ? "all cases passed\n" : "SOME CASES FAILED\n");
  return ok ? 0 : 1;
}
