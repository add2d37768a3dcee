// CPU emulation of the tensor-core chunk kernels of the linear recurrence (layers/mixers/common/
// linear_recurrence_tc.cu), built by hand (scripts/lr_tc_emulate.sh; not part of the CMake build).
// Every kernel body is compiled for the host with SEQMIX_LR_EMULATE: one thread per block (syncs are
// no-ops, the one "warp" walks every tile and the one "lane" every piece), nvcuda::wmma replaced by whole
// 16 x 16 tiles in f32 (bf16 operands are exact in f32; only the summation order differs from the GPU).
// The CUDA built-ins, launches, buffers and comparison are scripts/emulate/cuda_host.h's, the WMMA emulation
// layers/mixers/common/tc_tiles.cuh's (shared with scripts/delta_emulate.cc).
// The state scans and dg kernels are linear_recurrence.cu's own (compiled the same way; the scans at their
// real block size; on the bf16 U_n of chunk_state_tc in place, or on an f32 copy: 4 elements or 1 per thread,
// see scan below). The forward and
// backward (o, final state, dq, dk, dv, dg, du, d initial state) are compared with a double-precision
// token-by-token forward and BPTT on the same (bf16- or f16-rounded) inputs. The fused state pass
// (linear_recurrence_state_tc.cu, forward and backward) runs on the same inputs into buffers of its own; its
// states16 / final state / glast / dstates16 / ds0 must equal the two-kernel path's (chunk_state_tc + scan)
// exactly (the columns F:S .. F:ds0, max relative difference; F:ref: its final state and ds0 against the
// double reference, 2e-2 as the others).
// Shared memory is filled with NaN before each block and the outputs before each run, so a read of an
// unwritten operand or an output left unwritten shows as NaN; WMMA pointers / strides are checked for
// the hardware's alignment rules; AddressSanitizer (the script's default) catches out-of-bounds accesses.
#include "scripts/emulate/cuda_host.h"  // first: the CUDA built-ins, launch, buffers, comparison

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

using std::max;
using std::min;

#define SEQMIX_LR_EMULATE 1
#include "layers/mixers/common/linear_recurrence.cu"
#include "layers/mixers/common/linear_recurrence_tc.cu"
#include "layers/mixers/common/linear_recurrence_state_tc.cu"

using namespace seqmix::mixers;
using bf16 = __nv_bfloat16;
using emu::Buf;
using emu::launch;

template <class F>
void with_mode(int mode, F&& f) {
  if (mode == 0) f.template operator()<0>();
  else if (mode == 1) f.template operator()<1>();
  else f.template operator()<2>();
}

struct Case {
  int B, T, H, Dk, Dv, C, mode;
  bool bonus, s0, f16;
  double strength;  // decay strength: 1 = as the mixers make them (factorable chunks), 20 = strong (pairwise chunks)
  double scale;
};

// e[0..7]: the two-kernel path against the double reference (tolerance 2e-2); e[8..12]: the fused state pass
// (linear_recurrence_state_tc.cu) against the two-kernel path's states16 / final / glast / dstates16 / ds0
// (bit-identical arithmetic: tolerance 0, the max relative difference shown); e[13]: its final state and ds0
// against the double reference (2e-2).
constexpr int kNErr = 14;
struct Errs {
  double e[kNErr];
};

template <typename T>
Errs run_case(const Case& cs, uint32_t seed) {
  const int B = cs.B, T_ = cs.T, H = cs.H, Dk = cs.Dk, Dv = cs.Dv, C = cs.C, mode = cs.mode;
  const int N = (T_ + C - 1) / C, gw = mode == 2 ? Dk : mode;
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  auto rnd = [&](double s) { return emu::round_to<T>(nd(rng) * s); };
  const size_t nk = size_t(B) * T_ * H * Dk, nv = size_t(B) * T_ * H * Dv;
  std::vector<double> q(nk), k(nk), v(nv), dout(nv), g(size_t(B) * T_ * H * std::max(gw, 1)), u(size_t(H) * Dk),
      s0(size_t(B) * H * Dk * Dv), dfin(size_t(B) * H * Dk * Dv);
  for (auto& x : q) x = rnd(1.0 / std::sqrt(double(Dk)));
  for (auto& x : k) x = rnd(1.0);
  for (auto& x : v) x = rnd(1.0);
  for (auto& x : dout) x = rnd(1.0);
  for (auto& x : g) x = double(float(cs.strength * -std::log1p(std::exp(-(nd(rng) + 2.0)))));  // strength * logsigmoid(x + 2)
  for (auto& x : u) x = double(float(nd(rng) * 0.5));
  for (auto& x : s0) x = cs.s0 ? double(float(nd(rng))) : 0.0;
  for (auto& x : dfin) x = double(float(nd(rng)));
  const double scale = cs.scale;
  auto ik = [&](int b, int t, int h, int c) { return ((size_t(b) * T_ + t) * H + h) * Dk + c; };
  auto iv = [&](int b, int t, int h, int d) { return ((size_t(b) * T_ + t) * H + h) * Dv + d; };
  auto gg = [&](int b, int t, int h, int c) {
    if (mode == 0) return 0.0;
    if (mode == 1) return g[(size_t(b) * T_ + t) * H + h];
    return g[ik(b, t, h, c)];
  };

  // ---- double reference: token-by-token forward and BPTT ----
  std::vector<double> o_ref(nv), fin_ref(size_t(B) * H * Dk * Dv), dq_ref(nk), dk_ref(nk), dv_ref(nv), dg_ref(g.size(), 0.0),
      du_ref(u.size(), 0.0), ds0_ref(s0.size());
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t DD = size_t(Dk) * Dv;
      std::vector<double> Sall(size_t(T_ + 1) * DD);  // Sall[t] = S_{t-1} (state before token t)
      for (size_t e = 0; e < DD; ++e) Sall[e] = s0[(size_t(b) * H + h) * DD + e];
      for (int t = 0; t < T_; ++t) {
        const double* Sp = &Sall[size_t(t) * DD];
        double* Sn = &Sall[size_t(t + 1) * DD];
        for (int c = 0; c < Dk; ++c)
          for (int d = 0; d < Dv; ++d) Sn[c * Dv + d] = std::exp(gg(b, t, h, c)) * Sp[c * Dv + d] + k[ik(b, t, h, c)] * v[iv(b, t, h, d)];
        double wq = 0;
        for (int c = 0; c < Dk; ++c) wq += u[h * Dk + c] * k[ik(b, t, h, c)] * q[ik(b, t, h, c)];
        for (int d = 0; d < Dv; ++d) {
          double s = 0;
          const double* Sx = cs.bonus ? Sp : Sn;
          for (int c = 0; c < Dk; ++c) s += Sx[c * Dv + d] * q[ik(b, t, h, c)];
          if (cs.bonus) s += wq * v[iv(b, t, h, d)];
          o_ref[iv(b, t, h, d)] = scale * s;
        }
      }
      for (size_t e = 0; e < DD; ++e) fin_ref[(size_t(b) * H + h) * DD + e] = Sall[size_t(T_) * DD + e];
      std::vector<double> dS(DD);
      for (size_t e = 0; e < DD; ++e) dS[e] = dfin[(size_t(b) * H + h) * DD + e];
      for (int t = T_ - 1; t >= 0; --t) {
        const double* Sp = &Sall[size_t(t) * DD];
        const double* Sn = &Sall[size_t(t + 1) * DD];
        double vdo = 0;
        for (int d = 0; d < Dv; ++d) vdo += v[iv(b, t, h, d)] * dout[iv(b, t, h, d)];
        if (!cs.bonus) {
          for (int c = 0; c < Dk; ++c) {
            double s = 0;
            for (int d = 0; d < Dv; ++d) {
              dS[c * Dv + d] += scale * q[ik(b, t, h, c)] * dout[iv(b, t, h, d)];
              s += Sn[c * Dv + d] * dout[iv(b, t, h, d)];
            }
            dq_ref[ik(b, t, h, c)] = scale * s;
          }
        }
        for (int c = 0; c < Dk; ++c) {
          double s = 0, sg = 0;
          for (int d = 0; d < Dv; ++d) {
            s += dS[c * Dv + d] * v[iv(b, t, h, d)];
            sg += dS[c * Dv + d] * Sp[c * Dv + d];
          }
          dk_ref[ik(b, t, h, c)] = s;
          const double a = std::exp(gg(b, t, h, c));
          if (mode == 1) dg_ref[(size_t(b) * T_ + t) * H + h] += a * sg;
          if (mode == 2) dg_ref[ik(b, t, h, c)] = a * sg;
        }
        for (int d = 0; d < Dv; ++d) {
          double s = 0;
          for (int c = 0; c < Dk; ++c) s += dS[c * Dv + d] * k[ik(b, t, h, c)];
          dv_ref[iv(b, t, h, d)] = s;
        }
        for (int c = 0; c < Dk; ++c)
          for (int d = 0; d < Dv; ++d) dS[c * Dv + d] *= std::exp(gg(b, t, h, c));
        if (cs.bonus) {
          double wq = 0;
          for (int c = 0; c < Dk; ++c) wq += u[h * Dk + c] * k[ik(b, t, h, c)] * q[ik(b, t, h, c)];
          for (int c = 0; c < Dk; ++c) {
            double s = 0;
            for (int d = 0; d < Dv; ++d) {
              s += Sp[c * Dv + d] * dout[iv(b, t, h, d)];
              dS[c * Dv + d] += scale * q[ik(b, t, h, c)] * dout[iv(b, t, h, d)];
            }
            dq_ref[ik(b, t, h, c)] = scale * (s + u[h * Dk + c] * k[ik(b, t, h, c)] * vdo);
            dk_ref[ik(b, t, h, c)] += scale * u[h * Dk + c] * q[ik(b, t, h, c)] * vdo;
            du_ref[h * Dk + c] += scale * q[ik(b, t, h, c)] * k[ik(b, t, h, c)] * vdo;
          }
          for (int d = 0; d < Dv; ++d) dv_ref[iv(b, t, h, d)] += scale * wq * dout[iv(b, t, h, d)];
        }
      }
      for (size_t e = 0; e < DD; ++e) ds0_ref[(size_t(b) * H + h) * DD + e] = dS[e];
    }

  // ---- the kernels ----
  auto toT = [](const std::vector<double>& x) {
    Buf<T> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b.p[i] = tc::fromf<T>(float(x[i]));
    return b;
  };
  auto tof32 = [](const std::vector<double>& x) {
    Buf<float> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b.p[i] = float(x[i]);
    return b;
  };
  Buf<T> qd = toT(q), kd = toT(k), vd = toT(v), dod = toT(dout);
  Buf<float> gd = tof32(g), ud = tof32(u), s0d = tof32(s0), dfd = tof32(dfin);
  lr_cuda::Geo geo{B, T_, H, Dk, Dv, C, N, gw, float(scale), cs.bonus};
  const lr_tc::TcGeo tg{B, T_, H, Dk, Dv, C, N, gw, float(scale), cs.bonus};
  const size_t DD = size_t(Dk) * Dv;
  Buf<float> glast(size_t(B) * H * N * std::max(gw, 1));
  Buf<float> fin(size_t(B) * H * DD), ds0(size_t(B) * H * DD);
  Buf<bf16> states16(size_t(B) * H * N * DD), dstates16(size_t(B) * H * N * DD);  // U_n -> S_n, dU_n -> dH_{n+1}
  Buf<T> o(nv), dq(nk), dk(nk), dv(nv);
  Buf<float> rbuf(nk), pbuf(nk), ctot(size_t(B) * H * N * Dk), dubuf(size_t(B) * H * N * Dk), dg32(nk);
  const dim3 grid(N, H, B);
  const int ts = emu::block_threads(lr_tc::kStateThreads), tf = emu::block_threads(lr_tc::kFwdThreads),
            tb = emu::block_threads(lr_tc::kBwdThreads);
  const float* gp = mode > 0 ? gd.p : nullptr;
  with_mode(mode, [&]<int MODE>() {
    launch(grid, ts, lr_tc::smem_state(tg), [&] {
      lr_tc::chunk_state_tc<T, MODE, false>(tg, kd.p, vd.p, gp, states16.p, glast.p);
    });
    // The state scan as linear_recurrence.cu launches it for the tensor-core kernels: on the bf16 U_n in place,
    // 8 elements per thread packed (state_scan_bf16x8), 4 (8-byte accesses), or 1 (the path of Dk % 4 != 0 or unaligned buffers). Every
    // other seed instead runs the f32 instantiation (the FFMA path's) in place on an exact f32 copy of U_n and
    // rounds the states to bf16 here (as backward_launch converts f32 states): the same f32 arithmetic, so
    // the F:* columns (fused pass against this pair) must stay 0 either way. All at the real block size.
    auto scan = [&](bool rev, bf16* buf, const float* gl, const float* ein, float* eout) {
      const bool f32 = (seed / 2) % 2;
      const size_t ne = size_t(B) * H * N * DD;
      if (f32) {
        Buf<float> b32(ne);
        for (size_t i = 0; i < ne; ++i) b32.p[i] = __bfloat162float(buf[i]);
        const int vec = seed % 2 ? 1 : lr_cuda::scan_vec(geo, b32.p, gl);
        launch(lr_cuda::scan_grid(geo, vec), lr_cuda::kThreads, 0, [&] {
          if (vec == 4) (rev ? lr_cuda::state_scan_kernel<true, 4, float> : lr_cuda::state_scan_kernel<false, 4, float>)(geo, b32.p, gl, ein, eout);
          else (rev ? lr_cuda::state_scan_kernel<true, 1, float> : lr_cuda::state_scan_kernel<false, 1, float>)(geo, b32.p, gl, ein, eout);
        });
        for (size_t i = 0; i < ne; ++i) buf[i] = __float2bfloat16_rn(b32.p[i]);
        return;
      }
      // seeds 0, 4, 8, ...: the 8-element packed form (what the GPU runs where it fits), 2, 6, ...: 4 elements
      if (seed % 4 == 0 && lr_cuda::scan_x8_ok(geo, buf, gl)) {
        launch(lr_cuda::scan_grid(geo, 8), lr_cuda::kThreads, 0, [&] {
          with_mode(geo.gw == 0 ? 0 : geo.gw == 1 ? 1 : 2, [&]<int GW>() {
            (rev ? lr_cuda::state_scan_bf16x8<true, GW> : lr_cuda::state_scan_bf16x8<false, GW>)(geo, buf, gl, ein, eout);
          });
        });
        return;
      }
      const int vec = seed % 2 ? 1 : lr_cuda::scan_vec(geo, buf, gl);
      launch(lr_cuda::scan_grid(geo, vec), lr_cuda::kThreads, 0, [&] {
        if (vec == 4) (rev ? lr_cuda::state_scan_kernel<true, 4, bf16> : lr_cuda::state_scan_kernel<false, 4, bf16>)(geo, buf, gl, ein, eout);
        else (rev ? lr_cuda::state_scan_kernel<true, 1, bf16> : lr_cuda::state_scan_kernel<false, 1, bf16>)(geo, buf, gl, ein, eout);
      });
    };
    scan(false, states16.p, MODE > 0 ? glast.p : nullptr, cs.s0 ? s0d.p : nullptr, fin.p);
    launch(grid, tf, lr_tc::smem_fwd(tg), [&] {
      lr_tc::chunk_fwd_tc<T, MODE>(tg, qd.p, kd.p, vd.p, gp, ud.p, states16.p, o.p);
    });
    launch(grid, ts, lr_tc::smem_state(tg), [&] {
      lr_tc::chunk_state_tc<T, MODE, true>(tg, qd.p, dod.p, gp, dstates16.p, nullptr);
    });
    scan(true, dstates16.p, MODE > 0 ? glast.p : nullptr, dfd.p, ds0.p);
    lr_tc::TcBwdOut bo{MODE > 0 ? rbuf.p : nullptr, MODE > 0 && cs.bonus ? pbuf.p : nullptr, MODE > 0 ? ctot.p : nullptr,
                       cs.bonus ? dubuf.p : nullptr};
    launch(grid, tb, lr_tc::smem_bwd(tg), [&] {
      lr_tc::chunk_bwd_tc<T, MODE>(tg, qd.p, kd.p, vd.p, dod.p, gp, ud.p, states16.p, dstates16.p, dq.p, dk.p, dv.p, bo);
    });
    if (MODE > 0) {
      launch(dim3(unsigned((Dk + 127) / 128), B * H), 128, 0, [&] { lr_cuda::dg_suffix_kernel(geo, ctot.p, dfd.p, fin.p); });
      launch(dim3(N, B * H), Dk >= 128 ? 128 : 32 * ((Dk + 31) / 32), 0,
             [&] { lr_cuda::dg_kernel(geo, rbuf.p, cs.bonus ? pbuf.p : nullptr, ctot.p, dg32.p); });
    }
  });
  // ---- the fused state pass on the same inputs, into buffers of its own ----
  Buf<bf16> fst16(size_t(B) * H * N * DD), fdst16(size_t(B) * H * N * DD);
  Buf<float> ffin(size_t(B) * H * DD), fds0(size_t(B) * H * DD), fglast(size_t(B) * H * N * std::max(gw, 1));
  with_mode(mode, [&]<int MODE>() {
    const int tt = emu::block_threads(lr_tc::fs::kThreads);
    launch(lr_tc::fs::grid_of(tg), tt, lr_tc::smem_state_pass(tg), [&] {
      lr_tc::fs::state_pass_tc<T, MODE, false>(tg, kd.p, vd.p, gp, cs.s0 ? s0d.p : nullptr, ffin.p, fst16.p, fglast.p);
    });
    launch(lr_tc::fs::grid_of(tg), tt, lr_tc::smem_state_pass(tg), [&] {
      lr_tc::fs::state_pass_tc<T, MODE, true>(tg, qd.p, dod.p, gp, dfd.p, fds0.p, fdst16.p, nullptr);
    });
  });
  auto vecT = [](const Buf<T>& b) {
    std::vector<double> x(b.n);
    for (size_t i = 0; i < b.n; ++i) x[i] = tc::tof(b.p[i]);
    return x;
  };
  auto vecF = [](const Buf<float>& b) { return std::vector<double>(b.p, b.p + b.n); };
  Errs er{};
  er.e[0] = emu::max_rel(vecT(o), o_ref);
  er.e[1] = emu::max_rel(vecF(fin), fin_ref);
  er.e[2] = emu::max_rel(vecT(dq), dq_ref);
  er.e[3] = emu::max_rel(vecT(dk), dk_ref);
  er.e[4] = emu::max_rel(vecT(dv), dv_ref);
  if (mode > 0) {
    std::vector<double> dgv(g.size(), 0.0);
    for (size_t i = 0; i < nk; ++i) dgv[mode == 2 ? i : i / Dk] += dg32.p[i];
    er.e[5] = emu::max_rel(dgv, dg_ref);
  }
  if (cs.bonus) {
    std::vector<double> duv(u.size(), 0.0);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int n = 0; n < N; ++n)
          for (int c = 0; c < Dk; ++c) duv[size_t(h) * Dk + c] += dubuf.p[((size_t(b) * H + h) * N + n) * Dk + c];
    er.e[6] = emu::max_rel(duv, du_ref);
  }
  er.e[7] = emu::max_rel(vecF(ds0), ds0_ref);
  auto vecB = [](const Buf<bf16>& b) {
    std::vector<double> x(b.n);
    for (size_t i = 0; i < b.n; ++i) x[i] = tc::tof(b.p[i]);
    return x;
  };
  er.e[8] = emu::max_rel(vecB(fst16), vecB(states16));
  er.e[9] = emu::max_rel(vecF(ffin), vecF(fin));
  if (mode > 0) er.e[10] = emu::max_rel(vecF(fglast), vecF(glast));
  er.e[11] = emu::max_rel(vecB(fdst16), vecB(dstates16));
  er.e[12] = emu::max_rel(vecF(fds0), vecF(ds0));
  er.e[13] = std::max(emu::max_rel(vecF(ffin), fin_ref), emu::max_rel(vecF(fds0), ds0_ref));
  return er;
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  std::vector<Case> cases;
  const int Ts[] = {1, 63, 65, 200};
  for (int T : Ts)
    for (int mode = 0; mode < 3; ++mode)
      for (int bonus = 0; bonus < 2; ++bonus)
        for (int s0 = 0; s0 < 2; ++s0) cases.push_back({1, T, 2, 32, 48, 64, mode, bool(bonus), bool(s0), false, 1.0, 0.5});
  // strong per-channel / per-head decays (non-factorable chunks: the pairwise path), other chunk sizes and dims
  for (int T : {65, 200})
    for (int bonus = 0; bonus < 2; ++bonus) {
      cases.push_back({1, T, 2, 32, 32, 64, 2, bool(bonus), true, false, 20.0, 0.3});
      cases.push_back({1, T, 1, 32, 32, 64, 1, bool(bonus), true, false, 20.0, 0.3});
    }
  cases.push_back({2, 100, 2, 16, 16, 32, 2, false, true, false, 1.0, 0.25});
  cases.push_back({1, 100, 2, 48, 32, 16, 1, true, false, false, 1.0, 0.25});
  cases.push_back({1, 100, 1, 64, 64, 48, 2, true, true, false, 1.0, 0.125});
  cases.push_back({1, 130, 1, 128, 128, 64, 2, false, true, false, 1.0, 0.0884});
  cases.push_back({1, 130, 1, 128, 128, 64, 0, false, false, false, 1.0, 0.0884});
  // f16 inputs (operands converted to bf16)
  cases.push_back({1, 200, 2, 32, 32, 64, 2, true, true, true, 1.0, 0.5});
  cases.push_back({1, 65, 2, 32, 32, 64, 1, false, true, true, 1.0, 0.5});
  // the bf16 shapes of tests/gpu/test_linear_recurrence_gpu.cpp that take the tensor-core path (scale 0.75)
  if (argc > 1 && std::string(argv[1]) == "--gpu-cases") {
    cases.clear();
    const Case g[] = {{1, 1, 2, 64, 64, 64, 2, false, false, false, 1, 0.75},   {2, 63, 2, 64, 64, 64, 2, false, true, false, 1, 0.75},
                      {2, 65, 2, 128, 128, 64, 2, false, false, false, 1, 0.75}, {1, 200, 2, 128, 128, 64, 2, false, true, false, 1, 0.75},
                      {2, 257, 2, 64, 64, 64, 2, false, true, false, 1, 0.75},  {1, 1, 2, 64, 64, 64, 2, true, true, false, 1, 0.75},
                      {2, 65, 2, 64, 64, 64, 2, true, false, false, 1, 0.75},   {1, 257, 2, 128, 128, 64, 2, true, true, false, 1, 0.75},
                      {1, 1, 2, 64, 64, 64, 1, false, false, false, 1, 0.75},   {2, 63, 2, 128, 128, 64, 1, false, true, false, 1, 0.75},
                      {1, 257, 2, 64, 64, 64, 1, false, false, false, 1, 0.75}, {2, 200, 2, 64, 64, 64, 1, true, true, false, 1, 0.75},
                      {1, 1, 2, 64, 64, 64, 0, false, true, false, 1, 0.75},    {2, 65, 2, 128, 128, 64, 0, false, false, false, 1, 0.75},
                      {1, 257, 2, 64, 64, 64, 0, false, true, false, 1, 0.75},  {2, 200, 2, 64, 64, 64, 0, true, false, false, 1, 0.75},
                      {1, 257, 2, 64, 64, 64, 2, false, true, false, 20, 0.75}, {1, 200, 2, 64, 64, 64, 1, true, false, false, 20, 0.75},
                      {2, 130, 2, 64, 64, 64, 0, false, false, false, 1, 0.75}};
    for (const Case& c : g) cases.push_back(c);
  }
  if (argc > 1 && std::string(argv[1]) == "--threads-cases") {  // small and few: every block runs 256-512 threads
    cases.clear();
    const Case g[] = {{1, 80, 1, 32, 48, 64, 2, true, true, false, 1, 0.5},  {1, 80, 1, 32, 32, 64, 2, false, true, false, 20, 0.5},
                      {1, 80, 1, 32, 32, 64, 1, true, false, false, 1, 0.5}, {1, 70, 1, 128, 128, 64, 0, false, true, false, 1, 0.1},
                      {1, 70, 1, 128, 128, 64, 2, true, false, false, 1, 0.1}, {1, 50, 1, 32, 32, 32, 2, false, true, true, 1, 0.5}};
    for (const Case& c : g) cases.push_back(c);
  }
  if (quick) cases.resize(6);
  const char* names[kNErr] = {"o", "final", "dq", "dk", "dv", "dg", "du", "ds0", "F:S", "F:fin", "F:gl", "F:dH", "F:ds0", "F:ref"};
  auto tol = [](int i) { return i >= 8 && i < 13 ? 0.0 : 2e-2; };
  int fails = 0;
  double worst[kNErr] = {};
  uint32_t seed = 1;
  for (const Case& cs : cases) {
    const Errs er = cs.f16 ? run_case<__half>(cs, seed++) : run_case<bf16>(cs, seed++);
    bool ok = true;
    for (int i = 0; i < kNErr; ++i) {
      ok = ok && (tol(i) == 0 ? er.e[i] == 0 : er.e[i] < tol(i));
      worst[i] = std::max(worst[i], er.e[i]);
    }
    // T < C never reaches these kernels (linear_recurrence.cu keeps it on FFMA: at T = 1 without an initial
    // state dg is exactly 0 and the bf16 operands leave noise there); such cases are shown, not counted.
    const bool dispatched = cs.T >= cs.C;
    fails += !ok && dispatched;
    std::printf("%s B=%d T=%3d H=%d Dk=%3d Dv=%3d C=%2d mode=%d bonus=%d s0=%d %s strength=%4.1f |", ok ? "ok  " : dispatched ? "FAIL" : "info", cs.B, cs.T,
                cs.H, cs.Dk, cs.Dv, cs.C, cs.mode, int(cs.bonus), int(cs.s0), cs.f16 ? "f16 " : "bf16", cs.strength);
    for (int i = 0; i < kNErr; ++i) std::printf(" %s %.1e", names[i], er.e[i]);
    std::printf("\n");
    std::fflush(stdout);
  }
  std::printf("%zu cases, %d failed (of those with T >= C); worst over all:", cases.size(), fails);
  for (int i = 0; i < kNErr; ++i) std::printf(" %s %.1e", names[i], worst[i]);
  std::printf("\n");
  return fails ? 1 : 0;
}
