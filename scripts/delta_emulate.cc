// CPU emulation of the fused chunked delta-rule kernels (layers/mixers/common/delta_rule_cuda.cuh), built by
// scripts/delta_emulate.sh (not part of the CMake build). Every kernel body and the launch sequences compile
// for the host with DELTA_EMULATE: one thread per block (barriers are no-ops; the kernels' loops then cover
// every tile and element), nvcuda::wmma replaced by whole 16 x 16 tiles in f32 (bf16 operands are exact in
// f32; only the summation order differs from the GPU). The CUDA built-ins, launches, buffers and comparison
// are scripts/emulate/cuda_host.h's, the WMMA emulation layers/mixers/common/tc_tiles.cuh's (shared with
// scripts/lr_tc_emulate.cc). Forward output, final state and every gradient (q, k,
// v, beta, g, initial state) are compared with seqmix::mixers::delta_rule_reference run in f64 on the same
// (rounded) inputs (scripts/delta_emulate_ref.cpp, autograd through the token-by-token form).
// Shared memory is filled with NaN before each block and every output / scratch buffer before each run, so a
// read of something unwritten or an output left unwritten shows as NaN; WMMA pointers and strides are checked
// against the hardware's alignment rules; AddressSanitizer (the script's default) catches out-of-bounds.
#include "scripts/emulate/cuda_host.h"  // first: the CUDA built-ins, launch, buffers, comparison

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define DELTA_EMULATE 1
#include "layers/mixers/common/delta_rule_cuda.cuh"

namespace delta_emu {
struct RefIO {
  int B, T, H, Dk, Dv;
  double scale;
  std::vector<double> q, k, v, beta, g, s0, dout, dfinal;
  std::vector<double> o, fin, dq, dk, dv, dbeta, dg, ds0;
};
void reference(RefIO& r);
void gpu_test_inputs(RefIO& r, bool gated, bool init, int dt_code);
}  // namespace delta_emu

namespace seqmix::mixers::delta_cuda {
void emu_launch(dim3 grid, int threads, size_t smem, const std::function<void()>& body) {
  emu::launch(grid, emu::block_threads(threads), smem, body);
}
}  // namespace seqmix::mixers::delta_cuda

using namespace seqmix::mixers::delta_cuda;

using emu::Buf;

struct Case {
  int B, T, H, D;
  bool gated, s0;
  int prec;        // 0: IN f32, OP f32;  1: IN bf16, OP bf16;  2: IN f16, OP bf16;  3: IN f32, OP bf16
  int extreme = 0; // 0 normal; 1: beta near 0 and decays near 1; 2: beta near 1 and decays near 0
  int Dv = 0;      // 0: Dv = D (= Dk)
  bool gpu = false;  // the inputs of tests/gpu/test_delta_rule_gpu.cpp (seqmix's RNG, its seeds)
};

const char* prec_name(int p) {
  static const char* n[] = {"f32/f32", "bf16/bf16", "f16/bf16", "f32/bf16"};
  return n[p];
}

using emu::max_rel;
using emu::round_to;

template <class IN, class OP>
bool run_case(const Case& cs, double tol, double* worst) {
  const int B = cs.B, T = cs.T, H = cs.H, Dk = cs.D, Dv = cs.Dv ? cs.Dv : cs.D, C = 64;
  const int N = (T + C - 1) / C;
  std::mt19937_64 rng(1234 + cs.T * 7 + cs.B * 131 + cs.D * 17 + cs.gated * 3 + cs.s0 * 5 + cs.prec * 11 + cs.extreme * 13);
  std::normal_distribution<double> nd;
  delta_emu::RefIO r;
  r.B = B; r.T = T; r.H = H; r.Dk = Dk; r.Dv = Dv;
  r.scale = 1.0 / std::sqrt(double(Dk));
  auto fill = [&](std::vector<double>& x, size_t n, double mul, bool round) {
    x.resize(n);
    for (double& e : x) e = round ? round_to<IN>(nd(rng) * mul) : nd(rng) * mul;
  };
  if (cs.gpu) {
    delta_emu::gpu_test_inputs(r, cs.gated, cs.s0, cs.prec == 1 ? 1 : cs.prec == 2 ? 2 : 0);
  } else {
    fill(r.q, size_t(B) * T * H * Dk, 1.0, true);
    fill(r.k, size_t(B) * T * H * Dk, 1.0, true);
    fill(r.v, size_t(B) * T * H * Dv, 1.0, true);
    fill(r.dout, size_t(B) * T * H * Dv, 1.0, true);
    fill(r.dfinal, size_t(B) * H * Dk * Dv, 1.0, false);
    r.beta.resize(size_t(B) * T * H);
    for (double& b : r.beta) {
      const double x = nd(rng);
      b = double(float(cs.extreme == 1   ? 1e-4 / (1 + std::exp(-x))
                     : cs.extreme == 2 ? 1.0 - 1e-4 / (1 + std::exp(-x))
                     : cs.extreme == 3 ? (x > 0 ? 1.0 - 5e-5 : 5e-5)
                                       : 1 / (1 + std::exp(-x))));
    }
    if (cs.gated) {
      r.g.resize(size_t(B) * T * H);
      for (double& g : r.g) {
        const double x = nd(rng);
        const double ls = -std::log1p(std::exp(-(x + 2)));  // logsigmoid(x + 2)
        g = double(float(cs.extreme == 1 ? ls * 1e-4 : cs.extreme == 2 ? ls * 30 - 3 : cs.extreme == 3 ? (x > 0 ? -30.0 : -1e-4) : ls));
      }
    }
    if (cs.s0) fill(r.s0, size_t(B) * H * Dk * Dv, 1.0, false);
  }
  delta_emu::reference(r);

  // kernel inputs
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
  std::vector<IN> q = conv(r.q), k = conv(r.k), v = conv(r.v), dout = conv(r.dout);
  std::vector<float> beta = convf(r.beta), g = convf(r.g), s0 = convf(r.s0), dfinal = convf(r.dfinal);
  Geo geo{B, T, H, Dk, Dv, C, N, Dv % 32 == 0 ? 32 : 16, float(r.scale), 1e-6f, cs.gated};
  const size_t Tp = size_t(N) * C, BH = size_t(B) * H;
  Buf<OP> W(BH * Tp * Dk), Kd(BH * Tp * Dk), Qg(BH * Tp * Dk), Tm(BH * Tp * C), Un(BH * Tp * Dv), dUn(BH * Tp * Dv),
      states(BH * N * Dk * Dv), dH(BH * N * Dk * Dv);
  Buf<float> U(BH * Tp * Dv), gC(BH * N), fin(BH * Dk * Dv), dU(BH * Tp * Dv),
      dqh(BH * Tp * Dk), dkh(BH * Tp * Dk), dGp(BH * Tp), dbeta(size_t(B) * T * H), dg(size_t(B) * T * H), ds0(BH * Dk * Dv);
  Buf<IN> o(size_t(B) * T * H * Dv), dq(size_t(B) * T * H * Dk), dk(size_t(B) * T * H * Dk), dv(size_t(B) * T * H * Dv);
  Ptrs<IN, OP> p{};
  p.q = q.data(); p.k = k.data(); p.v = v.data(); p.dout = dout.data();
  p.beta = beta.data(); p.g = cs.gated ? g.data() : nullptr; p.s0 = cs.s0 ? s0.data() : nullptr; p.dfinal = dfinal.data();
  p.W = W.p; p.Kd = Kd.p; p.Qg = Qg.p; p.Tm = Tm.p; p.U = U.p; p.Un = Un.p; p.states = states.p; p.gC = gC.p; p.final_s = fin.p;
  p.dU = dU.p; p.dUn = dUn.p; p.dH = dH.p; p.dqh = dqh.p; p.dkh = dkh.p; p.dGp = dGp.p;
  p.o = o.p; p.dq = dq.p; p.dk = dk.p; p.dv = dv.p; p.dbeta = dbeta.p; p.dg = dg.p; p.ds0 = ds0.p;
  forward<IN, OP>(geo, p, nullptr);
  backward<IN, OP>(geo, p, nullptr);

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
  std::vector<Cmp> errs = {{"o", max_rel(back(o), r.o, &bad)},         {"final", max_rel(back(fin), r.fin, &bad)},
                           {"dq", max_rel(back(dq), r.dq, &bad)},       {"dk", max_rel(back(dk), r.dk, &bad)},
                           {"dv", max_rel(back(dv), r.dv, &bad)},       {"dbeta", max_rel(back(dbeta), r.dbeta, &bad)}};
  if (cs.gated) errs.push_back({"dg", max_rel(back(dg), r.dg, &bad)});
  if (cs.s0) errs.push_back({"ds0", max_rel(back(ds0), r.ds0, &bad)});
  double mx = 0;
  for (auto& e : errs) mx = std::max(mx, e.e);
  const bool ok = !bad && mx <= tol;
  std::printf("%s B=%d T=%d H=%d Dk=%d Dv=%d gated=%d s0=%d %s extreme=%d%s  max %.2e [", ok ? "ok  " : "FAIL", B, T, H, Dk, Dv,
              cs.gated, cs.s0, prec_name(cs.prec), cs.extreme, cs.gpu ? " (gpu test inputs)" : "", mx);
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
      const Geo g{1, 64, 1, D, D, 64, 1, 32, 1.f, 1e-6f, true};
      auto show = [&]<class OP>(const char* what) {
        std::printf("Dk=Dv=%d %s operands: fwd_prep %zu  fwd_state/bwd_state %zu  fwd_out %zu  bwd_prep %zu  bwd_wy %zu  bwd_out %zu\n", D,
                    what, LayPrep<OP>(g).total, LaySeq<OP>(g).total, LayFwdOut<OP>(g).total,
                    LayOut<OP>(g, OutKind::BwdPrep).total, LayWy<OP>(g).total, LayOut<OP>(g, OutKind::BwdOut).total);
      };
      show.template operator()<__nv_bfloat16>("bf16");
      show.template operator()<float>("f32");
    }
    return 0;
  }
  std::vector<Case> cases;
  std::vector<int> Ts = {1, 63, 64, 65, 200}, Ds = {16, 64};
  if (mode == "--quick") {
    Ts = {1, 65};
    Ds = {16};
  }
  if (mode == "--d128") Ds = {128};
  if (mode == "--gpu-cases") {  // tests/gpu/test_delta_rule_gpu.cpp's parameterized cases, its inputs
    struct G { int B, T, H, Dk, Dv; bool gated, init; int prec; };
    const G gc[] = {{1, 1, 2, 64, 64, true, false, 1},    {1, 1, 2, 64, 64, false, true, 1},   {2, 63, 2, 64, 64, true, true, 1},
                    {1, 64, 2, 128, 128, false, false, 1}, {2, 65, 2, 128, 128, true, false, 1}, {1, 200, 2, 64, 64, true, true, 1},
                    {2, 200, 2, 16, 16, false, true, 1},   {1, 257, 2, 128, 128, true, true, 1}, {2, 130, 1, 64, 64, false, false, 1},
                    {1, 130, 2, 64, 128, true, true, 1},   {2, 65, 2, 128, 32, false, true, 1},  {1, 100, 2, 16, 48, true, false, 1},
                    {1, 65, 2, 64, 64, true, true, 2},     {2, 200, 2, 128, 128, false, false, 2},
                    {1, 1, 2, 64, 64, true, true, 0},      {2, 63, 2, 64, 64, true, false, 0},  {1, 65, 2, 32, 64, false, true, 0},
                    {2, 200, 1, 16, 16, true, true, 0},    {1, 130, 2, 128, 128, true, true, 3}};
    for (const G& x : gc) {
      Case c{x.B, x.T, x.H, x.Dk, x.gated, x.init, x.prec};
      c.Dv = x.Dv;
      c.gpu = true;
      cases.push_back(c);
    }
    Ts.clear();
  }
  if (mode == "--long") {  // the GPU test's long run, shorter: beta 5e-5 or 1 - 5e-5, decay e^-30 or 1 - 1e-4 per token
    for (int prec : {0, 1}) cases.push_back({1, 4096, 2, 64, true, false, prec, 3});
    Ts.clear();
  }
  if (mode == "--threads-cases") {  // few, small: 256 std::threads per block under ThreadSanitizer
    for (int prec : {0, 1})
      for (int gated : {0, 1}) cases.push_back({1, 130, 1, 32, bool(gated), true, prec});
    Ts.clear();
  }
  if (mode == "--threads-wide") {  // the real lane count at D = 128 (the GPU's register paths), every input type
    for (int prec : {0, 1, 2, 3}) cases.push_back({1, 130, 1, 128, prec % 2 == 1, true, prec});
    cases.push_back({1, 70, 1, 64, true, false, 1, 0, 128});
    Ts.clear();
  }
  std::vector<int> precs = {0, 1};
  if (mode == "--prec") precs = {0, 1, 2, 3};
  for (int prec : precs)
    for (int D : Ds)
      for (int T : Ts)
        for (int B : {1, 2})
          for (int gated : {0, 1})
            for (int s0 : {0, 1}) cases.push_back({B, T, 2, D, bool(gated), bool(s0), prec});
  if (mode == "--all" || mode == "--extreme")
    for (int prec : {0, 1})
      for (int ex : {1, 2}) cases.push_back({1, 200, 2, 16, true, true, prec, ex});
  int fails = 0;
  double worst[4] = {0, 0, 0, 0};
  const auto t0 = std::chrono::steady_clock::now();
  for (const Case& c : cases) {
    bool ok = true;
    // tolerances: f32 operands 1e-4 relative to the largest reference value; bf16 operands 3e-2 (one bf16
    // rounding per derived operand: T, W, U, U', states, dA, ...; f32 accumulation)
    switch (c.prec) {
      case 0: ok = run_case<float, float>(c, c.gpu ? 1e-3 : 1e-4, &worst[0]); break;
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
