// CUDA GEMM (cuBLASLt) against the CPU backend (OpenBLAS): every transpose combination, broadcast
// batches (2-d operand and stride-0 batch), accumulate into `out`, strided leading dims and unaligned
// pointers, odd sizes, and the differentiable matmul/linear ops end to end.
//
// Inputs are made on the CPU (bf16 inputs rounded to bf16 there) and copied to the GPU, so both sides
// multiply identical values. Tolerances: |cuda - cpu| <= atol + rtol * |cpu|
// - f32: rtol 1e-5, atol 2e-6 * sqrt(k). Only the summation order differs (both accumulate in f32);
//   TF32 would be off by ~1e-3 relative and fail this, which is the point: f32 GEMMs must not use it.
// - bf16: rtol 1e-2, atol 1e-3 * sqrt(k). Both accumulate exact bf16 products in f32 and round once;
//   a different summation order can flip that rounding by one bf16 ulp (2^-8 relative).
#include "support/gpu_compare.h"
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/kernels.h"
#include "core/ops.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {



Tol gemm_tol(DType dt, int64_t k) {
  double s = std::sqrt(double(std::max<int64_t>(k, 1)));
  return dt == DType::BF16 ? Tol{1e-2, 1e-3 * s} : Tol{1e-5, 2e-6 * s};
}


const std::vector<DType> kTypes = {DType::F32, DType::BF16};

std::string tag(DType dt, bool ta, bool tb) {
  return std::string(dtype_name(dt)) + (ta ? " A^T" : " A") + (tb ? " B^T" : " B");
}

}  // namespace

TEST(CudaMatmul, AllTransposeCombinationsOddSizes) {
  SKIP_WITHOUT_CUDA();
  const int64_t m = 67, k = 129, n = 33;
  for (DType dt : kTypes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        Tensor a = rand_cpu(ta ? Shape{k, m} : Shape{m, k}, dt, 1);
        Tensor b = rand_cpu(tb ? Shape{n, k} : Shape{k, n}, dt, 2);
        Tensor want = cpu::matmul(a, b, ta, tb, Tensor(), false);
        Tensor got = cuda::matmul(a.cuda(), b.cuda(), ta, tb, Tensor(), false);
        expect_close(got, want, gemm_tol(dt, k), tag(dt, ta, tb));
      }
    }
  }
}

TEST(CudaMatmul, TinyAndDegenerateShapes) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kTypes) {
    for (auto [m, k, n] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {1, 7, 1}, {5, 1, 3}, {1, 300, 17}, {17, 300, 1}}) {
      Tensor a = rand_cpu({m, k}, dt, 3), b = rand_cpu({k, n}, dt, 4);
      expect_close(cuda::matmul(a.cuda(), b.cuda(), false, false, Tensor(), false),
                   cpu::matmul(a, b, false, false, Tensor(), false), gemm_tol(dt, k),
                   std::string("tiny ") + std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n));
    }
    // k == 0: zeros (or `out` unchanged when accumulating)
    Tensor a = rand_cpu({4, 0}, dt, 5), b = rand_cpu({0, 6}, dt, 6);
    Tensor got = cuda::matmul(a.cuda(), b.cuda(), false, false, Tensor(), false);
    expect_close(got, zeros({4, 6}, dt), Tol{0, 0}, "k == 0");
    Tensor c0 = rand_cpu({4, 6}, dt, 7);
    Tensor acc = cuda::matmul(a.cuda(), b.cuda(), false, false, c0.cuda(), true);
    expect_close(acc, c0, Tol{0, 0}, "k == 0 accumulate");
  }
}

TEST(CudaMatmul, BatchedWithBroadcast) {
  SKIP_WITHOUT_CUDA();
  const int64_t batch = 5, m = 19, k = 45, n = 23;
  for (DType dt : kTypes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        Shape as = ta ? Shape{k, m} : Shape{m, k}, bs = tb ? Shape{n, k} : Shape{k, n};
        Shape as3 = {batch, as[0], as[1]}, bs3 = {batch, bs[0], bs[1]};
        // both batched
        Tensor a = rand_cpu(as3, dt, 10), b = rand_cpu(bs3, dt, 11);
        expect_close(cuda::matmul(a.cuda(), b.cuda(), ta, tb, Tensor(), false), cpu::matmul(a, b, ta, tb, Tensor(), false),
                     gemm_tol(dt, k), "batched " + tag(dt, ta, tb));
        // 2-d B shared by every batch
        Tensor b2 = rand_cpu(bs, dt, 12);
        expect_close(cuda::matmul(a.cuda(), b2.cuda(), ta, tb, Tensor(), false),
                     cpu::matmul(a, b2, ta, tb, Tensor(), false), gemm_tol(dt, k), "2-d B " + tag(dt, ta, tb));
        // 2-d A shared by every batch
        Tensor a2 = rand_cpu(as, dt, 13);
        expect_close(cuda::matmul(a2.cuda(), b.cuda(), ta, tb, Tensor(), false),
                     cpu::matmul(a2, b, ta, tb, Tensor(), false), gemm_tol(dt, k), "2-d A " + tag(dt, ta, tb));
        // A with a batch stride of 0 (expanded), B batched
        Tensor a1 = rand_cpu({1, as[0], as[1]}, dt, 14);
        Tensor want = cpu::matmul(a1.expand(as3), b, ta, tb, Tensor(), false);
        Tensor got = cuda::matmul(a1.cuda().expand(as3), b.cuda(), ta, tb, Tensor(), false);
        expect_close(got, want, gemm_tol(dt, k), "stride-0 batch " + tag(dt, ta, tb));
      }
    }
  }
}

TEST(CudaMatmul, AccumulateIntoOut) {
  SKIP_WITHOUT_CUDA();
  const int64_t m = 37, k = 70, n = 29;
  for (DType dt : kTypes) {
    Tensor a = rand_cpu({m, k}, dt, 20), b = rand_cpu({n, k}, dt, 21), c0 = rand_cpu({m, n}, dt, 22);
    Tensor want = cpu::matmul(a, b, false, true, c0.clone(), true);
    Tensor out = c0.cuda();
    Tensor got = cuda::matmul(a.cuda(), b.cuda(), false, true, out, true);
    EXPECT_TRUE(got.same(out) || got.data_ptr() == out.data_ptr()) << "accumulate must write into out";
    expect_close(out, want, gemm_tol(dt, k), std::string("accumulate ") + dtype_name(dt));
    // out given without accumulate: overwritten
    Tensor out2 = rand_cpu({m, n}, dt, 23).cuda();
    cuda::matmul(a.cuda(), b.cuda(), false, true, out2, false);
    expect_close(out2, cpu::matmul(a, b, false, true, Tensor(), false), gemm_tol(dt, k),
                 std::string("out overwrite ") + dtype_name(dt));
    // batched accumulate
    Tensor a3 = rand_cpu({3, m, k}, dt, 24), c3 = rand_cpu({3, m, n}, dt, 25);
    Tensor want3 = cpu::matmul(a3, b, false, true, c3.clone(), true);
    Tensor out3 = c3.cuda();
    cuda::matmul(a3.cuda(), b.cuda(), false, true, out3, true);
    expect_close(out3, want3, gemm_tol(dt, k), std::string("batched accumulate ") + dtype_name(dt));
  }
}

TEST(CudaMatmul, StridedRowsAndUnalignedPointers) {
  SKIP_WITHOUT_CUDA();
  const int64_t m = 31, k = 53, n = 41;
  for (DType dt : kTypes) {
    // operands are column slices of wider matrices: leading dim > cols, base pointer offset by 1 element
    Tensor abig = rand_cpu({m, k + 7}, dt, 30), bbig = rand_cpu({k, n + 3}, dt, 31);
    Tensor a = abig.slice(1, 1, 1 + k), b = bbig.slice(1, 1, 1 + n);
    Tensor want = cpu::matmul(a, b, false, false, Tensor(), false);
    Tensor got = cuda::matmul(abig.cuda().slice(1, 1, 1 + k), bbig.cuda().slice(1, 1, 1 + n), false, false, Tensor(), false);
    expect_close(got, want, gemm_tol(dt, k), std::string("strided unaligned ") + dtype_name(dt));
    // the same shapes again from aligned buffers (a different cached plan) still agree
    Tensor got2 = cuda::matmul(a.contiguous().cuda(), b.contiguous().cuda(), false, false, Tensor(), false);
    expect_close(got2, want, gemm_tol(dt, k), std::string("aligned ") + dtype_name(dt));
  }
}

TEST(CudaMatmul, RepeatedCallsReuseThePlanWithNewData) {
  SKIP_WITHOUT_CUDA();
  for (int rep = 0; rep < 3; ++rep) {
    Tensor a = rand_cpu({64, 96}, DType::BF16, 40 + rep), b = rand_cpu({96, 80}, DType::BF16, 50 + rep);
    expect_close(cuda::matmul(a.cuda(), b.cuda(), false, false, Tensor(), false),
                 cpu::matmul(a, b, false, false, Tensor(), false), gemm_tol(DType::BF16, 96), "repeat " + std::to_string(rep));
  }
}

TEST(CudaMatmul, LargerBf16) {
  SKIP_WITHOUT_CUDA();
  const int64_t m = 512, k = 1024, n = 768;
  Tensor a = rand_cpu({m, k}, DType::BF16, 60), b = rand_cpu({n, k}, DType::BF16, 61);
  expect_close(cuda::matmul(a.cuda(), b.cuda(), false, true, Tensor(), false), cpu::matmul(a, b, false, true, Tensor(), false),
               gemm_tol(DType::BF16, k), "512x1024x768 bf16");
}

TEST(CudaMatmul, F64EitherMatchesOrThrowsClearly) {
  SKIP_WITHOUT_CUDA();
  Tensor a = rand_cpu({9, 13}, DType::F64, 70), b = rand_cpu({13, 5}, DType::F64, 71);
  Tensor want = cpu::matmul(a, b, false, false, Tensor(), false);
  try {
    Tensor got = cuda::matmul(a.cuda(), b.cuda(), false, false, Tensor(), false);
    expect_close(got, want, Tol{1e-12, 1e-12}, "f64");
  } catch (const Error& e) {
    // f64 is optional on CUDA: a clear seqmix::Error (not a crash or a wrong result) is acceptable
    EXPECT_FALSE(std::string(e.what()).empty());
  }
}

TEST(CudaMatmul, OpsMatmulAndLinearWithGradients) {
  SKIP_WITHOUT_CUDA();
  // [2, 3, m, k] @ [3, k, n] through the differentiable ops, forward and both gradients
  const int64_t m = 11, k = 17, n = 13;
  Tensor a = rand_cpu({2, 3, m, k}, DType::F32, 80), b = rand_cpu({3, k, n}, DType::F32, 81);
  Tensor g = rand_cpu({2, 3, m, n}, DType::F32, 82);
  Tensor ac = a.clone().requires_grad_(), bc = b.clone().requires_grad_();
  Tensor ag = a.cuda().requires_grad_(), bg = b.cuda().requires_grad_();
  Tensor yc = matmul(ac, bc), yg = matmul(ag, bg);
  expect_close(yg, yc, gemm_tol(DType::F32, k), "ops matmul forward");
  yc.backward(g);
  yg.backward(g.cuda());
  expect_close(ag.grad(), ac.grad(), gemm_tol(DType::F32, n), "ops matmul da");
  expect_close(bg.grad(), bc.grad(), gemm_tol(DType::F32, 2 * m), "ops matmul db");

  // linear: x [4, 7, in] @ W[out, in]^T + bias
  Tensor x = rand_cpu({4, 7, 24}, DType::F32, 83), w = rand_cpu({10, 24}, DType::F32, 84), bias = rand_cpu({10}, DType::F32, 85);
  Tensor gy = rand_cpu({4, 7, 10}, DType::F32, 86);
  Tensor xc = x.clone().requires_grad_(), wc = w.clone().requires_grad_();
  Tensor xg = x.cuda().requires_grad_(), wg = w.cuda().requires_grad_();
  Tensor lc = linear(xc, wc, bias), lg = linear(xg, wg, bias.cuda());
  expect_close(lg, lc, gemm_tol(DType::F32, 24), "linear forward");
  lc.backward(gy);
  lg.backward(gy.cuda());
  expect_close(xg.grad(), xc.grad(), gemm_tol(DType::F32, 10), "linear dx");
  expect_close(wg.grad(), wc.grad(), gemm_tol(DType::F32, 28), "linear dw");
}

// With an SM margin (what data parallelism sets while NCCL reduces buckets beside backward) cuBLASLt
// plans for fewer SMs: same results within the tolerances, and the margin is per thread and resets.
TEST(CudaMatmul, SmMarginKeepsResults) {
  SKIP_WITHOUT_CUDA();
  const int64_t m = 1000, k = 768, n = 2304;
  for (DType dt : kTypes) {
    Tensor a = rand_cpu({m, k}, dt, 3), b = rand_cpu({k, n}, dt, 4);
    Tensor want = cpu::matmul(a, b, false, false, Tensor(), false);
    for (int margin : {0, 16, 100}) {
      cuda::set_gemm_sm_margin(margin);
      Tensor got = cuda::matmul(a.cuda(), b.cuda(), false, false, Tensor(), false);
      EXPECT_EQ(cuda::gemm_sm_margin(), margin);
      expect_close(got, want, gemm_tol(dt, k), std::string(dtype_name(dt)) + " margin " + std::to_string(margin));
    }
    cuda::set_gemm_sm_margin(0);
  }
  EXPECT_THROW(cuda::set_gemm_sm_margin(-1), seqmix::Error);
}
