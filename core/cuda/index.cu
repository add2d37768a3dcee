// CUDA joining and indexing: cat, index_select / index_add, gather / scatter_add.
//
// cat: each input lands in its slice of the output: one cudaMemcpy2DAsync for a contiguous input
//   ([outer] rows of d_i * inner elements into rows of d_out * inner), the strided copy kernel
//   (cuda::copy) for a strided view.
// index_select / gather: pure copies, done on raw bytes in the widest unit (up to 16 bytes) that the
//   row length and the pointers allow, so any dtype works. Negative indices count from the end (as on
//   the CPU); an index still outside the dim writes zeros (the CPU throws; a kernel cannot).
// index_add / scatter_add: atomics (f32 or f64; bf16/f16 accumulate into an f32 buffer that is then
//   rounded once). The summation order between duplicate indices is therefore not fixed: results can
//   differ in the last bits from run to run when an index repeats. Out-of-range indices are skipped.
#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

template <typename F>
void dispatch_index(DType dt, const char* op, F&& f) {
  if (dt == DType::I64) f.template operator()<int64_t>();
  else if (dt == DType::I32) f.template operator()<int32_t>();
  else SEQMIX_FAIL(op, ": index must be i64 or i32, got ", dtype_name(dt));
}

// Calls f.template operator()<U>() with U the copy unit of `bytes` bytes.
template <typename F>
void dispatch_unit(int bytes, F&& f) {
  switch (bytes) {
    case 1: return f.template operator()<uint8_t>();
    case 2: return f.template operator()<uint16_t>();
    case 4: return f.template operator()<uint32_t>();
    case 8: return f.template operator()<uint64_t>();
    case 16: return f.template operator()<uint4>();
  }
  SEQMIX_FAIL("internal error: copy unit of ", bytes, " bytes");
}

// Widest unit in {16, 8, 4, 2, 1} bytes dividing `row_bytes` and the alignment of every pointer.
int pick_unit(int64_t row_bytes, std::initializer_list<const void*> ptrs, int elem_size) {
  int u = 16;
  while (u > elem_size) {
    bool ok = row_bytes % u == 0;
    for (const void* p : ptrs) ok = ok && (reinterpret_cast<uintptr_t>(p) % u) == 0;
    if (ok) break;
    u /= 2;
  }
  return u;
}

template <typename I>
__device__ __forceinline__ int64_t wrap_index(I raw, int64_t n) {
  int64_t v = int64_t(raw);
  if (v < 0) v += n;
  return v;
}

// ---------------------------------------------------------------------------------------------
// index_select: out [outer, k, inner] (units) = x [outer, n, inner] at index[j] along the middle dim.
// ---------------------------------------------------------------------------------------------
template <typename U, typename I>
__global__ void index_select_kernel(const U* __restrict__ x, const I* __restrict__ index, U* __restrict__ out, int64_t total,
                                    int64_t inner, int64_t k, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t in = i % inner;
    int64_t r = i / inner;
    int64_t j = r % k;
    int64_t o = r / k;
    int64_t v = wrap_index(index[j], n);
    U val{};
    if (v >= 0 && v < n) val = x[(o * n + v) * inner + in];
    out[i] = val;
  }
}

// index_add: out [outer, n, inner] += src [outer, k, inner] at index[j] (A: f32 or f64 accumulator).
template <typename T, typename A, typename I>
__global__ void index_add_kernel(const T* __restrict__ src, const I* __restrict__ index, A* __restrict__ out, int64_t total,
                                 int64_t inner, int64_t k, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t in = i % inner;
    int64_t r = i / inner;
    int64_t j = r % k;
    int64_t o = r / k;
    int64_t v = wrap_index(index[j], n);
    if (v >= 0 && v < n) atomicAdd(out + (o * n + v) * inner + in, A(load_acc(src + i)));
  }
}

// gather: out[i] (contiguous over index's shape) = x[coords(i) with coords[dim] = index[i]].
// calc args: 0 = x (stride 0 at dim), 1 = index.
template <typename U, typename I>
__global__ void gather_kernel(const U* __restrict__ x, const I* __restrict__ index, U* __restrict__ out, OffsetCalc<2> calc,
                              int64_t total, int64_t x_dim_stride, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    calc.get(i, off);
    int64_t v = wrap_index(index[off[1]], n);
    U val{};
    if (v >= 0 && v < n) val = x[off[0] + v * x_dim_stride];
    out[i] = val;
  }
}

// scatter_add: out[coords(i) with coords[dim] = index[i]] += src[i]. calc args: 0 = out (stride 0 at
// dim, contiguous otherwise), 1 = index, 2 = src.
template <typename T, typename A, typename I>
__global__ void scatter_add_kernel(const T* __restrict__ src, const I* __restrict__ index, A* __restrict__ out,
                                   OffsetCalc<3> calc, int64_t total, int64_t out_dim_stride, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    calc.get(i, off);
    int64_t v = wrap_index(index[off[1]], n);
    if (v >= 0 && v < n) atomicAdd(out + off[0] + v * out_dim_stride, A(load_acc(src + off[2])));
  }
}

template <typename T>
__global__ void f32_to_kernel(const float* __restrict__ in, T* __restrict__ out, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(in[i]);
}

struct Around {
  int64_t outer = 1, n = 1, inner = 1;
};
Around around(const Shape& s, int dim) {
  Around a;
  for (int i = 0; i < dim; ++i) a.outer *= s[i];
  a.n = s[dim];
  for (int i = dim + 1; i < int(s.size()); ++i) a.inner *= s[i];
  return a;
}

int norm_dim(int dim, int nd, const char* op) {
  int d = dim < 0 ? dim + nd : dim;
  SEQMIX_CHECK(d >= 0 && d < std::max(nd, 1), op, ": dim ", dim, " is out of range for ", nd, " dims");
  return d;
}

// Runs an atomic accumulation into a zeroed tensor of `shape` and `dt`: f32/f64 directly, bf16/f16
// through an f32 buffer. f(A* acc) launches the kernel; the result is returned.
template <typename F>
Tensor accumulate_into(const Shape& shape, DType dt, Device dev, const char* op, F&& f) {
  Tensor out = Tensor::empty(shape, dt, dev);
  cudaStream_t st = current_stream();
  int64_t n = out.numel();
  if (dt == DType::F32 || dt == DType::F64) {
    if (n) SEQMIX_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), st));
    if (dt == DType::F32) f(static_cast<float*>(out.data_ptr()));
    else f(static_cast<double*>(out.data_ptr()));
    return out;
  }
  SEQMIX_CHECK(dt == DType::BF16 || dt == DType::F16, op, ": dtype ", dtype_name(dt), " is not supported (floating types only)");
  Tensor acc = Tensor::empty(shape, DType::F32, dev);
  if (n) SEQMIX_CUDA_CHECK(cudaMemsetAsync(acc.data_ptr(), 0, acc.nbytes(), st));
  f(static_cast<float*>(acc.data_ptr()));
  if (n) {
    if (dt == DType::BF16)
      f32_to_kernel<__nv_bfloat16><<<grid_for(n), 256, 0, st>>>(acc.data<float>(), static_cast<__nv_bfloat16*>(out.data_ptr()), n);
    else
      f32_to_kernel<__half><<<grid_for(n), 256, 0, st>>>(acc.data<float>(), static_cast<__half*>(out.data_ptr()), n);
    SEQMIX_CUDA_CHECK_LAUNCH("f32_to_kernel");
  }
  return out;
}

// Calls f.template operator()<T>() with the device type of a floating dtype, f64 included.
template <typename F>
void dispatch_accum_src(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F64: return f.template operator()<double>();
    case DType::F32: return f.template operator()<float>();
    case DType::BF16: return f.template operator()<__nv_bfloat16>();
    case DType::F16: return f.template operator()<__half>();
    default: SEQMIX_FAIL(op, ": dtype ", dtype_name(dt), " is not supported (floating types only)");
  }
}

}  // namespace

Tensor cat(const std::vector<Tensor>& inputs, int dim_in) {
  SEQMIX_CHECK(!inputs.empty(), "cat: no inputs");
  const Tensor& first = inputs[0];
  int nd = first.dim();
  SEQMIX_CHECK(nd >= 1, "cat: inputs must have at least one dim");
  int dim = norm_dim(dim_in, nd, "cat");
  Shape shape = first.shape();
  int64_t total = 0;
  for (const Tensor& t : inputs) {
    SEQMIX_CHECK(t.dim() == nd && t.dtype() == first.dtype() && t.is_cuda() && t.device() == first.device(),
                 "cat: inputs must share dims, dtype and device (", shape_str(first.shape()), " ", dtype_name(first.dtype()),
                 " vs ", shape_str(t.shape()), " ", dtype_name(t.dtype()), ")");
    for (int d = 0; d < nd; ++d)
      SEQMIX_CHECK(d == dim || t.shape()[d] == shape[d], "cat: shapes ", shape_str(first.shape()), " and ",
                   shape_str(t.shape()), " differ outside dim ", dim);
    total += t.shape()[dim];
  }
  shape[dim] = total;
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  if (out.numel() == 0) return out;
  Around r = around(shape, dim);
  size_t es = out.element_size();
  cudaStream_t st = current_stream();
  int64_t start = 0;
  for (const Tensor& t : inputs) {
    int64_t n = t.shape()[dim];
    if (n == 0 || t.numel() == 0) {
      start += n;
      continue;
    }
    char* dst = static_cast<char*>(out.data_ptr()) + size_t(start * r.inner) * es;
    if (t.is_contiguous()) {
      size_t width = size_t(n * r.inner) * es;
      SEQMIX_CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(r.n * r.inner) * es, t.data_ptr(), width, width, size_t(r.outer),
                                          cudaMemcpyDeviceToDevice, st));
    } else {
      Shape strides = out.strides();
      copy(make_view(out, t.shape(), strides, start * strides[dim]), t);
    }
    start += n;
  }
  return out;
}

Tensor index_select(const Tensor& x_in, int dim_in, const Tensor& index_in) {
  SEQMIX_CHECK(x_in.is_cuda() && index_in.is_cuda(), "index_select: tensors must be on CUDA");
  Tensor x = x_in.contiguous(), index = index_in.contiguous();
  SEQMIX_CHECK(x.dim() >= 1, "index_select: input must have at least one dim");
  int dim = norm_dim(dim_in, x.dim(), "index_select");
  SEQMIX_CHECK(index.dim() <= 1, "index_select: index must be 1-d, got ", shape_str(index.shape()));
  Around r = around(x.shape(), dim);
  int64_t k = index.numel();
  Shape shape = x.shape();
  shape[dim] = k;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  int64_t elems = out.numel();
  if (elems == 0) return out;
  int es = int(x.element_size());
  int unit = pick_unit(r.inner * es, {x.data_ptr(), out.data_ptr()}, es);
  int64_t inner_u = r.inner * es / unit;
  int64_t total = r.outer * k * inner_u;
  cudaStream_t st = current_stream();
  dispatch_index(index.dtype(), "index_select", [&]<typename I>() {
    dispatch_unit(unit, [&]<typename U>() {
      index_select_kernel<U, I><<<grid_for(total), 256, 0, st>>>(static_cast<const U*>(x.data_ptr()),
                                                                  static_cast<const I*>(index.data_ptr()),
                                                                  static_cast<U*>(out.data_ptr()), total, inner_u, k, r.n);
      SEQMIX_CUDA_CHECK_LAUNCH("index_select_kernel");
    });
  });
  return out;
}

Tensor index_add(const Shape& shape, int dim_in, const Tensor& index_in, const Tensor& src_in) {
  SEQMIX_CHECK(src_in.is_cuda() && index_in.is_cuda(), "index_add: tensors must be on CUDA");
  Tensor src = src_in.contiguous(), index = index_in.contiguous();
  SEQMIX_CHECK(!shape.empty(), "index_add: output must have at least one dim");
  int dim = norm_dim(dim_in, int(shape.size()), "index_add");
  SEQMIX_CHECK(index.dim() <= 1, "index_add: index must be 1-d, got ", shape_str(index.shape()));
  Around r = around(shape, dim);
  int64_t k = index.numel();
  SEQMIX_CHECK(src.numel() == r.outer * k * r.inner, "index_add: src of shape ", shape_str(src.shape()),
               " does not match ", k, " indices into ", shape_str(shape), " at dim ", dim);
  int64_t total = src.numel();
  cudaStream_t st = current_stream();
  return accumulate_into(shape, src.dtype(), src.device(), "index_add", [&](auto* acc) {
    using A = std::remove_pointer_t<decltype(acc)>;
    if (total == 0) return;
    dispatch_accum_src(src.dtype(), "index_add", [&]<typename T>() {
      dispatch_index(index.dtype(), "index_add", [&]<typename I>() {
        if constexpr (std::is_same_v<T, double> == std::is_same_v<A, double>) {
          index_add_kernel<T, A, I><<<grid_for(total), 256, 0, st>>>(static_cast<const T*>(src.data_ptr()),
                                                                      static_cast<const I*>(index.data_ptr()), acc, total,
                                                                      r.inner, k, r.n);
          SEQMIX_CUDA_CHECK_LAUNCH("index_add_kernel");
        }
      });
    });
  });
}

Tensor gather(const Tensor& x_in, int dim_in, const Tensor& index) {
  SEQMIX_CHECK(x_in.is_cuda() && index.is_cuda(), "gather: tensors must be on CUDA");
  Tensor x = x_in.contiguous();
  int nd = x.dim();
  int dim = norm_dim(dim_in, nd, "gather");
  SEQMIX_CHECK(index.dim() == nd, "gather: index must have ", nd, " dims like the input, got ", shape_str(index.shape()));
  for (int d = 0; d < nd; ++d)
    SEQMIX_CHECK(d == dim || index.shape()[d] <= x.shape()[d], "gather: index shape ", shape_str(index.shape()),
                 " exceeds input shape ", shape_str(x.shape()), " outside dimension ", dim);
  Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
  int64_t total = out.numel();
  if (total == 0) return out;
  Shape xs = x.strides();
  int64_t x_dim_stride = nd ? xs[dim] : 0;
  if (nd) xs[dim] = 0;
  OffsetCalc<2> calc = make_offset_calc<2>(index.shape(), {xs, index.strides()});
  cudaStream_t st = current_stream();
  int64_t n = nd ? x.shape()[dim] : 1;
  dispatch_index(index.dtype(), "gather", [&]<typename I>() {
    dispatch_unit(int(x.element_size()), [&]<typename U>() {
      gather_kernel<U, I><<<grid_for(total), 256, 0, st>>>(static_cast<const U*>(x.data_ptr()),
                                                            static_cast<const I*>(index.data_ptr()),
                                                            static_cast<U*>(out.data_ptr()), calc, total, x_dim_stride, n);
      SEQMIX_CUDA_CHECK_LAUNCH("gather_kernel");
    });
  });
  return out;
}

Tensor scatter_add(const Shape& shape, int dim_in, const Tensor& index, const Tensor& src) {
  SEQMIX_CHECK(src.is_cuda() && index.is_cuda(), "scatter_add: tensors must be on CUDA");
  int nd = int(shape.size());
  int dim = norm_dim(dim_in, nd, "scatter_add");
  SEQMIX_CHECK(src.shape() == index.shape(), "scatter_add: src shape ", shape_str(src.shape()), " differs from index shape ",
               shape_str(index.shape()));
  SEQMIX_CHECK(index.dim() == nd, "scatter_add: index must have ", nd, " dims, got ", shape_str(index.shape()));
  for (int d = 0; d < nd; ++d)
    SEQMIX_CHECK(d == dim || index.shape()[d] <= shape[d], "scatter_add: index shape ", shape_str(index.shape()),
                 " exceeds output shape ", shape_str(shape), " outside dimension ", dim);
  Shape os = contiguous_strides(shape);
  int64_t out_dim_stride = nd ? os[dim] : 0;
  if (nd) os[dim] = 0;
  int64_t total = index.numel();
  int64_t n = nd ? shape[dim] : 1;
  cudaStream_t st = current_stream();
  return accumulate_into(shape, src.dtype(), src.device(), "scatter_add", [&](auto* acc) {
    using A = std::remove_pointer_t<decltype(acc)>;
    if (total == 0) return;
    OffsetCalc<3> calc = make_offset_calc<3>(index.shape(), {os, index.strides(), src.strides()});
    dispatch_accum_src(src.dtype(), "scatter_add", [&]<typename T>() {
      dispatch_index(index.dtype(), "scatter_add", [&]<typename I>() {
        if constexpr (std::is_same_v<T, double> == std::is_same_v<A, double>) {
          scatter_add_kernel<T, A, I><<<grid_for(total), 256, 0, st>>>(static_cast<const T*>(src.data_ptr()),
                                                                        static_cast<const I*>(index.data_ptr()), acc, calc,
                                                                        total, out_dim_stride, n);
          SEQMIX_CUDA_CHECK_LAUNCH("scatter_add_kernel");
        }
      });
    });
  });
}

}  // namespace seqmix::cuda
