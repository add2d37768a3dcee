// CUDA cat, index_select / index_add, gather / scatter_add against the CPU backend, for every dim,
// i64 and i32 indices, negative indices, strided (transposed) inputs, unaligned rows, floating and
// integer dtypes.
//
// Tolerances: copies (cat, index_select, gather) are exact. index_add / scatter_add accumulate with
// atomics (the order between duplicate indices is not fixed): f32 rtol 1e-5, atol 1e-6; bf16 rtol 2e-2,
// atol 1e-2 (f32 sums rounded once on both sides; order differences can flip one bf16 ulp).
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




Tol add_tol(DType dt) { return dt == DType::F32 ? Tol{1e-5, 1e-6} : Tol{2e-2, 1e-2}; }

void expect_equal(const Tensor& got, const Tensor& want, const std::string& what) { expect_close(got, want, Tol{0, 0}, what); }

}  // namespace

TEST(CudaIndex, CatEveryDimContiguousAndStrided) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16, DType::I64, DType::U8}) {
    for (int dim = 0; dim < 3; ++dim) {
      Shape s1 = {4, 5, 6}, s2 = {4, 5, 6}, s3 = {4, 5, 6};
      s1[dim] = 3;
      s2[dim] = 1;
      s3[dim] = 7;
      Tensor a = rand_cpu(s1, DType::F32, 1, 0.f, 100.f).to(dt);
      Tensor b = rand_cpu(s2, DType::F32, 2, 0.f, 100.f).to(dt);
      // the third input is a transposed (strided) view of a contiguous tensor
      Shape s3t = s3;
      std::swap(s3t[0], s3t[2]);
      Tensor ct = rand_cpu(s3t, DType::F32, 3, 0.f, 100.f).to(dt);
      Tensor c = ct.transpose(0, 2);
      Tensor want = cpu::cat({a, b, c}, dim);
      Tensor got = cuda::cat({a.cuda(), b.cuda(), ct.cuda().transpose(0, 2)}, dim);
      expect_equal(got, want, std::string("cat ") + dtype_name(dt) + " dim " + std::to_string(dim));
    }
  }
  // an empty input along the dim and a negative dim
  Tensor a = rand_cpu({2, 3}, DType::F32, 4), e = rand_cpu({2, 0}, DType::F32, 5), b = rand_cpu({2, 4}, DType::F32, 6);
  expect_equal(cuda::cat({a.cuda(), e.cuda(), b.cuda()}, -1), cpu::cat({a, e, b}, 1), "cat with empty input");
}

TEST(CudaIndex, IndexSelectAndIndexAdd) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (DType it : {DType::I64, DType::I32}) {
      for (int dim = 0; dim < 3; ++dim) {
        Shape xs = {6, 7, 9};
        int64_t n = xs[dim];
        Tensor x = rand_cpu(xs, dt, 10);
        // repeats and negative indices (counted from the end, as on the CPU)
        std::vector<int64_t> iv = {0, n - 1, 2, 2, -1, 1, n - 2, 0};
        Tensor index = Tensor::from_vector<int64_t>(iv, {int64_t(iv.size())}).to(it);
        std::string what = std::string(dtype_name(dt)) + " " + dtype_name(it) + " dim " + std::to_string(dim);
        Tensor want = cpu::index_select(x, dim, index);
        expect_equal(cuda::index_select(x.cuda(), dim, index.cuda()), want, "index_select " + what);
        // strided input
        Tensor xt = rand_cpu({9, 7, 6}, dt, 11);
        expect_equal(cuda::index_select(xt.cuda().transpose(0, 2), dim, index.cuda()), cpu::index_select(xt.transpose(0, 2), dim, index),
                     "index_select strided " + what);
        // index_add: the backward, with duplicate indices
        Tensor src = rand_cpu(want.shape(), dt, 12);
        expect_close(cuda::index_add(xs, dim, index.cuda(), src.cuda()), cpu::index_add(xs, dim, index, src), add_tol(dt),
                     "index_add " + what);
      }
    }
  }
  // integer payloads and unaligned rows of odd byte lengths
  Tensor xi = rand_cpu({5, 13}, DType::F32, 13, 0.f, 1000.f).to(DType::I32);
  Tensor idx = Tensor::from_vector<int64_t>({4, 0, 3}, {3});
  expect_equal(cuda::index_select(xi.cuda(), 0, idx.cuda()), cpu::index_select(xi, 0, idx), "index_select i32 rows");
  Tensor xb = rand_cpu({1 + 5 * 13}, DType::BF16, 14);
  Tensor xv = xb.slice(0, 1, 1 + 5 * 13).view({5, 13});
  expect_equal(cuda::index_select(xb.cuda().slice(0, 1, 1 + 5 * 13).view({5, 13}), 0, idx.cuda()), cpu::index_select(xv, 0, idx),
               "index_select unaligned bf16");
  // wide rows (16-byte copy units)
  Tensor xw = rand_cpu({40, 256}, DType::F32, 15);
  Tensor iw = ids_cpu({100}, 0, 39, DType::I64, 16);
  expect_equal(cuda::index_select(xw.cuda(), 0, iw.cuda()), cpu::index_select(xw, 0, iw), "index_select wide rows");
}

TEST(CudaIndex, GatherAndScatterAdd) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (DType it : {DType::I64, DType::I32}) {
      for (int dim = 0; dim < 3; ++dim) {
        Shape xs = {4, 5, 6};
        // index smaller than x outside dim, and longer than x along dim (repeats)
        Shape is = {3, 4, 2};
        is[dim] = 8;
        Tensor x = rand_cpu(xs, dt, 20);
        Tensor index = ids_cpu(is, -xs[dim], xs[dim] - 1, it, 21);  // includes negative indices
        std::string what = std::string(dtype_name(dt)) + " " + dtype_name(it) + " dim " + std::to_string(dim);
        expect_equal(cuda::gather(x.cuda(), dim, index.cuda()), cpu::gather(x, dim, index), "gather " + what);
        Tensor xt = rand_cpu({6, 5, 4}, dt, 22);
        expect_equal(cuda::gather(xt.cuda().transpose(0, 2), dim, index.cuda()), cpu::gather(xt.transpose(0, 2), dim, index),
                     "gather strided " + what);
        Tensor src = rand_cpu(is, dt, 23);
        expect_close(cuda::scatter_add(xs, dim, index.cuda(), src.cuda()), cpu::scatter_add(xs, dim, index, src), add_tol(dt),
                     "scatter_add " + what);
      }
    }
  }
  // gather along the last dim of a wide tensor (top-k style) and its autograd through the op
  Tensor x = rand_cpu({3, 1000}, DType::F32, 24);
  Tensor idx = ids_cpu({3, 5}, 0, 999, DType::I64, 25);
  Tensor xc = x.clone().requires_grad_(), xg = x.cuda().requires_grad_();
  Tensor yc = gather(xc, 1, idx), yg = gather(xg, 1, idx.cuda());
  expect_equal(yg, yc, "ops gather");
  Tensor gy = rand_cpu({3, 5}, DType::F32, 26);
  yc.backward(gy);
  yg.backward(gy.cuda());
  expect_close(xg.grad(), xc.grad(), add_tol(DType::F32), "ops gather grad");
}

TEST(CudaIndex, OpsIndexSelectGradientWithRepeats) {
  SKIP_WITHOUT_CUDA();
  Tensor x = rand_cpu({10, 12}, DType::F32, 30);
  Tensor idx = ids_cpu({25}, 0, 9, DType::I64, 31);
  Tensor xc = x.clone().requires_grad_(), xg = x.cuda().requires_grad_();
  Tensor yc = index_select(xc, 0, idx), yg = index_select(xg, 0, idx.cuda());
  expect_equal(yg, yc, "ops index_select");
  Tensor gy = rand_cpu({25, 12}, DType::F32, 32);
  yc.backward(gy);
  yg.backward(gy.cuda());
  expect_close(xg.grad(), xc.grad(), add_tol(DType::F32), "ops index_select grad");
}
