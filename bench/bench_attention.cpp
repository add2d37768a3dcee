// Causal attention benchmark: see bench_attention.h. Every timing is the median of --iters runs, each
// bracketed by its own pair of CUDA events on the current stream, after --warmup runs. Inputs are random
// normal bf16 (std 1, so the logits q.k / sqrt(D) have std 1). Outputs are allocated by each call (as in
// training), through the caching allocator.
#include "bench/bench_attention.h"
#include "bench/bench_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"
#include "layers/mixers/attention/attention_op.h"

#ifdef SEQMIX_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda/runtime.h"
#endif

namespace seqmix::bench {

namespace {

struct Config {
  std::vector<int64_t> lengths = {1024, 2048, 4096, 8192, 16384};
  int64_t tokens = 16384, H = 16, Hkv = 16, D = 128, window = 0;
  int iters = 20, warmup = 5;
  bool check = true;
  std::string dump;
};

struct Row {
  int64_t B = 0, T = 0;
  double ms[3] = {0, 0, 0};  // fwd, bwd, fwd+bwd
  double tflops[3] = {0, 0, 0};
};

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    out.push_back(std::stoll(item));
    if (out.back() <= 0) throw std::invalid_argument("not a positive length: " + item);
  }
  return out;
}

#ifdef SEQMIX_WITH_CUDA
const char* kPass[3] = {"fwd", "bwd", "fwd+bwd"};

// Forward FLOPs: 2 matmuls of 2 B H D flops per visible (query, key) pair; causal pairs counted as T^2 / 2.
double forward_flops(int64_t B, int64_t T, int64_t H, int64_t D, int64_t window) {
  double pairs = double(T) * double(T) / 2;
  if (window > 0 && window < T) pairs = double(T) * double(window) - double(window) * double(window - 1) / 2;
  return 4.0 * double(B) * double(H) * double(D) * pairs;
}



// max |a - b| / max |b| (b the reference), on the host in double.
double rel_err(const Tensor& a, const Tensor& b) {
  std::vector<double> va = a.to(Device::cpu()).to_vector<double>(), vb = b.to(Device::cpu()).to_vector<double>();
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::isnan(va[i])) return INFINITY;
    num = std::max(num, std::abs(va[i] - vb[i]));
    den = std::max(den, std::abs(vb[i]));
  }
  return num / den;
}

// The CUDA kernels against the CPU reference (f32 on the same bf16 inputs) on a small problem.
bool check_small(const Config& c, Generator& gen) {
  const int64_t B = 1, T = 512;
  const double scale = 1.0 / std::sqrt(double(c.D));
  Tensor q = randn({B, T, c.H, c.D}, gen, DType::F32).to(DType::BF16);
  Tensor k = randn({B, T, c.Hkv, c.D}, gen, DType::F32).to(DType::BF16);
  Tensor v = randn({B, T, c.Hkv, c.D}, gen, DType::F32).to(DType::BF16);
  Tensor g = randn({B, T, c.H, c.D}, gen, DType::F32).to(DType::BF16);
  auto f32 = [](const Tensor& t) { return t.to(DType::F32); };
  mixers::AttentionForward ref = mixers::attention_forward(f32(q), f32(k), f32(v), scale, c.window);
  mixers::AttentionGrads gref = mixers::attention_backward(f32(q), f32(k), f32(v), ref.o, ref.lse, f32(g), scale, c.window);
  const Device dev = Device::cuda(0);
  Tensor qd = q.to(dev), kd = k.to(dev), vd = v.to(dev), gd = g.to(dev);
  mixers::AttentionForward got = mixers::attention_forward(qd, kd, vd, scale, c.window);
  mixers::AttentionGrads ggot = mixers::attention_backward(qd, kd, vd, got.o, got.lse, gd, scale, c.window);
  auto host_f32 = [](const Tensor& t) { return t.to(Device::cpu()).to(DType::F32); };
  double e[4] = {rel_err(host_f32(got.o), ref.o), rel_err(host_f32(ggot.dq), gref.dq),
                 rel_err(host_f32(ggot.dk), gref.dk), rel_err(host_f32(ggot.dv), gref.dv)};
  bool ok = true;
  for (double x : e) ok = ok && x < 2e-2;
  std::printf("{\"bench\":\"attention\",\"check\":\"cuda vs cpu reference\",\"B\":1,\"T\":512,\"H\":%lld,\"hkv\":%lld,"
              "\"D\":%lld,\"window\":%lld,\"o\":%.2e,\"dq\":%.2e,\"dk\":%.2e,\"dv\":%.2e,\"ok\":%s}\n",
              (long long)c.H, (long long)c.Hkv, (long long)c.D, (long long)c.window, e[0], e[1], e[2], e[3],
              ok ? "true" : "false");
  return ok;
}

void write_raw(const std::filesystem::path& p, const Tensor& t) {
  Tensor h = t.to(Device::cpu()).contiguous();
  std::FILE* f = std::fopen(p.string().c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + p.string());
  size_t n = std::fwrite(h.data_ptr(), 1, h.nbytes(), f);
  std::fclose(f);
  if (n != h.nbytes()) throw std::runtime_error("short write to " + p.string());
}

// Inputs and our outputs for torch_attention.py --check.
void dump(const Config& c, Generator& gen) {
  const int64_t B = 2, T = 1024;
  const double scale = 1.0 / std::sqrt(double(c.D));
  const Device dev = Device::cuda(0);
  Tensor q = randn({B, T, c.H, c.D}, gen, DType::BF16, dev), k = randn({B, T, c.Hkv, c.D}, gen, DType::BF16, dev),
         v = randn({B, T, c.Hkv, c.D}, gen, DType::BF16, dev), g = randn({B, T, c.H, c.D}, gen, DType::BF16, dev);
  mixers::AttentionForward r = mixers::attention_forward(q, k, v, scale, c.window);
  mixers::AttentionGrads gr = mixers::attention_backward(q, k, v, r.o, r.lse, g, scale, c.window);
  std::filesystem::path dir(c.dump);
  std::filesystem::create_directories(dir);
  const std::pair<const char*, Tensor> files[] = {{"q", q},     {"k", k},      {"v", v},       {"dout", g}, {"o", r.o},
                                                  {"lse", r.lse}, {"dq", gr.dq}, {"dk", gr.dk}, {"dv", gr.dv}};
  for (const auto& [name, t] : files) write_raw(dir / (std::string(name) + ".bin"), t);
  std::FILE* f = std::fopen((dir / "meta.json").string().c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + (dir / "meta.json").string());
  std::fprintf(f,
               "{\"B\":%lld,\"T\":%lld,\"H\":%lld,\"hkv\":%lld,\"D\":%lld,\"window\":%lld,\"scale\":%.17g,"
               "\"layout\":\"BTHD\",\"dtype\":\"bf16\",\"lse\":\"f32 [B,H,T]\",\"causal\":\"bottom-right\"}\n",
               (long long)B, (long long)T, (long long)c.H, (long long)c.Hkv, (long long)c.D, (long long)c.window, scale);
  std::fclose(f);
  std::printf("{\"bench\":\"attention\",\"dump\":\"%s\",\"B\":%lld,\"T\":%lld}\n", c.dump.c_str(), (long long)B,
              (long long)T);
}

void print_table(const Config& c, const std::vector<Row>& rows) {
  // Kernel variants (flash_attention_variants.cuh) are chosen by these environment variables.
  const char* fv = std::getenv("SEQMIX_ATTN_FWD");
  const char* bv = std::getenv("SEQMIX_ATTN_BWD");
  std::printf("\nattention (causal%s), H=%lld hkv=%lld D=%lld bf16, impl=seqmix, SEQMIX_ATTN_FWD=%s SEQMIX_ATTN_BWD=%s\n",
              c.window > 0 ? (", window " + std::to_string(c.window)).c_str() : "", (long long)c.H, (long long)c.Hkv,
              (long long)c.D, fv ? fv : "default", bv ? bv : "default");
  std::printf("%6s %6s %10s %9s %10s %9s %10s %9s\n", "B", "T", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s", "f+b ms",
              "TFLOP/s");
  for (const Row& r : rows)
    std::printf("%6lld %6lld %10.3f %9.1f %10.3f %9.1f %10.3f %9.1f\n", (long long)r.B, (long long)r.T, r.ms[0],
                r.tflops[0], r.ms[1], r.tflops[1], r.ms[2], r.tflops[2]);
}
#endif

}  // namespace

int attention_main(const std::vector<std::string>& args) {
  Config c;
  try {
    parse_options(args, [&](const std::string& a, auto& value) {
      if (a == "--T") c.lengths = parse_list(value());
      else if (a == "--tokens") c.tokens = std::stoll(value());
      else if (a == "--H") c.H = std::stoll(value());
      else if (a == "--hkv") c.Hkv = std::stoll(value());
      else if (a == "--D") c.D = std::stoll(value());
      else if (a == "--window") c.window = std::stoll(value());
      else if (a == "--iters") c.iters = std::stoi(value());
      else if (a == "--warmup") c.warmup = std::stoi(value());
      else if (a == "--no-check") c.check = false;
      else if (a == "--dump") c.dump = value();
      else return false;
      return true;
    });
    if (c.H <= 0 || c.Hkv <= 0 || c.H % c.Hkv != 0) throw std::invalid_argument("--H must be a positive multiple of --hkv");
    if (c.D <= 0 || c.tokens <= 0) throw std::invalid_argument("--D and --tokens must be positive");
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "bench attention: %s\nusage: seqmix bench attention [--T 1024,2048,4096,8192,16384] [--tokens 16384] "
                 "[--H 16] [--hkv 16] [--D 128] [--window 0] [--iters N] [--warmup N] [--no-check] [--dump DIR]\n",
                 e.what());
    return 1;
  }
  if (c.iters < 10) c.iters = 10;
  if (!cuda_bench_ready("attention")) return 1;
#ifndef SEQMIX_WITH_CUDA
  return 1;
#else
  try {
    const Device dev = Device::cuda(0);
    cuda::select_device(0);
    Generator gen(1234);
    if (c.check && !check_small(c, gen)) {
      std::fprintf(stderr, "bench attention: the CUDA kernels disagree with the CPU reference; not timing\n");
      return 1;
    }
    if (!c.dump.empty()) dump(c, gen);
    std::vector<Row> rows;
    for (int64_t T : c.lengths) {
      const int64_t B = std::max<int64_t>(1, c.tokens / T);
      const double scale = 1.0 / std::sqrt(double(c.D));
      Tensor q = randn({B, T, c.H, c.D}, gen, DType::BF16, dev), k = randn({B, T, c.Hkv, c.D}, gen, DType::BF16, dev),
             v = randn({B, T, c.Hkv, c.D}, gen, DType::BF16, dev), g = randn({B, T, c.H, c.D}, gen, DType::BF16, dev);
      mixers::AttentionForward fwd = mixers::attention_forward(q, k, v, scale, c.window);
      Row r;
      r.B = B;
      r.T = T;
      r.ms[0] = median_ms([&] { mixers::attention_forward(q, k, v, scale, c.window); }, c.warmup, c.iters);
      r.ms[1] = median_ms([&] { mixers::attention_backward(q, k, v, fwd.o, fwd.lse, g, scale, c.window); }, c.warmup,
                          c.iters);
      r.ms[2] = median_ms(
          [&] {
            mixers::AttentionForward f = mixers::attention_forward(q, k, v, scale, c.window);
            mixers::attention_backward(q, k, v, f.o, f.lse, g, scale, c.window);
          },
          c.warmup, c.iters);
      const double ff = forward_flops(B, T, c.H, c.D, c.window);
      const double flops[3] = {ff, 2.5 * ff, 3.5 * ff};
      for (int p = 0; p < 3; ++p) {
        r.tflops[p] = tflops(flops[p], r.ms[p]);
        std::printf("{\"bench\":\"attention\",\"impl\":\"seqmix\",\"pass\":\"%s\",\"B\":%lld,\"T\":%lld,\"H\":%lld,"
                    "\"hkv\":%lld,\"D\":%lld,\"window\":%lld,\"dtype\":\"bf16\",\"ms\":%.4f,\"tflops\":%.1f}\n",
                    kPass[p], (long long)B, (long long)T, (long long)c.H, (long long)c.Hkv, (long long)c.D,
                    (long long)c.window, r.ms[p], r.tflops[p]);
      }
      std::fflush(stdout);
      rows.push_back(r);
    }
    print_table(c, rows);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench attention: %s\n", e.what());
    return 1;
  }
#endif
}

}  // namespace seqmix::bench
