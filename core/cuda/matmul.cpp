// CUDA GEMM through cuBLASLt (host code only).
//
// Row-major to column-major: our C [m, n] row-major is the column-major matrix C^T [n, m]. cuBLAS
// computes C^T = op(B)^T op(A)^T, so the operands are swapped: cuBLAS's "A" is our B's memory and its
// "B" is our A's memory; a stored row-major [r, c] matrix is a column-major c x r matrix with the same
// leading dimension, and our transpose flags carry over unchanged.
//
// Precision: bf16/f16 in and out with f32 compute (CUBLAS_COMPUTE_32F), f32 with strict f32 compute
// (CUBLAS_COMPUTE_32F, never the TF32 fast mode), f64 with f64 compute.
//
// When cuBLASLt's heuristic offers no algorithm for a shape (odd strides or alignments), the GEMM goes
// through cublasGemmStridedBatchedEx with the same operands and compute type.
//
// Host overhead: the matmul descriptor, the three layouts and the heuristic's algorithm are cached per
// (thread, device, shape, strides, pointer alignment, dtype) in a small thread-local map, so a repeated
// GEMM costs one hash lookup and one cublasLtMatmul call.
#include <cstring>
#include <unordered_map>

#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

struct GemmKey {
  int device;
  int dtype;
  int trans_a, trans_b;
  int64_t m, n, k, batch;
  int64_t lda, ldb, ldc;
  int64_t stride_a, stride_b, stride_c;
  int align_a, align_b, align_c;
  int sm_target;  // CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, 0: every SM (the key has no padding bytes)
  bool operator==(const GemmKey& o) const { return std::memcmp(this, &o, sizeof(GemmKey)) == 0; }
};

static_assert(sizeof(GemmKey) == 4 * 4 + 10 * 8 + 4 * 4, "GemmKey must have no padding");

struct GemmKeyHash {
  size_t operator()(const GemmKey& k) const {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(&k);
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the key's bytes
    for (size_t i = 0; i < sizeof(GemmKey); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return size_t(h);
  }
};

struct GemmPlan {
  bool fallback = false;  // cuBLASLt offered no algorithm: use cublasGemmStridedBatchedEx instead
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;  // cuBLAS's A (our B), B (our A), C = D
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

// Largest power of two (<= 256) that divides the address: the alignment cuBLASLt may assume.
int alignment_of(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 1;
  while (al < 256 && (a % uintptr_t(al * 2)) == 0) al *= 2;
  return al;
}

struct TypeInfo {
  cudaDataType_t data;
  cublasComputeType_t compute;
  cudaDataType_t scale;
};

TypeInfo type_info(DType dt) {
  switch (dt) {
    case DType::F32: return {CUDA_R_32F, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::BF16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::F16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::F64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F};
    default: SEQMIX_FAIL("matmul: dtype ", dtype_name(dt), " is not supported on CUDA (floating types only)");
  }
}

cublasLtMatrixLayout_t make_layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  SEQMIX_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    int32_t b32 = int32_t(batch);
    SEQMIX_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b32, sizeof(b32)));
    SEQMIX_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return l;
}

GemmPlan make_plan(const GemmKey& key, DType dt, size_t workspace_bytes) {
  TypeInfo ti = type_info(dt);
  GemmPlan p;
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, ti.compute, ti.scale));
  // cuBLAS's A is our B, its B is our A (see the header comment).
  cublasOperation_t opa = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t opb = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  if (key.sm_target > 0) {
    int32_t target = key.sm_target;
    SEQMIX_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &target, sizeof(target)));
  }
  // Stored (pre-op) column-major shapes: our B is [k, n] (or [n, k] when transposed) row-major.
  int64_t b_rows = key.trans_b ? key.k : key.n, b_cols = key.trans_b ? key.n : key.k;
  int64_t a_rows = key.trans_a ? key.m : key.k, a_cols = key.trans_a ? key.k : key.m;
  p.la = make_layout(ti.data, b_rows, b_cols, key.ldb, key.batch, key.stride_b);
  p.lb = make_layout(ti.data, a_rows, a_cols, key.lda, key.batch, key.stride_a);
  p.lc = make_layout(ti.data, key.n, key.m, key.ldc, key.batch, key.stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = workspace_bytes;
  SEQMIX_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  uint32_t al_a = uint32_t(key.align_b), al_b = uint32_t(key.align_a), al_c = uint32_t(key.align_c);
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  SEQMIX_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(), p.op, p.la, p.lb, p.lc, p.lc, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    // Rare (unusual strides or alignments): the classic cuBLAS API takes any leading dimension.
    cublasLtMatmulDescDestroy(p.op);
    cublasLtMatrixLayoutDestroy(p.la);
    cublasLtMatrixLayoutDestroy(p.lb);
    cublasLtMatrixLayoutDestroy(p.lc);
    GemmPlan f;
    f.fallback = true;
    return f;
  }
  p.algo = result.algo;
  p.workspace = result.workspaceSize;
  return p;
}

const GemmPlan& plan_for(const GemmKey& key, DType dt, size_t workspace_bytes) {
  // Per thread (the handles and workspaces are per thread too); leaked on purpose at exit.
  thread_local auto* cache = new std::unordered_map<GemmKey, GemmPlan, GemmKeyHash>();
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  if (cache->size() > 4096) cache->clear();  // a bound for pathological shape churn (descriptors leak then)
  return cache->emplace(key, make_plan(key, dt, workspace_bytes)).first->second;
}

int64_t batch_of(const Tensor& t) { return t.dim() == 3 ? t.size(0) : 1; }
int64_t batch_stride_of(const Tensor& t) { return t.dim() == 3 && t.size(0) > 1 ? t.stride(0) : 0; }

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out_in, bool accumulate) {
  SEQMIX_CHECK(a.dim() >= 2 && a.dim() <= 3 && b.dim() >= 2 && b.dim() <= 3,
               "matmul kernel: operands must be 2-d or 3-d, got ", shape_str(a.shape()), " and ", shape_str(b.shape()));
  SEQMIX_CHECK(a.dtype() == b.dtype(), "matmul: dtypes differ (", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()), ")");
  DType dt = a.dtype();
  TypeInfo ti = type_info(dt);
  int64_t m = trans_a ? a.size(-1) : a.size(-2), k = trans_a ? a.size(-2) : a.size(-1);
  int64_t kb = trans_b ? b.size(-1) : b.size(-2), n = trans_b ? b.size(-2) : b.size(-1);
  SEQMIX_CHECK(k == kb, "matmul: inner dimensions differ (", k, " and ", kb, ") for ", shape_str(a.shape()),
               trans_a ? "^T" : "", " @ ", shape_str(b.shape()), trans_b ? "^T" : "");
  SEQMIX_CHECK((a.stride(-1) == 1 || a.size(-1) <= 1) && (b.stride(-1) == 1 || b.size(-1) <= 1),
               "matmul kernel: operands need unit stride in their last dim, got strides ", shape_str(a.strides()), " and ",
               shape_str(b.strides()));
  int64_t batch_a = batch_of(a), batch_b = batch_of(b);
  SEQMIX_CHECK(batch_a == batch_b || batch_a == 1 || batch_b == 1, "matmul: batch sizes ", batch_a, " and ", batch_b,
               " cannot be broadcast");
  int64_t batch = std::max(batch_a, batch_b);
  Shape out_shape = (a.dim() == 3 || b.dim() == 3) ? Shape{batch, m, n} : Shape{m, n};

  Tensor out = out_in;
  if (out.defined()) {
    SEQMIX_CHECK(out.shape() == out_shape, "matmul: out has shape ", shape_str(out.shape()), ", expected ",
                 shape_str(out_shape));
    SEQMIX_CHECK(out.dtype() == dt, "matmul: out is ", dtype_name(out.dtype()), ", expected ", dtype_name(dt));
    SEQMIX_CHECK(out.stride(-1) == 1 && out.stride(-2) >= n && (out.dim() == 2 || batch == 1 || out.stride(0) >= m * out.stride(-2)),
                 "matmul: out must have unit stride in its last dim and non-overlapping rows, got strides ",
                 shape_str(out.strides()));
  } else {
    out = Tensor::empty(out_shape, dt, a.device());
    accumulate = false;
  }
  if (m == 0 || n == 0) return out;
  cudaStream_t stream = current_stream();
  if (k == 0) {
    if (!accumulate) {
      SEQMIX_CHECK(out.is_contiguous(), "matmul: k == 0 with a strided out is not supported");
      SEQMIX_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), stream));
    }
    return out;
  }
  SEQMIX_CHECK(m < (int64_t(1) << 31) && n < (int64_t(1) << 31) && k < (int64_t(1) << 31) && batch < (int64_t(1) << 31),
               "matmul: dimensions beyond 2^31 are not supported");

  GemmKey key;
  std::memset(&key, 0, sizeof(key));  // the hash reads every byte
  key.device = a.device().index;
  key.dtype = int(dt);
  key.trans_a = trans_a;
  key.trans_b = trans_b;
  key.m = m;
  key.n = n;
  key.k = k;
  key.batch = batch;
  // Leading dims: a row stride; a single row or column may have any stride, so give cuBLAS the minimum.
  auto ld_of = [](const Tensor& t) { return std::max<int64_t>(t.size(-2) > 1 ? t.stride(-2) : t.size(-1), std::max<int64_t>(t.size(-1), 1)); };
  key.lda = ld_of(a);
  key.ldb = ld_of(b);
  key.ldc = std::max<int64_t>(out.size(-2) > 1 ? out.stride(-2) : n, n);
  key.stride_a = batch > 1 ? batch_stride_of(a) : 0;
  key.stride_b = batch > 1 ? batch_stride_of(b) : 0;
  key.stride_c = batch > 1 ? out.stride(0) : 0;
  key.align_a = alignment_of(a.data_ptr());
  key.align_b = alignment_of(b.data_ptr());
  key.align_c = alignment_of(out.data_ptr());
  if (int margin = gemm_sm_margin(); margin > 0) key.sm_target = std::max(1, sm_count() - margin);

  size_t ws_bytes = 0;
  void* ws = cublas_workspace(&ws_bytes);
  const GemmPlan& p = plan_for(key, dt, ws_bytes);

  const void* alpha;
  const void* beta;
  static const float one_f = 1.0f, zero_f = 0.0f;
  static const double one_d = 1.0, zero_d = 0.0;
  if (ti.scale == CUDA_R_64F) {
    alpha = &one_d;
    beta = accumulate ? &one_d : &zero_d;
  } else {
    alpha = &one_f;
    beta = accumulate ? &one_f : &zero_f;
  }
  if (p.fallback) {
    SEQMIX_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        cublas_handle(), key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m),
        int(k), alpha, b.data_ptr(), ti.data, int(key.ldb), key.stride_b, a.data_ptr(), ti.data, int(key.lda), key.stride_a,
        beta, out.data_ptr(), ti.data, int(key.ldc), key.stride_c, int(batch), ti.compute, CUBLAS_GEMM_DEFAULT));
    return out;
  }
  SEQMIX_CUBLAS_CHECK(cublasLtMatmul(cublaslt_handle(), p.op, alpha, b.data_ptr(), p.la, a.data_ptr(), p.lb, beta,
                                     out.data_ptr(), p.lc, out.data_ptr(), p.lc, &p.algo, p.workspace ? ws : nullptr,
                                     p.workspace, stream));
  return out;
}

}  // namespace seqmix::cuda
