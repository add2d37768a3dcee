// CPU causal convolutions along time for x [B, T, C]. The long ("FFT") convolution is computed
// directly here, O(T * L) per channel: exact, and fast enough for the CPU's small runs.
#include "core/cpu/cpu_utils.h"
#include "core/kernels.h"

namespace seqmix::cpu {

Tensor conv1d_causal(const Tensor& x, const Tensor& w, const Tensor& bias) {
  int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "conv1d_causal", [&]<typename Tp>() {
    using A = acc_t<Tp>;
    const Tp* px = static_cast<const Tp*>(x.data_ptr());
    const Tp* pw = static_cast<const Tp*>(w.data_ptr());
    const Tp* pb = bias.defined() ? static_cast<const Tp*>(bias.data_ptr()) : nullptr;
    Tp* py = static_cast<Tp*>(y.data_ptr());
_Pragma("omp parallel for collapse(2) if (B * T * C > 65536)")
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          A acc = pb ? load_as<A>(pb[c]) : A(0);
          for (int64_t j = 0; j < K; ++j) {
            int64_t s = t - K + 1 + j;
            if (s >= 0) acc += load_as<A>(pw[c * K + j]) * load_as<A>(px[(b * T + s) * C + c]);
          }
          py[(b * T + t) * C + c] = store_as<Tp>(acc);
        }
  });
  return y;
}

void conv1d_causal_backward(const Tensor& g, const Tensor& x, const Tensor& w, Tensor* dx, Tensor* dw, Tensor* dbias) {
  int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "conv1d_causal_backward", [&]<typename Tp>() {
    using A = acc_t<Tp>;
    const Tp* px = static_cast<const Tp*>(x.data_ptr());
    const Tp* pw = static_cast<const Tp*>(w.data_ptr());
    const Tp* pg = static_cast<const Tp*>(g.data_ptr());
    if (dx) {
      *dx = Tensor::empty(x.shape(), x.dtype(), x.device());
      Tp* o = static_cast<Tp*>(dx->data_ptr());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < T; ++s)
          for (int64_t c = 0; c < C; ++c) {
            A acc = 0;
            for (int64_t j = 0; j < K; ++j) {
              int64_t t = s + K - 1 - j;
              if (t < T) acc += load_as<A>(pw[c * K + j]) * load_as<A>(pg[(b * T + t) * C + c]);
            }
            o[(b * T + s) * C + c] = store_as<Tp>(acc);
          }
    }
    if (dw || dbias) {
      std::vector<A> aw(size_t(C * K), A(0)), ab(size_t(C), A(0));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = 0; c < C; ++c) {
            A gv = load_as<A>(pg[(b * T + t) * C + c]);
            ab[c] += gv;
            for (int64_t j = 0; j < K; ++j) {
              int64_t s = t - K + 1 + j;
              if (s >= 0) aw[c * K + j] += gv * load_as<A>(px[(b * T + s) * C + c]);
            }
          }
      if (dw) {
        *dw = Tensor::empty(w.shape(), w.dtype(), w.device());
        Tp* o = static_cast<Tp*>(dw->data_ptr());
        for (int64_t i = 0; i < C * K; ++i) o[i] = store_as<Tp>(aw[i]);
      }
      if (dbias) {
        *dbias = Tensor::empty({C}, x.dtype(), x.device());
        Tp* o = static_cast<Tp*>(dbias->data_ptr());
        for (int64_t c = 0; c < C; ++c) o[c] = store_as<Tp>(ab[c]);
      }
    }
  });
}

Tensor fft_conv(const Tensor& x, const Tensor& k) {
  int64_t B = x.size(0), T = x.size(1), C = x.size(2), L = k.size(1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  // k may have its own dtype (an f32 filter with bf16 x, as on CUDA)
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "fft_conv", [&]<typename Tp>() {
    SEQMIX_DISPATCH_FLOAT(k.dtype(), "fft_conv", [&]<typename Tk>() {
      using A = double;  // exact reference: f64 sums
      const Tp* px = static_cast<const Tp*>(x.data_ptr());
      const Tk* pk = static_cast<const Tk*>(k.data_ptr());
      Tp* py = static_cast<Tp*>(y.data_ptr());
_Pragma("omp parallel for collapse(2) if (B * T * C * L > 1 << 20)")
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = 0; c < C; ++c) {
            A acc = 0;
            int64_t smax = std::min(t, L - 1);
            for (int64_t s = 0; s <= smax; ++s) acc += load_as<A>(pk[c * L + s]) * load_as<A>(px[(b * T + t - s) * C + c]);
            py[(b * T + t) * C + c] = store_as<Tp>(acc);
          }
    });
  });
  return y;
}

void fft_conv_backward(const Tensor& g, const Tensor& x, const Tensor& k, Tensor* dx, Tensor* dk) {
  int64_t B = x.size(0), T = x.size(1), C = x.size(2), L = k.size(1);
  SEQMIX_CHECK(g.dtype() == x.dtype(), "fft_conv_backward: grad is ", dtype_name(g.dtype()), " but x is ", dtype_name(x.dtype()));
  SEQMIX_DISPATCH_FLOAT(x.dtype(), "fft_conv_backward", [&]<typename Tp>() {
    SEQMIX_DISPATCH_FLOAT(k.dtype(), "fft_conv_backward", [&]<typename Tk>() {
      using A = double;
      const Tp* px = static_cast<const Tp*>(x.data_ptr());
      const Tk* pk = static_cast<const Tk*>(k.data_ptr());
      const Tp* pg = static_cast<const Tp*>(g.data_ptr());
      if (dx) {
        *dx = Tensor::empty(x.shape(), x.dtype(), x.device());
        Tp* o = static_cast<Tp*>(dx->data_ptr());
_Pragma("omp parallel for collapse(2) if (B * T * C * L > 1 << 20)")
        for (int64_t b = 0; b < B; ++b)
          for (int64_t u = 0; u < T; ++u)
            for (int64_t c = 0; c < C; ++c) {
              A acc = 0;
              int64_t smax = std::min(L - 1, T - 1 - u);
              for (int64_t s = 0; s <= smax; ++s) acc += load_as<A>(pg[(b * T + u + s) * C + c]) * load_as<A>(pk[c * L + s]);
              o[(b * T + u) * C + c] = store_as<Tp>(acc);
            }
      }
      if (dk) {
        *dk = Tensor::empty(k.shape(), k.dtype(), k.device());
        Tk* o = static_cast<Tk*>(dk->data_ptr());
_Pragma("omp parallel for if (C * L > 64 && B * T * C * L > (1 << 20))")
        for (int64_t c = 0; c < C; ++c)
          for (int64_t s = 0; s < L; ++s) {
            A acc = 0;
            for (int64_t b = 0; b < B; ++b)
              for (int64_t t = s; t < T; ++t) acc += load_as<A>(pg[(b * T + t) * C + c]) * load_as<A>(px[(b * T + t - s) * C + c]);
            o[c * L + s] = store_as<Tk>(acc);
          }
      }
    });
  });
}

}  // namespace seqmix::cpu
