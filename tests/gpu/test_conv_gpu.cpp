// CUDA causal depthwise conv1d and FFT long convolution (forward and every gradient) against the
// CPU backend (direct sums in f32 / f64).
//
// Tolerances: |cuda - cpu| <= atol + rtol * |cpu|
// - conv1d f32: rtol 1e-5, atol 1e-5 (f32 sums of K terms; dw/dbias sum B*T terms in another order).
// - fft_conv f32: atol 2e-5 * max|cpu| + rtol 1e-4: FFT round-off is relative to the whole signal's
//   scale, not to each output.
// - bf16 (both): rtol 2e-2 and atol 2e-2 * max|cpu| for fft_conv (1e-2 for conv1d): identical bf16
//   inputs, f32 math, one final rounding on each side.
#include "support/gpu_compare.h"
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/kernels.h"
#include "core/ops.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {




double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}


Tol conv_tol(DType dt) { return dt == DType::F32 ? Tol{1e-5, 1e-5} : Tol{2e-2, 1e-2}; }
Tol fft_tol(DType dt, const Tensor& want) {
  double s = std::max(max_abs(want), 1e-6);
  return dt == DType::F32 ? Tol{1e-4, 2e-5 * s} : Tol{2e-2, 2e-2 * s};
}

}  // namespace

TEST(CudaConv1d, ForwardAndBackward) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t B, T, C;
    int K;
  };
  // K = 4 (mamba), 1, 7 and 33 (other window sizes), T = 63 odd, T = 300 (several time tiles), C = 130
  // (a partial channel block)
  std::vector<Case> cases = {{3, 63, 5, 4}, {2, 63, 130, 4}, {2, 300, 24, 1}, {2, 70, 9, 7}, {1, 200, 40, 33}, {2, 63, 3, 64}};
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cases) {
      for (bool with_bias : {true, false}) {
        Tensor x = rand_cpu({c.B, c.T, c.C}, dt, 1), w = rand_cpu({c.C, c.K}, dt, 2);
        Tensor b = with_bias ? rand_cpu({c.C}, dt, 3) : Tensor();
        Tensor g = rand_cpu({c.B, c.T, c.C}, dt, 4);
        std::string what = std::string(dtype_name(dt)) + " B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) +
                           " C=" + std::to_string(c.C) + " K=" + std::to_string(c.K) + (with_bias ? " bias" : "");
        expect_close(cuda::conv1d_causal(x.cuda(), w.cuda(), with_bias ? b.cuda() : Tensor()), cpu::conv1d_causal(x, w, b),
                     conv_tol(dt), "conv1d " + what);
        Tensor dx, dw, db, gdx, gdw, gdb;
        cpu::conv1d_causal_backward(g, x, w, &dx, &dw, &db);
        cuda::conv1d_causal_backward(g.cuda(), x.cuda(), w.cuda(), &gdx, &gdw, &gdb);
        expect_close(gdx, dx, conv_tol(dt), "conv1d dx " + what);
        // dw / dbias sum B*T products: scale the absolute tolerance with sqrt(B*T)
        double s = std::sqrt(double(c.B * c.T));
        Tol tw{conv_tol(dt).rtol, conv_tol(dt).atol * s};
        expect_close(gdw, dw, tw, "conv1d dw " + what);
        expect_close(gdb, db, tw, "conv1d dbias " + what);
        // only some gradients requested
        Tensor only_dx;
        cuda::conv1d_causal_backward(g.cuda(), x.cuda(), w.cuda(), &only_dx, nullptr, nullptr);
        expect_close(only_dx, dx, conv_tol(dt), "conv1d dx only " + what);
        Tensor only_dw;
        cuda::conv1d_causal_backward(g.cuda(), x.cuda(), w.cuda(), nullptr, &only_dw, nullptr);
        expect_close(only_dw, dw, tw, "conv1d dw only " + what);
      }
    }
  }
}

TEST(CudaConv1d, OpsGradients) {
  SKIP_WITHOUT_CUDA();
  Tensor x = rand_cpu({2, 45, 16}, DType::F32, 5), w = rand_cpu({16, 4}, DType::F32, 6), b = rand_cpu({16}, DType::F32, 7);
  Tensor gy = rand_cpu({2, 45, 16}, DType::F32, 8);
  Tensor xc = x.clone().requires_grad_(), wc = w.clone().requires_grad_(), bc = b.clone().requires_grad_();
  Tensor xg = x.cuda().requires_grad_(), wg = w.cuda().requires_grad_(), bg = b.cuda().requires_grad_();
  Tensor yc = conv1d_causal(xc, wc, bc), yg = conv1d_causal(xg, wg, bg);
  expect_close(yg, yc, conv_tol(DType::F32), "ops conv1d");
  yc.backward(gy);
  yg.backward(gy.cuda());
  expect_close(xg.grad(), xc.grad(), conv_tol(DType::F32), "ops conv1d dx");
  expect_close(wg.grad(), wc.grad(), Tol{1e-5, 1e-4}, "ops conv1d dw");
  expect_close(bg.grad(), bc.grad(), Tol{1e-5, 1e-4}, "ops conv1d dbias");
}

TEST(CudaFftConv, ForwardAndBackward) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t B, T, C, L;
  };
  // T = 63 and 200 with L < T, L = T, L = 1; a 7-smooth but not power-of-two FFT size (T + L - 1 = 300)
  std::vector<Case> cases = {{2, 63, 6, 17}, {2, 63, 6, 63}, {3, 200, 5, 50}, {1, 200, 7, 200}, {2, 200, 4, 1}, {2, 151, 3, 150}};
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cases) {
      Tensor x = rand_cpu({c.B, c.T, c.C}, dt, 10), k = rand_cpu({c.C, c.L}, dt, 11, -0.5f, 0.5f);
      Tensor g = rand_cpu({c.B, c.T, c.C}, dt, 12);
      std::string what = std::string(dtype_name(dt)) + " B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) +
                         " C=" + std::to_string(c.C) + " L=" + std::to_string(c.L);
      Tensor want = cpu::fft_conv(x, k);
      expect_close(cuda::fft_conv(x.cuda(), k.cuda()), want, fft_tol(dt, want), "fft_conv " + what);
      Tensor dx, dk, gdx, gdk;
      cpu::fft_conv_backward(g, x, k, &dx, &dk);
      cuda::fft_conv_backward(g.cuda(), x.cuda(), k.cuda(), &gdx, &gdk);
      expect_close(gdx, dx, fft_tol(dt, dx), "fft_conv dx " + what);
      expect_close(gdk, dk, fft_tol(dt, dk), "fft_conv dk " + what);
      Tensor only_dk;
      cuda::fft_conv_backward(g.cuda(), x.cuda(), k.cuda(), nullptr, &only_dk);
      expect_close(only_dk, dk, fft_tol(dt, dk), "fft_conv dk only " + what);
    }
  }
}

TEST(CudaFftConv, AgreesWithConv1dForShortFilters) {
  SKIP_WITHOUT_CUDA();
  // conv1d_causal with w[c, j] = k[c, K-1-j] is the same causal convolution
  const int64_t B = 2, T = 97, C = 11, K = 4;
  Tensor x = rand_cpu({B, T, C}, DType::F32, 20), k = rand_cpu({C, K}, DType::F32, 21);
  std::vector<float> kv = k.to_vector<float>(), wv(kv.size());
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wv[size_t(c * K + j)] = kv[size_t(c * K + (K - 1 - j))];
  Tensor w = Tensor::from_vector<float>(wv, {C, K});
  Tensor a = cuda::fft_conv(x.cuda(), k.cuda()).cpu();
  Tensor b = cuda::conv1d_causal(x.cuda(), w.cuda(), Tensor());
  expect_close(b, a, Tol{1e-4, 1e-5}, "fft_conv vs conv1d");
}

TEST(CudaFftConv, OpsGradients) {
  SKIP_WITHOUT_CUDA();
  Tensor x = rand_cpu({2, 64, 8}, DType::F32, 30), k = rand_cpu({8, 64}, DType::F32, 31, -0.3f, 0.3f);
  Tensor gy = rand_cpu({2, 64, 8}, DType::F32, 32);
  Tensor xc = x.clone().requires_grad_(), kc = k.clone().requires_grad_();
  Tensor xg = x.cuda().requires_grad_(), kg = k.cuda().requires_grad_();
  Tensor yc = fft_conv(xc, kc), yg = fft_conv(xg, kg);
  expect_close(yg, yc, fft_tol(DType::F32, yc), "ops fft_conv");
  yc.backward(gy);
  yg.backward(gy.cuda());
  expect_close(xg.grad(), xc.grad(), fft_tol(DType::F32, xc.grad()), "ops fft_conv dx");
  expect_close(kg.grad(), kc.grad(), fft_tol(DType::F32, kc.grad()), "ops fft_conv dk");
}
