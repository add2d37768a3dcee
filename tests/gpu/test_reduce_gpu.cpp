// CUDA reductions (sum, mean, max, min, logsumexp over one dim; argmax; sum of all elements) and
// cumsum against the CPU backend, on odd shapes, every dim, strided / transposed inputs, long rows and
// columns (the split-and-finalize paths), one element and empty dims.
//
// Tolerances (the GPU sums in a different order, in f32 like the CPU):
// - f32: |cuda - cpu| <= 1e-5 * |cpu| + 1e-6 * n, n = number of elements summed (|inputs| <= 1).
// - bf16: |cuda - cpu| <= 1e-2 * |cpu| + 1e-3 * sqrt(n) + 1e-3 (the result is rounded to bf16 on both
//   sides; a slightly different f32 sum can round to the neighbouring bf16 value).
// - max, min, argmax, integer sums: exact.
#include "support/gpu_compare.h"
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/kernels.h"
#include "core/ops.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {





// tolerance for a sum of n elements of magnitude <= 1
void expect_sum_close(const Tensor& got, const Tensor& want, DType dt, int64_t n, const std::string& what) {
  if (dt == DType::F32) expect_close(got, want, 1e-5, 1e-6 * double(n), what);
  else expect_close(got, want, 1e-2, 1e-3 * std::sqrt(double(n)) + 1e-3, what);
}

struct Case {
  std::string name;
  Shape base;
  std::function<Tensor(const Tensor&)> view;
};

std::vector<Case> cases() {
  auto id = [](const Tensor& t) { return t; };
  return {
      {"3x37x61", {3, 37, 61}, id},
      {"transposed", {61, 37, 3}, [](const Tensor& t) { return t.transpose(0, 2); }},
      {"sliced with step", {3, 74, 61}, [](const Tensor& t) { return t.slice(1, 1, 74, 2); }},
      {"permuted 4d", {5, 6, 7, 8}, [](const Tensor& t) { return t.permute({3, 1, 0, 2}); }},
      {"long rows 4x5000", {4, 5000}, id},
      {"long columns 20000x3", {20000, 3}, id},
      {"one long row 1x70001", {1, 70001}, id},
      {"one element", {1}, id},
      {"empty outputs 0x5", {0, 5}, id},
  };
}

const std::vector<ReduceOp> kOps = {ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::LogSumExp};
const char* name_of(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Mean: return "mean";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
    case ReduceOp::LogSumExp: return "logsumexp";
  }
  return "?";
}

}  // namespace

TEST(CudaReduce, EveryOpEveryDim) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cases()) {
      Tensor base = rand_cpu(c.base, dt, 1);
      Tensor x = c.view(base), xg = c.view(base.cuda());
      for (int dim = 0; dim < x.dim(); ++dim) {
        for (ReduceOp op : kOps) {
          if (x.shape()[dim] == 0 && op != ReduceOp::Sum && op != ReduceOp::Mean) continue;
          for (bool keepdim : {false, true}) {
            std::string what = std::string(name_of(op)) + " " + dtype_name(dt) + " " + c.name + " dim " +
                               std::to_string(dim) + (keepdim ? " keepdim" : "");
            Tensor want = kernels::reduce(op, x, dim, keepdim);
            Tensor got = kernels::reduce(op, xg, dim, keepdim);
            int64_t n = x.shape()[dim];
            if (op == ReduceOp::Max || op == ReduceOp::Min) expect_close(got, want, 0, 0, what);
            else if (op == ReduceOp::Sum) expect_sum_close(got, want, dt, n, what);
            else expect_sum_close(got, want, dt, 1, what);  // mean and logsumexp are O(1)
          }
        }
      }
    }
  }
}

TEST(CudaReduce, EmptyReducedDimGivesZeros) {
  SKIP_WITHOUT_CUDA();
  Tensor x = zeros({3, 0, 5}, DType::F32, Device::cuda());
  Tensor s = kernels::reduce(ReduceOp::Sum, x, 1, false);
  EXPECT_EQ(shape_str(s.shape()), shape_str({3, 5}));
  for (double v : s.to_vector<double>()) EXPECT_EQ(v, 0.0);
  EXPECT_THROW(kernels::reduce(ReduceOp::Max, x, 1, false), Error);
}

TEST(CudaReduce, LogSumExpWithInfinities) {
  SKIP_WITHOUT_CUDA();
  float inf = INFINITY;
  Tensor x = Tensor::from_vector<float>({-inf, -inf, -inf, 1.f, -inf, 2.f, inf, 0.f, 3.f}, {3, 3});
  Tensor want = kernels::reduce(ReduceOp::LogSumExp, x, 1, false);
  Tensor got = kernels::reduce(ReduceOp::LogSumExp, x.cuda(), 1, false);
  expect_close(got, want, 1e-6, 1e-6, "logsumexp with infinities");
}

TEST(CudaReduce, IntegerReductions) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::I64, DType::I32}) {
    Tensor x = randint_cpu({3, 37, 61}, dt, 2, -1000, 1000);
    for (int dim = 0; dim < 3; ++dim) {
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
        expect_close(kernels::reduce(op, x.cuda(), dim, false), kernels::reduce(op, x, dim, false), 0, 0,
                     std::string(name_of(op)) + " " + dtype_name(dt) + " dim " + std::to_string(dim));
      }
    }
  }
}

TEST(CudaReduce, ArgmaxFirstMaximum) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16, DType::I64}) {
    for (const Case& c : cases()) {
      // small integers: many ties, so "first maximum" is exercised
      Tensor base = randint_cpu(c.base, dt, 3, 0, 5);
      Tensor x = c.view(base), xg = c.view(base.cuda());
      for (int dim = 0; dim < x.dim(); ++dim) {
        if (x.shape()[dim] == 0) continue;
        for (bool keepdim : {false, true}) {
          Tensor want = kernels::argmax(x, dim, keepdim), got = kernels::argmax(xg, dim, keepdim);
          ASSERT_EQ(got.dtype(), DType::I64);
          expect_close(got, want, 0, 0,
                       std::string("argmax ") + dtype_name(dt) + " " + c.name + " dim " + std::to_string(dim));
        }
      }
    }
  }
}

TEST(CudaReduce, SumAll) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cases()) {
      Tensor base = rand_cpu(c.base, dt, 4);
      Tensor x = c.view(base);
      Tensor got = kernels::sum_all(c.view(base.cuda())), want = kernels::sum_all(x);
      EXPECT_EQ(got.dim(), 0);
      EXPECT_EQ(got.dtype(), dt);
      expect_sum_close(got, want, dt, x.numel(), std::string("sum_all ") + dtype_name(dt) + " " + c.name);
    }
    Tensor big = rand_cpu({3 << 20}, dt, 5);
    expect_sum_close(kernels::sum_all(big.cuda()), kernels::sum_all(big), dt, big.numel(),
                     std::string("sum_all 3M ") + dtype_name(dt));
    Tensor none = zeros({0}, dt, Device::cuda());
    EXPECT_EQ(kernels::sum_all(none).item(), 0.0);
  }
}

TEST(CudaCumsum, EveryDimBothDirections) {
  SKIP_WITHOUT_CUDA();
  std::vector<Case> cs = cases();
  cs.push_back({"rows of 3000", {5, 3000}, [](const Tensor& t) { return t; }});
  cs.push_back({"transposed rows of 300", {300, 7}, [](const Tensor& t) { return t.t(); }});
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const Case& c : cs) {
      Tensor base = rand_cpu(c.base, dt, 6);
      Tensor x = c.view(base), xg = c.view(base.cuda());
      for (int dim = 0; dim < x.dim(); ++dim) {
        for (bool reverse : {false, true}) {
          std::string what = std::string("cumsum ") + dtype_name(dt) + " " + c.name + " dim " + std::to_string(dim) +
                             (reverse ? " reverse" : "");
          expect_sum_close(kernels::cumsum(xg, dim, reverse), kernels::cumsum(x, dim, reverse), dt, x.shape()[dim], what);
        }
      }
    }
  }
}
