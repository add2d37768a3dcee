#include <cmath>

#include "layers/mixers/mlstm/mlstm.h"
#include "recurrent_mixer_testing.h"

using namespace seqmix;
using namespace seqmix::testing;

namespace {
// The unstabilized mLSTM cell, token by token in f64: h_t = C_t q_t / max(|n_t . q_t|, 1).
std::vector<double> naive_cell(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ig, const Tensor& logf) {
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
  auto Q = q.to_vector<double>(), K = k.to_vector<double>(), V = v.to_vector<double>(), I = ig.to_vector<double>(),
       F = logf.to_vector<double>();
  std::vector<double> out(size_t(B * T * H * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> C(size_t(D * D), 0.0), n(size_t(D), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        size_t gi = size_t((b * T + t) * H + h), base = gi * size_t(D);
        double f = std::exp(F[gi]), i = std::exp(I[gi]);
        for (int64_t a = 0; a < D; ++a) {
          double ka = K[base + a] / std::sqrt(double(D));
          n[size_t(a)] = f * n[size_t(a)] + i * ka;
          for (int64_t c = 0; c < D; ++c) C[size_t(a * D + c)] = f * C[size_t(a * D + c)] + i * ka * V[base + c];
        }
        double nq = 0;
        for (int64_t a = 0; a < D; ++a) nq += n[size_t(a)] * Q[base + a];
        double den = std::max(std::abs(nq), 1.0);
        for (int64_t c = 0; c < D; ++c) {
          double s = 0;
          for (int64_t a = 0; a < D; ++a) s += C[size_t(a * D + c)] * Q[base + a];
          out[base + c] = s / den;
        }
      }
    }
  return out;
}
}  // namespace

TEST(MLSTMMixer, StabilizedChunkedCellEqualsUnstabilizedRecurrence) {
  // gates from mild to large input gates (exp(8)) and strong forgetting; T odd, chunk 4
  int64_t B = 2, T = 13, H = 2, D = 3;
  Tensor q = random_f64({B, T, H, D}, 1, false), k = random_f64({B, T, H, D}, 2, false), v = random_f64({B, T, H, D}, 3, false);
  Tensor ig = random_f64({B, T, H}, 4, false) * 4.0;
  Tensor logf = logsigmoid(random_f64({B, T, H}, 5, false) * 3.0);
  Tensor h = mixers::mlstm_cell(q, k, v, ig, logf, nullptr, 4);
  auto want = naive_cell(q, k, v, ig, logf);
  EXPECT_LT(rel_error(h, Tensor::from_vector<double>(want, {B, T, H, D})), 1e-10);
  // carried state: two calls equal one
  mixers::RecurrentState st;
  Tensor h1 = mixers::mlstm_cell(q.narrow(1, 0, 6), k.narrow(1, 0, 6), v.narrow(1, 0, 6), ig.narrow(1, 0, 6), logf.narrow(1, 0, 6), &st, 4);
  Tensor h2 = mixers::mlstm_cell(q.narrow(1, 6, 7), k.narrow(1, 6, 7), v.narrow(1, 6, 7), ig.narrow(1, 6, 7), logf.narrow(1, 6, 7), &st, 4);
  EXPECT_LT(rel_error(cat({h1, h2}, 1), h), 1e-10);
}

TEST(MLSTMMixer, GradcheckF64) {
  Generator g(2);
  mixers::MLSTMConfig cfg;
  cfg.n_heads = 2;
  cfg.conv_size = 3;
  cfg.chunk = 4;
  mixers::MLSTM m(tiny_mixer_ctx(g, 6), cfg);
  // non-zero gate weights so that the gates depend on the input
  normal_(m.igate->weight, g, 0.0, 0.5);
  normal_(m.fgate->weight, g, 0.0, 0.5);
  m.fgate->bias.fill_(0.5);
  expect_mixer_gradcheck(m, 2, 7, 6, 3);
}

TEST(MLSTMMixer, StepsEqualForward) {
  Generator g(4);
  mixers::MLSTMConfig cfg;
  cfg.n_heads = 2;
  cfg.chunk = 4;
  mixers::MLSTM m(tiny_mixer_ctx(g, 8), cfg);
  normal_(m.igate->weight, g, 0.0, 0.5);
  normal_(m.fgate->weight, g, 0.0, 0.5);
  expect_steps_equal_forward(m, 2, 11, 8, 5, 5);
}

TEST(MLSTMMixer, LongSequenceStrongAndWeakDecaysStayFinite) {
  Generator g(6);
  mixers::MLSTMConfig cfg;
  cfg.n_heads = 1;
  for (double fbias : {-6.9, 20.0}) {  // forget gate ~1e-3 per token, or ~1 - 2e-9
    mixers::MLSTM m(tiny_mixer_ctx(g, 4), cfg);
    m.fgate->bias.fill_(fbias);
    normal_(m.igate->weight, g, 0.0, 2.0);  // input gates up to exp(~20)
    expect_long_sequence_finite(m, 65536, 4, 1.0, 7);
  }
}
