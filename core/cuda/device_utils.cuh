// Shared device helpers for the CUDA kernels: element types and conversions (bf16/f16 through f32),
// 16-byte vector loads/stores, strided/broadcast index math (up to 8 dims, coalesced, 32-bit fast
// division), warp/block reductions and a dtype dispatch macro. Include only from .cu files.
// No spdlog/fmt here (nvcc C++20 chokes on them).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <type_traits>

#include "core/cuda/cuda_check.h"
#include "core/cuda/runtime.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace seqmix::cuda {

constexpr int kMaxDims = 8;

// ---------------------------------------------------------------------------------------------
// Element types: host type (core/dtype.h) -> device type, and the f32 (f64) compute type.
// ---------------------------------------------------------------------------------------------
template <typename T> struct device_type { using type = T; };
template <> struct device_type<::seqmix::bf16> { using type = __nv_bfloat16; };
template <> struct device_type<::seqmix::f16> { using type = __half; };
template <typename T> using device_t = typename device_type<T>::type;

template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <> struct acc_type<int64_t> { using type = int64_t; };
template <> struct acc_type<int32_t> { using type = int64_t; };
template <> struct acc_type<uint8_t> { using type = int64_t; };
// Compute type of a device element type: float for f32/bf16/f16, double for f64.
template <typename T> using acc_t = typename acc_type<T>::type;

template <typename T> constexpr bool is_half_type_v = false;
template <> inline constexpr bool is_half_type_v<__nv_bfloat16> = true;
template <> inline constexpr bool is_half_type_v<__half> = true;

// to_float / from_float: loads and stores of every float device type through f32 (round to nearest
// even on the way down, same as the host's bf16/f16 conversions).
template <typename T> __host__ __device__ __forceinline__ float to_float(T x) { return static_cast<float>(x); }
template <> __host__ __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __host__ __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

template <typename T> __host__ __device__ __forceinline__ T from_float(float x) { return static_cast<T>(x); }
template <> __host__ __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __host__ __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Load as the compute type / store from the compute type.
template <typename T> __host__ __device__ __forceinline__ acc_t<T> load_acc(const T* p) {
  if constexpr (is_half_type_v<T>) return to_float(*p);
  else return static_cast<acc_t<T>>(*p);
}
template <typename T, typename A> __host__ __device__ __forceinline__ void store_acc(T* p, A v) {
  if constexpr (is_half_type_v<T>) *p = from_float<T>(static_cast<float>(v));
  else *p = static_cast<T>(v);
}

// Any element type to any other (integers, u8, f64, f32, bf16, f16). Half types go through f32;
// float -> integer truncates toward zero (as static_cast does on the CPU).
template <typename To, typename From> __host__ __device__ __forceinline__ To convert(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (is_half_type_v<From>) {
    if constexpr (is_half_type_v<To>) return from_float<To>(to_float(x));
    else return static_cast<To>(to_float(x));
  } else if constexpr (is_half_type_v<To>) {
    return from_float<To>(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

// ---------------------------------------------------------------------------------------------
// 16-byte vectors for the contiguous fast paths.
// ---------------------------------------------------------------------------------------------
template <typename T> constexpr int kVecElems = 16 / int(sizeof(T)) > 0 ? 16 / int(sizeof(T)) : 1;

template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T v[N];
};
template <typename T> using Vec16 = Vec<T, kVecElems<T>>;

template <typename T> __device__ __forceinline__ Vec16<T> load_vec16(const T* p) {
  return *reinterpret_cast<const Vec16<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store_vec16(T* p, const Vec16<T>& v) {
  *reinterpret_cast<Vec16<T>*>(p) = v;
}
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Four consecutive elements as f32 through one read-only load: 16 bytes of f32 or 8 of bf16 (aligned so).
__device__ __forceinline__ float4 load4_float(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float4 load4_float(const __nv_bfloat16* p) {
  const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// Multi-tensor launches (train/adamw.cu, train/grad_norm.cu) lay their tensors end to end in groups of
// elements, L.group_start[t] being tensor t's first group of L.count: the tensor that owns `group` is the last
// t with group_start[t] <= group (a binary search, uniform across a warp except at tensor boundaries).
template <typename Launch> __device__ __forceinline__ int find_group_owner(const Launch& L, int64_t group) {
  int lo = 0, hi = L.count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (L.group_start[mid] <= group) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// ---------------------------------------------------------------------------------------------
// Fast unsigned 32-bit division by a runtime-constant divisor (Granlund-Montgomery, round-up
// magic number): q = (umulhi(n, magic) + n) >> shift, exact for every n < 2^32.
// ---------------------------------------------------------------------------------------------
struct FastDivmod {
  uint32_t divisor = 1, magic = 1, shift = 0;
  FastDivmod() = default;
  explicit FastDivmod(uint32_t d) : divisor(d) {
    shift = 0;
    while (shift < 32 && (uint64_t(1) << shift) < d) ++shift;
    uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1;
    magic = uint32_t(m);
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    uint32_t t = __umulhi(n, magic);
#else
    uint32_t t = uint32_t((uint64_t(n) * magic) >> 32);
#endif
    return uint32_t((uint64_t(t) + n) >> shift);
  }
  __host__ __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
    r = n - q * divisor;
  }
};

// ---------------------------------------------------------------------------------------------
// Strided index math: element offsets of NARGS operands that share one (broadcast) shape.
// Dims are stored innermost first. Built on the host by make_offset_calc (which drops size-1 dims
// and merges dims that are contiguous for every operand). When the element count fits in 32 bits,
// the offsets are computed with FastDivmod; otherwise with 64-bit division.
// ---------------------------------------------------------------------------------------------
template <int NARGS>
struct OffsetCalc {
  int ndim = 0;
  bool use32 = true;
  FastDivmod div[kMaxDims];
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxDims][NARGS];

  __device__ __forceinline__ void get(int64_t linear, int64_t (&off)[NARGS]) const {
#pragma unroll
    for (int a = 0; a < NARGS; ++a) off[a] = 0;
    if (use32) {
      uint32_t rem = uint32_t(linear);
#pragma unroll
      for (int d = 0; d < kMaxDims; ++d) {
        if (d == ndim) break;
        uint32_t q, r;
        div[d].divmod(rem, q, r);
        rem = q;
#pragma unroll
        for (int a = 0; a < NARGS; ++a) off[a] += int64_t(r) * strides[d][a];
      }
    } else {
      int64_t rem = linear;
#pragma unroll
      for (int d = 0; d < kMaxDims; ++d) {
        if (d == ndim) break;
        int64_t q = rem / sizes[d];
        int64_t r = rem - q * sizes[d];
        rem = q;
#pragma unroll
        for (int a = 0; a < NARGS; ++a) off[a] += r * strides[d][a];
      }
    }
  }
};

// Strides (in elements) of t viewed at `shape` under numpy broadcasting: 0 where t is broadcast.
inline Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  int n = int(shape.size()), m = t.dim();
  SEQMIX_CHECK(m <= n, "cannot broadcast shape ", shape_str(t.shape()), " to ", shape_str(shape));
  Shape s(n, 0);
  for (int i = 0; i < m; ++i) {
    int od = n - m + i;
    int64_t sz = t.shape()[i];
    SEQMIX_CHECK(sz == shape[od] || sz == 1, "cannot broadcast shape ", shape_str(t.shape()), " to ", shape_str(shape));
    s[od] = (sz == 1 && shape[od] != 1) ? 0 : t.strides()[i];
  }
  return s;
}

// Builds the offset calculator of NARGS operands at `shape`, strides given per operand (outermost
// first, as in Tensor::strides()). Drops size-1 dims and merges dims that are contiguous for every
// operand, so a contiguous tensor becomes 1 dim and a transposed matrix 2.
template <int NARGS>
OffsetCalc<NARGS> make_offset_calc(const Shape& shape, const std::array<Shape, NARGS>& strides) {
  // collect dims innermost first, skipping size-1 dims
  int64_t sz[64];
  int64_t st[64][NARGS];
  int nd = 0;
  SEQMIX_CHECK(shape.size() <= 64, "too many dims: ", shape.size());
  int64_t numel = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    numel *= shape[i];
    if (shape[i] == 1) continue;
    sz[nd] = shape[i];
    for (int a = 0; a < NARGS; ++a) st[nd][a] = strides[a][i];
    ++nd;
  }
  // merge dim d+1 (outer) into d (inner) when outer stride == inner stride * inner size for all args
  int out = 0;
  for (int d = 0; d < nd; ++d) {
    if (out > 0) {
      bool ok = true;
      for (int a = 0; a < NARGS; ++a) ok = ok && st[d][a] == st[out - 1][a] * sz[out - 1];
      if (ok) {
        sz[out - 1] *= sz[d];
        continue;
      }
    }
    sz[out] = sz[d];
    for (int a = 0; a < NARGS; ++a) st[out][a] = st[d][a];
    ++out;
  }
  SEQMIX_CHECK(out <= kMaxDims, "CUDA kernels support at most ", kMaxDims, " non-mergeable dims, got a view of shape ",
               shape_str(shape), " with ", out);
  OffsetCalc<NARGS> c;
  c.ndim = out;
  c.use32 = numel < (int64_t(1) << 32);
  for (int d = 0; d < kMaxDims; ++d) {
    c.sizes[d] = d < out ? sz[d] : 1;
    c.div[d] = (d < out && c.use32) ? FastDivmod(uint32_t(sz[d])) : FastDivmod(1);
    for (int a = 0; a < NARGS; ++a) c.strides[d][a] = d < out ? st[d][a] : 0;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Warp and block reductions (blockDim.x a multiple of 32, at most 1024; every thread of the block
// must call the block versions; the result is returned to all threads).
// ---------------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T warp_reduce_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T> __device__ __forceinline__ T warp_reduce_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}
template <typename T> __device__ __forceinline__ T warp_reduce_min(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w < v ? w : v;
  }
  return v;
}

// `scratch` is shared memory of at least 32 elements; it is reused, so the function syncs on entry.
template <typename T> __device__ __forceinline__ T block_reduce_sum(T v, T* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_reduce_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : T(0);
  return warp_reduce_sum(v);
}
template <typename T> __device__ __forceinline__ T block_reduce_max(T v, T* scratch, T identity) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_reduce_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : identity;
  return warp_reduce_max(v);
}

// ---------------------------------------------------------------------------------------------
// Launch geometry for grid-stride elementwise kernels: enough blocks to fill every SM several
// times over, never more than the work needs.
// ---------------------------------------------------------------------------------------------
inline unsigned grid_for(int64_t work_items, int threads = 256, int blocks_per_sm = 8) {
  int64_t need = (work_items + threads - 1) / threads;
  int64_t cap = int64_t(sm_count()) * blocks_per_sm;
  if (need > cap) need = cap;
  if (need < 1) need = 1;
  return unsigned(need);
}

}  // namespace seqmix::cuda

// SEQMIX_CUDA_DISPATCH_FLOAT(dtype, "op", [&]<typename T>() {...}): T = float, __nv_bfloat16 or
// __half (device types); f64 and integer dtypes throw a clear Error.
#define SEQMIX_CUDA_DISPATCH_CASE(ENUM, TYPE, ...) \
  case ::seqmix::DType::ENUM: return __VA_ARGS__.template operator()<TYPE>();

#define SEQMIX_CUDA_DISPATCH_FLOAT(DT, NAME, ...)                                                      \
  [&]() {                                                                                             \
    switch (DT) {                                                                                     \
      SEQMIX_CUDA_DISPATCH_CASE(F32, float, __VA_ARGS__)                                              \
      SEQMIX_CUDA_DISPATCH_CASE(BF16, __nv_bfloat16, __VA_ARGS__)                                     \
      SEQMIX_CUDA_DISPATCH_CASE(F16, __half, __VA_ARGS__)                                             \
      case ::seqmix::DType::F64:                                                                      \
        SEQMIX_FAIL(NAME, ": f64 is not supported on CUDA (use f32 or bf16, or run on the CPU)");     \
      default:                                                                                        \
        SEQMIX_FAIL(NAME, ": dtype ", ::seqmix::dtype_name(DT), " is not supported (floating types only)"); \
    }                                                                                                 \
  }()

// All dtypes, device types (f64, f32, bf16, f16, i64, i32, u8).
#define SEQMIX_CUDA_DISPATCH_ALL(DT, NAME, ...)                                                        \
  [&]() {                                                                                             \
    switch (DT) {                                                                                     \
      SEQMIX_CUDA_DISPATCH_CASE(F64, double, __VA_ARGS__)                                             \
      SEQMIX_CUDA_DISPATCH_CASE(F32, float, __VA_ARGS__)                                              \
      SEQMIX_CUDA_DISPATCH_CASE(BF16, __nv_bfloat16, __VA_ARGS__)                                     \
      SEQMIX_CUDA_DISPATCH_CASE(F16, __half, __VA_ARGS__)                                             \
      SEQMIX_CUDA_DISPATCH_CASE(I64, int64_t, __VA_ARGS__)                                            \
      SEQMIX_CUDA_DISPATCH_CASE(I32, int32_t, __VA_ARGS__)                                            \
      SEQMIX_CUDA_DISPATCH_CASE(U8, uint8_t, __VA_ARGS__)                                             \
    }                                                                                                 \
    SEQMIX_FAIL(NAME, ": unknown dtype");                                                             \
  }()
