// WMMA tile helpers shared by the tensor-core mixer kernels (linear_recurrence_tc.cu, delta_rule_cuda.cuh):
// bf16 / f16 / f32 conversions, the per-warp f32 scratch tile (16 x kScrLd) that a 16 x 16 accumulator goes
// through for its epilogue, warp / lane geometry, m16n16k16 bf16 products over shared-memory operands, and
// the dynamic shared-memory declaration.
//
// CPU emulation: with SEQMIX_TC_EMULATE defined (by scripts/emulate/cuda_host.h, which must be included
// first: it supplies threadIdx / blockDim, __syncwarp and emu_lane0()) the kernels compile for the host:
// nvcuda::wmma is replaced below by whole 16 x 16 tiles in f32 (bf16 operands are exact in f32; only the
// summation order differs from the GPU), with the hardware's pointer / stride alignment rules checked, and
// TC_SMEM names the harness's shared-memory buffer of the current block (emu_smem).
// Include only from .cu files (or the emulation harnesses); no spdlog / fmt here.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#ifndef SEQMIX_TC_EMULATE
#include <mma.h>
#define TC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#else
#ifndef SEQMIX_EMU_CUDA_HOST_H
#error "the CPU emulation needs scripts/emulate/cuda_host.h included first"
#endif
#include <cstdio>
#include <cstdlib>
#define TC_SMEM(name) unsigned char* name = ::seqmix::mixers::tc::emu_smem

namespace seqmix::mixers::tc {
inline unsigned char* emu_smem = nullptr;  // the harness's shared memory of the current block (128-byte aligned)
}  // namespace seqmix::mixers::tc

// ---- nvcuda::wmma on whole tiles (f32 arithmetic on bf16 operands) ----
// With one std::thread per CUDA thread, lane 0 of each warp does the whole tile (the other lanes' fragments
// are never read: a fragment leaves only through store_matrix_sync); one reader per warp also keeps
// ThreadSanitizer's 4 shadow slots per word from filling with redundant lane reads.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float x[16][16];
};
template <class F>
void fill_fragment(F& f, float v) {
  for (auto& r : f.x)
    for (float& e : r) e = v;
}
inline void check_ptr(const void* p, unsigned ldm, size_t elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * elem) % 16 != 0) {
    std::fprintf(stderr, "wmma alignment violated: ptr %p ldm %u\n", p, ldm);
    std::abort();
  }
}
template <class Use, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p, unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>);
  check_ptr(p, ldm, 2);
  if (!emu_lane0()) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r][c] = __bfloat162float(std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
}
template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  if (!emu_lane0()) return;
  fragment<accumulator, 16, 16, 16, float> t;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i][j];
      for (int k = 0; k < 16; ++k) s += a.x[i][k] * b.x[k][j];
      t.x[i][j] = s;
    }
  d = t;
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  check_ptr(p, ldm, 4);
  if (!emu_lane0()) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r][c];
}
}  // namespace nvcuda::wmma
#endif  // SEQMIX_TC_EMULATE

namespace seqmix::mixers::tc {

namespace wm = nvcuda::wmma;
using bf16 = __nv_bfloat16;

constexpr int kScrLd = 20;             // per-warp f32 epilogue tile: 16 rows, stride 20 (a multiple of 4, as WMMA wants)
constexpr int kScrTile = 16 * kScrLd;  // floats per scratch tile

__host__ __device__ inline size_t align128(size_t x) { return (x + 127) & ~size_t(127); }

// ---- element conversions (bf16, f16, f32) ----
template <typename T>
__host__ __device__ __forceinline__ float tof(T x) {
  if constexpr (std::is_same_v<T, bf16>) return __bfloat162float(x);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else return float(x);
}
template <typename T>
__host__ __device__ __forceinline__ T fromf(float x) {
  if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16_rn(x);
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return x;
}

// 8 consecutive elements (16 bytes for 16-bit types) through a uint4.
template <typename T>
__device__ __forceinline__ void load8(float (&out)[8], const T* src) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  T e[8];
  memcpy(e, &raw, sizeof(raw));
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = tof(e[i]);
}
template <typename T>
__device__ __forceinline__ void store8(T* dst, const float (&v)[8]) {
  T e[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = fromf<T>(v[i]);
  uint4 raw;
  memcpy(&raw, e, sizeof(raw));
  *reinterpret_cast<uint4*>(dst) = raw;
}
// 8 consecutive f32 (32-byte aligned) in and out of registers, as two float4.
__device__ __forceinline__ void load8f(float (&out)[8], const float* src) {
  const float4 a = reinterpret_cast<const float4*>(src)[0], b = reinterpret_cast<const float4*>(src)[1];
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}
__device__ __forceinline__ void store8f(float* dst, const float (&v)[8]) {
  reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// ---- warp geometry; with one thread per block (the CPU emulation) that thread is warp 0 of 1, lane 0 of 1 ----
struct Lanes {
  int warp, nwarps, lane, nlanes;
};
__device__ __forceinline__ Lanes lanes() {
  const int nt = int(blockDim.x), tid = int(threadIdx.x);
  return {tid >> 5, (nt + 31) >> 5, tid & 31, nt < 32 ? nt : 32};
}

// f(r, c0): the 32 pieces of a 16 x 16 tile, row r and columns c0 .. c0 + 7, one per lane.
template <class F>
__device__ __forceinline__ void for_pieces(const Lanes& w, F&& f) {
  for (int p = w.lane; p < 32; p += w.nlanes) f(p >> 1, (p & 1) << 3);
}
// f(r, c): the 256 elements of a 16 x 16 tile, spread over the lanes.
template <class F>
__device__ __forceinline__ void for_elems(const Lanes& w, F&& f) {
  for (int e = w.lane; e < 256; e += w.nlanes) f(e / 16, e % 16);
}

// ---- products ----
using FragC = wm::fragment<wm::accumulator, 16, 16, 16, float>;

// acc += a (16 x 16, layout LA) * b (16 x 16, layout LB), bf16 operands in shared memory.
template <class LA, class LB>
__device__ __forceinline__ void mma16(FragC& acc, const bf16* a, int lda, const bf16* b, int ldb) {
  wm::fragment<wm::matrix_a, 16, 16, 16, bf16, LA> fa;
  wm::fragment<wm::matrix_b, 16, 16, 16, bf16, LB> fb;
  wm::load_matrix_sync(fa, a, unsigned(lda));
  wm::load_matrix_sync(fb, b, unsigned(ldb));
  wm::mma_sync(acc, fa, fb, acc);
}

// The accumulator (or two) into the warp's f32 scratch tile(s) (16 x kScrLd, row-major), then f() on the
// warp's lanes (the epilogue, reading the scratch) between __syncwarp()s.
template <class F>
__device__ __forceinline__ void through_scratch(float* sc, const FragC& acc, F&& f) {
  wm::store_matrix_sync(sc, acc, kScrLd, wm::mem_row_major);
  __syncwarp();
  f();
  __syncwarp();
}
template <class F>
__device__ __forceinline__ void through_scratch(float* sc, const FragC& a1, float* sc2, const FragC& a2, F&& f) {
  wm::store_matrix_sync(sc, a1, kScrLd, wm::mem_row_major);
  wm::store_matrix_sync(sc2, a2, kScrLd, wm::mem_row_major);
  __syncwarp();
  f();
  __syncwarp();
}

// X(t, c) = X(t, c) * f(t, c) in place for t < rows, c < cols (X of type OP, row stride ld), block-strided.
template <class OP, class F>
__device__ __forceinline__ void scale_tile(OP* X, int ld, int rows, int cols, F&& f) {
  for (int idx = int(threadIdx.x); idx < rows * cols; idx += int(blockDim.x)) {
    const int t = idx / cols, c = idx - t * cols;
    X[t * ld + c] = fromf<OP>(tof(X[t * ld + c]) * f(t, c));
  }
}

}  // namespace seqmix::mixers::tc
