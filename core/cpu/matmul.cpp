// CPU GEMM through OpenBLAS (f32, f64); bf16/f16 go through f32 copies.
#include <cblas.h>

#include "core/cpu/cpu_utils.h"
#include "core/kernels.h"

namespace seqmix::cpu {

Tensor matmul(const Tensor& a_in, const Tensor& b_in, bool trans_a, bool trans_b, const Tensor& out_in, bool accumulate) {
  SEQMIX_CHECK(a_in.dim() >= 2 && a_in.dim() <= 3 && b_in.dim() >= 2 && b_in.dim() <= 3, "matmul kernel: operands must be 2-d or 3-d, got ",
               shape_str(a_in.shape()), " and ", shape_str(b_in.shape()));
  SEQMIX_CHECK(a_in.dtype() == b_in.dtype(), "matmul: dtypes differ");
  DType dt = a_in.dtype();
  bool narrow = dt == DType::BF16 || dt == DType::F16;
  Tensor a = narrow ? a_in.to(DType::F32) : a_in;  // conversion keeps strides contiguous per row
  Tensor b = narrow ? b_in.to(DType::F32) : b_in;
  int64_t m = trans_a ? a.size(-1) : a.size(-2), k = trans_a ? a.size(-2) : a.size(-1);
  int64_t kb = trans_b ? b.size(-1) : b.size(-2), n = trans_b ? b.size(-2) : b.size(-1);
  SEQMIX_CHECK(k == kb, "matmul: inner dimensions differ (", k, " and ", kb, ")");
  SEQMIX_CHECK(a.stride(-1) == 1 && b.stride(-1) == 1, "matmul kernel: operands need unit stride in their last dim");
  int64_t batch_a = a.dim() == 3 ? a.size(0) : 1, batch_b = b.dim() == 3 ? b.size(0) : 1;
  SEQMIX_CHECK(batch_a == batch_b || batch_a == 1 || batch_b == 1, "matmul: batch sizes ", batch_a, " and ", batch_b, " differ");
  int64_t batch = (batch_a == 0 || batch_b == 0) ? 0 : std::max(batch_a, batch_b);  // an empty batch stays empty
  int64_t sa = a.dim() == 3 && batch_a > 1 ? a.stride(0) : 0, sb = b.dim() == 3 && batch_b > 1 ? b.stride(0) : 0;
  Shape out_shape = (a.dim() == 3 || b.dim() == 3) ? Shape{batch, m, n} : Shape{m, n};
  Tensor out = out_in;
  if (out.defined()) {
    SEQMIX_CHECK(out.shape() == out_shape && out.is_contiguous(), "matmul: out has shape ", shape_str(out.shape()), ", expected ",
                 shape_str(out_shape));
  } else {
    out = Tensor::empty(out_shape, dt, a.device());
    accumulate = false;
  }
  Tensor c = narrow ? (accumulate ? out.to(DType::F32) : Tensor::empty(out_shape, DType::F32, a.device())) : out;
  int64_t lda = a.stride(-2), ldb = b.stride(-2);
  CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  for (int64_t i = 0; i < batch; ++i) {
    if (m == 0 || n == 0) break;
    if (c.dtype() == DType::F64) {
      cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a.data<double>() + i * sa, lda, b.data<double>() + i * sb, ldb,
                  accumulate ? 1.0 : 0.0, c.data<double>() + i * m * n, n);
    } else {
      SEQMIX_CHECK(c.dtype() == DType::F32, "matmul: dtype ", dtype_name(dt), " is not supported");
      cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a.data<float>() + i * sa, lda, b.data<float>() + i * sb, ldb,
                  accumulate ? 1.0f : 0.0f, c.data<float>() + i * m * n, n);
    }
  }
  if (k == 0 && !accumulate) c.zero_();
  if (narrow) copy(out, c);
  return out;
}

}  // namespace seqmix::cpu
