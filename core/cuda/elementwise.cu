// CUDA elementwise kernels: fill, copy (strided, broadcast, dtype conversion), unary and its
// backward, affine / pow / clamp, binary and its backward, compare, where.
//
// Two kernel shapes serve everything (see launch_map):
// - map_vec_kernel: every operand contiguous, same shape and 16-byte aligned: grid-stride over
//   16-byte vectors, two vectors per thread per iteration (loads issued before the math), one wave
//   of blocks sized by the occupancy calculator. The most common ops get a kernel templated on the op
//   (the op-table switch folds away); the others use the runtime switch (still vectorized memory).
// - map_strided_kernel: any strides / broadcasting (up to 8 dims after coalescing), offsets from
//   OffsetCalc (32-bit fast division), the op chosen at runtime through the op tables.
// Math runs in f32 for f32/bf16/f16 (as on the CPU); f64 throws "not supported on CUDA".
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;

struct None {};

template <typename T1, typename T2>
constexpr int arity_of() {
  return std::is_same_v<T1, None> ? 1 : (std::is_same_v<T2, None> ? 2 : 3);
}

template <typename F, typename A0, typename A1, typename A2>
__device__ __forceinline__ auto call(const F& f, const A0& a, const A1& b, const A2& c) {
  if constexpr (std::is_same_v<A1, None>) return f(a);
  else if constexpr (std::is_same_v<A2, None>) return f(a, b);
  else return f(a, b, c);
}

template <typename T, int V>
__device__ __forceinline__ Vec<T, V> ldv(const T* p, int64_t i) {
  if constexpr (std::is_same_v<T, None>) return Vec<T, V>{};
  else return reinterpret_cast<const Vec<T, V>*>(p)[i];
}

// out[i] = f(a[i], b[i], c[i]) over contiguous, aligned operands; V elements per vector.
template <int V, typename TO, typename T0, typename T1, typename T2, typename F>
__global__ void __launch_bounds__(kThreads)
    map_vec_kernel(TO* __restrict__ out, const T0* __restrict__ a, const T1* __restrict__ b, const T2* __restrict__ c,
                   int64_t n, F f) {
  const int64_t nvec = n / V;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (kUnroll - 1) * stride < nvec; i += kUnroll * stride) {
    Vec<T0, V> va[kUnroll];
    Vec<T1, V> vb[kUnroll];
    Vec<T2, V> vc[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      va[u] = ldv<T0, V>(a, i + u * stride);
      vb[u] = ldv<T1, V>(b, i + u * stride);
      vc[u] = ldv<T2, V>(c, i + u * stride);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      Vec<TO, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = call(f, va[u].v[k], vb[u].v[k], vc[u].v[k]);
      reinterpret_cast<Vec<TO, V>*>(out)[i + u * stride] = o;
    }
  }
  for (; i < nvec; i += stride) {
    Vec<T0, V> va = ldv<T0, V>(a, i);
    Vec<T1, V> vb = ldv<T1, V>(b, i);
    Vec<T2, V> vc = ldv<T2, V>(c, i);
    Vec<TO, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = call(f, va.v[k], vb.v[k], vc.v[k]);
    reinterpret_cast<Vec<TO, V>*>(out)[i] = o;
  }
  // the last n % V elements
  int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t j = nvec * V + t;
  if (j < n) {
    T1 bj{};
    T2 cj{};
    if constexpr (!std::is_same_v<T1, None>) bj = b[j];
    if constexpr (!std::is_same_v<T2, None>) cj = c[j];
    out[j] = call(f, a[j], bj, cj);
  }
}

// out[off0] = f(a[off1], b[off2], c[off3]) for any strides (calc holds out first, then inputs).
template <int NARGS, typename TO, typename T0, typename T1, typename T2, typename F>
__global__ void __launch_bounds__(kThreads)
    map_strided_kernel(TO* __restrict__ out, const T0* __restrict__ a, const T1* __restrict__ b,
                       const T2* __restrict__ c, OffsetCalc<NARGS> calc, int64_t n, F f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[NARGS];
    calc.get(i, off);
    T1 bv{};
    T2 cv{};
    if constexpr (NARGS >= 3) bv = b[off[2]];
    if constexpr (NARGS >= 4) cv = c[off[3]];
    out[off[0]] = call(f, a[off[1]], bv, cv);
  }
}

// One wave of blocks: as many as fit on the device at once (occupancy of this kernel, cached per
// kernel), fewer when the work is small.
template <typename K>
unsigned wave_grid(K kernel, int64_t threads_needed) {
  static std::mutex mu;
  static std::unordered_map<const void*, int> per_sm_cache;
  int per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = per_sm_cache.find(reinterpret_cast<const void*>(kernel));
    if (it != per_sm_cache.end()) {
      per_sm = it->second;
    } else {
      SEQMIX_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
      if (per_sm < 1) per_sm = 1;
      per_sm_cache[reinterpret_cast<const void*>(kernel)] = per_sm;
    }
  }
  int64_t need = (threads_needed + kThreads - 1) / kThreads;
  int64_t cap = int64_t(per_sm) * sm_count();
  if (need > cap) need = cap;
  if (need < 1) need = 1;
  return unsigned(need);
}

template <typename T> constexpr int size_or0() {
  if constexpr (std::is_same_v<T, None>) return 0;
  else return int(sizeof(T));
}

template <typename TO, typename T0, typename T1, typename T2>
constexpr int vec_width() {
  int m = int(sizeof(TO));
  if (size_or0<T0>() > m) m = size_or0<T0>();
  if (size_or0<T1>() > m) m = size_or0<T1>();
  if (size_or0<T2>() > m) m = size_or0<T2>();
  return 16 / m > 0 ? 16 / m : 1;
}

bool dense_as(const Tensor* t, const Shape& shape) { return !t || (t->shape() == shape && t->is_contiguous()); }
bool aligned_to(const Tensor* t, size_t bytes) {
  return !t || (reinterpret_cast<uintptr_t>(t->data_ptr()) % bytes) == 0;
}

template <typename T> const T* ptr_of(const Tensor* t) {
  if constexpr (std::is_same_v<T, None>) return nullptr;
  else return t ? static_cast<const T*>(t->data_ptr()) : nullptr;
}

// Can the contiguous vectorized kernel run for `out` (its shape) and these inputs?
template <typename TO, typename T0, typename T1 = None, typename T2 = None>
bool vec_ok(const Tensor& out, const Tensor* a, const Tensor* b = nullptr, const Tensor* c = nullptr) {
  constexpr int V = vec_width<TO, T0, T1, T2>();
  const Shape& s = out.shape();
  return out.is_contiguous() && dense_as(a, s) && dense_as(b, s) && dense_as(c, s) &&
         aligned_to(&out, sizeof(TO) * V) && aligned_to(a, sizeof(T0) * V) &&
         (!b || aligned_to(b, size_or0<T1>() * V)) && (!c || aligned_to(c, size_or0<T2>() * V));
}

template <typename TO, typename T0, typename T1 = None, typename T2 = None, typename F>
void launch_vec(const char* name, const Tensor& out, F f, const Tensor* a, const Tensor* b = nullptr,
                const Tensor* c = nullptr) {
  constexpr int V = vec_width<TO, T0, T1, T2>();
  int64_t n = out.numel();
  if (n == 0) return;
  auto kernel = map_vec_kernel<V, TO, T0, T1, T2, F>;
  int64_t nvec = n / V;
  unsigned grid = wave_grid(kernel, (nvec + kUnroll - 1) / kUnroll);
  kernel<<<grid, kThreads, 0, current_stream()>>>(static_cast<TO*>(out.data_ptr()), ptr_of<T0>(a), ptr_of<T1>(b),
                                                  ptr_of<T2>(c), n, f);
  SEQMIX_CUDA_CHECK_LAUNCH(name);
}

template <typename TO, typename T0, typename T1 = None, typename T2 = None, typename F>
void launch_strided(const char* name, const Tensor& out, F f, const Tensor* a, const Tensor* b = nullptr,
                    const Tensor* c = nullptr) {
  constexpr int NARGS = 1 + arity_of<T1, T2>();
  int64_t n = out.numel();
  if (n == 0) return;
  const Shape& s = out.shape();
  std::array<Shape, NARGS> strides;
  strides[0] = out.strides();
  strides[1] = broadcast_strides(*a, s);
  if constexpr (NARGS >= 3) strides[2] = broadcast_strides(*b, s);
  if constexpr (NARGS >= 4) strides[3] = broadcast_strides(*c, s);
  OffsetCalc<NARGS> calc = make_offset_calc<NARGS>(s, strides);
  auto kernel = map_strided_kernel<NARGS, TO, T0, T1, T2, F>;
  unsigned grid = wave_grid(kernel, n);
  kernel<<<grid, kThreads, 0, current_stream()>>>(static_cast<TO*>(out.data_ptr()), ptr_of<T0>(a), ptr_of<T1>(b),
                                                  ptr_of<T2>(c), calc, n, f);
  SEQMIX_CUDA_CHECK_LAUNCH(name);
}

// The vectorized kernel when it applies, else the strided one, with one functor.
template <typename TO, typename T0, typename T1 = None, typename T2 = None, typename F>
void launch_map(const char* name, const Tensor& out, F f, const Tensor* a, const Tensor* b = nullptr,
                const Tensor* c = nullptr) {
  if (vec_ok<TO, T0, T1, T2>(out, a, b, c)) launch_vec<TO, T0, T1, T2>(name, out, f, a, b, c);
  else launch_strided<TO, T0, T1, T2>(name, out, f, a, b, c);
}

// ---------------------------------------------------------------------------------------------
// Functors: raw device element types in and out, math in the compute type acc_t<T>.
// ---------------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ acc_t<T> up(T x) { return convert<acc_t<T>>(x); }
template <typename T> __device__ __forceinline__ T down(acc_t<T> x) { return convert<T>(x); }

template <UnaryOp OP> struct UnaryFwdT {
  template <typename T> __device__ __forceinline__ T operator()(T x) const { return down<T>(unary_forward(OP, up(x))); }
};
struct UnaryFwdDyn {
  UnaryOp op;
  template <typename T> __device__ __forceinline__ T operator()(T x) const { return down<T>(unary_forward(op, up(x))); }
};
template <UnaryOp OP> struct UnaryBwdT {
  template <typename T> __device__ __forceinline__ T operator()(T g, T x, T y) const {
    return down<T>(up(g) * unary_derivative(OP, up(x), up(y)));
  }
};
struct UnaryBwdDyn {
  UnaryOp op;
  template <typename T> __device__ __forceinline__ T operator()(T g, T x, T y) const {
    return down<T>(up(g) * unary_derivative(op, up(x), up(y)));
  }
};

// GELU (tanh approximation) for the vectorized fast path, written as x * sigmoid(2u) with
// u = sqrt(2/pi) (x + 0.044715 x^3): the same function as the table's 0.5 x (1 + tanh(u)) (since
// 0.5 (1 + tanh(u)) = sigmoid(2u)) but with one fast exp and one fast reciprocal instead of tanhf,
// and no cancellation in 1 + tanh(u) for negative x. The exponent is clamped so that exp stays finite.
__device__ __forceinline__ float gelu_exp_neg2u(float x) {
  const float c = 0.7978845608028654f, k = 0.044715f;
  float u = c * (x + k * x * x * x);
  return __expf(fminf(-2.f * u, 80.f));
}
struct GeluFwdFast {
  template <typename T> __device__ __forceinline__ T operator()(T xv) const {
    float x = up(xv);
    return down<T>(__fdividef(x, 1.f + gelu_exp_neg2u(x)));
  }
};
struct GeluBwdFast {
  // d/dx [x s(2u)] = s + 2 x s (1 - s) du/dx, with s (1 - s) = e s^2 for e = exp(-2u); reads g and
  // x only (not y)
  template <typename T> __device__ __forceinline__ T operator()(T gv, T xv) const {
    const float c = 0.7978845608028654f, k = 0.044715f;
    float x = up(xv);
    float e = gelu_exp_neg2u(x);
    float s = __fdividef(1.f, 1.f + e);
    float du = c * (1.f + 3.f * k * x * x);
    return down<T>(up(gv) * (s + 2.f * x * (e * s * s) * du));
  }
};

// affine / pow / clamp in one functor (kind is uniform across the launch)
enum class ScalarKind : int { Affine, Pow, Clamp };
struct ScalarFn {
  ScalarKind kind;
  float p0, p1;
  template <typename T> __device__ __forceinline__ T operator()(T xv) const {
    float x = up(xv);
    float r;
    switch (kind) {
      case ScalarKind::Affine: r = __fadd_rn(__fmul_rn(p0, x), p1); break;  // no fma: matches the CPU's a*x+b
      case ScalarKind::Pow: r = sm::pow(x, p0); break;
      default: r = x < p0 ? p0 : (x > p1 ? p1 : x); break;
    }
    return down<T>(r);
  }
};

template <BinaryOp OP> struct BinaryFwdT {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
    return down<T>(binary_forward(OP, up(a), up(b)));
  }
};
struct BinaryFwdDyn {
  BinaryOp op;
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
    return down<T>(binary_forward(op, up(a), up(b)));
  }
};
// integer binary ops (the table's Pow calls float math, so integers get their own switch)
struct BinaryIntDyn {
  BinaryOp op;
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
    switch (op) {
      case BinaryOp::Add: return T(a + b);
      case BinaryOp::Sub: return T(a - b);
      case BinaryOp::Mul: return T(a * b);
      case BinaryOp::Div: return b == T(0) ? T(0) : T(a / b);
      case BinaryOp::Maximum: return a >= b ? a : b;
      case BinaryOp::Minimum: return a <= b ? a : b;
      case BinaryOp::Pow: return T(::pow(double(a), double(b)));
    }
    return a;
  }
};
struct BinaryBwdDyn {
  BinaryOp op;
  int which;
  template <typename T> __device__ __forceinline__ T operator()(T g, T a, T b) const {
    return down<T>(up(g) * binary_derivative(op, which, up(a), up(b)));
  }
};

struct CompareDyn {
  CompareOp op;
  template <typename T> __device__ __forceinline__ uint8_t operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) return compare(op, a, b) ? 1 : 0;
    else return compare(op, up(a), up(b)) ? 1 : 0;
  }
};

struct WhereFn {
  template <typename T> __device__ __forceinline__ T operator()(uint8_t c, T a, T b) const { return c ? a : b; }
};

template <typename TD> struct ConvertFn {
  template <typename TS> __device__ __forceinline__ TD operator()(TS x) const { return convert<TD>(x); }
};
struct Identity {
  template <typename T> __device__ __forceinline__ T operator()(T x) const { return x; }
};

// Unsigned type of a dtype's width: fill, where and same-dtype copies move bits only.
template <size_t N> struct bits_of;
template <> struct bits_of<1> { using type = uint8_t; };
template <> struct bits_of<2> { using type = uint16_t; };
template <> struct bits_of<4> { using type = uint32_t; };
template <> struct bits_of<8> { using type = uint64_t; };

template <typename F>
void dispatch_bits(size_t width, const char* name, F f) {
  switch (width) {
    case 1: return f.template operator()<uint8_t>();
    case 2: return f.template operator()<uint16_t>();
    case 4: return f.template operator()<uint32_t>();
    case 8: return f.template operator()<uint64_t>();
  }
  SEQMIX_FAIL(name, ": unsupported element width ", width);
}

// ---------------------------------------------------------------------------------------------
// Generic dtype conversion for the uncommon pairs: one kernel, dtypes chosen at runtime, values
// converted as the CPU does (integer to integer directly, everything else through double).
// ---------------------------------------------------------------------------------------------
struct AnyValue {
  double f;
  int64_t i;
  bool is_int;
};

__device__ __forceinline__ AnyValue load_any(const void* p, int64_t off, DType dt) {
  AnyValue v{0.0, 0, false};
  switch (dt) {
    case DType::F64: v.f = static_cast<const double*>(p)[off]; break;
    case DType::F32: v.f = static_cast<const float*>(p)[off]; break;
    case DType::BF16: v.f = __bfloat162float(static_cast<const __nv_bfloat16*>(p)[off]); break;
    case DType::F16: v.f = __half2float(static_cast<const __half*>(p)[off]); break;
    case DType::I64: v.i = static_cast<const int64_t*>(p)[off]; v.is_int = true; break;
    case DType::I32: v.i = static_cast<const int32_t*>(p)[off]; v.is_int = true; break;
    case DType::U8: v.i = static_cast<const uint8_t*>(p)[off]; v.is_int = true; break;
  }
  if (v.is_int) v.f = double(v.i);
  return v;
}

__device__ __forceinline__ void store_any(void* p, int64_t off, DType dt, const AnyValue& v) {
  switch (dt) {
    case DType::F64: static_cast<double*>(p)[off] = v.f; break;
    case DType::F32: static_cast<float*>(p)[off] = float(v.f); break;
    case DType::BF16: static_cast<__nv_bfloat16*>(p)[off] = __float2bfloat16_rn(float(v.f)); break;
    case DType::F16: static_cast<__half*>(p)[off] = __float2half_rn(float(v.f)); break;
    case DType::I64: static_cast<int64_t*>(p)[off] = v.is_int ? v.i : int64_t(v.f); break;
    case DType::I32: static_cast<int32_t*>(p)[off] = v.is_int ? int32_t(v.i) : int32_t(v.f); break;
    case DType::U8: static_cast<uint8_t*>(p)[off] = v.is_int ? uint8_t(v.i) : uint8_t(v.f); break;
  }
}

__global__ void __launch_bounds__(kThreads)
    convert_any_kernel(void* dst, DType dd, const void* src, DType sd, OffsetCalc<2> calc, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    calc.get(i, off);
    store_any(dst, off[0], dd, load_any(src, off[1], sd));
  }
}

template <typename T> __global__ void __launch_bounds__(kThreads) fill_kernel(T* out, OffsetCalc<1> calc, int64_t n, T v) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[1];
    calc.get(i, off);
    out[off[0]] = v;
  }
}

template <typename T> __global__ void __launch_bounds__(kThreads) fill_vec_kernel(T* out, int64_t n, T v) {
  constexpr int V = kVecElems<T>;
  Vec16<T> vv;
#pragma unroll
  for (int k = 0; k < V; ++k) vv.v[k] = v;
  const int64_t nvec = n / V;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = t; i < nvec; i += stride) reinterpret_cast<Vec16<T>*>(out)[i] = vv;
  if (nvec * V + t < n) out[nvec * V + t] = v;
}

void check_float(const Tensor& t, const char* op) {
  SEQMIX_CHECK(is_floating(t.dtype()), op, ": needs a floating tensor, got ", dtype_name(t.dtype()));
}

template <typename T> T host_value(double v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    uint16_t b = ::seqmix::bf16::from_float(float(v));
    T r;
    std::memcpy(&r, &b, 2);
    return r;
  } else if constexpr (std::is_same_v<T, __half>) {
    uint16_t b = ::seqmix::f16::from_float(float(v));
    T r;
    std::memcpy(&r, &b, 2);
    return r;
  } else {
    return static_cast<T>(v);
  }
}

// The ops that get a kernel specialized on the op in the vectorized path (f32 and bf16).
// (Gelu has its own fast functors, above.)
#define SEQMIX_FAST_UNARY(X) X(Neg) X(Exp) X(Square) X(Tanh) X(Sigmoid) X(Relu) X(Silu)
#define SEQMIX_FAST_UNARY_BWD(X) X(Tanh) X(Sigmoid) X(Relu) X(Silu)
#define SEQMIX_FAST_BINARY(X) X(Add) X(Sub) X(Mul) X(Div)

template <typename T> constexpr bool kFastType = std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>;

template <typename T> bool unary_fast(UnaryOp op, const Tensor& out, const Tensor& x) {
  if constexpr (kFastType<T>) {
    if (!vec_ok<T, T>(out, &x)) return false;
    switch (op) {
#define SEQMIX_CASE(Name) \
  case UnaryOp::Name: launch_vec<T, T>(op_name(op), out, UnaryFwdT<UnaryOp::Name>{}, &x); return true;
      SEQMIX_FAST_UNARY(SEQMIX_CASE)
#undef SEQMIX_CASE
      case UnaryOp::Gelu: launch_vec<T, T>(op_name(op), out, GeluFwdFast{}, &x); return true;
      default: break;
    }
  }
  return false;
}

template <typename T> bool unary_bwd_fast(UnaryOp op, const Tensor& out, const Tensor& g, const Tensor& x, const Tensor& y) {
  if constexpr (kFastType<T>) {
    if (op == UnaryOp::Gelu) {
      if (!vec_ok<T, T, T>(out, &g, &x)) return false;
      launch_vec<T, T, T>(op_name(op), out, GeluBwdFast{}, &g, &x);
      return true;
    }
    if (!vec_ok<T, T, T, T>(out, &g, &x, &y)) return false;
    switch (op) {
#define SEQMIX_CASE(Name) \
  case UnaryOp::Name: launch_vec<T, T, T, T>(op_name(op), out, UnaryBwdT<UnaryOp::Name>{}, &g, &x, &y); return true;
      SEQMIX_FAST_UNARY_BWD(SEQMIX_CASE)
#undef SEQMIX_CASE
      default: break;
    }
  }
  return false;
}

template <typename T> bool binary_fast(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  if constexpr (kFastType<T>) {
    if (!vec_ok<T, T, T>(out, &a, &b)) return false;
    switch (op) {
#define SEQMIX_CASE(Name) \
  case BinaryOp::Name: launch_vec<T, T, T>(op_name(op), out, BinaryFwdT<BinaryOp::Name>{}, &a, &b); return true;
      SEQMIX_FAST_BINARY(SEQMIX_CASE)
#undef SEQMIX_CASE
      default: break;
    }
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Kernels of core/kernels.h
// ---------------------------------------------------------------------------------------------

void fill(const Tensor& out, double value) {
  int64_t n = out.numel();
  if (n == 0) return;
  SEQMIX_CUDA_DISPATCH_ALL(out.dtype(), "fill", [&]<typename T>() {
    T v = host_value<T>(value);
    using B = typename bits_of<sizeof(T)>::type;
    B bits;
    std::memcpy(&bits, &v, sizeof(T));
    B* p = static_cast<B*>(out.data_ptr());
    if (out.is_contiguous()) {
      if (bits == 0) {
        SEQMIX_CUDA_CHECK(cudaMemsetAsync(p, 0, out.nbytes(), current_stream()));
        return;
      }
      if (aligned16(p)) {
        int64_t nvec = n / kVecElems<B>;
        unsigned grid = wave_grid(fill_vec_kernel<B>, nvec > 0 ? nvec : 1);
        fill_vec_kernel<B><<<grid, kThreads, 0, current_stream()>>>(p, n, bits);
        SEQMIX_CUDA_CHECK_LAUNCH("fill");
        return;
      }
    }
    OffsetCalc<1> calc = make_offset_calc<1>(out.shape(), {out.strides()});
    unsigned grid = wave_grid(fill_kernel<B>, n);
    fill_kernel<B><<<grid, kThreads, 0, current_stream()>>>(p, calc, n, bits);
    SEQMIX_CUDA_CHECK_LAUNCH("fill");
  });
}

void copy(const Tensor& dst, const Tensor& src) {
  const Shape& s = dst.shape();
  int64_t n = dst.numel();
  if (n == 0) return;
  (void)broadcast_strides(src, s);  // checks that src broadcasts to dst
  if (dst.dtype() == src.dtype()) {
    if (dst.is_contiguous() && dense_as(&src, s)) {
      SEQMIX_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(), cudaMemcpyDeviceToDevice,
                                        current_stream()));
      return;
    }
    dispatch_bits(dst.element_size(), "copy", [&]<typename B>() { launch_map<B, B>("copy", dst, Identity{}, &src); });
    return;
  }
  auto is_f = [](DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; };
  if (is_f(dst.dtype()) && is_f(src.dtype())) {
    // the common casts (f32 <-> bf16 <-> f16): templated, vectorized when contiguous
    SEQMIX_CUDA_DISPATCH_FLOAT(dst.dtype(), "copy", [&]<typename TD>() {
      SEQMIX_CUDA_DISPATCH_FLOAT(src.dtype(), "copy", [&]<typename TS>() {
        if constexpr (!std::is_same_v<TD, TS>) launch_map<TD, TS>("copy", dst, ConvertFn<TD>{}, &src);
      });
    });
    return;
  }
  OffsetCalc<2> calc = make_offset_calc<2>(s, {dst.strides(), broadcast_strides(src, s)});
  unsigned grid = wave_grid(convert_any_kernel, n);
  convert_any_kernel<<<grid, kThreads, 0, current_stream()>>>(
      dst.data_ptr(), dst.dtype(), src.data_ptr(), src.dtype(), calc, n);
  SEQMIX_CUDA_CHECK_LAUNCH("copy (dtype conversion)");
}

Tensor unary(UnaryOp op, const Tensor& x) {
  check_float(x, op_name(op));
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), op_name(op), [&]<typename T>() {
    if (unary_fast<T>(op, out, x)) return;
    launch_map<T, T>(op_name(op), out, UnaryFwdDyn{op}, &x);
  });
  return out;
}

Tensor unary_backward(UnaryOp op, const Tensor& g, const Tensor& x, const Tensor& y) {
  check_float(x, op_name(op));
  SEQMIX_CHECK(g.dtype() == x.dtype() && y.dtype() == x.dtype(), op_name(op), " backward: dtypes differ");
  SEQMIX_CHECK(g.shape() == x.shape() && y.shape() == x.shape(), op_name(op), " backward: shapes differ (",
               shape_str(g.shape()), ", ", shape_str(x.shape()), ", ", shape_str(y.shape()), ")");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), op_name(op), [&]<typename T>() {
    if (unary_bwd_fast<T>(op, out, g, x, y)) return;
    launch_map<T, T, T, T>(op_name(op), out, UnaryBwdDyn{op}, &g, &x, &y);
  });
  return out;
}

static Tensor scalar_op(const char* name, const Tensor& x, ScalarKind kind, double p0, double p1) {
  check_float(x, name);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  SEQMIX_CUDA_DISPATCH_FLOAT(x.dtype(), name, [&]<typename T>() {
    launch_map<T, T>(name, out, ScalarFn{kind, float(p0), float(p1)}, &x);
  });
  return out;
}

Tensor affine(const Tensor& x, double alpha, double beta) { return scalar_op("affine", x, ScalarKind::Affine, alpha, beta); }
Tensor pow_scalar(const Tensor& x, double p) { return scalar_op("pow", x, ScalarKind::Pow, p, 0.0); }
Tensor clamp(const Tensor& x, double lo, double hi) { return scalar_op("clamp", x, ScalarKind::Clamp, lo, hi); }

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(a.dtype() == b.dtype(), op_name(op), ": dtypes differ (", dtype_name(a.dtype()), ", ", dtype_name(b.dtype()), ")");
  Shape shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  if (a.dtype() == DType::I64 || a.dtype() == DType::I32) {
    if (a.dtype() == DType::I64) launch_map<int64_t, int64_t, int64_t>(op_name(op), out, BinaryIntDyn{op}, &a, &b);
    else launch_map<int32_t, int32_t, int32_t>(op_name(op), out, BinaryIntDyn{op}, &a, &b);
    return out;
  }
  SEQMIX_CUDA_DISPATCH_FLOAT(a.dtype(), op_name(op), [&]<typename T>() {
    if (binary_fast<T>(op, out, a, b)) return;
    launch_map<T, T, T>(op_name(op), out, BinaryFwdDyn{op}, &a, &b);
  });
  return out;
}

Tensor binary_backward(BinaryOp op, int which, const Tensor& g, const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(which == 0 || which == 1, op_name(op), " backward: which must be 0 or 1");
  SEQMIX_CHECK(g.dtype() == a.dtype() && g.dtype() == b.dtype(), op_name(op), " backward: dtypes differ");
  Tensor out = Tensor::empty(g.shape(), g.dtype(), g.device());
  SEQMIX_CUDA_DISPATCH_FLOAT(g.dtype(), op_name(op), [&]<typename T>() {
    launch_map<T, T, T, T>(op_name(op), out, BinaryBwdDyn{op, which}, &g, &a, &b);
  });
  return out;
}

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(a.dtype() == b.dtype(), op_name(op), ": dtypes differ (", dtype_name(a.dtype()), ", ", dtype_name(b.dtype()), ")");
  Shape shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, DType::U8, a.device());
  SEQMIX_CUDA_DISPATCH_ALL(a.dtype(), op_name(op), [&]<typename T>() {
    if constexpr (std::is_same_v<T, double>) SEQMIX_FAIL(op_name(op), ": f64 is not supported on CUDA");
    else launch_map<uint8_t, T, T>(op_name(op), out, CompareDyn{op}, &a, &b);
  });
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  SEQMIX_CHECK(cond.dtype() == DType::U8, "where: condition must be u8, got ", dtype_name(cond.dtype()));
  SEQMIX_CHECK(a.dtype() == b.dtype(), "where: dtypes differ (", dtype_name(a.dtype()), ", ", dtype_name(b.dtype()), ")");
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape()), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  dispatch_bits(a.element_size(), "where", [&]<typename B>() {
    launch_map<B, uint8_t, B, B>("where", out, WhereFn{}, &cond, &a, &b);
  });
  return out;
}

}  // namespace seqmix::cuda
