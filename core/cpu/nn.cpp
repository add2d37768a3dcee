// CPU kernels of the neural-network ops: softmax family, fused cross-entropy, norms, embedding,
// Philox random fills and dropout. Rows are the last dim of contiguous tensors.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "core/cpu/cpu_utils.h"
#include "core/kernels.h"
#include "core/random.h"

namespace seqmix::cpu {

namespace {
// Below this many elements a row loop runs serially: waking threads costs more than the work.
constexpr int64_t kParallelWork = 1 << 15;
int64_t rows_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.numel() / std::max<int64_t>(x.size(-1), 1); }
int64_t cols_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.size(-1); }
void need_contiguous(const Tensor& t, const char* op) {
  SEQMIX_CHECK(t.is_contiguous(), op, ": expects a contiguous tensor");
}
int64_t index_at(const Tensor& idx, int64_t i) {
  return idx.dtype() == DType::I64 ? idx.data<int64_t>()[i] : int64_t(idx.data<int32_t>()[i]);
}
}  // namespace

namespace {
// out[r, :] = row_fn(out row, n, row r of each input) for the rows of contiguous inputs; out is shaped and
// typed like the last input. Rows run in parallel when `parallel` and the work is large enough.
template <typename F, typename... In>
Tensor map_rows(const char* op, bool parallel, F row_fn, const In&... in) {
  (need_contiguous(in, op), ...);
  const Tensor& like = std::get<sizeof...(In) - 1>(std::tie(in...));
  Tensor out = Tensor::empty(like.shape(), like.dtype(), like.device());
  int64_t rows = rows_of(like), n = cols_of(like);
  SEQMIX_DISPATCH_FLOAT(like.dtype(), op, [&]<typename T>() {
    T* o = static_cast<T*>(out.data_ptr());
_Pragma("omp parallel for if (parallel && rows * n > kParallelWork)")
    for (int64_t r = 0; r < rows; ++r) row_fn(o + r * n, n, static_cast<const T*>(in.data_ptr()) + r * n...);
  });
  return out;
}

// softmax (Log = false) or log_softmax (Log = true) of each row
template <bool Log>
Tensor softmax_rows(const Tensor& x, const char* op) {
  return map_rows(op, true, [&]<typename T>(T* o, int64_t n, const T* row) {
    using A = acc_t<T>;
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t i = 0; i < n; ++i) m = std::max(m, load_as<A>(row[i]));
    A s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(load_as<A>(row[i]) - m);
    if constexpr (Log) {
      A lse = m + std::log(s);
      for (int64_t i = 0; i < n; ++i) o[i] = store_as<T>(load_as<A>(row[i]) - lse);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = store_as<T>(std::exp(load_as<A>(row[i]) - m) / s);
    }
  }, x);
}
}  // namespace

Tensor softmax(const Tensor& x) { return softmax_rows<false>(x, "softmax"); }

Tensor log_softmax(const Tensor& x) { return softmax_rows<true>(x, "log_softmax"); }

// dx = y * (g - sum(g * y))
Tensor softmax_backward(const Tensor& g, const Tensor& y) {
  return map_rows("softmax_backward", false, [&]<typename T>(T* o, int64_t n, const T* pg, const T* py) {
    using A = acc_t<T>;
    A dot = 0;
    for (int64_t i = 0; i < n; ++i) dot += load_as<A>(pg[i]) * load_as<A>(py[i]);
    for (int64_t i = 0; i < n; ++i) o[i] = store_as<T>(load_as<A>(py[i]) * (load_as<A>(pg[i]) - dot));
  }, g, y);
}

// dx = g - exp(y) * sum(g)
Tensor log_softmax_backward(const Tensor& g, const Tensor& y) {
  return map_rows("log_softmax_backward", false, [&]<typename T>(T* o, int64_t n, const T* pg, const T* py) {
    using A = acc_t<T>;
    A s = 0;
    for (int64_t i = 0; i < n; ++i) s += load_as<A>(pg[i]);
    for (int64_t i = 0; i < n; ++i) o[i] = store_as<T>(load_as<A>(pg[i]) - std::exp(load_as<A>(py[i])) * s);
  }, g, y);
}

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  need_contiguous(logits, "cross_entropy");
  need_contiguous(targets, "cross_entropy");
  int64_t rows = logits.size(0), v = logits.size(1);
  // f32 statistics, except for f64 logits (gradient checks): there loss and lse stay f64
  DType stat = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
  CrossEntropyResult res;
  res.lse = Tensor::empty({rows}, stat, logits.device());
  std::vector<double> lse(size_t(rows), 0.0);
  double total = 0;
  int64_t count = 0;
  SEQMIX_DISPATCH_FLOAT(logits.dtype(), "cross_entropy", [&]<typename T>() {
    const T* p = static_cast<const T*>(logits.data_ptr());
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = p + r * v;
      double m = -INFINITY;
      for (int64_t i = 0; i < v; ++i) m = std::max(m, load_as<double>(row[i]));
      double s = 0;
      for (int64_t i = 0; i < v; ++i) s += std::exp(load_as<double>(row[i]) - m);
      double l = m + std::log(s);
      lse[r] = l;
      int64_t t = index_at(targets, r);
      if (t == ignore_index) continue;
      SEQMIX_CHECK(t >= 0 && t < v, "cross_entropy: target ", t, " at row ", r, " is outside the vocabulary [0, ", v, ")");
      total += l - load_as<double>(row[t]);
      count++;
    }
  });
  double loss = count ? total / double(count) : 0.0;
  res.loss = Tensor::empty({}, stat, logits.device());
  if (stat == DType::F64) {
    *res.loss.data<double>() = loss;
    std::copy(lse.begin(), lse.end(), res.lse.data<double>());
  } else {
    *res.loss.data<float>() = float(loss);
    std::transform(lse.begin(), lse.end(), res.lse.data<float>(), [](double l) { return float(l); });
  }
  res.count = Tensor::empty({}, DType::F32, logits.device());
  *res.count.data<float>() = float(count);
  return res;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t ignore_index,
                              const Tensor& grad_loss, const Tensor& count) {
  int64_t rows = logits.size(0), v = logits.size(1);
  Tensor out = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  double scale = grad_loss.item() / std::max(1.0, count.item());
  std::vector<double> pl = lse.to_vector<double>();
  SEQMIX_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_backward", [&]<typename T>() {
    using A = acc_t<T>;
    const T* p = static_cast<const T*>(logits.data_ptr());
    T* o = static_cast<T*>(out.data_ptr());
_Pragma("omp parallel for if (rows * v > kParallelWork)")
    for (int64_t r = 0; r < rows; ++r) {
      int64_t t = index_at(targets, r);
      for (int64_t i = 0; i < v; ++i) {
        if (t == ignore_index) {
          o[r * v + i] = store_as<T>(0.0);
          continue;
        }
        A pr = std::exp(load_as<A>(p[r * v + i]) - A(pl[r]));
        o[r * v + i] = store_as<T>(A(scale) * (pr - (i == t ? A(1) : A(0))));
      }
    }
  });
  return out;
}

// Shared by layernorm (Centered: with mean and bias) and rmsnorm:
// y = (x - [mean]) * rstd [* w] [+ b], rstd = 1 / sqrt(mean((x - [mean])^2) + eps)
template <bool Centered>
static NormResult norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const char* op) {
  need_contiguous(x, op);
  int64_t rows = rows_of(x), d = cols_of(x);
  NormResult r;
  r.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (Centered) r.mean = Tensor::empty({rows}, DType::F32, x.device());
  r.rstd = Tensor::empty({rows}, DType::F32, x.device());
  SEQMIX_DISPATCH_FLOAT(x.dtype(), op, [&]<typename T>() {
    using A = acc_t<T>;
    const T* p = static_cast<const T*>(x.data_ptr());
    const T* w = weight.defined() ? static_cast<const T*>(weight.data_ptr()) : nullptr;
    const T* b = bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr;
    T* o = static_cast<T*>(r.y.data_ptr());
    float* pm = Centered ? r.mean.data<float>() : nullptr;
    float* pr = r.rstd.data<float>();
_Pragma("omp parallel for if (rows * d > kParallelWork)")
    for (int64_t i = 0; i < rows; ++i) {
      const T* row = p + i * d;
      A mean = 0, rstd;
      if constexpr (Centered) {
        for (int64_t j = 0; j < d; ++j) mean += load_as<A>(row[j]);
        mean /= A(d);
        A var = 0;
        for (int64_t j = 0; j < d; ++j) {
          A c = load_as<A>(row[j]) - mean;
          var += c * c;
        }
        var /= A(d);
        rstd = A(1) / std::sqrt(var + A(eps));
        pm[i] = float(mean);
      } else {
        A ss = 0;
        for (int64_t j = 0; j < d; ++j) ss += load_as<A>(row[j]) * load_as<A>(row[j]);
        rstd = A(1) / std::sqrt(ss / A(d) + A(eps));
      }
      pr[i] = float(rstd);
      for (int64_t j = 0; j < d; ++j) {
        A v;
        if constexpr (Centered) v = (load_as<A>(row[j]) - mean) * rstd;
        else v = load_as<A>(row[j]) * rstd;
        if (w) v *= load_as<A>(w[j]);
        if (b) v += load_as<A>(b[j]);
        o[i * d + j] = store_as<T>(v);
      }
    }
  });
  return r;
}

NormResult layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  return norm_forward<true>(x, weight, bias, eps, "layer_norm");
}

// Shared by layernorm (with mean) and rmsnorm (mean == nullptr):
// xhat = (x - mean) * rstd; dxhat = g * w; dx = rstd * (dxhat - [mean(dxhat)] - xhat * mean(dxhat * xhat))
template <typename T>
static NormGrads norm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const float* mean, const float* rstd,
                               bool need_weight_grads, bool has_bias_grad) {
  using A = acc_t<T>;
  int64_t rows = rows_of(x), d = cols_of(x);
  NormGrads r;
  r.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  const T* px = static_cast<const T*>(x.data_ptr());
  const T* pg = static_cast<const T*>(g.data_ptr());
  const T* w = weight.defined() ? static_cast<const T*>(weight.data_ptr()) : nullptr;
  T* dx = static_cast<T*>(r.dx.data_ptr());
  std::vector<A> dw(need_weight_grads ? d : 0, A(0)), db(need_weight_grads ? d : 0, A(0));
  for (int64_t i = 0; i < rows; ++i) {
    const T* xr = px + i * d;
    const T* gr = pg + i * d;
    A mu = mean ? A(mean[i]) : A(0), rs = A(rstd[i]);
    A sum_dxhat = 0, sum_dxhat_xhat = 0;
    for (int64_t j = 0; j < d; ++j) {
      A xhat = (load_as<A>(xr[j]) - mu) * rs;
      A gv = load_as<A>(gr[j]);
      A dxhat = gv * (w ? load_as<A>(w[j]) : A(1));
      sum_dxhat += dxhat;
      sum_dxhat_xhat += dxhat * xhat;
      if (need_weight_grads) {
        dw[j] += gv * xhat;
        db[j] += gv;
      }
    }
    A m1 = mean ? sum_dxhat / A(d) : A(0), m2 = sum_dxhat_xhat / A(d);
    for (int64_t j = 0; j < d; ++j) {
      A xhat = (load_as<A>(xr[j]) - mu) * rs;
      A dxhat = load_as<A>(gr[j]) * (w ? load_as<A>(w[j]) : A(1));
      dx[i * d + j] = store_as<T>(rs * (dxhat - m1 - xhat * m2));
    }
  }
  if (need_weight_grads && w) {
    r.dweight = Tensor::empty({d}, weight.dtype(), x.device());
    T* pw = static_cast<T*>(r.dweight.data_ptr());
    for (int64_t j = 0; j < d; ++j) pw[j] = store_as<T>(dw[j]);
  }
  if (need_weight_grads && has_bias_grad) {
    r.dbias = Tensor::empty({d}, x.dtype(), x.device());
    T* pb = static_cast<T*>(r.dbias.data_ptr());
    for (int64_t j = 0; j < d; ++j) pb[j] = store_as<T>(db[j]);
  }
  return r;
}

NormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                             bool need_weight_grads) {
  return SEQMIX_DISPATCH_FLOAT(x.dtype(), "layer_norm_backward", [&]<typename T>() {
    return norm_backward<T>(g, x, weight, mean.data<float>(), rstd.data<float>(), need_weight_grads, true);
  });
}

NormResult rmsnorm(const Tensor& x, const Tensor& weight, double eps) {
  return norm_forward<false>(x, weight, Tensor(), eps, "rms_norm");
}

NormGrads rmsnorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& rstd, bool need_weight_grad) {
  return SEQMIX_DISPATCH_FLOAT(x.dtype(), "rms_norm_backward", [&]<typename T>() {
    return norm_backward<T>(g, x, weight, nullptr, rstd.data<float>(), need_weight_grad, false);
  });
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  int64_t v = weight.size(0), d = weight.size(1), n = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(d);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  size_t row_bytes = size_t(d) * weight.element_size();
  const char* w = static_cast<const char*>(weight.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    int64_t id = index_at(ids, i);
    SEQMIX_CHECK(id >= 0 && id < v, "embedding: id ", id, " at position ", i, " is outside the vocabulary [0, ", v,
                 "); check data.vocab_size against the tokenizer");
    std::memcpy(o + i * row_bytes, w + id * row_bytes, row_bytes);
  }
  return out;
}

Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_embeddings) {
  int64_t d = g.size(-1), n = ids.numel();
  Tensor out = Tensor::empty({num_embeddings, d}, g.dtype(), g.device());
  SEQMIX_DISPATCH_FLOAT(g.dtype(), "embedding_backward", [&]<typename T>() {
    using A = acc_t<T>;
    std::vector<A> acc(size_t(num_embeddings * d), A(0));
    const T* pg = static_cast<const T*>(g.data_ptr());
    for (int64_t i = 0; i < n; ++i) {
      int64_t id = index_at(ids, i);
      for (int64_t j = 0; j < d; ++j) acc[id * d + j] += load_as<A>(pg[i * d + j]);
    }
    T* o = static_cast<T*>(out.data_ptr());
    for (size_t i = 0; i < acc.size(); ++i) o[i] = store_as<T>(acc[i]);
  });
  return out;
}

// Random fills walk the tensor in logical (row-major) order so element i gets Philox value i.
template <typename F>
static void fill_logical(const Tensor& out, F value_at) {
  SEQMIX_DISPATCH_FLOAT(out.dtype(), "random fill", [&]<typename T>() {
    T* o = static_cast<T*>(out.data_ptr());
    strided_for_each<1>(out.shape(), {out.strides()}, [&](int64_t i, const std::array<int64_t, 1>& off) {
      o[off[0]] = store_as<T>(value_at(uint64_t(i)));
    });
  });
}

void uniform_(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi) {
  fill_logical(out, [&](uint64_t i) { return lo + (hi - lo) * double(philox_uniform(seed, offset, i)); });
}

void normal_(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double std) {
  fill_logical(out, [&](uint64_t i) { return mean + std * double(philox_normal(seed, offset, i)); });
}

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  float keep_scale = float(1.0 / (1.0 - p));
  float pf = float(p);
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "dropout", [&]<typename T>() {
    using A = acc_t<T>;
    const T* px = static_cast<const T*>(x.data_ptr());
    T* o = static_cast<T*>(out.data_ptr());
    strided_for_each<1>(x.shape(), {x.strides()}, [&](int64_t i, const std::array<int64_t, 1>& off) {
      bool keep = philox_uniform(seed, offset, uint64_t(i)) >= pf;
      o[i] = store_as<T>(keep ? load_as<A>(px[off[0]]) * A(keep_scale) : A(0));
    });
  });
  return out;
}

}  // namespace seqmix::cpu
