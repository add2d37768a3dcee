// Gated linear recurrence benchmark: see bench_recurrence.h. Every timing is the median of --iters runs,
// each bracketed by its own pair of CUDA events on the current stream, after --warmup runs. Inputs are
// random bf16 (q scaled by 1/sqrt(Dk)), log-decays log(sigmoid(x + 2)) in f32 as the mixers make them.
// Outputs and gradients are allocated by each call (as in training), through the caching allocator.
#include "bench/bench_util.h"
#include "bench/bench_recurrence.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/mixers/common/linear_recurrence.h"
#include "layers/mixers/retnet/retnet.h"

#ifdef SEQMIX_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda/runtime.h"
#include "layers/mixers/common/linear_recurrence_cuda.h"
#endif

namespace seqmix::bench {

namespace {

struct Config : MixerBenchConfig {
  bool compare_ffma = false;  // also time the tensor-core and the FFMA chunk kernels (SEQMIX_LR_TC=1 / 0)
  Config() {
    kinds = {"gla", "hgrn2", "retnet", "linear_attention", "simple_gla"};
    iters = 20;
    warmup = 3;
  }
};

#ifdef SEQMIX_WITH_CUDA
constexpr int64_t kChunk = 64;

double fwd_flops(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv) {
  return double(B) * double(T) * double(H) * (2.0 * kChunk * double(Dk + Dv) + 4.0 * double(Dk) * double(Dv));
}
double bwd_flops(int64_t B, int64_t T, int64_t H, int64_t Dk, int64_t Dv) {
  return double(B) * double(T) * double(H) * (2.0 * kChunk * double(3 * Dk + 2 * Dv) + 8.0 * double(Dk) * double(Dv));
}

struct Problem {
  Tensor q, k, v, g, dout, dfinal;  // on the device; g undefined for linear attention
  bool g_grad = true;               // false: constant decays (retnet), no dg
};

// kind: gla (per-channel decay), hgrn2 (per-channel decay f with a lower bound, key k = 1 - f), retnet
// (RetNet's fixed per-head decays 1 - 2^(-5-h), constants without a gradient, as the peer's retention kernel
// and seqmix's retnet mixer have them), simple_gla (a data-dependent per-head decay with its gradient),
// linear_attention (none).
Problem make_problem(const std::string& kind, int64_t B, int64_t T, int64_t H, int64_t D, Generator& gen, Device dev) {
  Problem p;
  p.q = (randn({B, T, H, D}, gen, DType::F32, dev) * (1.0 / std::sqrt(double(D)))).to(DType::BF16);
  p.k = randn({B, T, H, D}, gen, DType::F32, dev).to(DType::BF16);
  p.v = randn({B, T, H, D}, gen, DType::F32, dev).to(DType::BF16);
  if (kind == "gla") p.g = logsigmoid(randn({B, T, H, D}, gen, DType::F32, dev) + 2.0);
  else if (kind == "hgrn2") {  // f = lb + (1 - lb) sigmoid(x) with the lower bound of a middle layer (0.5)
    Tensor f = affine(sigmoid(randn({B, T, H, D}, gen, DType::F32, dev)), 0.5, 0.5);
    p.g = log(f);
    p.k = affine(f, -1.0, 1.0).to(DType::BF16);
  } else if (kind == "retnet") {
    p.g = Tensor::from_vector<double>(mixers::retnet_log_decays(H), {1, 1, H}).to(dev).to(DType::F32).expand({B, T, H}).contiguous();
    p.g_grad = false;
  } else if (kind == "simple_gla") p.g = logsigmoid(randn({B, T, H}, gen, DType::F32, dev) + 2.0);
  else if (kind != "linear_attention")
    throw std::invalid_argument("unknown kind " + kind + " (gla, hgrn2, retnet, simple_gla, linear_attention)");
  p.dout = randn({B, T, H, D}, gen, DType::F32, dev).to(DType::BF16);
  p.dfinal = randn({B, H, D, D}, gen, DType::F32, dev);
  return p;
}

mixers::RecurrenceOptions options(int64_t D) {
  mixers::RecurrenceOptions o;
  o.scale = 1.0 / std::sqrt(double(D));
  return o;
}

void run_forward(const Problem& p, int64_t D) {
  autograd::NoGradGuard ng;
  mixers::linear_recurrence_cuda(p.q, p.k, p.v, p.g, Tensor(), Tensor(), options(D));
}

void run_forward_backward(const Problem& p, int64_t D) {
  Tensor q = p.q.detach(), k = p.k.detach(), v = p.v.detach(), g = p.g.defined() ? p.g.detach() : Tensor();
  q.requires_grad_(true);
  k.requires_grad_(true);
  v.requires_grad_(true);
  if (g.defined() && p.g_grad) g.requires_grad_(true);
  mixers::RecurrenceResult r = mixers::linear_recurrence_cuda(q, k, v, g, Tensor(), Tensor(), options(D));
  autograd::backward({r.o, r.final_state}, {p.dout, p.dfinal});
}

double rel_err(const Tensor& a, const Tensor& b) { return bench::rel_err(a, b, 1e-30); }

// CUDA vs the CPU reference (f32 on the same bf16 inputs): o, final state, dq, dk, dv, dg.
bool check_small(const Config& c, const std::string& kind, Generator& gen) {
  const int64_t B = 1, T = 200, H = 2, D = c.D;
  const Device dev = Device::cuda(0);
  Problem p = make_problem(kind, B, T, H, D, gen, dev);
  const auto host = host_f32;
  const auto leaf = grad_leaf;
  Tensor qr = leaf(host(p.q)), kr = leaf(host(p.k)), vr = leaf(host(p.v));
  Tensor gr = p.g_grad ? leaf(host(p.g)) : host(p.g);
  mixers::RecurrenceResult ref = mixers::linear_recurrence_reference(qr, kr, vr, gr, Tensor(), Tensor(), options(D));
  autograd::backward({ref.o, ref.final_state}, {host(p.dout), host(p.dfinal)});
  Tensor qd = leaf(p.q), kd = leaf(p.k), vd = leaf(p.v), gd = p.g_grad ? leaf(p.g) : p.g;
  mixers::RecurrenceResult got = mixers::linear_recurrence_cuda(qd, kd, vd, gd, Tensor(), Tensor(), options(D));
  autograd::backward({got.o, got.final_state}, {p.dout, p.dfinal});
  double e[6] = {rel_err(host(got.o), ref.o),       rel_err(host(got.final_state), ref.final_state),
                 rel_err(host(qd.grad()), qr.grad()), rel_err(host(kd.grad()), kr.grad()),
                 rel_err(host(vd.grad()), vr.grad()), gd.defined() && p.g_grad ? rel_err(host(gd.grad()), gr.grad()) : 0.0};
  const bool ok = all_below(e, 2e-2);
  std::printf("{\"bench\":\"recurrence\",\"kind\":\"%s\",\"check\":\"cuda vs cpu reference\",\"B\":1,\"T\":200,\"H\":2,"
              "\"D\":%lld,\"o\":%.2e,\"final_state\":%.2e,\"dq\":%.2e,\"dk\":%.2e,\"dv\":%.2e,\"dg\":%.2e,\"ok\":%s}\n",
              kind.c_str(), (long long)D, e[0], e[1], e[2], e[3], e[4], e[5], ok ? "true" : "false");
  return ok;
}

struct Row {
  std::string kind, impl;
  int64_t B = 0, T = 0;
  double ms[2] = {0, 0};      // fwd, fwd+bwd
  double tflops[2] = {0, 0};
};

Row measure(const Config& c, const std::string& kind, int64_t B, int64_t T, Generator& gen, const char* impl = "seqmix") {
  const Device dev = Device::cuda(0);
  Problem p = make_problem(kind, B, T, c.H, c.D, gen, dev);
  Row r;
  r.kind = kind;
  r.impl = impl;
  r.B = B;
  r.T = T;
  r.ms[0] = median_ms([&] { run_forward(p, c.D); }, c.warmup, c.iters);
  r.ms[1] = median_ms([&] { run_forward_backward(p, c.D); }, c.warmup, c.iters);
  const double ff = fwd_flops(B, T, c.H, c.D, c.D), fb = ff + bwd_flops(B, T, c.H, c.D, c.D);
  r.tflops[0] = tflops(ff, r.ms[0]);
  r.tflops[1] = tflops(fb, r.ms[1]);
  const char* pass[2] = {"fwd", "fwd+bwd"};
  for (int i = 0; i < 2; ++i)
    std::printf("{\"bench\":\"recurrence\",\"impl\":\"%s\",\"kind\":\"%s\",\"pass\":\"%s\",\"B\":%lld,\"T\":%lld,"
                "\"H\":%lld,\"Dk\":%lld,\"Dv\":%lld,\"dtype\":\"bf16\",\"ms\":%.4f,\"tflops\":%.2f,\"ns_per_token\":%.3f}\n",
                impl, kind.c_str(), pass[i], (long long)B, (long long)T, (long long)c.H, (long long)c.D, (long long)c.D, r.ms[i],
                r.tflops[i], ns_per_token(r.ms[i], B * T));
  std::fflush(stdout);
  return r;
}
#endif

}  // namespace

int recurrence_main(const std::vector<std::string>& args) {
  Config c;
  try {
    parse_options(args, [&](const std::string& a, auto& value) {
      if (parse_mixer_option(a, value, c)) return true;
      if (a != "--compare-ffma") return false;
      c.compare_ffma = true;
      return true;
    });
    if (c.B <= 0 || c.T <= 0 || c.H <= 0 || c.D <= 0 || c.long_T <= 0)
      throw std::invalid_argument("--B, --T, --H, --D and --long must be positive");
    for (const std::string& k : c.kinds)
      if (k != "gla" && k != "hgrn2" && k != "retnet" && k != "simple_gla" && k != "linear_attention")
        throw std::invalid_argument("unknown kind " + k + " (gla, hgrn2, retnet, simple_gla, linear_attention)");
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "bench recurrence: %s\nusage: seqmix bench recurrence [--B 4] [--T 4096] [--H 16] [--D 128] [--long 65536] "
                 "[--kinds gla,hgrn2,retnet,linear_attention,simple_gla] [--iters N] [--warmup N] [--no-check] [--no-long] [--compare-ffma]\n",
                 e.what());
    return 1;
  }
  if (c.iters < 10) c.iters = 10;
  if (!cuda_bench_ready("recurrence")) return 1;
#ifndef SEQMIX_WITH_CUDA
  return 1;
#else
  try {
    cuda::select_device(0);
    Generator gen(1234);
    if (c.check) {
      bool ok = true;
      for (const std::string& kind : c.kinds) ok = check_small(c, kind, gen) && ok;
      if (!ok) {
        std::fprintf(stderr, "bench recurrence: the CUDA kernel disagrees with the CPU reference; not timing\n");
        return 1;
      }
    }
    std::vector<Row> rows;
    for (const std::string& kind : c.kinds) rows.push_back(measure(c, kind, c.B, c.T, gen));
    if (c.compare_ffma) {  // the same problems with the other path forced (the dispatch reads SEQMIX_LR_TC per call)
      const char* prev = std::getenv("SEQMIX_LR_TC");
      const std::string saved = prev ? prev : "";
      for (const char* v : {"1", "0"}) {
        setenv("SEQMIX_LR_TC", v, 1);
        for (const std::string& kind : c.kinds) rows.push_back(measure(c, kind, c.B, c.T, gen, v[0] == '1' ? "seqmix-tc" : "seqmix-ffma"));
      }
      if (prev) setenv("SEQMIX_LR_TC", saved.c_str(), 1);
      else unsetenv("SEQMIX_LR_TC");
    }
    std::printf("\ngated linear recurrence, chunked CUDA kernel, H=%lld Dk=Dv=%lld bf16 (f32 state); impl seqmix = default "
                "dispatch (tensor cores unless SEQMIX_LR_TC=0), seqmix-tc / seqmix-ffma = forced\n",
                (long long)c.H, (long long)c.D);
    std::printf("%-17s %-12s %4s %7s %10s %9s %12s %9s\n", "kind", "impl", "B", "T", "fwd ms", "TFLOP/s", "fwd+bwd ms", "TFLOP/s");
    for (const Row& r : rows)
      std::printf("%-17s %-12s %4lld %7lld %10.3f %9.2f %12.3f %9.2f\n", r.kind.c_str(), r.impl.c_str(), (long long)r.B,
                  (long long)r.T, r.ms[0], r.tflops[0], r.ms[1], r.tflops[1]);
    std::printf("targets (fwd+bwd, flash-linear-attention on an H100): gla <= 4.21 ms, retnet <= 2.21 ms, "
                "linear_attention <= 1.84 ms\n");
    if (c.long_run) {
      std::vector<Row> sc;
      for (const std::string& kind : c.kinds) {
        sc.push_back(measure(c, kind, 1, c.T, gen));
        sc.push_back(measure(c, kind, 1, c.long_T, gen));
      }
      std::printf("\nlength scaling (B=1): time per token must stay flat\n");
      std::printf("%-17s %7s %12s %14s %12s %14s\n", "kind", "T", "fwd ms", "fwd ns/token", "fwd+bwd ms", "f+b ns/token");
      for (const Row& r : sc)
        std::printf("%-17s %7lld %12.3f %14.3f %12.3f %14.3f\n", r.kind.c_str(), (long long)r.T, r.ms[0],
                    ns_per_token(r.ms[0], r.T), r.ms[1], ns_per_token(r.ms[1], r.T));
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench recurrence: %s\n", e.what());
    return 1;
  }
#endif
}

}  // namespace seqmix::bench
