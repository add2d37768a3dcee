// maxplus_scan (the mLSTM stabilizer scan) on the CPU against a plain f64 loop, bit for bit: odd sizes,
// B = 1, with and without a carried m0, every float input/output dtype, strided inputs, T = 0.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/ops.h"
#include "support/test_util.h"

using namespace seqmix;

namespace {

struct Ref {
  std::vector<double> m, m_prev, m_last;
};

// The definition, written out: m_t = max(logf_t + m_{t-1}, ig_t) with m_{-1} = m0 (or 0).
Ref reference(const std::vector<double>& lf, const std::vector<double>& ig, const std::vector<double>* m0, int64_t B, int64_t T,
              int64_t H) {
  Ref r;
  r.m.resize(lf.size());
  r.m_prev.resize(lf.size());
  r.m_last.resize(size_t(B * H));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      double m = m0 ? (*m0)[size_t(b * H + h)] : 0.0;
      for (int64_t t = 0; t < T; ++t) {
        size_t i = size_t((b * T + t) * H + h);
        r.m_prev[i] = m;
        double a = lf[i] + m;
        m = a < ig[i] ? ig[i] : a;
        r.m[i] = m;
      }
      r.m_last[size_t(b * H + h)] = m;
    }
  return r;
}

// Same dtype, shape and bytes.
void expect_bitwise(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
  Tensor g = got.contiguous(), w = want.contiguous();
  EXPECT_EQ(std::memcmp(g.data_ptr(), w.data_ptr(), g.nbytes()), 0) << what;
}

// Gates as in the mLSTM: logf = logsigmoid(3 z) <= 0 and ig = 4 z', with runs where ig wins and runs
// where the decayed m wins; `shift` pushes ig negative so that m also goes down.
void make_gates(int64_t B, int64_t T, int64_t H, uint32_t seed, double shift, std::vector<double>& lf, std::vector<double>& ig) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  lf.resize(size_t(B * T * H));
  ig.resize(lf.size());
  for (size_t i = 0; i < lf.size(); ++i) {
    double z = 3.0 * n(rng);
    lf[i] = z >= 0 ? -std::log1p(std::exp(-z)) : z - std::log1p(std::exp(z));
    ig[i] = 4.0 * n(rng) + shift;
  }
}

std::string tag(int64_t B, int64_t T, int64_t H, DType in, DType out, bool with_m0) {
  return std::to_string(B) + "x" + std::to_string(T) + "x" + std::to_string(H) + " " + dtype_name(in) + "->" + dtype_name(out) +
         (with_m0 ? " m0" : "");
}

}  // namespace

TEST(MaxplusScan, MatchesPlainLoopBitwise) {
  struct Size {
    int64_t B, T, H;
  };
  const std::vector<Size> sizes = {{1, 1, 1}, {1, 37, 3}, {3, 17, 5}, {2, 129, 7}, {1, 1001, 1}, {5, 9, 2}};
  uint32_t seed = 1;
  for (const Size& s : sizes)
    for (DType in : {DType::F64, DType::F32, DType::BF16, DType::F16})
      for (DType out : {DType::F64, DType::F32, DType::BF16})
        for (bool with_m0 : {false, true}) {
          std::vector<double> lf, ig;
          make_gates(s.B, s.T, s.H, seed++, with_m0 ? -3.0 : 0.0, lf, ig);
          // round the gates to the input dtype first: the reference sees what the kernel sees
          Tensor tlf = Tensor::from_vector<double>(lf, {s.B, s.T, s.H}).to(in);
          Tensor tig = Tensor::from_vector<double>(ig, {s.B, s.T, s.H}).to(in);
          lf = tlf.to_vector<double>();
          ig = tig.to_vector<double>();
          std::vector<double> m0(size_t(s.B * s.H));
          std::mt19937 rng(seed);
          std::uniform_real_distribution<double> u(-20.0, 20.0);
          for (double& x : m0) x = u(rng);
          Tensor tm0 = with_m0 ? Tensor::from_vector<double>(m0, {s.B, s.H}) : Tensor();
          Ref r = reference(lf, ig, with_m0 ? &m0 : nullptr, s.B, s.T, s.H);
          MaxplusScanResult got = maxplus_scan(tlf, tig, tm0, out);
          const std::string what = tag(s.B, s.T, s.H, in, out, with_m0);
          expect_bitwise(got.m, Tensor::from_vector<double>(r.m, {s.B, s.T, s.H}).to(out), what + " m");
          expect_bitwise(got.m_prev, Tensor::from_vector<double>(r.m_prev, {s.B, s.T, s.H}).to(out), what + " m_prev");
          expect_bitwise(got.m_last, Tensor::from_vector<double>(r.m_last, {s.B, s.H}), what + " m_last");
        }
}

TEST(MaxplusScan, DefaultsToF64AndZeroStart) {
  // B = 1, H = 1 by hand: m = max(lf + m, ig) from m = 0
  Tensor lf = Tensor::from_vector<double>({-1.0, -0.5, -2.0, -0.25}, {1, 4, 1});
  Tensor ig = Tensor::from_vector<double>({-3.0, 2.0, -1.0, 1.5}, {1, 4, 1});
  MaxplusScanResult r = maxplus_scan(lf, ig);
  EXPECT_EQ(r.m.dtype(), DType::F64);
  EXPECT_EQ(r.m.to_vector<double>(), (std::vector<double>{-1.0, 2.0, 0.0, 1.5}));
  EXPECT_EQ(r.m_prev.to_vector<double>(), (std::vector<double>{0.0, -1.0, 2.0, 0.0}));
  EXPECT_EQ(r.m_last.to_vector<double>(), (std::vector<double>{1.5}));
}

TEST(MaxplusScan, StridedInputsSplitScansAndNoGradient) {
  const int64_t B = 3, T = 31, H = 5;
  std::vector<double> lf, ig;
  make_gates(B, T + 4, H, 77, -1.0, lf, ig);
  // views: a time window of a longer sequence, and ig read through a transposed copy
  Tensor lf_full = Tensor::from_vector<double>(lf, {B, T + 4, H}).to(DType::F32).requires_grad_();
  Tensor ig_full = Tensor::from_vector<double>(ig, {B, T + 4, H}).to(DType::F32).transpose(1, 2).contiguous().transpose(1, 2);
  ig_full.requires_grad_();
  Tensor vlf = lf_full.narrow(1, 2, T), vig = ig_full.narrow(1, 2, T);
  ASSERT_FALSE(vlf.is_contiguous());
  ASSERT_FALSE(vig.is_contiguous());
  MaxplusScanResult whole = maxplus_scan(vlf, vig, Tensor(), DType::F32);
  MaxplusScanResult want = maxplus_scan(vlf.contiguous().detach(), vig.contiguous().detach(), Tensor(), DType::F32);
  expect_bitwise(whole.m, want.m, "strided m");
  expect_bitwise(whole.m_prev, want.m_prev, "strided m_prev");
  expect_bitwise(whole.m_last, want.m_last, "strided m_last");
  EXPECT_FALSE(whole.m.requires_grad());
  EXPECT_FALSE(whole.m_prev.requires_grad());
  // carrying m_last: two scans equal one
  MaxplusScanResult a = maxplus_scan(vlf.narrow(1, 0, 12), vig.narrow(1, 0, 12), Tensor(), DType::F64);
  MaxplusScanResult b = maxplus_scan(vlf.narrow(1, 12, T - 12), vig.narrow(1, 12, T - 12), a.m_last, DType::F64);
  MaxplusScanResult one = maxplus_scan(vlf, vig, Tensor(), DType::F64);
  expect_bitwise(cat({a.m, b.m}, 1), one.m, "split m");
  expect_bitwise(cat({a.m_prev, b.m_prev}, 1), one.m_prev, "split m_prev");
  expect_bitwise(b.m_last, one.m_last, "split m_last");
  // T = 0: nothing scanned, the state passes through
  MaxplusScanResult empty = maxplus_scan(vlf.narrow(1, 0, 0), vig.narrow(1, 0, 0), one.m_last, DType::F32);
  EXPECT_EQ(empty.m.numel(), 0);
  expect_bitwise(empty.m_last, one.m_last, "T = 0 m_last");
}

TEST(MaxplusScan, RejectsBadArguments) {
  Tensor x = zeros({2, 3, 4}), y = zeros({2, 3, 5});
  seqmix::testing::expect_error_contains([&] { maxplus_scan(x, y); }, "one shape");
  seqmix::testing::expect_error_contains([&] { maxplus_scan(x, x.to(DType::F64)); }, "one float dtype");
  seqmix::testing::expect_error_contains([&] { maxplus_scan(x, x, zeros({2, 4})); }, "m0 must be f64");
  seqmix::testing::expect_error_contains([&] { maxplus_scan(x, x, zeros({2, 3}, DType::F64)); }, "m0 must be f64");
  seqmix::testing::expect_error_contains([&] { maxplus_scan(x, x, Tensor(), DType::I64); }, "out_dtype");
}
