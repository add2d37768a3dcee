// The CUDA attention op against the CPU reference: output, lse and every gradient, at odd lengths, both
// tensor-core head dims, grouped-query heads, Tq < Tk (decoding against a cache), sliding windows, strided
// inputs, and the SIMT path (f32, odd head dims).
//
// Tolerances (max |cuda - ref| / max |ref| over the whole tensor):
//   bf16: inputs are rounded to bf16 once and the same rounded values feed both sides; the reference runs
//         in f32 on the CPU. The CUDA path rounds P and dS to bf16 for the tensor-core products and its
//         outputs to bf16 (relative step 2^-8 = 3.9e-3), so 2e-2 for o, dq, dk, dv; lse is f32 on both
//         sides: 1e-4 (relative to the largest |lse|).
//   f32:  the SIMT path accumulates in f32 in a different order: 1e-4.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops.h"
#include "layers/mixers/attention/attention_op.h"
#include "support/gpu_compare.h"
#include "support/test_util.h"

using namespace seqmix;
using seqmix::mixers::AttentionForward;
using seqmix::mixers::AttentionGrads;
using seqmix::mixers::attention_backward;
using seqmix::mixers::attention_forward;
using seqmix::testing::kBF;
using seqmix::testing::kF32;
using seqmix::testing::random_rounded;
using seqmix::testing::rel_error;
using seqmix::testing::to_cpu_f32;
using seqmix::testing::to_gpu;

namespace {

struct GpuCase {
  int64_t B, Tq, Tk, H, Hkv, D, window;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const GpuCase& c) {
  return os << "B=" << c.B << " Tq=" << c.Tq << " Tk=" << c.Tk << " H=" << c.H << " Hkv=" << c.Hkv << " D=" << c.D
            << " window=" << c.window << " " << dtype_name(c.dtype);
}

double tolerance(DType dt) { return dt == DType::BF16 ? 2e-2 : 1e-4; }

// Runs forward and backward on both devices; `fused` takes q, k, v as strided views of one projection.
void check_against_cpu(const GpuCase& c, bool fused = false) {
  SCOPED_TRACE(::testing::PrintToString(c));
  const DType dt = c.dtype;
  Tensor q, k, v;
  Tensor dout = random_rounded({c.B, c.Tq, c.H, c.D}, 14, dt);
  Tensor qg, kg, vg;
  if (fused) {
    ASSERT_EQ(c.Tq, c.Tk);
    int64_t F = (c.H + 2 * c.Hkv) * c.D;
    Tensor all = random_rounded({c.B, c.Tq, F}, 11, dt);
    auto split = [&](const Tensor& t) {
      return std::vector<Tensor>{t.narrow(2, 0, c.H * c.D).view({c.B, c.Tq, c.H, c.D}),
                                 t.narrow(2, c.H * c.D, c.Hkv * c.D).view({c.B, c.Tk, c.Hkv, c.D}),
                                 t.narrow(2, (c.H + c.Hkv) * c.D, c.Hkv * c.D).view({c.B, c.Tk, c.Hkv, c.D})};
    };
    std::vector<Tensor> cpu = split(all), gpu = split(to_gpu(all, dt));
    q = cpu[0], k = cpu[1], v = cpu[2];
    qg = gpu[0], kg = gpu[1], vg = gpu[2];
    ASSERT_FALSE(qg.is_contiguous());
  } else {
    q = random_rounded({c.B, c.Tq, c.H, c.D}, 11, dt);
    k = random_rounded({c.B, c.Tk, c.Hkv, c.D}, 12, dt);
    v = random_rounded({c.B, c.Tk, c.Hkv, c.D}, 13, dt);
    qg = to_gpu(q, dt), kg = to_gpu(k, dt), vg = to_gpu(v, dt);
  }
  const double scale = 1.0 / std::sqrt(double(c.D));

  AttentionForward ref = attention_forward(q, k, v, scale, c.window);  // f32 on the CPU
  AttentionGrads gref = attention_backward(q, k, v, ref.o, ref.lse, dout, scale, c.window);

  AttentionForward got = attention_forward(qg, kg, vg, scale, c.window);
  ASSERT_TRUE(got.o.is_cuda());
  ASSERT_EQ(got.o.dtype(), dt);
  AttentionGrads ggot = attention_backward(qg, kg, vg, got.o, got.lse, to_gpu(dout, dt), scale, c.window);

  const double tol = tolerance(dt);
  EXPECT_LT(rel_error(to_cpu_f32(got.o), ref.o), tol) << "o";
  // lse: +inf rows (no visible key) must agree exactly; compare the finite ones.
  std::vector<float> lg = to_cpu_f32(got.lse).to_vector<float>(), lr = ref.lse.to_vector<float>();
  double lse_err = 0, lse_max = 1e-6;
  for (size_t i = 0; i < lr.size(); ++i) {
    if (std::isinf(lr[i]) || std::isinf(lg[i])) {
      EXPECT_EQ(lg[i], lr[i]) << "lse row " << i;
      continue;
    }
    lse_err = std::max(lse_err, double(std::abs(lg[i] - lr[i])));
    lse_max = std::max(lse_max, double(std::abs(lr[i])));
  }
  EXPECT_LT(lse_err / lse_max, 1e-4) << "lse";
  // dq and dk vanish when a query sees one key (T = 1, window = 1): there the reference is rounding
  // noise, so their error is measured against the gradient scale |dv| when that is larger.
  auto floored_error = [&](const Tensor& got_t, const Tensor& want) {
    std::vector<float> g = to_cpu_f32(got_t).to_vector<float>(), w = want.to_vector<float>(), dv = gref.dv.to_vector<float>();
    double num = 0, den = 1e-12;
    for (size_t i = 0; i < w.size(); ++i) {
      if (std::isnan(g[i])) return double(INFINITY);
      num = std::max(num, double(std::abs(g[i] - w[i])));
      den = std::max(den, double(std::abs(w[i])));
    }
    for (float x : dv) den = std::max(den, 0.1 * double(std::abs(x)));
    return num / den;
  };
  EXPECT_LT(floored_error(ggot.dq, gref.dq), tol) << "dq";
  EXPECT_LT(floored_error(ggot.dk, gref.dk), tol) << "dk";
  EXPECT_LT(rel_error(to_cpu_f32(ggot.dv), gref.dv), tol) << "dv";
}

}  // namespace

class AttentionGpuVsCpu : public ::testing::TestWithParam<GpuCase> {};

TEST_P(AttentionGpuVsCpu, OutputLseAndGradientsMatch) {
  SKIP_WITHOUT_CUDA();
  check_against_cpu(GetParam());
}

INSTANTIATE_TEST_SUITE_P(
    TensorCores, AttentionGpuVsCpu,
    ::testing::Values(
        // odd lengths, both head dims, Tq == Tk
        GpuCase{1, 1, 1, 2, 2, 64, 0, kBF}, GpuCase{2, 63, 63, 4, 4, 64, 0, kBF}, GpuCase{2, 65, 65, 4, 4, 128, 0, kBF},
        GpuCase{1, 200, 200, 2, 2, 128, 0, kBF}, GpuCase{1, 257, 257, 2, 2, 64, 0, kBF},
        GpuCase{1, 257, 257, 2, 1, 128, 0, kBF},
        // grouped-query heads
        GpuCase{2, 200, 200, 8, 2, 64, 0, kBF}, GpuCase{1, 257, 257, 8, 2, 128, 0, kBF},
        // Tq < Tk: chunked prefill and one-token decode against a cache
        GpuCase{1, 65, 200, 8, 2, 64, 0, kBF}, GpuCase{2, 1, 257, 8, 2, 128, 0, kBF}, GpuCase{1, 63, 1000, 4, 1, 128, 0, kBF},
        // sliding windows (also a window of exactly one key tile and of one key)
        GpuCase{1, 257, 257, 8, 2, 64, 50, kBF}, GpuCase{2, 200, 200, 4, 4, 128, 64, kBF},
        GpuCase{1, 130, 130, 2, 2, 64, 1, kBF}, GpuCase{1, 100, 300, 4, 2, 128, 70, kBF},
        // Tq > Tk: the first rows see no key (zero output, zero gradient)
        GpuCase{1, 90, 40, 2, 2, 64, 0, kBF},
        // longer: many key tiles per query tile, the whole pipeline
        GpuCase{1, 1024, 1024, 4, 2, 128, 0, kBF}, GpuCase{1, 1000, 1000, 2, 2, 64, 300, kBF}),
    [](const ::testing::TestParamInfo<GpuCase>& info) { return "case" + std::to_string(info.index); });

INSTANTIATE_TEST_SUITE_P(
    Simt, AttentionGpuVsCpu,
    ::testing::Values(GpuCase{1, 63, 63, 4, 2, 64, 0, kF32}, GpuCase{2, 65, 65, 2, 2, 128, 0, kF32},
                      GpuCase{1, 40, 100, 8, 2, 64, 20, kF32}, GpuCase{1, 1, 257, 4, 4, 128, 0, kF32},
                      GpuCase{2, 37, 37, 4, 2, 96, 0, kBF},    // bf16 with a head dim the tensor cores don't take
                      GpuCase{1, 50, 50, 2, 1, 32, 9, kF32}),
    [](const ::testing::TestParamInfo<GpuCase>& info) { return "case" + std::to_string(info.index); });

TEST(AttentionGpu, StridedViewsOfAFusedProjection) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  check_against_cpu(GpuCase{2, 200, 200, 8, 2, 128, 0, kBF}, /*fused=*/true);
  check_against_cpu(GpuCase{1, 129, 129, 4, 4, 64, 70, kBF}, /*fused=*/true);
  check_against_cpu(GpuCase{1, 77, 77, 4, 2, 64, 0, kF32}, /*fused=*/true);
}

TEST(AttentionGpu, AutogradThroughTheOp) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 2, T = 100, H = 4, Hkv = 2, D = 64;
  Tensor q = random_rounded({B, T, H, D}, 21, kBF), k = random_rounded({B, T, Hkv, D}, 22, kBF),
         v = random_rounded({B, T, Hkv, D}, 23, kBF), g = random_rounded({B, T, H, D}, 24, kBF);
  Tensor qg = to_gpu(q, kBF), kg = to_gpu(k, kBF), vg = to_gpu(v, kBF);
  for (Tensor* t : {&q, &k, &v, &qg, &kg, &vg}) t->requires_grad_(true);
  Tensor o = mixers::attention(q, k, v);
  o.backward(g);
  Tensor og = mixers::attention(qg, kg, vg);
  EXPECT_TRUE(og.requires_grad());
  og.backward(to_gpu(g, kBF));
  EXPECT_LT(rel_error(to_cpu_f32(og.detach()), o.detach()), 2e-2);
  EXPECT_LT(rel_error(to_cpu_f32(qg.grad()), q.grad()), 2e-2);
  EXPECT_LT(rel_error(to_cpu_f32(kg.grad()), k.grad()), 2e-2);
  EXPECT_LT(rel_error(to_cpu_f32(vg.grad()), v.grad()), 2e-2);
}

TEST(AttentionGpu, DecodeEqualsLastRowOfFullForward) {
  if (!seqmix::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 2, T = 300, H = 8, Hkv = 2, D = 128;
  Tensor q = to_gpu(random_rounded({B, T, H, D}, 31, kBF), kBF), k = to_gpu(random_rounded({B, T, Hkv, D}, 32, kBF), kBF),
         v = to_gpu(random_rounded({B, T, Hkv, D}, 33, kBF), kBF);
  Tensor full = to_cpu_f32(mixers::attention(q, k, v));
  for (int64_t t : {1, 64, 65, 200, 300}) {
    Tensor o1 = to_cpu_f32(mixers::attention(q.narrow(1, t - 1, 1), k.narrow(1, 0, t), v.narrow(1, 0, t)));
    // Same kernel, same bf16 inputs: only the f32 accumulation order within a row can differ.
    EXPECT_LT(rel_error(o1, full.narrow(1, t - 1, 1)), 1e-2) << "t=" << t;
  }
}
