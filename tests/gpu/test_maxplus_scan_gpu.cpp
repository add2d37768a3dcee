// The CUDA max-plus scan (the mLSTM stabilizer) against the CPU one, bit for bit: both run the same
// sequential f64 loop per (b, h), so every output must match exactly (m, m_prev in each output dtype, and
// the f64 final m). Odd sizes, B = 1, columns over several blocks (B * H > 64), T not a multiple of the
// kernel's 8-step unroll, T = 65,536, with and without m0, strided inputs. Then mlstm_cell on the GPU
// against the CPU (f32, 5e-4 relative as the chunked recurrence tests with strong decays): the stabilizer
// and its carried state now stay on the device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/kernels.h"
#include "core/ops.h"
#include "layers/mixers/mlstm/mlstm.h"
#include "support/gpu_compare.h"
#include "support/test_util.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {

// Equal dtype, shape and values (bf16/f16/f32 -> f64 is exact, so value equality is bit equality up to
// the sign of zero and NaN payloads, neither of which occurs here).
void expect_exact(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.is_cuda()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
  std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  size_t bad = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (!(g[i] == w[i]) && bad++ < 5) ADD_FAILURE() << what << ": element " << i << " cuda " << g[i] << " cpu " << w[i];
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << g.size() << " differ";
}

// mLSTM-like gates on the CPU in f64: logf = logsigmoid(3 z) <= 0, ig = 4 z' + shift.
void gates(int64_t B, int64_t T, int64_t H, uint64_t seed, double shift, Tensor& logf, Tensor& ig) {
  Generator g(seed);
  logf = logsigmoid(randn({B, T, H}, g, DType::F64) * 3.0);
  ig = randn({B, T, H}, g, DType::F64) * 4.0 + shift;
}

}  // namespace

TEST(MaxplusScanGpu, MatchesCpuExactly) {
  SKIP_WITHOUT_CUDA();
  struct Size {
    int64_t B, T, H;
  };
  // 1x1x1; B = 1 odd T and H; 7 + 8k tails; 335 columns (6 blocks of 64); T = 65,536 and 65,539
  const std::vector<Size> sizes = {{1, 1, 1}, {1, 37, 3}, {3, 17, 5}, {2, 1001, 7}, {5, 263, 67}, {1, 65536, 3}, {3, 65539, 1}};
  uint64_t seed = 10;
  for (const Size& s : sizes)
    for (bool with_m0 : {false, true}) {
      Tensor lf, ig;
      gates(s.B, s.T, s.H, seed++, with_m0 ? -2.0 : 0.0, lf, ig);
      Generator g(seed++);
      Tensor m0 = with_m0 ? randn({s.B, s.H}, g, DType::F64) * 10.0 : Tensor();
      const std::string what = std::to_string(s.B) + "x" + std::to_string(s.T) + "x" + std::to_string(s.H) + (with_m0 ? " m0" : "");
      // f64 in and out: the brief's exact comparison
      MaxplusScanResult want = cpu::maxplus_scan(lf, ig, m0, DType::F64);
      MaxplusScanResult got = cuda::maxplus_scan(lf.cuda(), ig.cuda(), with_m0 ? m0.cuda() : Tensor(), DType::F64);
      expect_exact(got.m, want.m, what + " f64 m");
      expect_exact(got.m_prev, want.m_prev, what + " f64 m_prev");
      expect_exact(got.m_last, want.m_last, what + " f64 m_last");
      // narrower inputs and outputs (the same conversions on both sides), through the dispatcher
      for (DType in : {DType::F32, DType::BF16})
        for (DType out : {DType::F32, DType::BF16, DType::F16}) {
          if (s.T > 2000 && !(in == DType::F32 && out == DType::F32)) continue;  // one narrow pass at the long lengths
          Tensor lfi = lf.to(in), igi = ig.to(in);
          MaxplusScanResult w = maxplus_scan(lfi, igi, m0, out);
          MaxplusScanResult c = maxplus_scan(lfi.cuda(), igi.cuda(), with_m0 ? m0.cuda() : Tensor(), out);
          const std::string tw = what + " " + dtype_name(in) + "->" + dtype_name(out);
          expect_exact(c.m, w.m, tw + " m");
          expect_exact(c.m_prev, w.m_prev, tw + " m_prev");
          expect_exact(c.m_last, w.m_last, tw + " m_last");
        }
    }
}

TEST(MaxplusScanGpu, StridedInputs) {
  SKIP_WITHOUT_CUDA();
  Tensor lf, ig;
  gates(3, 70, 9, 99, -1.0, lf, ig);
  Tensor lfc = lf.to(DType::F32).cuda(), igc = ig.to(DType::F32).cuda();
  // a time window (rows not contiguous) and a [B, H, T] layout seen as [B, T, H]
  Tensor vlf = lfc.narrow(1, 3, 61), vig = igc.transpose(1, 2).contiguous().transpose(1, 2).narrow(1, 3, 61);
  ASSERT_FALSE(vlf.is_contiguous());
  ASSERT_FALSE(vig.is_contiguous());
  MaxplusScanResult got = maxplus_scan(vlf, vig, Tensor(), DType::F32);
  MaxplusScanResult want = cpu::maxplus_scan(lf.to(DType::F32).narrow(1, 3, 61), ig.to(DType::F32).narrow(1, 3, 61), Tensor(), DType::F32);
  expect_exact(got.m, want.m, "strided m");
  expect_exact(got.m_prev, want.m_prev, "strided m_prev");
  expect_exact(got.m_last, want.m_last, "strided m_last");
}

// mlstm_cell scans on the GPU by default (SEQMIX_MAXPLUS_CUDA unset or 1) and on the host with
// SEQMIX_MAXPLUS_CUDA=0; every setting must match the CPU.
TEST(MaxplusScanGpu, MlstmCellMatchesCpuAndKeepsStateOnDevice) {
  SKIP_WITHOUT_CUDA();
  for (const char* on_gpu : {"", "1", "0"}) {
    ScopedEnv env("SEQMIX_MAXPLUS_CUDA", on_gpu[0] ? on_gpu : nullptr);
    const int64_t B = 2, T = 45, H = 3, D = 16;
    Generator g(5);
    Tensor q = randn({B, T, H, D}, g), k = randn({B, T, H, D}, g), v = randn({B, T, H, D}, g);
    Tensor ig = randn({B, T, H}, g) * 4.0, logf = logsigmoid(randn({B, T, H}, g) * 3.0);
    auto run = [&](Device dev, mixers::RecurrentState* st) {
      if (!st) return mixers::mlstm_cell(q.to(dev), k.to(dev), v.to(dev), ig.to(dev), logf.to(dev), nullptr, 8);
      auto part = [&](int64_t t0, int64_t n) {
        return mixers::mlstm_cell(q.narrow(1, t0, n).to(dev), k.narrow(1, t0, n).to(dev), v.narrow(1, t0, n).to(dev),
                                  ig.narrow(1, t0, n).to(dev), logf.narrow(1, t0, n).to(dev), st, 8);
      };
      Tensor a = part(0, 20);
      return cat({a, part(20, T - 20)}, 1);
    };
    Tensor want = run(Device::cpu(), nullptr);
    Tensor got = run(Device::cuda(0), nullptr);
    ASSERT_TRUE(got.is_cuda());
    EXPECT_LT(floored_rel_err(got, want), 5e-4);
    // carried state: two calls on the GPU equal the CPU's, and m (on the GPU when scanned there) equals the CPU's
    mixers::RecurrentState sc, sg;
    Tensor want2 = run(Device::cpu(), &sc);
    Tensor got2 = run(Device::cuda(0), &sg);
    EXPECT_LT(floored_rel_err(got2, want2), 5e-4);
    EXPECT_LT(floored_rel_err(got2, want), 5e-4);
    ASSERT_TRUE(sg.m.defined());
    EXPECT_EQ(sg.m.is_cuda(), on_gpu[0] != '0');
    if (sg.m.is_cuda()) expect_exact(sg.m, sc.m, "carried m");
    else EXPECT_EQ(sg.m.to_vector<double>(), sc.m.to_vector<double>());
  }
}
