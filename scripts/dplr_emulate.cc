// CPU emulation of the chunked generalized-delta-rule kernels (layers/mixers/common/dplr_cuda.cuh, with the delta
// rule's sequential kernels), built by scripts/dplr_emulate.sh (not part of the CMake build). Every kernel body and
// the launch sequences compile for the host with DELTA_EMULATE, as in scripts/delta_emulate.cc (one thread per
// block, the tensor-core products on whole tiles in f32). Output, final state and every gradient (q, k, v, lw, a,
// b, initial state) are compared with seqmix::mixers::generalized_delta_rule_reference run in f64 on the same
// (rounded) inputs (scripts/dplr_emulate_ref.cpp). Inputs as rwkv7 makes them: a = -kk, b = kk * sigmoid(x) (kk a
// unit vector), lw = -e^{-softplus(-x) - 1/2} (in [-0.607, 0)). Shared memory and every output / scratch buffer
// are filled with NaN first, so a read of something unwritten shows.
#include "scripts/emulate/cuda_host.h"  // first: the CUDA built-ins, launch, buffers, comparison

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#define DELTA_EMULATE 1
#include "layers/mixers/common/dplr_cuda.cuh"

namespace dplr_emu {
struct RefIO {
  int B, T, H, Dk, Dv;
  double scale;
  std::vector<double> q, k, v, lw, a, b, s0, dout, dfinal;
  std::vector<double> o, fin, dq, dk, dv, dlw, da, db, ds0;
};
void reference(RefIO& r);
}  // namespace dplr_emu

namespace seqmix::mixers::delta_cuda {
void emu_launch(dim3 grid, int threads, size_t smem, const std::function<void()>& body) {
  emu::launch(grid, emu::block_threads(threads), smem, body);
}
}  // namespace seqmix::mixers::delta_cuda

using namespace seqmix::mixers::delta_cuda;
using emu::Buf;
using emu::max_rel;
using emu::round_to;

struct Case {
  int B, T, H, Dk, Dv;
  bool s0;
  int prec;  // 0: IN f32, OP f32;  1: IN bf16, OP bf16;  2: IN f16, OP bf16;  3: IN f32, OP bf16
  int extreme = 0;  // 1: decays at the bound (lw = -0.607) everywhere; 2: decays near 1 (lw ~ -1e-4)
  bool misalign = false;  // inputs one element past a 16-byte boundary: the kernels' fallbacks for their cp.async copies
};

const char* prec_name(int p) {
  static const char* n[] = {"f32/f32", "bf16/bf16", "f16/bf16", "f32/bf16"};
  return n[p];
}

// dlw against the reference, relative to max(|ref|, 5e-2): at T = 1 without S_0 the exact dlw is 0, and the
// kernel's is a sum of terms of size ~1-50 that cancel to rounding (f32: up to ~4e-6 absolute at D = 128), below
// the reach of max_rel's 1e-3 floor.
double dlw_err(const std::vector<double>& got, const std::vector<double>& ref, bool* bad) {
  double den = 0;
  for (double x : ref) den = std::max(den, std::abs(x));
  return max_rel(got, ref, bad) * std::max(den, 1e-3) / std::max(den, 5e-2);
}

template <class IN, class OP>
bool run_case(const Case& cs, double tol, double* worst) {
  const int B = cs.B, T = cs.T, H = cs.H, Dk = cs.Dk, Dv = cs.Dv, C = 64, N = (T + C - 1) / C;
  std::mt19937_64 rng(99 + cs.T * 7 + cs.B * 131 + cs.Dk * 17 + cs.Dv * 3 + cs.s0 * 5 + cs.prec * 11 + cs.extreme * 13);
  std::normal_distribution<double> nd;
  dplr_emu::RefIO r;
  r.B = B, r.T = T, r.H = H, r.Dk = Dk, r.Dv = Dv;
  r.scale = 1.0 / std::sqrt(double(Dk));
  const size_t nk = size_t(B) * T * H * Dk, nv = size_t(B) * T * H * Dv, ns = size_t(B) * H * Dk * Dv;
  auto fill = [&](std::vector<double>& x, size_t n, bool round) {
    x.resize(n);
    for (double& e : x) e = round ? round_to<IN>(nd(rng)) : nd(rng);
  };
  fill(r.q, nk, true);
  fill(r.k, nk, true);
  fill(r.v, nv, true);
  fill(r.dout, nv, true);
  fill(r.dfinal, ns, false);
  if (cs.s0) fill(r.s0, ns, false);
  r.a.resize(nk);
  r.b.resize(nk);
  r.lw.resize(nk);
  for (size_t row = 0; row < nk; row += Dk) {
    std::vector<double> kk(Dk);
    double ss = 0;
    for (double& e : kk) e = nd(rng), ss += e * e;
    for (int j = 0; j < Dk; ++j) {
      const double u = kk[j] / std::sqrt(ss), sg = 1 / (1 + std::exp(-nd(rng)));
      r.a[row + j] = round_to<IN>(-u);
      r.b[row + j] = round_to<IN>(u * sg);
      const double x = nd(rng), sp = std::log1p(std::exp(-x));  // softplus(-x)
      r.lw[row + j] = double(float(cs.extreme == 1 ? -0.6065 : cs.extreme == 2 ? -1e-4 * (1 + std::tanh(x)) : -std::exp(-sp - 0.5)));
    }
  }
  dplr_emu::reference(r);

  auto conv = [](const std::vector<double>& x) {
    std::vector<IN> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = fromf<IN>(float(x[i]));
    return y;
  };
  auto convf = [](const std::vector<double>& x) {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = float(x[i]);
    return y;
  };
  std::vector<IN> q = conv(r.q), k = conv(r.k), v = conv(r.v), a = conv(r.a), b = conv(r.b), dout = conv(r.dout);
  std::vector<float> lw = convf(r.lw), s0 = convf(r.s0), dfinal = convf(r.dfinal);
  auto at = [&](auto& x) {  // the input's pointer, one element further into a padded copy when misaligned
    if (cs.misalign) x.insert(x.begin(), typename std::decay_t<decltype(x)>::value_type{});
    return x.data() + (cs.misalign ? 1 : 0);
  };
  Geo geo{B, T, H, Dk, Dv, C, N, Dv % 32 == 0 ? 32 : 16, float(r.scale), 0.f, false};
  const size_t Tp = size_t(N) * C, BH = size_t(B) * H;
  Buf<OP> W(BH * Tp * Dk), Bd(BH * Tp * Dk), Kv(BH * Tp * Dk), Ae(BH * Tp * Dk), Bi(BH * Tp * Dk), Ki(BH * Tp * Dk),
      Qe(BH * Tp * Dk), Tm(BH * Tp * C), Un(BH * Tp * Dv), states(BH * N * Dk * Dv), dUn(BH * Tp * Dv), dH(BH * N * Dk * Dv),
      dX(BH * Tp * Dv), dL(BH * N * 4 * C * C);
  Buf<float> U(BH * Tp * Dv), gCk(BH * N * Dk), fin(BH * Dk * Dv), dU(BH * Tp * Dv), dBt(BH * Tp * Dk), dKt(BH * Tp * Dk), dGC(BH * N * Dk), dlw(nk), ds0(BH * Dk * Dv);
  Buf<IN> o(nv), dq(nk), dk(nk), dv(nv), da(nk), db(nk);
  DplrPtrs<IN, OP> p{};
  p.q = at(q), p.k = at(k), p.v = at(v), p.a = at(a), p.b = at(b), p.lw = at(lw);
  p.s0 = cs.s0 ? s0.data() : nullptr;
  p.dout = at(dout), p.dfinal = dfinal.data();
  p.W = W.p, p.Kd = Bd.p, p.Kv = Kv.p, p.Ae = Ae.p, p.Bi = Bi.p, p.Ki = Ki.p, p.Qg = Qe.p, p.Tm = Tm.p, p.U = U.p, p.Un = Un.p;
  p.states = states.p, p.gCk = gCk.p, p.final_s = fin.p, p.o = o.p;
  p.dU = dU.p, p.dUn = dUn.p, p.dH = dH.p, p.dX = dX.p, p.dL = dL.p, p.dBt = dBt.p, p.dKt = dKt.p;
  p.dGC = dGC.p, p.dq = dq.p, p.dk = dk.p, p.dv = dv.p, p.da = da.p, p.db = db.p, p.dlw = dlw.p, p.ds0 = ds0.p;
  gen_forward<IN, OP>(geo, p, nullptr);
  gen_backward<IN, OP>(geo, p, nullptr);

  auto back = [](const auto& x) {
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = double(tof(x[i]));
    return y;
  };
  bool bad = false;
  struct Cmp {
    const char* name;
    double e;
  };
  std::vector<Cmp> errs = {{"o", max_rel(back(o), r.o, &bad)},     {"final", max_rel(back(fin), r.fin, &bad)},
                           {"dq", max_rel(back(dq), r.dq, &bad)},   {"dk", max_rel(back(dk), r.dk, &bad)},
                           {"dv", max_rel(back(dv), r.dv, &bad)},   {"dlw", dlw_err(back(dlw), r.dlw, &bad)},
                           {"da", max_rel(back(da), r.da, &bad)},   {"db", max_rel(back(db), r.db, &bad)}};
  if (cs.s0) errs.push_back({"ds0", max_rel(back(ds0), r.ds0, &bad)});
  double mx = 0;
  for (auto& e : errs) mx = std::max(mx, e.e);
  const bool ok = !bad && mx <= tol;
  std::printf("%s B=%d T=%d H=%d Dk=%d Dv=%d s0=%d %s extreme=%d%s  max %.2e [", ok ? "ok  " : "FAIL", B, T, H, Dk, Dv,
              cs.s0, prec_name(cs.prec), cs.extreme, cs.misalign ? " misaligned" : "", mx);
  for (auto& e : errs) std::printf(" %s %.1e", e.name, e.e);
  std::printf(" ]\n");
  std::fflush(stdout);
  *worst = std::max(*worst, mx);
  return ok;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "--all";
  if (mode == "--smem") {  // dynamic shared memory per kernel (bytes), C = 64
    for (int D : {64, 128}) {
      const Geo g{1, 64, 1, D, D, 64, 1, 32, 1.f, 0.f, false};
      auto show = [&]<class OP>(const char* what) {
        std::printf("Dk=Dv=%d %s operands: fwd_prep %zu  state %zu  fwd_out %zu  bwd_prep %zu  bwd_val %zu  bwd_key %zu\n",
                    D, what, LayGenPrep<OP>(g).total, LaySeq<OP>(g).total, LayGenOut<OP>(g).total, LayGenBwdPrep<OP>(g).total,
                    LayGenVal<OP>(g).total, LayGenKey<OP>(g).total);
      };
      show.template operator()<__nv_bfloat16>("bf16");
      show.template operator()<float>("f32");
    }
    return 0;
  }
  std::vector<Case> cases;
  std::vector<int> Ts = {1, 63, 64, 65, 200};
  std::vector<std::pair<int, int>> Ds = {{16, 16}, {32, 64}};
  if (mode == "--quick") {
    Ts = {1, 65, 130};
    Ds = {{16, 16}};
  }
  if (mode == "--d128") Ds = {{128, 128}};
  if (mode == "--threads-cases") {  // few, small: the real block sizes (256 / 512 std::threads) under ThreadSanitizer
    for (int prec : {0, 1}) cases.push_back({1, 130, 1, 32, 32, true, prec});
    cases.push_back({1, 65, 1, 128, 128, true, 1});  // D = 128: the 512-thread kernels take their tiles in pairs
    Ts.clear();
  }
  std::vector<int> precs = {0, 1};
  if (mode == "--prec") precs = {0, 1, 2, 3};
  for (int prec : precs)
    for (auto [dk, dv] : Ds)
      for (int T : Ts)
        for (int B : {1, 2})
          for (int s0 : {0, 1}) cases.push_back({B, T, 2, dk, dv, bool(s0), prec});
  if (mode == "--all" || mode == "--extreme")
    for (int prec : {0, 1})
      for (int ex : {1, 2}) cases.push_back({1, 200, 2, 16, 16, true, prec, ex});
  if (mode == "--all" || mode == "--quick")
    for (int prec : {0, 1}) cases.push_back({2, 130, 2, 32, 64, true, prec, 0, true});
  int fails = 0;
  double worst[4] = {0, 0, 0, 0};
  const auto t0 = std::chrono::steady_clock::now();
  for (const Case& c : cases) {
    bool ok = true;
    // tolerances: f32 operands 1e-4 relative to the largest reference value; bf16 operands 3e-2
    switch (c.prec) {
      case 0: ok = run_case<float, float>(c, 1e-4, &worst[0]); break;
      case 1: ok = run_case<__nv_bfloat16, __nv_bfloat16>(c, 3e-2, &worst[1]); break;
      case 2: ok = run_case<__half, __nv_bfloat16>(c, 3e-2, &worst[2]); break;
      default: ok = run_case<float, __nv_bfloat16>(c, 3e-2, &worst[3]); break;
    }
    fails += !ok;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%zu cases, %d failed, %.1f s; worst max-rel error: f32/f32 %.2e, bf16/bf16 %.2e, f16/bf16 %.2e, f32/bf16 %.2e\n",
              cases.size(), fails, secs, worst[0], worst[1], worst[2], worst[3]);
  return fails ? 1 : 0;
}
