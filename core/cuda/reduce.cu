// CUDA reductions over one dim (sum, mean, max, min, logsumexp, argmax) and sum of all elements.
//
// The input may be any strided view. The reduced dim has stride sr; the other dims form the outputs,
// whose base offsets come from an OffsetCalc. Two kernels:
// - row kernel (sr == 1, or a single output): a warp (short rows) or a whole block (long rows) per
//   output; lanes walk the row, so reads are coalesced.
// - column kernel (sr != 1): a 32 x 8 block; the 32 lanes take 32 neighbouring outputs (coalesced when
//   the outputs are contiguous, as in reducing dim 0 of [N, D]), the 8 rows split the reduced dim.
// When there are too few outputs to fill the GPU, the reduced dim is split across blockIdx.y into
// partial results (a scratch tensor) that a finalize kernel combines: deterministic, no atomics.
// Accumulation is in f32 for floating inputs (f64 for integer inputs); logsumexp keeps an online
// (max, sum of exp) pair; argmax keeps (value, index) and breaks ties towards the first index.
#include <cmath>

#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

enum RedOp : int { kSum = 0, kMean = 1, kMax = 2, kMin = 3, kLse = 4, kArgMax = 5 };

int red_op_of(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return kSum;
    case ReduceOp::Mean: return kMean;
    case ReduceOp::Max: return kMax;
    case ReduceOp::Min: return kMin;
    case ReduceOp::LogSumExp: return kLse;
  }
  return kSum;
}

// Accumulation type: f32 for floating inputs, f64 for integers (exact counts and indices).
template <typename T> struct red_acc { using type = float; };
template <> struct red_acc<int64_t> { using type = double; };
template <> struct red_acc<int32_t> { using type = double; };
template <> struct red_acc<uint8_t> { using type = double; };

template <typename A> struct Acc {
  A v;        // sum, max, min, running max (lse) or best value (argmax)
  A s;        // lse: sum of exp(x - v)
  int64_t i;  // argmax: index of the best value, -1 before the first element
};

template <typename A> __device__ __forceinline__ A pos_inf() { return A(INFINITY); }

template <typename A> __device__ __forceinline__ Acc<A> identity(int op) {
  Acc<A> a;
  a.s = A(0);
  a.i = -1;
  switch (op) {
    case kMax: case kLse: case kArgMax: a.v = -pos_inf<A>(); break;
    case kMin: a.v = pos_inf<A>(); break;
    default: a.v = A(0); break;
  }
  return a;
}

template <int OP, typename A> __device__ __forceinline__ void update(Acc<A>& a, A x, int64_t r) {
  if constexpr (OP == kSum || OP == kMean) {
    a.v += x;
  } else if constexpr (OP == kMax) {
    a.v = a.v < x ? x : a.v;
  } else if constexpr (OP == kMin) {
    a.v = x < a.v ? x : a.v;
  } else if constexpr (OP == kLse) {
    if (x > a.v) {
      a.s = a.s * exp(a.v - x) + A(1);  // exp(-inf) = 0 on the first element
      a.v = x;
    } else if (x != -pos_inf<A>()) {
      a.s += exp(x - a.v);
    }
  } else {  // argmax: the first element, then strictly greater values
    if (a.i < 0 || x > a.v) {
      a.v = x;
      a.i = r;
    }
  }
}

template <typename A> __device__ __forceinline__ Acc<A> combine(int op, const Acc<A>& a, const Acc<A>& b) {
  Acc<A> r = a;
  switch (op) {
    case kSum: case kMean: r.v = a.v + b.v; break;
    case kMax: r.v = a.v < b.v ? b.v : a.v; break;
    case kMin: r.v = b.v < a.v ? b.v : a.v; break;
    case kLse: {
      A m = a.v > b.v ? a.v : b.v;
      if (m == -pos_inf<A>() || isinf(m)) {
        r.v = m;
        r.s = a.s + b.s;
      } else {
        r.v = m;
        r.s = a.s * exp(a.v - m) + b.s * exp(b.v - m);
      }
      break;
    }
    default:  // argmax
      if (a.i < 0) return b;
      if (b.i < 0) return a;
      if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
      return a;
  }
  return r;
}

template <typename A> __device__ __forceinline__ Acc<A> shfl_xor(const Acc<A>& a, int mask) {
  Acc<A> r;
  r.v = __shfl_xor_sync(0xffffffffu, a.v, mask);
  r.s = __shfl_xor_sync(0xffffffffu, a.s, mask);
  r.i = __shfl_xor_sync(0xffffffffu, (long long)a.i, mask);
  return r;
}

template <typename A> __device__ __forceinline__ Acc<A> warp_combine(int op, Acc<A> a) {
#pragma unroll
  for (int m = 1; m < 32; m <<= 1) {
    Acc<A> b = shfl_xor(a, m);
    // keep the lower lane's value first so ties and order stay deterministic
    a = (threadIdx.x & m) ? combine(op, b, a) : combine(op, a, b);
  }
  return a;
}

// Writes the final value of one output (or its partial when the reduced dim is split).
template <typename T, typename A>
__device__ __forceinline__ void write_out(int op, const Acc<A>& a, int64_t R, void* out, int64_t o) {
  if (op == kArgMax) {
    static_cast<int64_t*>(out)[o] = a.i < 0 ? 0 : a.i;
    return;
  }
  A r = a.v;
  if (op == kMean) r = a.v / A(R > 0 ? R : 1);
  else if (op == kLse) r = isinf(a.v) ? a.v : a.v + log(a.s);
  static_cast<T*>(out)[o] = convert<T>(r);
}

template <int OP, typename T, typename A>
__device__ __forceinline__ void accumulate_range(Acc<A>& acc, const T* base, int64_t r0, int64_t r1, int64_t step,
                                                 int64_t sr) {
#pragma unroll 4
  for (int64_t r = r0; r < r1; r += step) update<OP>(acc, convert<A>(base[r * sr]), r);
}

template <typename T, typename A>
__device__ __forceinline__ void accumulate(int op, Acc<A>& acc, const T* base, int64_t r0, int64_t r1, int64_t step,
                                           int64_t sr) {
  switch (op) {
    case kSum: case kMean: accumulate_range<kSum>(acc, base, r0, r1, step, sr); break;
    case kMax: accumulate_range<kMax>(acc, base, r0, r1, step, sr); break;
    case kMin: accumulate_range<kMin>(acc, base, r0, r1, step, sr); break;
    case kLse: accumulate_range<kLse>(acc, base, r0, r1, step, sr); break;
    default: accumulate_range<kArgMax>(acc, base, r0, r1, step, sr); break;
  }
}

struct RedArgs {
  int op;
  int64_t n_out, R, sr;
  int64_t chunk;   // reduced elements per split
  int splits;      // gridDim.y
};

// Row kernel: blockDim.x = 256; tpr threads (32 or 256) per output.
template <typename T, typename A>
__global__ void __launch_bounds__(256)
    reduce_row_kernel(const T* __restrict__ x, OffsetCalc<1> oc, RedArgs args, int tpr, void* out, Acc<A>* partial) {
  __shared__ Acc<A> scratch[8];
  const int rows_per_block = blockDim.x / tpr;
  const int lane = threadIdx.x % tpr;
  const int64_t o = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / tpr;
  const int64_t r0 = int64_t(blockIdx.y) * args.chunk;
  const int64_t r1 = min(args.R, r0 + args.chunk);
  Acc<A> acc = identity<A>(args.op);
  if (o < args.n_out) {
    int64_t off[1];
    oc.get(o, off);
    accumulate(args.op, acc, x + off[0], r0 + lane, r1, tpr, args.sr);
  }
  acc = warp_combine(args.op, acc);
  if (tpr > 32) {  // a whole block per output: combine the 8 warps (uniform branch)
    int warp = threadIdx.x / 32;
    if ((threadIdx.x & 31) == 0) scratch[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < int(blockDim.x / 32); ++w) acc = combine(args.op, acc, scratch[w]);
    }
  }
  if (lane == 0 && o < args.n_out) {
    if (args.splits > 1) partial[int64_t(blockIdx.y) * args.n_out + o] = acc;
    else write_out<T>(args.op, acc, args.R, out, o);
  }
}

// Column kernel: blockDim = (32, 8); lanes take neighbouring outputs, rows split the reduced range.
template <typename T, typename A>
__global__ void __launch_bounds__(256)
    reduce_col_kernel(const T* __restrict__ x, OffsetCalc<1> oc, RedArgs args, void* out, Acc<A>* partial) {
  __shared__ Acc<A> sh[8][33];
  const int64_t o = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * args.chunk;
  const int64_t r1 = min(args.R, r0 + args.chunk);
  Acc<A> acc = identity<A>(args.op);
  if (o < args.n_out) {
    int64_t off[1];
    oc.get(o, off);
    accumulate(args.op, acc, x + off[0], r0 + threadIdx.y, r1, int64_t(blockDim.y), args.sr);
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && o < args.n_out) {
    for (int k = 1; k < int(blockDim.y); ++k) acc = combine(args.op, acc, sh[k][threadIdx.x]);
    if (args.splits > 1) partial[int64_t(blockIdx.y) * args.n_out + o] = acc;
    else write_out<T>(args.op, acc, args.R, out, o);
  }
}

// Combines the splits' partial results of each output in order.
template <typename T, typename A>
__global__ void reduce_finalize_kernel(const Acc<A>* __restrict__ partial, RedArgs args, void* out) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < args.n_out;
       o += int64_t(gridDim.x) * blockDim.x) {
    Acc<A> acc = partial[o];
    for (int s = 1; s < args.splits; ++s) acc = combine(args.op, acc, partial[int64_t(s) * args.n_out + o]);
    write_out<T>(args.op, acc, args.R, out, o);
  }
}

// Reduces dim `dim` of x into `out` (contiguous, n_out elements, of x's dtype or i64 for argmax).
template <typename T>
void run_reduce(int op, const Tensor& x, int dim, const Tensor& out, const char* name) {
  using A = typename red_acc<T>::type;
  Shape shape_wo, strides_wo;
  for (int i = 0; i < x.dim(); ++i) {
    if (i == dim) continue;
    shape_wo.push_back(x.shape()[i]);
    strides_wo.push_back(x.strides()[i]);
  }
  const int64_t R = x.dim() == 0 ? 1 : x.shape()[dim];
  const int64_t sr = x.dim() == 0 ? 0 : x.strides()[dim];
  const int64_t n_out = shape_numel(shape_wo);
  if (n_out == 0) return;
  OffsetCalc<1> oc = make_offset_calc<1>(shape_wo, {strides_wo});
  const T* xp = static_cast<const T*>(x.data_ptr());
  const int64_t target_blocks = int64_t(sm_count()) * 8;

  RedArgs args{op, n_out, R, sr, R > 0 ? R : 1, 1};
  const bool row = sr == 1 || n_out == 1 || R <= 1;
  int tpr = 32;
  int64_t blocks_x;
  int64_t min_chunk;
  if (row) {
    tpr = R >= 2048 ? 256 : 32;
    blocks_x = (n_out + (256 / tpr) - 1) / (256 / tpr);
    min_chunk = int64_t(tpr) * 16;
  } else {
    blocks_x = (n_out + 31) / 32;
    min_chunk = 8 * 32;
  }
  if (blocks_x < target_blocks && R > 2 * min_chunk) {
    int64_t splits = (target_blocks + blocks_x - 1) / blocks_x;
    int64_t max_splits = R / min_chunk;
    if (splits > max_splits) splits = max_splits;
    if (splits > 65535) splits = 65535;
    if (splits > 1) {
      args.chunk = (R + splits - 1) / splits;
      args.splits = int((R + args.chunk - 1) / args.chunk);
    }
  }
  Tensor scratch;
  Acc<A>* partial = nullptr;
  if (args.splits > 1) {
    scratch = Tensor::empty({int64_t(args.splits) * n_out * int64_t(sizeof(Acc<A>))}, DType::U8, x.device());
    partial = static_cast<Acc<A>*>(scratch.data_ptr());
  }
  cudaStream_t stream = current_stream();
  SEQMIX_CHECK(blocks_x < (int64_t(1) << 31), name, ": too many outputs (", n_out, ")");
  dim3 grid(unsigned(blocks_x), unsigned(args.splits));
  if (row) {
    reduce_row_kernel<T, A><<<grid, 256, 0, stream>>>(xp, oc, args, tpr, out.data_ptr(), partial);
  } else {
    reduce_col_kernel<T, A><<<grid, dim3(32, 8), 0, stream>>>(xp, oc, args, out.data_ptr(), partial);
  }
  SEQMIX_CUDA_CHECK_LAUNCH(name);
  if (args.splits > 1) {
    int64_t fb = (n_out + 255) / 256;
    if (fb > target_blocks) fb = target_blocks;
    reduce_finalize_kernel<T, A><<<unsigned(fb), 256, 0, stream>>>(partial, args, out.data_ptr());
    SEQMIX_CUDA_CHECK_LAUNCH(name);
  }
}

// The reduce dtypes: f32, bf16, f16 and the integers; f64 is not supported on CUDA.
template <typename F>
void dispatch_reduce(DType dt, const char* name, F f) {
  switch (dt) {
    case DType::F32: return f.template operator()<float>();
    case DType::BF16: return f.template operator()<__nv_bfloat16>();
    case DType::F16: return f.template operator()<__half>();
    case DType::I64: return f.template operator()<int64_t>();
    case DType::I32: return f.template operator()<int32_t>();
    case DType::U8: return f.template operator()<uint8_t>();
    case DType::F64: SEQMIX_FAIL(name, ": f64 is not supported on CUDA (use f32 or bf16, or run on the CPU)");
  }
  SEQMIX_FAIL(name, ": unknown dtype");
}

Shape reduced_shape(const Shape& s, int dim, bool keepdim) {
  Shape out = s;
  if (keepdim) out[dim] = 1;
  else out.erase(out.begin() + dim);
  return out;
}

}  // namespace

Tensor reduce(ReduceOp op, const Tensor& x, int dim, bool keepdim) {
  SEQMIX_CHECK(x.dim() > 0, "reduce: a 0-d tensor has no dim ", dim);
  SEQMIX_CHECK(dim >= 0 && dim < x.dim(), "reduce: dim ", dim, " out of range for shape ", shape_str(x.shape()));
  SEQMIX_CHECK(x.shape()[dim] > 0 || op == ReduceOp::Sum || op == ReduceOp::Mean, "reduction over an empty dimension ",
               dim, " of ", shape_str(x.shape()));
  Tensor out = Tensor::empty(reduced_shape(x.shape(), dim, keepdim), x.dtype(), x.device());
  dispatch_reduce(x.dtype(), "reduce", [&]<typename T>() { run_reduce<T>(red_op_of(op), x, dim, out, "reduce"); });
  return out;
}

Tensor argmax(const Tensor& x, int dim, bool keepdim) {
  SEQMIX_CHECK(x.dim() > 0, "argmax: a 0-d tensor has no dim ", dim);
  SEQMIX_CHECK(dim >= 0 && dim < x.dim(), "argmax: dim ", dim, " out of range for shape ", shape_str(x.shape()));
  SEQMIX_CHECK(x.shape()[dim] > 0, "argmax over an empty dimension");
  Tensor out = Tensor::empty(reduced_shape(x.shape(), dim, keepdim), DType::I64, x.device());
  dispatch_reduce(x.dtype(), "argmax", [&]<typename T>() { run_reduce<T>(kArgMax, x, dim, out, "argmax"); });
  return out;
}

Tensor sum_all(const Tensor& x) {
  Tensor out = Tensor::empty({}, x.dtype(), x.device());
  if (x.numel() == 0) {
    SEQMIX_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), current_stream()));
    return out;
  }
  // one row of numel elements: a contiguous view (strided inputs are copied first)
  Tensor flat = x.is_contiguous() ? x : x.detach().contiguous();
  Tensor row = make_view(flat, {flat.numel()}, {1}, flat.offset());
  dispatch_reduce(x.dtype(), "sum", [&]<typename T>() { run_reduce<T>(kSum, row, 0, out, "sum"); });
  return out;
}

}  // namespace seqmix::cuda
