// Shared by the benchmarks: command-line options, the options of the sequence-mixer kernel benches, rates
// (TFLOP/s, GB/s, ns per token), the kernel-vs-reference error measure, and (with CUDA) the median of
// CUDA-event timings on the current stream.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/tensor.h"

#ifdef SEQMIX_WITH_CUDA
#include <functional>

#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#endif

namespace seqmix::bench {

// Walks the command line: on_option(name, value) handles one option, calling value() for the argument that
// follows where the option takes one, and returns false for a name it does not know. Throws
// std::invalid_argument "NAME needs a value" or "unknown argument NAME".
template <class F>
void parse_options(const std::vector<std::string>& args, F&& on_option) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (!on_option(a, value)) throw std::invalid_argument("unknown argument " + a);
  }
}

// The non-empty items of a comma-separated list.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// What the sequence-mixer kernel benches (recurrence, delta) take alike: the problem (B, T, H, Dk = Dv = D),
// the length of the scaling run, the kinds, the timing, and whether to check and to run the scaling stage.
struct MixerBenchConfig {
  int64_t B = 4, T = 4096, H = 16, D = 128, long_T = 65536;
  std::vector<std::string> kinds;
  int iters = 10, warmup = 2;
  bool check = true, long_run = true;
};

// One of MixerBenchConfig's options (--B --T --H --D --long --kinds --iters --warmup --no-check --no-long)
// into c, for parse_options; false where `a` is none of them.
template <class Value>
bool parse_mixer_option(const std::string& a, Value& value, MixerBenchConfig& c) {
  if (a == "--B") c.B = std::stoll(value());
  else if (a == "--T") c.T = std::stoll(value());
  else if (a == "--H") c.H = std::stoll(value());
  else if (a == "--D") c.D = std::stoll(value());
  else if (a == "--long") c.long_T = std::stoll(value());
  else if (a == "--kinds") c.kinds = split_list(value());
  else if (a == "--iters") c.iters = std::stoi(value());
  else if (a == "--warmup") c.warmup = std::stoi(value());
  else if (a == "--no-check") c.check = false;
  else if (a == "--no-long") c.long_run = false;
  else return false;
  return true;
}

// Whether `bench NAME` can time CUDA kernels here; where not (no CUDA backend in this build, or no device
// visible), says which on stderr.
inline bool cuda_bench_ready(const char* name) {
#ifndef SEQMIX_WITH_CUDA
  std::fprintf(stderr, "bench %s: the CUDA backend is not built (configure with -DSEQMIX_CUDA=ON)\n", name);
  return false;
#else
  if (cuda_available()) return true;
  std::fprintf(stderr, "bench %s: no CUDA device is visible\n", name);
  return false;
#endif
}

// Rates from a time in milliseconds.
inline double tflops(double flops, double ms) { return flops / (ms * 1e-3) / 1e12; }
inline double gbps(double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; }
inline double ns_per_token(double ms, int64_t tokens) { return ms * 1e6 / double(tokens); }

// A tensor as an f32 CPU tensor; undefined stays undefined.
inline Tensor host_f32(const Tensor& t) { return t.defined() ? t.to(Device::cpu()).to(DType::F32) : Tensor(); }

// A detached copy of t that requires a gradient (a leaf for autograd::backward); undefined stays undefined.
inline Tensor grad_leaf(const Tensor& t) {
  if (!t.defined()) return Tensor();
  Tensor x = t.detach();
  x.requires_grad_(true);
  return x;
}

// max |a - b| / max(max |b|, den_floor) over the elements (b the reference), on the host in double;
// infinity where a holds a NaN or an infinity.
inline double rel_err(const Tensor& a, const Tensor& b, double den_floor) {
  std::vector<double> va = a.to(Device::cpu()).to_vector<double>(), vb = b.to(Device::cpu()).to_vector<double>();
  double num = 0, den = den_floor;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    if (!std::isfinite(va[i])) return INFINITY;
    num = std::max(num, std::abs(va[i] - vb[i]));
    den = std::max(den, std::abs(vb[i]));
  }
  return num / den;
}

// Whether every error is below tol.
template <size_t N>
bool all_below(const double (&errors)[N], double tol) {
  bool ok = true;
  for (double x : errors) ok = ok && x < tol;
  return ok;
}

#ifdef SEQMIX_WITH_CUDA
// Median milliseconds of f() over `iters` runs after `warmup` runs, each bracketed by events.
inline double median_ms(const std::function<void()>& f, int warmup, int iters) {
  cudaStream_t st = cuda::current_stream();
  for (int i = 0; i < warmup; ++i) f();
  std::vector<cudaEvent_t> ev(size_t(2 * iters));
  for (cudaEvent_t& e : ev) SEQMIX_CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    SEQMIX_CUDA_CHECK(cudaEventRecord(ev[size_t(2 * i)], st));
    f();
    SEQMIX_CUDA_CHECK(cudaEventRecord(ev[size_t(2 * i + 1)], st));
  }
  SEQMIX_CUDA_CHECK(cudaStreamSynchronize(st));
  std::vector<double> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    float t = 0;
    SEQMIX_CUDA_CHECK(cudaEventElapsedTime(&t, ev[size_t(2 * i)], ev[size_t(2 * i + 1)]));
    ms[size_t(i)] = t;
  }
  for (cudaEvent_t& e : ev) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return iters % 2 ? ms[size_t(iters / 2)] : 0.5 * (ms[size_t(iters / 2 - 1)] + ms[size_t(iters / 2)]);
}
#endif

}  // namespace seqmix::bench
