// The CPU path of the attention op: plain per-(b, h) loops, the oracle every fast path is tested against
// and the CPU training path. Computes in the storage type (double for f64, float for f32; the dispatcher
// converts bf16 / f16 to f32 first). OpenMP over (b, h) in forward and over (b, kv head) in backward, so
// every output row is written by one thread (a kv head's gradient sums over the query heads sharing it).
//
// Forward, per query row i: the visible keys form one range [lo, hi] (causal, bottom-right aligned,
// optional window); s_j = scale q_i.k_j, lse_i = log sum_j exp(s_j), o_i = sum_j exp(s_j - lse_i) v_j.
// Backward, with p_ij = exp(s_ij - lse_i) recomputed from the saved lse and D_i = dO_i.o_i:
//   dp_ij = dO_i.v_j, ds_ij = p_ij (dp_ij - D_i),
//   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i,  dv_j = sum_i p_ij dO_i.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "layers/mixers/attention/attention_op.h"

namespace seqmix::mixers::attention_impl {

namespace {

// Element (b, t, h, :) of a [B, T, H, D] tensor with unit last-dim stride.
template <typename A>
struct Rows {
  A* base;
  int64_t sb, st, sh;
  explicit Rows(const Tensor& t)
      : base(static_cast<A*>(t.data_ptr())), sb(t.stride(0)), st(t.stride(1)), sh(t.stride(2)) {
    SEQMIX_CHECK(t.size(3) <= 1 || t.stride(3) == 1, "attention (cpu): the last dim must have unit stride");
  }
  A* at(int64_t b, int64_t t, int64_t h) const { return base + b * sb + t * st + h * sh; }
};

template <typename A>
inline A dot(const A* x, const A* y, int64_t n) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

template <typename A>
inline void axpy(A a, const A* x, A* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Visible keys of query i: [lo, hi] (empty when hi < lo).
inline void key_range(const Dims& d, int64_t i, int64_t& lo, int64_t& hi) {
  int64_t diag = i + (d.Tk - d.Tq);
  hi = std::min(d.Tk - 1, diag);
  lo = d.window > 0 ? std::max<int64_t>(0, diag - d.window + 1) : 0;
}

// Tiny problems (gradient checks, decoding one token of a small model) run on the calling thread: waking
// an OpenMP team costs more than the work.
inline bool worth_parallel(const Dims& d) { return d.B * d.H * d.Tq * std::max<int64_t>(d.Tk, 1) * d.D >= (1 << 16); }

template <typename A>
void forward_impl(const Dims& d, const Tensor& qt, const Tensor& kt, const Tensor& vt, const Tensor& ot,
                  const Tensor& lset) {
  Rows<A> q(qt), k(kt), v(vt), o(ot);
  A* lse = static_cast<A*>(lset.data_ptr());
  const int64_t group = d.H / d.Hkv, D = d.D;
  const A scale = A(d.scale);
#pragma omp parallel if (worth_parallel(d))
  {
    std::vector<A> s(size_t(std::max<int64_t>(d.Tk, 1)));
    std::vector<A> acc(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
      const int64_t b = bh / d.H, h = bh % d.H, hk = h / group;
      for (int64_t i = 0; i < d.Tq; ++i) {
        int64_t lo, hi;
        key_range(d, i, lo, hi);
        A* oi = o.at(b, i, h);
        A* lsei = lse + (b * d.H + h) * d.Tq + i;
        if (hi < lo) {
          std::fill(oi, oi + D, A(0));
          *lsei = std::numeric_limits<A>::infinity();
          continue;
        }
        const A* qi = q.at(b, i, h);
        A m = -std::numeric_limits<A>::infinity();
        for (int64_t j = lo; j <= hi; ++j) {
          s[j] = scale * dot(qi, k.at(b, j, hk), D);
          m = std::max(m, s[j]);
        }
        A sum = 0;
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t j = lo; j <= hi; ++j) {
          A p = std::exp(s[j] - m);
          sum += p;
          axpy(p, v.at(b, j, hk), acc.data(), D);
        }
        A inv = A(1) / sum;
        for (int64_t c = 0; c < D; ++c) oi[c] = acc[c] * inv;
        *lsei = m + std::log(sum);
      }
    }
  }
}

template <typename A>
void backward_impl(const Dims& d, const Tensor& qt, const Tensor& kt, const Tensor& vt, const Tensor& ot,
                   const Tensor& lset, const Tensor& dot_, const Tensor& dqt, const Tensor& dkt, const Tensor& dvt) {
  Rows<A> q(qt), k(kt), v(vt), o(ot), dout(dot_), dq(dqt), dk(dkt), dv(dvt);
  // lse is f32 for f32 inputs (as the CUDA path saves it) and f64 for f64 inputs.
  const bool lse64 = lset.dtype() == DType::F64;
  const double* lse_d = lse64 ? static_cast<const double*>(lset.data_ptr()) : nullptr;
  const float* lse_f = lse64 ? nullptr : static_cast<const float*>(lset.data_ptr());
  const int64_t group = d.H / d.Hkv, D = d.D;
  const A scale = A(d.scale);
#pragma omp parallel if (worth_parallel(d))
  {
    std::vector<A> p(size_t(std::max<int64_t>(d.Tk, 1)));
    std::vector<A> ds(size_t(std::max<int64_t>(d.Tk, 1)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t bk = 0; bk < d.B * d.Hkv; ++bk) {
      const int64_t b = bk / d.Hkv, hk = bk % d.Hkv;
      for (int64_t j = 0; j < d.Tk; ++j) {
        std::fill(dk.at(b, j, hk), dk.at(b, j, hk) + D, A(0));
        std::fill(dv.at(b, j, hk), dv.at(b, j, hk) + D, A(0));
      }
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        for (int64_t i = 0; i < d.Tq; ++i) {
          A* dqi = dq.at(b, i, h);
          std::fill(dqi, dqi + D, A(0));
          int64_t lo, hi;
          key_range(d, i, lo, hi);
          if (hi < lo) continue;
          const int64_t li = (b * d.H + h) * d.Tq + i;
          const A lse = lse64 ? A(lse_d[li]) : A(lse_f[li]);
          const A* qi = q.at(b, i, h);
          const A* gi = dout.at(b, i, h);
          const A Di = dot(gi, o.at(b, i, h), D);
          for (int64_t j = lo; j <= hi; ++j) {
            p[j] = std::exp(scale * dot(qi, k.at(b, j, hk), D) - lse);
            ds[j] = p[j] * (dot(gi, v.at(b, j, hk), D) - Di);
          }
          for (int64_t j = lo; j <= hi; ++j) {
            axpy(scale * ds[j], k.at(b, j, hk), dqi, D);
            axpy(scale * ds[j], qi, dk.at(b, j, hk), D);
            axpy(p[j], gi, dv.at(b, j, hk), D);
          }
        }
      }
    }
  }
}

void check_cpu(const char* what, std::initializer_list<const Tensor*> ts, DType dt) {
  for (const Tensor* t : ts) {
    SEQMIX_CHECK(t->is_cpu(), what, ": expected CPU tensors");
    SEQMIX_CHECK(t->dtype() == dt, what, ": expected ", dtype_name(dt), " tensors, got ", dtype_name(t->dtype()));
  }
}

}  // namespace

void cpu_forward(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse) {
  SEQMIX_CHECK(o.is_contiguous() && lse.is_contiguous(), "attention (cpu): outputs must be contiguous");
  if (q.dtype() == DType::F64) {
    check_cpu("attention (cpu)", {&q, &k, &v, &o, &lse}, DType::F64);
    forward_impl<double>(d, q, k, v, o, lse);
  } else {
    check_cpu("attention (cpu)", {&q, &k, &v, &o, &lse}, DType::F32);
    forward_impl<float>(d, q, k, v, o, lse);
  }
}

void cpu_backward(const Dims& d, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                  const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  SEQMIX_CHECK(lse.is_contiguous(), "attention backward (cpu): lse must be contiguous");
  if (q.dtype() == DType::F64) {
    check_cpu("attention backward (cpu)", {&q, &k, &v, &o, &dout, &dq, &dk, &dv}, DType::F64);
    backward_impl<double>(d, q, k, v, o, lse, dout, dq, dk, dv);
  } else {
    check_cpu("attention backward (cpu)", {&q, &k, &v, &o, &dout, &dq, &dk, &dv}, DType::F32);
    backward_impl<float>(d, q, k, v, o, lse, dout, dq, dk, dv);
  }
}

}  // namespace seqmix::mixers::attention_impl
