// CPU max-plus scan (the mLSTM stabilizer), the reference for the other backends: per (b, h) a
// sequential f64 loop over T, m = max(logf + m, ig), exactly as the host scan it replaces.
#include <algorithm>

#include "core/cpu/cpu_utils.h"
#include "core/kernels.h"

namespace seqmix::cpu {

MaxplusScanResult maxplus_scan(const Tensor& logf_in, const Tensor& ig_in, const Tensor& m0_in, DType out_dtype) {
  const int64_t B = ig_in.size(0), T = ig_in.size(1), H = ig_in.size(2);
  Tensor logf = logf_in.contiguous(), ig = ig_in.contiguous();
  MaxplusScanResult r;
  r.m = Tensor::empty({B, T, H}, out_dtype, ig.device());
  r.m_prev = Tensor::empty({B, T, H}, out_dtype, ig.device());
  r.m_last = Tensor::empty({B, H}, DType::F64, ig.device());
  Tensor m0 = m0_in.defined() ? m0_in.contiguous() : Tensor();
  const double* pm0 = m0.defined() ? static_cast<const double*>(m0.data_ptr()) : nullptr;
  double* plast = static_cast<double*>(r.m_last.data_ptr());
  SEQMIX_DISPATCH_FLOAT(ig.dtype(), "maxplus_scan", [&]<typename TI>() {
    SEQMIX_DISPATCH_FLOAT(out_dtype, "maxplus_scan", [&]<typename TO>() {
      const TI* pf = static_cast<const TI*>(logf.data_ptr());
      const TI* pi = static_cast<const TI*>(ig.data_ptr());
      TO* pm = static_cast<TO*>(r.m.data_ptr());
      TO* pp = static_cast<TO*>(r.m_prev.data_ptr());
      // independent (b, h) columns: parallel when there is enough work, each column still sequential
_Pragma("omp parallel for if (B * H * T > 65536)")
      for (int64_t bh = 0; bh < B * H; ++bh) {
        const int64_t b = bh / H, h = bh - b * H;
        double m = pm0 ? pm0[bh] : 0.0;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t i = (b * T + t) * H + h;
          pp[i] = store_as<TO>(m);
          m = std::max(load_as<double>(pf[i]) + m, load_as<double>(pi[i]));
          pm[i] = store_as<TO>(m);
        }
        plast[bh] = m;
      }
    });
  });
  return r;
}

}  // namespace seqmix::cpu
