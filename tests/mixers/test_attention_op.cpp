// The attention op on the CPU: gradient checks in f64, the forward against a naive composition of library
// ops (matmul, where, softmax), grouped-query attention against repeated kv heads, decoding against the
// full forward, strided inputs, and the error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "autograd/gradcheck.h"
#include "core/ops.h"
#include "layers/mixers/attention/attention_op.h"
#include "support/test_util.h"

using namespace seqmix;
using seqmix::mixers::attention;
using seqmix::testing::random_f64;
using seqmix::testing::rel_error;

namespace {

// Repeats each of the Hkv heads of x [B, T, Hkv, D] group times: [B, T, Hkv * group, D].
Tensor repeat_heads(const Tensor& x, int64_t group) {
  Shape s = x.shape();
  return x.unsqueeze(3).expand({s[0], s[1], s[2], group, s[3]}).reshape({s[0], s[1], s[2] * group, s[3]});
}

// softmax(q k^T * scale + mask) v with library ops, on [B, T, H, D] tensors.
Tensor naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window) {
  int64_t Tq = q.size(1), Tk = k.size(1), group = q.size(2) / k.size(2);
  Tensor qh = q.permute({0, 2, 1, 3});                       // [B, H, Tq, D]
  Tensor kh = repeat_heads(k, group).permute({0, 2, 1, 3});  // [B, H, Tk, D]
  Tensor vh = repeat_heads(v, group).permute({0, 2, 1, 3});
  std::vector<uint8_t> allowed(size_t(Tq * Tk));
  for (int64_t i = 0; i < Tq; ++i)
    for (int64_t j = 0; j < Tk; ++j) {
      int64_t diag = i + Tk - Tq;
      allowed[size_t(i * Tk + j)] = j <= diag && (window <= 0 || j > diag - window);
    }
  Tensor mask = Tensor::from_vector<uint8_t>(allowed, {Tq, Tk});
  Tensor scores = matmul(qh, kh.transpose(-2, -1)) * scale;
  scores = where(mask, scores, scalar_tensor(-INFINITY, scores.dtype()));
  Tensor out = matmul(softmax(scores, -1), vh);  // [B, H, Tq, D]
  return out.permute({0, 2, 1, 3}).contiguous();
}

struct Case {
  int64_t B, Tq, Tk, H, Hkv, D, window;
};
std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "B=" << c.B << " Tq=" << c.Tq << " Tk=" << c.Tk << " H=" << c.H << " Hkv=" << c.Hkv << " D=" << c.D
            << " window=" << c.window;
}

std::vector<Tensor> random_qkv(const Case& c, uint64_t seed, DType dt = DType::F64) {
  Tensor q = random_f64({c.B, c.Tq, c.H, c.D}, seed, false);
  Tensor k = random_f64({c.B, c.Tk, c.Hkv, c.D}, seed + 1, false);
  Tensor v = random_f64({c.B, c.Tk, c.Hkv, c.D}, seed + 2, false);
  if (dt != DType::F64) {
    q = q.to(dt);
    k = k.to(dt);
    v = v.to(dt);
  }
  return {q, k, v};
}

}  // namespace

// ---- gradient checks (f64 finite differences) ----

class AttentionGradcheck : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionGradcheck, MatchesFiniteDifferences) {
  Case c = GetParam();
  std::vector<Tensor> in = random_qkv(c, 10);
  for (Tensor& t : in) t.requires_grad_(true);
  auto f = [&](const autograd::Tensors& x) -> Tensor { return attention(x[0], x[1], x[2], 0, c.window); };
  autograd::GradcheckResult r = autograd::gradcheck(f, {in[0], in[1], in[2]});
  EXPECT_TRUE(r.ok) << r.message;
}

INSTANTIATE_TEST_SUITE_P(OddSizes, AttentionGradcheck,
                         ::testing::Values(Case{2, 7, 7, 4, 2, 5, 0},   // GQA, Tq == Tk
                                           Case{2, 3, 8, 4, 2, 5, 0},   // Tq < Tk (bottom-right causal)
                                           Case{2, 7, 7, 4, 2, 5, 3},   // sliding window
                                           Case{1, 5, 9, 2, 1, 3, 4},   // window with Tq < Tk, MQA
                                           Case{1, 1, 6, 3, 3, 4, 0},   // one-token decode
                                           Case{1, 6, 4, 2, 2, 3, 0}));  // Tq > Tk: the first rows see nothing

TEST(Attention, ExplicitScaleGradcheck) {
  Case c{1, 5, 5, 2, 1, 6, 0};
  std::vector<Tensor> in = random_qkv(c, 20);
  for (Tensor& t : in) t.requires_grad_(true);
  auto f = [&](const autograd::Tensors& x) -> Tensor { return attention(x[0], x[1], x[2], 0.7, 0); };
  autograd::GradcheckResult r = autograd::gradcheck(f, {in[0], in[1], in[2]});
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- forward (and gradients) against the naive composition ----

class AttentionVsNaive : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionVsNaive, ForwardAndGradientsMatch) {
  Case c = GetParam();
  std::vector<Tensor> in = random_qkv(c, 30);
  for (Tensor& t : in) t.requires_grad_(true);
  double scale = 1.0 / std::sqrt(double(c.D));
  Tensor o = attention(in[0], in[1], in[2], 0, c.window);
  Tensor ref = naive_attention(in[0], in[1], in[2], scale, c.window);
  ASSERT_EQ(o.shape(), ref.shape());
  EXPECT_LT(rel_error(o, ref), 1e-12);

  Tensor g = random_f64(o.shape(), 31, false);
  autograd::Tensors got = autograd::grad({o}, {in[0], in[1], in[2]}, {g});
  autograd::Tensors want = autograd::grad({ref}, {in[0], in[1], in[2]}, {g});
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_error(got[i], want[i]), 1e-10) << "gradient " << i;
}

INSTANTIATE_TEST_SUITE_P(OddSizes, AttentionVsNaive,
                         ::testing::Values(Case{2, 7, 7, 4, 2, 5, 0}, Case{2, 3, 8, 4, 2, 5, 0},
                                           Case{2, 7, 7, 4, 2, 5, 3}, Case{1, 13, 13, 3, 1, 7, 1},
                                           Case{2, 9, 11, 2, 2, 6, 5}, Case{1, 17, 17, 2, 2, 16, 0}));

TEST(Attention, F32MatchesF64) {
  Case c{2, 33, 33, 4, 2, 16, 0};
  std::vector<Tensor> in64 = random_qkv(c, 40);
  std::vector<Tensor> in32 = {in64[0].to(DType::F32), in64[1].to(DType::F32), in64[2].to(DType::F32)};
  Tensor o64 = attention(in64[0], in64[1], in64[2]);
  Tensor o32 = attention(in32[0], in32[1], in32[2]);
  EXPECT_EQ(o32.dtype(), DType::F32);
  EXPECT_LT(rel_error(o32, o64), 1e-5);
  Tensor ref32 = naive_attention(in32[0], in32[1], in32[2], 0.25, 0);
  EXPECT_LT(rel_error(o32, ref32), 1e-5);
}

TEST(Attention, Bf16OnTheCpuComputesInF32) {
  Case c{1, 20, 20, 2, 2, 8, 0};
  std::vector<Tensor> in = random_qkv(c, 50, DType::BF16);
  for (Tensor& t : in) t.requires_grad_(true);
  Tensor o = attention(in[0], in[1], in[2]);
  EXPECT_EQ(o.dtype(), DType::BF16);
  Tensor ref = attention(in[0].detach().to(DType::F32), in[1].detach().to(DType::F32), in[2].detach().to(DType::F32));
  EXPECT_LT(rel_error(o, ref), 1e-2);  // bf16 rounding of the output only
  sum(o).backward();
  EXPECT_EQ(in[0].grad().dtype(), DType::BF16);
  EXPECT_EQ(in[1].grad().shape(), in[1].shape());
}

// ---- grouped-query attention equals repeating the kv heads ----

TEST(Attention, GroupedQueryEqualsRepeatedKvHeads) {
  Case c{2, 11, 11, 6, 2, 4, 0};
  for (int64_t window : {0, 4}) {
    std::vector<Tensor> in = random_qkv(c, 60);
    for (Tensor& t : in) t.requires_grad_(true);
    Tensor o = attention(in[0], in[1], in[2], 0, window);
    Tensor k_rep = repeat_heads(in[1], 3), v_rep = repeat_heads(in[2], 3);
    Tensor o_rep = attention(in[0], k_rep, v_rep, 0, window);
    EXPECT_LT(rel_error(o, o_rep), 1e-13);
    Tensor g = random_f64(o.shape(), 61, false);
    autograd::Tensors got = autograd::grad({o}, {in[0], in[1], in[2]}, {g});
    autograd::Tensors want = autograd::grad({o_rep}, {in[0], in[1], in[2]}, {g});  // through the repeat
    for (int i = 0; i < 3; ++i) EXPECT_LT(rel_error(got[i], want[i]), 1e-12) << "gradient " << i;
  }
}

// ---- decoding: one query against a cache equals the last row of the full forward ----

TEST(Attention, DecodeEqualsLastRowOfFullForward) {
  Case c{2, 10, 10, 4, 2, 8, 0};
  for (int64_t window : {0, 3}) {
    std::vector<Tensor> in = random_qkv(c, 70);
    Tensor full = attention(in[0], in[1], in[2], 0, window);
    for (int64_t t = 1; t <= c.Tq; ++t) {  // every prefix: query t-1 against keys [0, t)
      Tensor q1 = in[0].narrow(1, t - 1, 1);
      Tensor o1 = attention(q1, in[1].narrow(1, 0, t), in[2].narrow(1, 0, t), 0, window);
      EXPECT_LT(rel_error(o1, full.narrow(1, t - 1, 1)), 1e-13) << "t=" << t << " window=" << window;
    }
    // a chunk of 4 queries against the cache (chunked prefill)
    Tensor o4 = attention(in[0].narrow(1, 6, 4), in[1], in[2], 0, window);
    EXPECT_LT(rel_error(o4, full.narrow(1, 6, 4)), 1e-13);
  }
}

// ---- strided inputs: slices of a fused qkv projection ----

TEST(Attention, StridedViewsOfAFusedProjection) {
  int64_t B = 2, T = 9, H = 4, Hkv = 2, D = 6;
  Tensor qkv = random_f64({B, T, (H + 2 * Hkv) * D}, 80);
  Tensor q = qkv.narrow(2, 0, H * D).view({B, T, H, D});
  Tensor k = qkv.narrow(2, H * D, Hkv * D).view({B, T, Hkv, D});
  Tensor v = qkv.narrow(2, (H + Hkv) * D, Hkv * D).view({B, T, Hkv, D});
  ASSERT_FALSE(q.is_contiguous());
  Tensor o = attention(q, k, v, 0, 5);
  Tensor ref = attention(q.contiguous(), k.contiguous(), v.contiguous(), 0, 5);
  EXPECT_LT(rel_error(o, ref), 1e-14);
  EXPECT_TRUE(o.is_contiguous());
  autograd::GradcheckResult r = autograd::gradcheck(
      [&](const autograd::Tensors& x) -> Tensor {
        Tensor qq = x[0].narrow(2, 0, H * D).view({B, T, H, D});
        Tensor kk = x[0].narrow(2, H * D, Hkv * D).view({B, T, Hkv, D});
        Tensor vv = x[0].narrow(2, (H + Hkv) * D, Hkv * D).view({B, T, Hkv, D});
        return attention(qq, kk, vv, 0, 5);
      },
      {qkv});
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- edge cases and errors ----

TEST(Attention, RowsThatSeeNoKeyAreZero) {
  Case c{1, 6, 4, 2, 2, 3, 0};  // queries 0 and 1 see nothing (diag = i - 2)
  std::vector<Tensor> in = random_qkv(c, 90);
  mixers::AttentionForward r = mixers::attention_forward(in[0], in[1], in[2], 0.5, 0);
  std::vector<double> o = r.o.to_vector<double>();
  for (int64_t i = 0; i < 2 * c.H * c.D; ++i) EXPECT_EQ(o[size_t(i)], 0.0);
  std::vector<double> lse = r.lse.to_vector<double>();
  EXPECT_TRUE(std::isinf(lse[0]) && lse[0] > 0);
  EXPECT_TRUE(std::isfinite(lse[2]));
}

TEST(Attention, WindowOfOneAttendsToItself) {
  Case c{1, 5, 5, 2, 2, 4, 1};
  std::vector<Tensor> in = random_qkv(c, 95);
  Tensor o = attention(in[0], in[1], in[2], 0, 1);
  EXPECT_LT(rel_error(o, in[2]), 1e-15);
}

TEST(Attention, ClearErrors) {
  using seqmix::testing::expect_error_contains;
  Tensor q = zeros({1, 4, 4, 8}), k = zeros({1, 4, 3, 8}), v = zeros({1, 4, 3, 8});
  expect_error_contains([&] { attention(q, k, v); }, "multiple of the number of kv heads");
  expect_error_contains([&] { attention(q, zeros({1, 4, 2, 6}), zeros({1, 4, 2, 6})); }, "head dims");
  expect_error_contains([&] { attention(q, zeros({1, 4, 2, 8}), zeros({1, 5, 2, 8})); }, "v must have k's shape");
  expect_error_contains([&] { attention(zeros({4, 4, 8}), k, v); }, "q must be [B, Tq, H, D]");
  expect_error_contains([&] { attention(q, zeros({1, 4, 2, 8}, DType::F64), zeros({1, 4, 2, 8})); }, "one dtype");
}
