// CUDA elementwise kernels against the CPU backend: fill, copy (every dtype pair, strided destinations,
// broadcast sources), unary (+ backward) for every op-table entry, affine / pow / clamp, binary
// (+ backward) with broadcasting, compare, where.
//
// Inputs are made on the CPU (bf16 inputs are rounded to bf16 there) and the same values are copied
// to the GPU, so both backends see identical inputs; views (transposed, sliced with a step, unaligned,
// expanded, permuted) are applied identically on both sides.
//
// Tolerances: |cuda - cpu| <= atol + rtol * |cpu|
// - f32: rtol 1e-5, atol 1e-6 (device libm functions differ from glibc by a few ulp).
// - bf16 / f16: rtol 1e-2, atol 1e-3 (both compute in f32 and round; a one-ulp difference in f32 can
//   flip the final rounding, i.e. one bf16 ulp = 2^-8 relative).
// - fill, copy, where, compare and integer ops: exact.
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



// Small integers as floats: exact in every dtype, and with many ties (for compare / where).

Tol tol_for(DType dt) { return dt == DType::F32 ? Tol{1e-5, 1e-6} : Tol{1e-2, 1e-3}; }

void expect_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  expect_close(got, want, Tol{0.0, 0.0}, what);
}

// A view applied identically to a CPU tensor and its GPU copy.
struct ViewCase {
  std::string name;
  Shape base;
  std::function<Tensor(const Tensor&)> view;
};

std::vector<ViewCase> view_cases() {
  auto id = [](const Tensor& t) { return t; };
  return {
      {"contiguous 3x37x61", {3, 37, 61}, id},
      {"transposed", {61, 37, 3}, [](const Tensor& t) { return t.transpose(0, 2); }},
      {"sliced with step", {3, 74, 61}, [](const Tensor& t) { return t.slice(1, 0, 74, 2); }},
      {"unaligned offset", {1001}, [](const Tensor& t) { return t.slice(0, 1, 1001); }},
      {"expanded", {1, 37, 1}, [](const Tensor& t) { return t.expand({3, 37, 61}); }},
      {"permuted 4d", {5, 6, 7, 8}, [](const Tensor& t) { return t.permute({3, 1, 0, 2}); }},
      {"one element", {1}, id},
      {"zero elements", {0}, id},
      {"zero elements 3d", {4, 0, 3}, id},
      {"0-d", {}, id},
      {"large odd", {(1 << 20) + 13}, id},
  };
}

// Inputs inside each op's domain.
std::pair<float, float> domain(UnaryOp op) {
  switch (op) {
    case UnaryOp::Log:
    case UnaryOp::Sqrt:
    case UnaryOp::Rsqrt:
    case UnaryOp::Reciprocal: return {0.1f, 3.f};
    default: return {-3.f, 3.f};
  }
}

#define SEQMIX_LIST_OP(Name, ...) UnaryOp::Name,
const std::vector<UnaryOp> kUnaryOps = {SEQMIX_UNARY_OPS(SEQMIX_LIST_OP)};
#undef SEQMIX_LIST_OP
#define SEQMIX_LIST_OP(Name, ...) BinaryOp::Name,
const std::vector<BinaryOp> kBinaryOps = {SEQMIX_BINARY_OPS(SEQMIX_LIST_OP)};
#undef SEQMIX_LIST_OP
#define SEQMIX_LIST_OP(Name, ...) CompareOp::Name,
const std::vector<CompareOp> kCompareOps = {SEQMIX_COMPARE_OPS(SEQMIX_LIST_OP)};
#undef SEQMIX_LIST_OP

const std::vector<DType> kFloatTypes = {DType::F32, DType::BF16};

}  // namespace

TEST(CudaElementwise, FillContiguousAndStrided) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I64, DType::I32, DType::U8}) {
    for (double value : {0.0, 1.5, 7.0}) {
      for (const ViewCase& c : view_cases()) {
        if (c.name == "expanded") continue;  // not writable
        Tensor cpu_base = zeros(c.base, dt), gpu_base = zeros(c.base, dt, Device::cuda());
        kernels::fill(c.view(cpu_base), value);
        kernels::fill(c.view(gpu_base), value);
        expect_equal(gpu_base, cpu_base, std::string("fill ") + dtype_name(dt) + " " + c.name);
      }
    }
  }
}

TEST(CudaElementwise, CopyEveryDtypePair) {
  SKIP_WITHOUT_CUDA();
  const std::vector<DType> all = {DType::F64, DType::F32, DType::BF16, DType::F16, DType::I64, DType::I32, DType::U8};
  for (DType sd : all) {
    for (DType dd : all) {
      // integers in [0, 100]: exact in every dtype, so every conversion must be exact
      Tensor src = randint_cpu({3, 37, 61}, sd, 11, 0, 100);
      std::string what = std::string("copy ") + dtype_name(sd) + " -> " + dtype_name(dd);
      {
        Tensor want = empty({3, 37, 61}, dd), got = empty({3, 37, 61}, dd, Device::cuda());
        kernels::copy(want, src);
        kernels::copy(got, src.cuda());
        expect_equal(got, want, what + " contiguous");
      }
      {
        // strided destination (transposed), broadcast source
        Tensor bsrc = randint_cpu({37, 1}, sd, 12, 0, 100);
        Tensor want_base = zeros({61, 37, 3}, dd), got_base = zeros({61, 37, 3}, dd, Device::cuda());
        kernels::copy(want_base.transpose(0, 2), bsrc);
        kernels::copy(got_base.transpose(0, 2), bsrc.cuda());
        expect_equal(got_base, want_base, what + " strided dst, broadcast src");
      }
    }
  }
}

TEST(CudaElementwise, CopyRoundsLikeTheCpu) {
  SKIP_WITHOUT_CUDA();
  // f32 -> bf16 / f16 rounding (nearest even) and back must match the CPU bit for bit
  for (const ViewCase& c : view_cases()) {
    Tensor x = c.view(rand_cpu(c.base, DType::F32, 3, -100.f, 100.f));
    Tensor xg = c.view(rand_cpu(c.base, DType::F32, 3, -100.f, 100.f).cuda());
    for (DType dt : {DType::BF16, DType::F16}) {
      Tensor want = x.to(dt), got = xg.to(dt);
      expect_equal(got, want, std::string("f32 -> ") + dtype_name(dt) + " " + c.name);
      expect_equal(got.to(DType::F32), want.to(DType::F32), std::string(dtype_name(dt)) + " -> f32 " + c.name);
    }
  }
}

TEST(CudaElementwise, UnaryEveryOp) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kFloatTypes) {
    for (UnaryOp op : kUnaryOps) {
      auto [lo, hi] = domain(op);
      for (const ViewCase& c : view_cases()) {
        Tensor base = rand_cpu(c.base, dt, 5, lo, hi);
        Tensor want = kernels::unary(op, c.view(base));
        Tensor got = kernels::unary(op, c.view(base.cuda()));
        expect_close(got, want, tol_for(dt), std::string(op_name(op)) + " " + dtype_name(dt) + " " + c.name);
      }
    }
  }
}

TEST(CudaElementwise, UnaryF16) {
  SKIP_WITHOUT_CUDA();
  for (UnaryOp op : {UnaryOp::Exp, UnaryOp::Gelu, UnaryOp::Silu, UnaryOp::Tanh}) {
    Tensor x = rand_cpu({3, 37, 61}, DType::F16, 6, -3.f, 3.f);
    expect_close(kernels::unary(op, x.cuda()), kernels::unary(op, x), tol_for(DType::F16),
                 std::string(op_name(op)) + " f16");
  }
}

TEST(CudaElementwise, UnaryBackwardEveryOp) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kFloatTypes) {
    for (UnaryOp op : kUnaryOps) {
      auto [lo, hi] = domain(op);
      for (const ViewCase& c : view_cases()) {
        Tensor xb = rand_cpu(c.base, dt, 7, lo, hi), gb = rand_cpu(c.base, dt, 8);
        Tensor x = c.view(xb), g = c.view(gb);
        Tensor y = kernels::unary(op, x);  // y from the CPU on both sides
        Tensor want = kernels::unary_backward(op, g, x, y);
        Tensor got = kernels::unary_backward(op, c.view(gb.cuda()), c.view(xb.cuda()), y.cuda());
        expect_close(got, want, tol_for(dt), std::string(op_name(op)) + " backward " + dtype_name(dt) + " " + c.name);
      }
    }
  }
}

TEST(CudaElementwise, AffinePowClamp) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kFloatTypes) {
    for (const ViewCase& c : view_cases()) {
      Tensor base = rand_cpu(c.base, dt, 9, 0.1f, 3.f);
      Tensor x = c.view(base), xg = c.view(base.cuda());
      std::string sfx = std::string(" ") + dtype_name(dt) + " " + c.name;
      expect_close(kernels::affine(xg, -1.75, 0.5), kernels::affine(x, -1.75, 0.5), tol_for(dt), "affine" + sfx);
      expect_close(kernels::pow_scalar(xg, 2.5), kernels::pow_scalar(x, 2.5), tol_for(dt), "pow 2.5" + sfx);
      expect_close(kernels::pow_scalar(xg, -1.0), kernels::pow_scalar(x, -1.0), tol_for(dt), "pow -1" + sfx);
      expect_close(kernels::clamp(xg, 0.5, 2.0), kernels::clamp(x, 0.5, 2.0), tol_for(dt), "clamp" + sfx);
    }
  }
}

namespace {
struct BinaryCase {
  std::string name;
  Shape a_base, b_base;
  std::function<Tensor(const Tensor&)> va, vb;
};
std::vector<BinaryCase> binary_cases() {
  auto id = [](const Tensor& t) { return t; };
  return {
      {"same shape", {3, 37, 61}, {3, 37, 61}, id, id},
      {"large odd", {(1 << 20) + 7}, {(1 << 20) + 7}, id, id},
      {"b [37,1]", {3, 37, 61}, {37, 1}, id, id},
      {"b [61] (bias)", {3, 37, 61}, {61}, id, id},
      {"b 0-d", {3, 37, 61}, {}, id, id},
      {"a 0-d", {}, {3, 37, 61}, id, id},
      {"outer product [3,1,61] x [1,37,1]", {3, 1, 61}, {1, 37, 1}, id, id},
      {"a transposed", {61, 37, 3}, {3, 37, 61}, [](const Tensor& t) { return t.transpose(0, 2); }, id},
      {"both sliced", {3, 74, 61}, {3, 37, 122},
       [](const Tensor& t) { return t.slice(1, 0, 74, 2); }, [](const Tensor& t) { return t.slice(2, 1, 122, 2); }},
      {"unaligned", {1001}, {1001}, [](const Tensor& t) { return t.slice(0, 1, 1001); },
       [](const Tensor& t) { return t.slice(0, 0, 1000); }},
      {"one element", {1}, {1}, id, id},
      {"zero elements", {0, 5}, {5}, id, id},
  };
}
// operands inside each op's domain: b away from 0 for div, a > 0 for pow
std::pair<float, float> a_range(BinaryOp op) { return op == BinaryOp::Pow ? std::pair{0.1f, 3.f} : std::pair{-3.f, 3.f}; }
std::pair<float, float> b_range(BinaryOp op) {
  if (op == BinaryOp::Div) return {0.5f, 3.f};
  if (op == BinaryOp::Pow) return {-2.f, 2.f};
  return {-3.f, 3.f};
}
}  // namespace

TEST(CudaElementwise, BinaryEveryOpWithBroadcasting) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kFloatTypes) {
    for (BinaryOp op : kBinaryOps) {
      for (const BinaryCase& c : binary_cases()) {
        auto [alo, ahi] = a_range(op);
        auto [blo, bhi] = b_range(op);
        Tensor ab = rand_cpu(c.a_base, dt, 21, alo, ahi), bb = rand_cpu(c.b_base, dt, 22, blo, bhi);
        Tensor want = kernels::binary(op, c.va(ab), c.vb(bb));
        Tensor got = kernels::binary(op, c.va(ab.cuda()), c.vb(bb.cuda()));
        expect_close(got, want, tol_for(dt), std::string(op_name(op)) + " " + dtype_name(dt) + " " + c.name);
      }
    }
  }
}

TEST(CudaElementwise, BinaryIntegers) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::I64, DType::I32}) {
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum}) {
      Tensor a = randint_cpu({3, 37, 61}, dt, 23, -50, 50), b = randint_cpu({37, 1}, dt, 24, 1, 9);
      expect_equal(kernels::binary(op, a.cuda(), b.cuda()), kernels::binary(op, a, b),
                   std::string(op_name(op)) + " " + dtype_name(dt));
    }
  }
}

TEST(CudaElementwise, BinaryBackwardEveryOp) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kFloatTypes) {
    for (BinaryOp op : kBinaryOps) {
      for (const BinaryCase& c : binary_cases()) {
        auto [alo, ahi] = a_range(op);
        auto [blo, bhi] = b_range(op);
        Tensor ab = rand_cpu(c.a_base, dt, 31, alo, ahi), bb = rand_cpu(c.b_base, dt, 32, blo, bhi);
        Tensor a = c.va(ab), b = c.vb(bb);
        Shape out_shape = broadcast_shapes(a.shape(), b.shape());
        Tensor g = rand_cpu(out_shape, dt, 33);
        for (int which = 0; which < 2; ++which) {
          Tensor want = kernels::binary_backward(op, which, g, a, b);
          Tensor got = kernels::binary_backward(op, which, g.cuda(), c.va(ab.cuda()), c.vb(bb.cuda()));
          expect_close(got, want, tol_for(dt),
                       std::string(op_name(op)) + " backward d" + (which ? "b " : "a ") + dtype_name(dt) + " " + c.name);
        }
      }
    }
  }
}

TEST(CudaElementwise, CompareEveryOp) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::I64, DType::I32, DType::U8}) {
    for (CompareOp op : kCompareOps) {
      for (const BinaryCase& c : binary_cases()) {
        Tensor ab = randint_cpu(c.a_base, dt, 41, 0, 4), bb = randint_cpu(c.b_base, dt, 42, 0, 4);  // many ties
        Tensor want = kernels::compare(op, c.va(ab), c.vb(bb));
        Tensor got = kernels::compare(op, c.va(ab.cuda()), c.vb(bb.cuda()));
        ASSERT_EQ(got.dtype(), DType::U8);
        expect_equal(got, want, std::string(op_name(op)) + " " + dtype_name(dt) + " " + c.name);
      }
    }
  }
}

TEST(CudaElementwise, WhereEveryDtypeWithBroadcasting) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16, DType::I64, DType::U8}) {
    for (const BinaryCase& c : binary_cases()) {
      Tensor ab = randint_cpu(c.a_base, dt, 51, 0, 100), bb = randint_cpu(c.b_base, dt, 52, 0, 100);
      Tensor a = c.va(ab), b = c.vb(bb);
      Shape s = broadcast_shapes(a.shape(), b.shape());
      // the condition broadcasts too: over the last dim when there is one
      Shape cs = s;
      if (!cs.empty()) cs.back() = 1;
      Tensor cond = randint_cpu(cs, DType::U8, 53, 0, 1);
      Tensor want = kernels::where(cond, a, b);
      Tensor got = kernels::where(cond.cuda(), c.va(ab.cuda()), c.vb(bb.cuda()));
      expect_equal(got, want, std::string("where ") + dtype_name(dt) + " " + c.name);
    }
  }
}

TEST(CudaElementwise, NotSupportedDtypesThrow) {
  SKIP_WITHOUT_CUDA();
  Tensor x = ones({4}, DType::F64, Device::cuda());
  EXPECT_THROW(kernels::unary(UnaryOp::Exp, x), Error);
  Tensor i = ones({4}, DType::I64, Device::cuda());
  EXPECT_THROW(kernels::unary(UnaryOp::Exp, i), Error);
}
