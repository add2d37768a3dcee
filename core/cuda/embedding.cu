// CUDA embedding gather and its deterministic backward.
//
// Forward: one warp per token copies its weight row (16-byte vectors when D and the pointers allow).
//   An id outside [0, V) gives a row of NaN (the CPU backend throws; a device kernel cannot).
//
// Backward (deterministic, no atomics): dweight[v] = sum of g rows at the positions where ids == v,
//   added in increasing position order with f32 accumulation, so repeated runs are bit-identical.
//   1. keys = ids (out-of-range ids -> the sentinel V), values = positions; a stable radix sort (CUB)
//      over the bits needed for V groups equal ids with their positions ascending.
//   2. The sorted array is cut into chunks of S entries. One block per (chunk, column slice) walks its
//      entries in order, summing runs of equal keys in f32 registers. A run that starts and ends
//      inside the chunk is written to dweight directly. A run that crosses a chunk boundary leaves
//      f32 partials: the chunk where it starts writes carry_last[chunk], each later chunk it reaches
//      writes carry_first[chunk].
//   3. For each run that crosses a boundary, the chunk where it starts adds its partials in chunk
//      order and writes the row. So frequent tokens are spread over many blocks (no hot block), and
//      the order of every sum is fixed by the sort.
//   Rows of ids that never occur are zero (one memset of dweight first).
#include <cub/device/device_radix_sort.cuh>

#include <cmath>

#include "core/cuda/device_utils.cuh"
#include "core/kernels.h"

namespace seqmix::cuda {

namespace {

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename F>
void dispatch_index(DType dt, const char* op, F&& f) {
  if (dt == DType::I64) f.template operator()<int64_t>();
  else if (dt == DType::I32) f.template operator()<int32_t>();
  else SEQMIX_FAIL(op, ": ids must be i64 or i32, got ", dtype_name(dt));
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
template <typename T, typename I, int VEC>
__global__ void embedding_fwd_kernel(const T* __restrict__ w, const I* __restrict__ ids, T* __restrict__ out, int64_t n,
                                     int64_t V, int64_t D) {
  using P = Pack<T, VEC>;
  int64_t tok = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (tok >= n) return;
  int64_t id = int64_t(ids[tok]);
  int64_t nv = D / VEC;
  P* dst = reinterpret_cast<P*>(out + tok * D);
  if (id < 0 || id >= V) {
    P nanp;
#pragma unroll
    for (int e = 0; e < VEC; ++e) nanp.v[e] = from_float<T>(NAN);
    for (int64_t c = lane; c < nv; c += 32) dst[c] = nanp;
    return;
  }
  const P* src = reinterpret_cast<const P*>(w + id * D);
  for (int64_t c = lane; c < nv; c += 32) dst[c] = src[c];
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------
template <typename I>
__global__ void make_keys_kernel(const I* __restrict__ ids, uint32_t* __restrict__ keys, int32_t* __restrict__ pos, int64_t n,
                                 int64_t V) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t id = int64_t(ids[i]);
    keys[i] = (id >= 0 && id < V) ? uint32_t(id) : uint32_t(V);
    pos[i] = int32_t(i);
  }
}

// grid (chunks, column slices); thread t handles column vector slice * blockDim + t. The chunk's keys
// and positions are staged in shared memory (S <= kMaxChunk), then each run is summed by a
// branch-free loop so the row loads of consecutive entries overlap.
constexpr int kMaxChunk = 256;

template <typename T, int VEC>
__global__ void embedding_bwd_chunk_kernel(const T* __restrict__ g, const uint32_t* __restrict__ keys,
                                           const int32_t* __restrict__ pos, T* __restrict__ dw,
                                           float* __restrict__ carry_first, float* __restrict__ carry_last, int64_t n,
                                           int64_t D, int64_t S, uint32_t sentinel) {
  using P = Pack<T, VEC>;
  __shared__ uint32_t skey[kMaxChunk];
  __shared__ int32_t spos[kMaxChunk];
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk * S, end = begin + S < n ? begin + S : n;
  const int cnt = int(end - begin);
  for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
    skey[i] = keys[begin + i];
    spos[i] = pos[begin + i];
  }
  __syncthreads();
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;  // column vector
  const int64_t nv = D / VEC;
  if (c >= nv) return;
  const bool continues_from_before = begin > 0 && keys[begin - 1] == skey[0];
  const bool continues_after = end < n && keys[end] == skey[cnt - 1];
  int a = 0;
  while (a < cnt) {
    const uint32_t key = skey[a];
    int b = a + 1;
    while (b < cnt && skey[b] == key) ++b;
    if (key != sentinel) {
      float acc[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = 0.0f;
#pragma unroll 8
      for (int j = a; j < b; ++j) {
        P p = reinterpret_cast<const P*>(g + int64_t(spos[j]) * D)[c];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] += to_float(p.v[e]);
      }
      const bool starts_here = a > 0 || !continues_from_before;
      const bool ends_here = b < cnt || !continues_after;
      if (starts_here && ends_here) {
        P o;
#pragma unroll
        for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(acc[e]);
        reinterpret_cast<P*>(dw + int64_t(key) * D)[c] = o;
      } else {
        float* dst = (!starts_here ? carry_first : carry_last) + chunk * D + c * VEC;
#pragma unroll
        for (int e = 0; e < VEC; ++e) dst[e] = acc[e];
      }
    }
    a = b;
  }
}

// For each chunk whose last run continues past its end and started inside it: sum the partials of
// the following chunks in order and write the row.
template <typename T, int VEC>
__global__ void embedding_bwd_carry_kernel(const uint32_t* __restrict__ keys, T* __restrict__ dw,
                                           const float* __restrict__ carry_first, const float* __restrict__ carry_last,
                                           int64_t n, int64_t D, int64_t S, int64_t nchunks, uint32_t sentinel) {
  using P = Pack<T, VEC>;
  const int64_t chunk = blockIdx.x;
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t nv = D / VEC;
  if (c >= nv) return;
  const int64_t begin = chunk * S, end = begin + S < n ? begin + S : n;
  if (end >= n) return;  // nothing after this chunk
  const uint32_t key = keys[end - 1];
  if (key == sentinel || keys[end] != key) return;  // the last run ends with the chunk
  // Keys are sorted: if the entry before the chunk has this key, the whole chunk is this run and an
  // earlier chunk owns it.
  if (begin > 0 && keys[begin - 1] == key) return;
  float acc[VEC];
  const float* src = carry_last + chunk * D + c * VEC;
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] = src[e];
  for (int64_t q = chunk + 1; q < nchunks; ++q) {
    const float* f = carry_first + q * D + c * VEC;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] += f[e];
    int64_t qend = (q + 1) * S;
    if (qend >= n || keys[qend] != key || keys[qend - 1] != key) break;
  }
  P o;
#pragma unroll
  for (int e = 0; e < VEC; ++e) o.v[e] = from_float<T>(acc[e]);
  reinterpret_cast<P*>(dw + int64_t(key) * D)[c] = o;
}

int bits_for(int64_t v) {
  int b = 1;
  while (b < 32 && (int64_t(1) << b) <= v) ++b;
  return b;
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids_in) {
  SEQMIX_CHECK(weight.dim() == 2 && weight.is_cuda() && weight.is_contiguous(),
               "embedding: weight must be a contiguous CUDA [num_embeddings, dim] tensor, got ", shape_str(weight.shape()));
  Tensor ids = ids_in.contiguous();
  int64_t V = weight.size(0), D = weight.size(1), n = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(D);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  if (n == 0 || D == 0) return out;
  cudaStream_t st = current_stream();
  SEQMIX_CUDA_DISPATCH_FLOAT(weight.dtype(), "embedding", [&]<typename T>() {
    dispatch_index(ids.dtype(), "embedding", [&]<typename I>() {
      const T* pw = static_cast<const T*>(weight.data_ptr());
      const I* pi = static_cast<const I*>(ids.data_ptr());
      T* po = static_cast<T*>(out.data_ptr());
      constexpr int VEC = 16 / sizeof(T);
      int64_t grid = (n + 7) / 8;
      SEQMIX_CHECK(grid < (int64_t(1) << 31), "embedding: too many ids");
      if (D % VEC == 0 && aligned16(pw) && aligned16(po))
        embedding_fwd_kernel<T, I, VEC><<<unsigned(grid), 256, 0, st>>>(pw, pi, po, n, V, D);
      else
        embedding_fwd_kernel<T, I, 1><<<unsigned(grid), 256, 0, st>>>(pw, pi, po, n, V, D);
      SEQMIX_CUDA_CHECK_LAUNCH("embedding_fwd_kernel");
    });
  });
  return out;
}

Tensor embedding_backward(const Tensor& g_in, const Tensor& ids_in, int64_t num_embeddings) {
  Tensor g = g_in.contiguous(), ids = ids_in.contiguous();
  SEQMIX_CHECK(g.is_cuda() && ids.is_cuda(), "embedding_backward: tensors must be on CUDA");
  int64_t D = g.dim() == 0 ? 1 : g.size(-1);
  int64_t n = ids.numel(), V = num_embeddings;
  SEQMIX_CHECK(g.numel() == n * D, "embedding_backward: grad of shape ", shape_str(g.shape()), " does not match ", n, " ids");
  SEQMIX_CHECK(V >= 0 && V < (int64_t(1) << 31) - 1, "embedding_backward: num_embeddings ", V, " out of range");
  SEQMIX_CHECK(n < (int64_t(1) << 31), "embedding_backward: more than 2^31 ids are not supported");
  Tensor dw = Tensor::empty({V, D}, g.dtype(), g.device());
  cudaStream_t st = current_stream();
  if (V * D > 0) SEQMIX_CUDA_CHECK(cudaMemsetAsync(dw.data_ptr(), 0, dw.nbytes(), st));
  if (n == 0 || D == 0 || V == 0) return dw;
  Device dev = g.device();

  // 1. sort (id, position) pairs by id
  Tensor keys_in = Tensor::empty({n}, DType::I32, dev), keys_out = Tensor::empty({n}, DType::I32, dev);
  Tensor pos_in = Tensor::empty({n}, DType::I32, dev), pos_out = Tensor::empty({n}, DType::I32, dev);
  uint32_t* k_in = static_cast<uint32_t*>(keys_in.data_ptr());
  uint32_t* k_out = static_cast<uint32_t*>(keys_out.data_ptr());
  int32_t* p_in = static_cast<int32_t*>(pos_in.data_ptr());
  int32_t* p_out = static_cast<int32_t*>(pos_out.data_ptr());
  dispatch_index(ids.dtype(), "embedding_backward", [&]<typename I>() {
    make_keys_kernel<I><<<grid_for(n), 256, 0, st>>>(static_cast<const I*>(ids.data_ptr()), k_in, p_in, n, V);
    SEQMIX_CUDA_CHECK_LAUNCH("make_keys_kernel");
  });
  int end_bit = bits_for(V);  // keys are in [0, V]
  size_t temp_bytes = 0;
  SEQMIX_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, k_in, k_out, p_in, p_out, int(n), 0, end_bit, st));
  Tensor temp = Tensor::empty({int64_t(std::max<size_t>(temp_bytes, 1))}, DType::U8, dev);
  SEQMIX_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, k_in, k_out, p_in, p_out, int(n), 0, end_bit, st));

  // 2-3. chunked run sums with carries
  int64_t target_chunks = int64_t(sm_count()) * 4;
  int64_t S = 8;
  while (S < kMaxChunk && n / (S * 2) >= target_chunks) S *= 2;
  int64_t nchunks = (n + S - 1) / S;
  Tensor carry = Tensor::empty({2, nchunks, D}, DType::F32, dev);
  float* cf = carry.data<float>();
  float* cl = cf + nchunks * D;
  SEQMIX_CUDA_DISPATCH_FLOAT(g.dtype(), "embedding_backward", [&]<typename T>() {
    const T* pg = static_cast<const T*>(g.data_ptr());
    T* pd = static_cast<T*>(dw.data_ptr());
    auto go = [&]<int VEC>() {
      int64_t nv = D / VEC;
      int threads = 32;
      while (threads < 256 && threads < nv) threads *= 2;
      int64_t slices = (nv + threads - 1) / threads;
      SEQMIX_CHECK(slices < 65536 && nchunks < (int64_t(1) << 31), "embedding_backward: shape too large");
      dim3 grid(static_cast<unsigned>(nchunks), static_cast<unsigned>(slices));
      embedding_bwd_chunk_kernel<T, VEC><<<grid, threads, 0, st>>>(pg, k_out, p_out, pd, cf, cl, n, D, S, uint32_t(V));
      SEQMIX_CUDA_CHECK_LAUNCH("embedding_bwd_chunk_kernel");
      if (nchunks > 1) {
        embedding_bwd_carry_kernel<T, VEC><<<grid, threads, 0, st>>>(k_out, pd, cf, cl, n, D, S, nchunks, uint32_t(V));
        SEQMIX_CUDA_CHECK_LAUNCH("embedding_bwd_carry_kernel");
      }
    };
    constexpr int VE = 16 / sizeof(T);
    if (D % VE == 0 && aligned16(pg) && aligned16(pd)) go.template operator()<VE>();
    else go.template operator()<1>();
  });
  return dw;
}

}  // namespace seqmix::cuda
