// GEMM and convolution kernel benchmark: see bench_gemm.h. Every timing is the median of --iters
// runs, each bracketed by its own pair of CUDA events on the current stream, after --warmup runs.
// Inputs are random (normal, std 1 for the GEMMs) so the tensor cores see realistic bit patterns.
#include "bench/bench_util.h"
#include "bench/bench_gemm.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/kernels.h"
#include "core/ops.h"
#include "core/random.h"

#ifdef SEQMIX_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda/runtime.h"
#endif

namespace seqmix::bench {

namespace {

struct Row {
  std::string op, shape;
  double ms = 0, tflops = 0, gbps = 0;
};

std::vector<int64_t> parse_sizes(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    out.push_back(std::stoll(item));
    if (out.back() <= 0) throw std::invalid_argument(item);
  }
  return out;
}

[[maybe_unused]] void print_json(const Row& r) {  // used only with CUDA
  std::printf("{\"bench\":\"gemm\",\"op\":\"%s\",\"shape\":\"%s\",\"ms\":%.4f", r.op.c_str(), r.shape.c_str(), r.ms);
  if (r.tflops > 0) std::printf(",\"tflops\":%.1f", r.tflops);
  if (r.gbps > 0) std::printf(",\"gbps\":%.1f", r.gbps);
  std::printf(",\"impl\":\"seqmix\"}\n");
}

[[maybe_unused]] void print_table(const std::vector<Row>& rows) {
  std::printf("\n%-28s %-26s %10s %10s %10s\n", "op", "shape", "ms", "TFLOP/s", "GB/s");
  for (const Row& r : rows) {
    char tf[32] = "-", gb[32] = "-";
    if (r.tflops > 0) std::snprintf(tf, sizeof(tf), "%.1f", r.tflops);
    if (r.gbps > 0) std::snprintf(gb, sizeof(gb), "%.1f", r.gbps);
    std::printf("%-28s %-26s %10.4f %10s %10s\n", r.op.c_str(), r.shape.c_str(), r.ms, tf, gb);
  }
}

}  // namespace

int gemm_main(const std::vector<std::string>& args) {
  std::vector<int64_t> sizes = {4096, 8192};
  int iters = 50, warmup = 10;
  bool conv = true, gemm = true;
  try {
    parse_options(args, [&](const std::string& a, auto& value) {
      if (a == "--sizes") sizes = parse_sizes(value());
      else if (a == "--iters") iters = std::stoi(value());
      else if (a == "--warmup") warmup = std::stoi(value());
      else if (a == "--no-conv") conv = false;
      else if (a == "--no-gemm") gemm = false;
      else return false;
      return true;
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench gemm: %s\nusage: seqmix bench gemm [--sizes 4096,8192] [--iters N] [--warmup N] [--no-conv] [--no-gemm]\n",
                 e.what());
    return 1;
  }
  if (iters < 20) iters = 20;
  if (!cuda_bench_ready("gemm")) return 1;
#ifndef SEQMIX_WITH_CUDA
  (void)warmup;
  (void)conv;
  (void)gemm;
  return 1;
#else
  try {
    const Device dev = Device::cuda(0);
    cuda::select_device(0);
    Generator gen(1234);
    std::vector<Row> rows;
    auto add = [&](Row r) {
      print_json(r);
      std::fflush(stdout);
      rows.push_back(std::move(r));
    };

    if (gemm) {
      for (int64_t s : sizes) {
        Tensor a = randn({s, s}, gen, DType::BF16, dev), b = randn({s, s}, gen, DType::BF16, dev);
        Tensor c = empty({s, s}, DType::BF16, dev);
        double flop = 2.0 * double(s) * double(s) * double(s);
        std::string shape = std::to_string(s) + "x" + std::to_string(s) + "x" + std::to_string(s);
        for (bool tb : {false, true}) {
          double ms = median_ms([&] { cuda::matmul(a, b, false, tb, c, false); }, warmup, iters);
          add({std::string("gemm bf16 ") + (tb ? "A@B^T" : "A@B"), shape, ms, tflops(flop, ms), 0});
        }
      }
    }

    if (conv) {
      const int64_t B = 4, T = 4096, C = 1024, L = 4096, K = 4;
      std::string shape = "B4 T4096 C1024";
      Tensor x = randn({B, T, C}, gen, DType::BF16, dev), g = randn({B, T, C}, gen, DType::BF16, dev);
      Tensor k = affine(randn({C, L}, gen, DType::BF16, dev), 0.01, 0.0);
      double act = double(B * T * C) * 2.0;  // bytes of one bf16 activation tensor
      {
        double ms = median_ms([&] { cuda::fft_conv(x, k); }, warmup, iters);
        add({"fft_conv fwd bf16 L=4096", shape, ms, 0, gbps(2 * act, ms)});
        double msb = median_ms(
            [&] {
              Tensor dx, dk;
              cuda::fft_conv_backward(g, x, k, &dx, &dk);
            },
            warmup, iters);
        add({"fft_conv bwd bf16 L=4096", shape, msb, 0, gbps(3 * act, msb)});
        double msfb = median_ms(
            [&] {
              cuda::fft_conv(x, k);
              Tensor dx, dk;
              cuda::fft_conv_backward(g, x, k, &dx, &dk);
            },
            warmup, iters);
        add({"fft_conv fwd+bwd bf16", shape, msfb, 0, 0});
      }
      {
        Tensor w = randn({C, K}, gen, DType::BF16, dev), bias = randn({C}, gen, DType::BF16, dev);
        double ms = median_ms([&] { cuda::conv1d_causal(x, w, bias); }, warmup, iters);
        add({"conv1d fwd bf16 K=4", shape, ms, 0, gbps(2 * act, ms)});
        double msb = median_ms(
            [&] {
              Tensor dx, dw, db;
              cuda::conv1d_causal_backward(g, x, w, &dx, &dw, &db);
            },
            warmup, iters);
        add({"conv1d bwd bf16 K=4", shape, msb, 0, gbps(3 * act, msb)});
      }
    }
    print_table(rows);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench gemm: %s\n", e.what());
    return 1;
  }
#endif
}

}  // namespace seqmix::bench
