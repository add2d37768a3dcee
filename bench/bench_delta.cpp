// Delta-rule benchmark: see bench_delta.h. Every timing is the median of --iters runs, each bracketed by its
// own pair of CUDA events on the current stream, after --warmup runs. Inputs: q, k, v random bf16 (q and k are
// L2-normalized inside), beta = sigmoid(x), g = log(sigmoid(x + 2)) in f32 as the mixers make them; outputs and
// gradients are allocated by each call (as in training), through the caching allocator.
#include "bench/bench_delta.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "bench/bench_util.h"
#include "core/ops.h"
#include "core/random.h"
#include "layers/mixers/common/delta_rule.h"

#ifdef SEQMIX_WITH_CUDA
#include "layers/mixers/common/delta_rule_cuda.h"
#include "layers/mixers/common/generalized_delta_cuda.h"
#endif

namespace seqmix::bench {

namespace {

struct Config : MixerBenchConfig {
  bool ops = true;
  Config() { kinds = {"gated", "plain", "rwkv7"}; }
};

#ifdef SEQMIX_WITH_CUDA

struct Problem {
  Tensor q, k, v, beta, g, dout, dfinal;  // on the device; g undefined for plain deltanet
  Tensor lw, a, b;                        // rwkv7 (generalized rule): per-channel log decay, a = -kk, b = kk * iclr
};

Problem make_problem(const std::string& kind, int64_t B, int64_t T, int64_t H, int64_t D, Generator& gen) {
  if (kind != "gated" && kind != "plain" && kind != "rwkv7")
    throw std::invalid_argument("unknown kind " + kind + " (gated, plain, rwkv7)");
  const Device dev = Device::cuda(0);
  Problem p;
  p.q = randn({B, T, H, D}, gen, DType::F32, dev).to(DType::BF16);
  p.k = randn({B, T, H, D}, gen, DType::F32, dev).to(DType::BF16);
  p.v = randn({B, T, H, D}, gen, DType::F32, dev).to(DType::BF16);
  p.beta = sigmoid(randn({B, T, H}, gen, DType::F32, dev));
  if (kind == "gated") p.g = logsigmoid(randn({B, T, H}, gen, DType::F32, dev) + 2.0);
  if (kind == "rwkv7") {  // as the rwkv7 mixer builds them: log decay in (-e^{-1/2}, 0), a = -kk, b = kk * iclr
    p.lw = neg(exp(affine(neg(softplus(neg(randn({B, T, H, D}, gen, DType::F32, dev)))), 1.0, -0.5)));
    Tensor kk = mixers::l2_normalize(randn({B, T, H, D}, gen, DType::F32, dev), 1e-12);
    p.a = neg(kk).to(DType::BF16);
    p.b = mul(kk, sigmoid(randn({B, T, H, D}, gen, DType::F32, dev))).to(DType::BF16);
  }
  p.dout = randn({B, T, H, D}, gen, DType::F32, dev).to(DType::BF16);
  p.dfinal = randn({B, H, D, D}, gen, DType::F32, dev);
  return p;
}

mixers::DeltaOptions options(int64_t D) {
  mixers::DeltaOptions o;
  o.scale = 1.0 / std::sqrt(double(D));
  return o;
}

// impl "kernel": delta_rule_cuda; "ops": delta_rule() with SEQMIX_DELTA_CUDA=0 (the op composition).
mixers::DeltaResult call(const std::string& impl, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                         const Tensor& g, int64_t D) {
  if (impl == "kernel") return mixers::delta_rule_cuda(q, k, v, beta, g, Tensor(), options(D));
  return mixers::delta_rule(q, k, v, beta, g, Tensor(), options(D));
}

// rwkv7, the generalized rule: impl "kernel": generalized_delta_rule() with the decay bound the rwkv7 mixer promises
// (the chunked kernel; the recurrent one under SEQMIX_GDR_CHUNKED=0); "ops": without that bound (the chunked op
// composition).
mixers::DeltaResult call_generalized(const std::string& impl, const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& lw, const Tensor& a, const Tensor& b, int64_t D) {
  mixers::DeltaOptions o = options(D);
  if (impl == "kernel") o.min_log_decay = -std::exp(-0.5) * (1.0 + 1e-6);
  return mixers::generalized_delta_rule(q, k, v, lw, a, b, Tensor(), o);
}

void run_forward(const std::string& impl, const Problem& p, int64_t D) {
  autograd::NoGradGuard ng;
  if (p.lw.defined()) call_generalized(impl, p.q, p.k, p.v, p.lw, p.a, p.b, D);
  else call(impl, p.q, p.k, p.v, p.beta, p.g, D);
}

void run_forward_backward(const std::string& impl, const Problem& p, int64_t D) {
  Tensor q = grad_leaf(p.q), k = grad_leaf(p.k), v = grad_leaf(p.v);
  mixers::DeltaResult r;
  if (p.lw.defined()) {
    Tensor lw = grad_leaf(p.lw), a = grad_leaf(p.a), b = grad_leaf(p.b);
    r = call_generalized(impl, q, k, v, lw, a, b, D);
  } else {
    Tensor beta = grad_leaf(p.beta), g = grad_leaf(p.g);
    r = call(impl, q, k, v, beta, g, D);
  }
  autograd::backward({r.o, r.final_state}, {p.dout, p.dfinal});
}

double rel_err(const Tensor& a, const Tensor& b) { return bench::rel_err(a, b, 1e-3); }

// The kernel vs the CPU reference (f32 on the same bf16 inputs): o, final state and every gradient.
bool check_small_generalized(const Config& c, Generator& gen) {
  const int64_t B = 1, T = 200, H = 2, D = c.D;
  Problem p = make_problem("rwkv7", B, T, H, D, gen);
  const auto host = host_f32;
  const auto leaf = grad_leaf;
  Tensor qr = leaf(host(p.q)), kr = leaf(host(p.k)), vr = leaf(host(p.v)), lr = leaf(host(p.lw)), ar = leaf(host(p.a)),
         br = leaf(host(p.b));
  mixers::DeltaResult ref = mixers::generalized_delta_rule_reference(qr, kr, vr, lr, ar, br, Tensor(), options(D));
  autograd::backward({ref.o, ref.final_state}, {host(p.dout), host(p.dfinal)});
  Tensor qd = leaf(p.q), kd = leaf(p.k), vd = leaf(p.v), ld = leaf(p.lw), ad = leaf(p.a), bd = leaf(p.b);
  mixers::DeltaResult got = call_generalized("kernel", qd, kd, vd, ld, ad, bd, D);
  autograd::backward({got.o, got.final_state}, {p.dout, p.dfinal});
  double e[8] = {rel_err(host(got.o), ref.o),         rel_err(host(got.final_state), ref.final_state),
                 rel_err(host(qd.grad()), qr.grad()), rel_err(host(kd.grad()), kr.grad()),
                 rel_err(host(vd.grad()), vr.grad()), rel_err(host(ld.grad()), lr.grad()),
                 rel_err(host(ad.grad()), ar.grad()), rel_err(host(bd.grad()), br.grad())};
  const bool ok = all_below(e, 3e-2);
  std::printf("{\"bench\":\"delta\",\"kind\":\"rwkv7\",\"check\":\"kernel vs cpu reference\",\"B\":1,\"T\":200,\"H\":2,"
              "\"D\":%lld,\"o\":%.2e,\"final_state\":%.2e,\"dq\":%.2e,\"dk\":%.2e,\"dv\":%.2e,\"dlw\":%.2e,\"da\":%.2e,"
              "\"db\":%.2e,\"ok\":%s}\n",
              (long long)D, e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], ok ? "true" : "false");
  return ok;
}

bool check_small(const Config& c, const std::string& kind, Generator& gen) {
  if (kind == "rwkv7") return check_small_generalized(c, gen);
  const int64_t B = 1, T = 200, H = 2, D = c.D;
  Problem p = make_problem(kind, B, T, H, D, gen);
  const auto host = host_f32;
  const auto leaf = grad_leaf;
  Tensor qr = leaf(host(p.q)), kr = leaf(host(p.k)), vr = leaf(host(p.v)), br = leaf(host(p.beta)), gr = leaf(host(p.g));
  mixers::DeltaResult ref = mixers::delta_rule_reference(qr, kr, vr, br, gr, Tensor(), options(D));
  autograd::backward({ref.o, ref.final_state}, {host(p.dout), host(p.dfinal)});
  Tensor qd = leaf(p.q), kd = leaf(p.k), vd = leaf(p.v), bd = leaf(p.beta), gd = leaf(p.g);
  mixers::DeltaResult got = mixers::delta_rule_cuda(qd, kd, vd, bd, gd, Tensor(), options(D));
  autograd::backward({got.o, got.final_state}, {p.dout, p.dfinal});
  double e[7] = {rel_err(host(got.o), ref.o),         rel_err(host(got.final_state), ref.final_state),
                 rel_err(host(qd.grad()), qr.grad()), rel_err(host(kd.grad()), kr.grad()),
                 rel_err(host(vd.grad()), vr.grad()), rel_err(host(bd.grad()), br.grad()),
                 gd.defined() ? rel_err(host(gd.grad()), gr.grad()) : 0.0};
  const bool ok = all_below(e, 3e-2);
  std::printf("{\"bench\":\"delta\",\"kind\":\"%s\",\"check\":\"kernel vs cpu reference\",\"B\":1,\"T\":200,\"H\":2,"
              "\"D\":%lld,\"o\":%.2e,\"final_state\":%.2e,\"dq\":%.2e,\"dk\":%.2e,\"dv\":%.2e,\"dbeta\":%.2e,\"dg\":%.2e,"
              "\"ok\":%s}\n",
              kind.c_str(), (long long)D, e[0], e[1], e[2], e[3], e[4], e[5], e[6], ok ? "true" : "false");
  return ok;
}

struct Row {
  std::string kind, impl;
  int64_t B = 0, T = 0;
  double ms[2] = {0, 0};  // fwd, fwd+bwd
};

Row measure(const Config& c, const std::string& kind, const std::string& impl, int64_t B, int64_t T, Generator& gen) {
  Problem p = make_problem(kind, B, T, c.H, c.D, gen);
  Row r;
  r.kind = kind;
  r.impl = impl;
  r.B = B;
  r.T = T;
  r.ms[0] = median_ms([&] { run_forward(impl, p, c.D); }, c.warmup, c.iters);
  r.ms[1] = median_ms([&] { run_forward_backward(impl, p, c.D); }, c.warmup, c.iters);
  const char* pass[2] = {"fwd", "fwd+bwd"};
  for (int i = 0; i < 2; ++i)
    std::printf("{\"bench\":\"delta\",\"impl\":\"%s\",\"kind\":\"%s\",\"pass\":\"%s\",\"B\":%lld,\"T\":%lld,\"H\":%lld,"
                "\"Dk\":%lld,\"Dv\":%lld,\"dtype\":\"bf16\",\"ms\":%.4f,\"ns_per_token\":%.3f}\n",
                impl.c_str(), kind.c_str(), pass[i], (long long)B, (long long)T, (long long)c.H, (long long)c.D,
                (long long)c.D, r.ms[i], ns_per_token(r.ms[i], B * T));
  std::fflush(stdout);
  return r;
}
#endif

}  // namespace

int delta_main(const std::vector<std::string>& args) {
  Config c;
  try {
    parse_options(args, [&](const std::string& a, auto& value) {
      if (parse_mixer_option(a, value, c)) return true;
      if (a != "--no-ops") return false;
      c.ops = false;
      return true;
    });
    c.iters = std::max(1, c.iters);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seqmix_bench delta: %s\n", e.what());
    return 1;
  }
#ifndef SEQMIX_WITH_CUDA
  std::fprintf(stderr, "seqmix_bench delta: this build has no CUDA backend\n");
  return 1;
#else
  if (!cuda_available()) {
    std::fprintf(stderr, "seqmix_bench delta: no CUDA device\n");
    return 1;
  }
  // The op composition is what delta_rule() runs with SEQMIX_DELTA_CUDA=0.
  ::setenv("SEQMIX_DELTA_CUDA", "0", 1);
  Generator gen(2024);
  bool ok = true;
  if (c.check)
    for (const std::string& kind : c.kinds) ok = check_small(c, kind, gen) && ok;
  std::vector<Row> rows;
  for (const std::string& kind : c.kinds) {
    rows.push_back(measure(c, kind, "kernel", c.B, c.T, gen));
    if (c.ops) rows.push_back(measure(c, kind, "ops", c.B, c.T, gen));
  }
  std::vector<Row> scaling;
  if (c.long_run)
    for (const std::string& kind : c.kinds) {
      scaling.push_back(measure(c, kind, "kernel", 1, c.T, gen));
      scaling.push_back(measure(c, kind, "kernel", 1, c.long_T, gen));
    }
  std::printf("\ndelta rule, bf16, H=%lld Dk=Dv=%lld (median of %d)\n", (long long)c.H, (long long)c.D, c.iters);
  std::printf("%-7s %-7s %3s %7s %11s %14s %13s\n", "kind", "impl", "B", "T", "fwd ms", "fwd+bwd ms", "ns/token f+b");
  for (const Row& r : rows)
    std::printf("%-7s %-7s %3lld %7lld %11.3f %14.3f %13.2f\n", r.kind.c_str(), r.impl.c_str(), (long long)r.B,
                (long long)r.T, r.ms[0], r.ms[1], ns_per_token(r.ms[1], r.B * r.T));
  for (size_t i = 0; i + 1 < rows.size(); i += 2)
    if (c.ops && rows[i].impl == "kernel")
      std::printf("%-7s kernel speed-up over ops: fwd %.2fx, fwd+bwd %.2fx\n", rows[i].kind.c_str(), rows[i + 1].ms[0] / rows[i].ms[0],
                  rows[i + 1].ms[1] / rows[i].ms[1]);
  auto kernel_ms = [&](const char* kind) {
    for (const Row& r : rows)
      if (r.kind == kind && r.impl == "kernel") return r.ms[1];
    return 0.0;
  };
  if (kernel_ms("rwkv7") > 0 && kernel_ms("plain") > 0)
    std::printf("rwkv7 kernel / plain (deltanet) kernel, fwd+bwd: %.2fx\n", kernel_ms("rwkv7") / kernel_ms("plain"));
  if (!scaling.empty()) {
    std::printf("\nscaling (kernel, B=1): ns per token, fwd+bwd\n");
    for (size_t i = 0; i + 1 < scaling.size(); i += 2)
      std::printf("%-7s T=%lld %.2f  T=%lld %.2f  ratio %.2f\n", scaling[i].kind.c_str(), (long long)scaling[i].T,
                  ns_per_token(scaling[i].ms[1], scaling[i].T), (long long)scaling[i + 1].T,
                  ns_per_token(scaling[i + 1].ms[1], scaling[i + 1].T),
                  (scaling[i + 1].ms[1] / double(scaling[i + 1].T)) / (scaling[i].ms[1] / double(scaling[i].T)));
  }
  return ok ? 0 : 1;
#endif
}

}  // namespace seqmix::bench
