#include <gtest/gtest.h>

#include "core/ops.h"
#include "support/test_util.h"

using namespace seqmix;
using seqmix::testing::expect_error_contains;

TEST(Tensor, ContiguousStridesAndViews) {
  Tensor t = arange(24, DType::F32).view({2, 3, 4});
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  Tensor tt = t.transpose(0, 2);
  EXPECT_EQ(tt.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(tt.strides(), (Shape{1, 4, 12}));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.storage(), t.storage());  // a view shares storage
  Tensor c = tt.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_NE(c.storage(), t.storage());
  // element (i,j,k) of the transpose is element (k,j,i) of t = 12k + 4j + i
  std::vector<float> v = c.to_vector<float>();
  EXPECT_EQ(v[1 * 6 + 2 * 2 + 1], 12 * 1 + 4 * 2 + 1);
}

TEST(Tensor, SliceSelectExpandSqueeze) {
  Tensor t = arange(20, DType::F64).view({4, 5});
  Tensor s = t.slice(1, 1, 5, 2);  // columns 1, 3
  EXPECT_EQ(s.shape(), (Shape{4, 2}));
  EXPECT_EQ(s.to_vector<double>(), (std::vector<double>{1, 3, 6, 8, 11, 13, 16, 18}));
  EXPECT_EQ(t.select(0, -1).to_vector<double>(), (std::vector<double>{15, 16, 17, 18, 19}));
  Tensor e = arange(3, DType::F32).view({3, 1}).expand({3, 4});
  EXPECT_EQ(e.strides()[1], 0);
  EXPECT_EQ(e.contiguous().to_vector<float>(), (std::vector<float>{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2}));
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 4, 5}));
  EXPECT_EQ(t.unsqueeze(0).squeeze(0).shape(), (Shape{4, 5}));
  EXPECT_EQ(t.view({-1}).shape(), (Shape{20}));
  EXPECT_EQ(t.flatten().shape(), (Shape{20}));
  // reshape of a non-contiguous tensor copies
  Tensor r = t.t().reshape({20});
  EXPECT_EQ(r.to_vector<double>()[1], 5);
}

TEST(Tensor, DtypeConversionsRoundTrip) {
  Tensor t = Tensor::from_vector<float>({1.0f, -2.5f, 3.140625f, 1e-3f}, {4});
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.dtype(), DType::BF16);
  std::vector<float> back = b.to(DType::F32).to_vector<float>();
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -2.5f);
  EXPECT_EQ(back[2], 3.140625f);  // exactly representable in bf16
  EXPECT_NEAR(back[3], 1e-3f, 1e-5f);
  Tensor h = t.to(DType::F16).to(DType::F32);
  EXPECT_NEAR(h.to_vector<float>()[3], 1e-3f, 1e-6f);
  Tensor i = Tensor::from_vector<float>({1.7f, -2.2f}, {2}).to(DType::I64);
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{1, -2}));
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to even (1.0)
  EXPECT_EQ(float(bf16(1.00390625f)), 1.0f);
  EXPECT_EQ(float(bf16(1.01171875f)), 1.015625f);
}

TEST(Tensor, PrintingShowsShapeDtypeAndValues) {
  Tensor t = arange(6, DType::F32).view({2, 3});
  std::string s = t.str();
  EXPECT_NE(s.find("shape=[2, 3]"), std::string::npos);
  EXPECT_NE(s.find("dtype=f32"), std::string::npos);
  EXPECT_NE(s.find("[[0, 1, 2],"), std::string::npos) << s;
}

TEST(Tensor, ErrorsNameTheShapes) {
  Tensor a = zeros({2, 3}), b = zeros({4, 5});
  expect_error_contains([&] { add(a, b); }, "shapes [2, 3] and [4, 5] cannot be broadcast");
  expect_error_contains([&] { matmul(a, b); }, "inner dimensions 3 and 4");
  expect_error_contains([&] { a.view({7}); }, "shape [7] is invalid for 6 elements");
  expect_error_contains([&] { a.size(5); }, "dimension 5 out of range");
  expect_error_contains([&] { parse_dtype("float8"); }, "unknown dtype 'float8'");
}

TEST(Tensor, CudaUnavailableIsAClearError) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is present";
  // CPU-only build: "built without CUDA"; CUDA build without a GPU: "no CUDA device is visible"
  expect_error_contains([&] { zeros({2}).to(Device::cuda(0)); }, "use --device cpu");
}

TEST(Random, PhiloxIsDeterministicAndUniform) {
  Generator g1(7), g2(7);
  Tensor a = rand({1000}, g1), b = rand({1000}, g2);
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  EXPECT_EQ(g1.offset, 250u);  // 1000 uniforms = 250 blocks of 4
  double m = mean(a).item();
  EXPECT_NEAR(m, 0.5, 0.03);
  Tensor n = randn({20000}, g1);
  EXPECT_NEAR(mean(n).item(), 0.0, 0.03);
  EXPECT_NEAR(mean(square(n)).item(), 1.0, 0.05);
  // The same generator state gives the same numbers whatever the dtype.
  Generator g3(7);
  std::vector<float> first = a.to_vector<float>();
  first.resize(8);
  EXPECT_EQ(rand({8}, g3, DType::F64).to(DType::F32).to_vector<float>(), first);
}

TEST(Random, DropoutKeepsExpectedFractionAndScales) {
  Generator g(3);
  Tensor x = ones({10000});
  Tensor y = dropout(x, 0.25, true, g);
  std::vector<float> v = y.to_vector<float>();
  int kept = 0;
  for (float f : v) {
    if (f != 0.0f) {
      kept++;
      EXPECT_FLOAT_EQ(f, 1.0f / 0.75f);
    }
  }
  EXPECT_NEAR(kept / 10000.0, 0.75, 0.02);
  EXPECT_TRUE(dropout(x, 0.25, false, g).same(x));
}

TEST(Tensor, EmptyTensorsAreContiguous) {
  Tensor t = zeros({3, 0, 5});
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_TRUE(t.clone().is_contiguous());
  EXPECT_EQ(t.transpose(0, 2).contiguous().numel(), 0);
}
