// CUDA softmax / log_softmax (+ backward), fused cross-entropy (+ backward), layernorm / rmsnorm
// (+ backward) and embedding (+ backward) against the CPU backend.
//
// Inputs are made on the CPU (bf16 inputs rounded to bf16 there) and copied to the GPU, so both sides
// see identical values; row lengths cover the warp path (<= 1024), the block path with and without
// the shared-memory row cache, odd lengths (misaligned rows) and offset (unaligned) inputs.
//
// Tolerances: |cuda - cpu| <= atol + rtol * |cpu|
// - f32: rtol 1e-4, atol 1e-6 (softmax family; the device uses fast exp, ~2 ulp) and 1e-5 for norms
//   and cross-entropy (f32 sums in a different order over up to 50K terms).
// - bf16: rtol 2e-2, atol 2e-3. Both sides compute in f32 from the same bf16 inputs and round once;
//   f32 differences in the order of sums can flip the final rounding by one bf16 ulp (2^-8).
// - embedding forward: exact (a copy); backward f32: 1e-5 relative (sums split at chunk boundaries).
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




Tol soft_tol(DType dt) { return dt == DType::F32 ? Tol{1e-4, 1e-6} : Tol{2e-2, 2e-3}; }
Tol sum_tol(DType dt) { return dt == DType::F32 ? Tol{1e-4, 1e-5} : Tol{2e-2, 2e-3}; }


const std::vector<DType> kTypes = {DType::F32, DType::BF16};

std::string tag(const char* op, DType dt, int64_t rows, int64_t v) {
  return std::string(op) + " " + dtype_name(dt) + " " + std::to_string(rows) + "x" + std::to_string(v);
}

// A contiguous [rows, v] view whose data starts one element into its buffer (rows misaligned
// relative to freshly allocated outputs), identically on CPU and GPU.
Tensor offset_view(const Tensor& base_flat, int64_t rows, int64_t v) {
  return base_flat.slice(0, 1, 1 + rows * v).view({rows, v});
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// softmax family
// ---------------------------------------------------------------------------------------------
TEST(CudaSoftmax, ForwardAndBackwardManyRowLengths) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t rows, v;
  };
  // 1, 7, 1000: warp path; 1025, 4099: block path with cache; 50257: odd vocabulary (misaligned rows);
  // 70000 f32 (280 KB) exceeds shared memory: the uncached block path.
  std::vector<Case> cases = {{5, 1}, {9, 7}, {6, 1000}, {3, 1025}, {4, 4099}, {3, 50257}, {2, 70000}};
  for (DType dt : kTypes) {
    for (const Case& c : cases) {
      Tensor x = rand_cpu({c.rows, c.v}, dt, 1, -4.f, 4.f);
      Tensor g = rand_cpu({c.rows, c.v}, dt, 2);
      Tensor xg = x.cuda(), gg = g.cuda();
      Tensor y = cpu::softmax(x), ly = cpu::log_softmax(x);
      Tensor yg = cuda::softmax(xg), lyg = cuda::log_softmax(xg);
      expect_close(yg, y, soft_tol(dt), tag("softmax", dt, c.rows, c.v));
      expect_close(lyg, ly, soft_tol(dt), tag("log_softmax", dt, c.rows, c.v));
      // backward from the CPU outputs on both sides (identical inputs)
      expect_close(cuda::softmax_backward(gg, y.cuda()), cpu::softmax_backward(g, y), sum_tol(dt),
                   tag("softmax_backward", dt, c.rows, c.v));
      expect_close(cuda::log_softmax_backward(gg, ly.cuda()), cpu::log_softmax_backward(g, ly), sum_tol(dt),
                   tag("log_softmax_backward", dt, c.rows, c.v));
    }
  }
}

TEST(CudaSoftmax, UnalignedInputs) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kTypes) {
    for (int64_t v : {31, 1000, 4096, 5003}) {
      const int64_t rows = 3;
      Tensor base = rand_cpu({rows * v + 1}, dt, 3, -3.f, 3.f), gbase = rand_cpu({rows * v + 1}, dt, 4);
      Tensor x = offset_view(base, rows, v), g = offset_view(gbase, rows, v);
      Tensor xg = offset_view(base.cuda(), rows, v), gg = offset_view(gbase.cuda(), rows, v);
      ASSERT_TRUE(xg.is_contiguous());
      Tensor y = cpu::softmax(x), ly = cpu::log_softmax(x);
      expect_close(cuda::softmax(xg), y, soft_tol(dt), tag("softmax unaligned", dt, rows, v));
      expect_close(cuda::log_softmax(xg), ly, soft_tol(dt), tag("log_softmax unaligned", dt, rows, v));
      Tensor ybase = zeros({rows * v + 1}, dt);
      ybase.slice(0, 1, 1 + rows * v).copy_(y.view({-1}));
      Tensor yg = offset_view(ybase.cuda(), rows, v);
      expect_close(cuda::softmax_backward(gg, yg), cpu::softmax_backward(g, y), sum_tol(dt),
                   tag("softmax_backward unaligned", dt, rows, v));
    }
  }
}

TEST(CudaSoftmax, MaskedRowsWithMinusInfinity) {
  SKIP_WITHOUT_CUDA();
  for (int64_t v : {40, 3000}) {
    Tensor x = rand_cpu({2, v}, DType::F32, 5);
    std::vector<float> xv = x.to_vector<float>();
    for (int64_t i = 0; i < 2 * v; i += 3) xv[size_t(i)] = -INFINITY;  // every third logit masked
    x = Tensor::from_vector<float>(xv, {2, v});
    expect_close(cuda::softmax(x.cuda()), cpu::softmax(x), soft_tol(DType::F32), "softmax masked " + std::to_string(v));
    expect_close(cuda::log_softmax(x.cuda()), cpu::log_softmax(x), soft_tol(DType::F32), "log_softmax masked " + std::to_string(v));
  }
}

TEST(CudaSoftmax, OpsWithAutogradOnAnInnerDim) {
  SKIP_WITHOUT_CUDA();
  Tensor x = rand_cpu({3, 50, 7}, DType::F32, 6), g = rand_cpu({3, 50, 7}, DType::F32, 7);
  Tensor xc = x.clone().requires_grad_(), xgd = x.cuda().requires_grad_();
  Tensor yc = softmax(xc, 1), yg = softmax(xgd, 1);
  expect_close(yg, yc, soft_tol(DType::F32), "ops softmax dim 1");
  yc.backward(g);
  yg.backward(g.cuda());
  expect_close(xgd.grad(), xc.grad(), sum_tol(DType::F32), "ops softmax dim 1 grad");
}

// ---------------------------------------------------------------------------------------------
// cross-entropy
// ---------------------------------------------------------------------------------------------
TEST(CudaCrossEntropy, ForwardBackwardWithIgnoredRows) {
  SKIP_WITHOUT_CUDA();
  const int64_t ignore = -100;
  for (DType dt : kTypes) {
    for (DType it : {DType::I64, DType::I32}) {
      for (int64_t v : {7, 1000, 50257}) {
        const int64_t rows = 37;
        Tensor logits = rand_cpu({rows, v}, dt, 10, -5.f, 5.f);
        std::vector<int64_t> tv = ids_cpu({rows}, 0, v - 1, DType::I64, 11).to_vector<int64_t>();
        for (int64_t r = 0; r < rows; r += 4) tv[size_t(r)] = ignore;  // every fourth row ignored
        Tensor targets = Tensor::from_vector<int64_t>(tv, {rows}).to(it);
        std::string what = tag("cross_entropy", dt, rows, v) + " " + dtype_name(it);
        CrossEntropyResult want = cpu::cross_entropy(logits, targets, ignore);
        CrossEntropyResult got = cuda::cross_entropy(logits.cuda(), targets.cuda(), ignore);
        ASSERT_EQ(got.loss.dim(), 0) << what;
        expect_close(got.loss, want.loss, Tol{1e-5, 1e-5}, what + " loss");
        expect_close(got.count, want.count, Tol{0, 0}, what + " count");
        expect_close(got.lse, want.lse, Tol{1e-5, 1e-5}, what + " lse");
        Tensor gl = scalar_tensor(1.7, DType::F32);
        Tensor dwant = cpu::cross_entropy_backward(logits, targets, want.lse, ignore, gl, want.count);
        Tensor dgot = cuda::cross_entropy_backward(logits.cuda(), targets.cuda(), got.lse, ignore, gl.cuda(), got.count);
        expect_close(dgot, dwant, dt == DType::F32 ? Tol{1e-4, 1e-7} : Tol{2e-2, 1e-5}, what + " dlogits");
      }
    }
  }
}

TEST(CudaCrossEntropy, AllRowsIgnored) {
  SKIP_WITHOUT_CUDA();
  Tensor logits = rand_cpu({5, 300}, DType::F32, 12);
  Tensor targets = Tensor::from_vector<int64_t>({-1, -1, -1, -1, -1}, {5});
  CrossEntropyResult got = cuda::cross_entropy(logits.cuda(), targets.cuda(), -1);
  EXPECT_EQ(got.loss.item(), 0.0);
  EXPECT_EQ(got.count.item(), 0.0);
  Tensor d = cuda::cross_entropy_backward(logits.cuda(), targets.cuda(), got.lse, -1, scalar_tensor(1.0, DType::F32, Device::cuda()),
                                          got.count);
  expect_close(d, zeros({5, 300}), Tol{0, 0}, "all ignored dlogits");
}

TEST(CudaCrossEntropy, OpsEndToEnd) {
  SKIP_WITHOUT_CUDA();
  Tensor logits = rand_cpu({2, 9, 263}, DType::F32, 13, -3.f, 3.f);
  Tensor targets = ids_cpu({2, 9}, 0, 262, DType::I64, 14);
  Tensor lc = logits.clone().requires_grad_(), lg = logits.cuda().requires_grad_();
  Tensor loss_c = cross_entropy(lc, targets), loss_g = cross_entropy(lg, targets.cuda());
  expect_close(loss_g, loss_c, Tol{1e-5, 1e-6}, "ops cross_entropy");
  loss_c.backward();
  loss_g.backward();
  expect_close(lg.grad(), lc.grad(), Tol{1e-4, 1e-7}, "ops cross_entropy grad");
}

// ---------------------------------------------------------------------------------------------
// layernorm / rmsnorm
// ---------------------------------------------------------------------------------------------
TEST(CudaNorm, LayerNormAndRmsNormForwardBackward) {
  SKIP_WITHOUT_CUDA();
  // 1, 33: warp path with scalar loads; 768: vectors; 1000: block path scalar; 4096: block path
  // vectors; 9000: rows longer than the register cache (loop kernels).
  for (DType dt : kTypes) {
    for (int64_t d : {1, 33, 256, 768, 1000, 4096, 9000}) {
      for (bool affine : {true, false}) {
        const int64_t rows = 37;
        Tensor x = rand_cpu({rows, d}, dt, 20, -2.f, 3.f);
        Tensor g = rand_cpu({rows, d}, dt, 21);
        Tensor w = affine ? rand_cpu({d}, dt, 22, 0.5f, 1.5f) : Tensor();
        Tensor b = affine ? rand_cpu({d}, dt, 23) : Tensor();
        Tensor wg = affine ? w.cuda() : Tensor(), bg = affine ? b.cuda() : Tensor();
        std::string what = std::string(dtype_name(dt)) + " D=" + std::to_string(d) + (affine ? " affine" : " plain");

        NormResult lw = cpu::layernorm(x, w, b, 1e-5);
        NormResult lg = cuda::layernorm(x.cuda(), wg, bg, 1e-5);
        expect_close(lg.y, lw.y, sum_tol(dt), "layernorm y " + what);
        expect_close(lg.mean, lw.mean, Tol{1e-5, 1e-5}, "layernorm mean " + what);
        expect_close(lg.rstd, lw.rstd, Tol{1e-4, 1e-5}, "layernorm rstd " + what);
        for (bool need_w : {true, false}) {
          NormGrads gw = cpu::layernorm_backward(g, x, w, lw.mean, lw.rstd, need_w);
          NormGrads gg = cuda::layernorm_backward(g.cuda(), x.cuda(), wg, lw.mean.cuda(), lw.rstd.cuda(), need_w);
          expect_close(gg.dx, gw.dx, sum_tol(dt), "layernorm dx " + what);
          if (need_w && affine) expect_close(gg.dweight, gw.dweight, sum_tol(dt), "layernorm dweight " + what);
          if (need_w) expect_close(gg.dbias, gw.dbias, sum_tol(dt), "layernorm dbias " + what);
          if (!need_w) {
            EXPECT_FALSE(gg.dweight.defined()) << what;
          }
        }

        NormResult rw = cpu::rmsnorm(x, w, 1e-6);
        NormResult rg = cuda::rmsnorm(x.cuda(), wg, 1e-6);
        expect_close(rg.y, rw.y, sum_tol(dt), "rmsnorm y " + what);
        expect_close(rg.rstd, rw.rstd, Tol{1e-4, 1e-5}, "rmsnorm rstd " + what);
        NormGrads hw = cpu::rmsnorm_backward(g, x, w, rw.rstd, true);
        NormGrads hg = cuda::rmsnorm_backward(g.cuda(), x.cuda(), wg, rw.rstd.cuda(), true);
        expect_close(hg.dx, hw.dx, sum_tol(dt), "rmsnorm dx " + what);
        if (affine) expect_close(hg.dweight, hw.dweight, sum_tol(dt), "rmsnorm dweight " + what);
      }
    }
  }
}

TEST(CudaNorm, ManyRowsWeightGradientIsDeterministic) {
  SKIP_WITHOUT_CUDA();
  // enough rows for the persistent grid to wrap around several times
  const int64_t rows = 20000, d = 768;
  Tensor x = rand_cpu({rows, d}, DType::F32, 24), g = rand_cpu({rows, d}, DType::F32, 25), w = rand_cpu({d}, DType::F32, 26);
  NormResult f = cuda::layernorm(x.cuda(), w.cuda(), Tensor(), 1e-5);
  NormGrads a = cuda::layernorm_backward(g.cuda(), x.cuda(), w.cuda(), f.mean, f.rstd, true);
  NormGrads b = cuda::layernorm_backward(g.cuda(), x.cuda(), w.cuda(), f.mean, f.rstd, true);
  EXPECT_EQ(a.dweight.to_vector<float>(), b.dweight.to_vector<float>());
  EXPECT_EQ(a.dbias.to_vector<float>(), b.dbias.to_vector<float>());
  NormResult fc = cpu::layernorm(x, w, Tensor(), 1e-5);
  NormGrads c = cpu::layernorm_backward(g, x, w, fc.mean, fc.rstd, true);
  expect_close(a.dweight, c.dweight, Tol{1e-4, 1e-3}, "dweight over 20000 rows");
  expect_close(a.dbias, c.dbias, Tol{1e-4, 1e-3}, "dbias over 20000 rows");
}

// ---------------------------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------------------------
TEST(CudaEmbedding, ForwardIsACopy) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : kTypes) {
    for (int64_t d : {33, 64}) {
      for (DType it : {DType::I64, DType::I32}) {
        Tensor w = rand_cpu({101, d}, dt, 30);
        Tensor ids = ids_cpu({3, 17}, 0, 100, it, 31);
        expect_close(cuda::embedding(w.cuda(), ids.cuda()), cpu::embedding(w, ids), Tol{0, 0},
                     std::string("embedding ") + dtype_name(dt) + " D=" + std::to_string(d) + " " + dtype_name(it));
      }
    }
  }
}

TEST(CudaEmbedding, BackwardMatchesAndIsDeterministic) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t n, v, d;
  };
  // small; many ids over a tiny vocabulary (runs spanning many chunks); a large vocabulary
  for (Case c : std::vector<Case>{{51, 101, 33}, {20000, 7, 40}, {20000, 5000, 64}, {3000, 1, 8}}) {
    for (DType dt : kTypes) {
      Tensor g = rand_cpu({c.n, c.d}, dt, 32);
      Tensor ids = ids_cpu({c.n}, 0, c.v - 1, DType::I64, 33);
      std::string what = std::string("embedding_backward ") + dtype_name(dt) + " n=" + std::to_string(c.n) +
                         " V=" + std::to_string(c.v) + " D=" + std::to_string(c.d);
      Tensor want = cpu::embedding_backward(g, ids, c.v);
      Tensor got = cuda::embedding_backward(g.cuda(), ids.cuda(), c.v);
      // long runs sum thousands of rows: scale the absolute tolerance with the run length
      double atol = (dt == DType::F32 ? 1e-5 : 2e-3) * std::sqrt(double(c.n) / double(c.v) + 1.0);
      expect_close(got, want, Tol{dt == DType::F32 ? 1e-5 : 2e-2, atol}, what);
      Tensor again = cuda::embedding_backward(g.cuda(), ids.cuda(), c.v);
      EXPECT_EQ(got.to_vector<float>(), again.to_vector<float>()) << what << ": not deterministic";
    }
  }
}

TEST(CudaEmbedding, OpsGradient) {
  SKIP_WITHOUT_CUDA();
  Tensor w = rand_cpu({50, 24}, DType::F32, 34), gy = rand_cpu({4, 9, 24}, DType::F32, 35);
  Tensor ids = ids_cpu({4, 9}, 0, 49, DType::I64, 36);
  Tensor wc = w.clone().requires_grad_(), wg = w.cuda().requires_grad_();
  Tensor yc = embedding(wc, ids), yg = embedding(wg, ids.cuda());
  expect_close(yg, yc, Tol{0, 0}, "ops embedding");
  yc.backward(gy);
  yg.backward(gy.cuda());
  expect_close(wg.grad(), wc.grad(), Tol{1e-5, 1e-6}, "ops embedding grad");
}
