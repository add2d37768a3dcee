// Tensor-core tile helpers shared by the tensor-core mixer kernels (linear_recurrence_tc.cu, delta_rule_cuda.cuh):
// bf16 / f16 / f32 conversions, cp.async copies, warp / lane geometry, 16 x 16 x 16 bf16 products over
// shared-memory operands (ldmatrix + mma.sync m16n8k16 with f32 accumulators), their epilogues (straight from the
// registers, or through a per-warp f32 scratch tile of 16 x kScrLd), and the dynamic shared-memory declaration.
//
// CPU emulation: with SEQMIX_TC_EMULATE defined (by scripts/emulate/cuda_host.h, which must be included
// first: it supplies threadIdx / blockDim, __syncwarp and emu_lane0()) the kernels compile for the host:
// the products run on whole 16 x 16 tiles in f32 through an nvcuda::wmma stand-in below (bf16 operands are exact
// in f32; only the summation order differs from the GPU), with WMMA's pointer / stride alignment rules checked
// (stricter than ldmatrix's), register epilogues go through the scratch tile, and TC_SMEM names the harness's
// shared-memory buffer of the current block (emu_smem).
// Include only from .cu files (or the emulation harnesses); no spdlog / fmt here.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
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

// ---- asynchronous 16-byte copies global -> shared (cp.async: no registers, many in flight; a plain copy in the
// emulation). cp_wait_all() waits for this thread's copies; a __syncthreads() after it publishes them. ----
__device__ __forceinline__ void cp16(void* s, const void* g) {
#ifdef SEQMIX_TC_EMULATE
  memcpy(s, g, 16);
#else
  const unsigned sp = static_cast<unsigned>(__cvta_generic_to_shared(s));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sp), "l"(g) : "memory");
#endif
}
__device__ __forceinline__ void cp_commit() {
#ifndef SEQMIX_TC_EMULATE
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_wait_all() {
#ifndef SEQMIX_TC_EMULATE
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
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
// A 16 x 16 x 16 bf16 product with an f32 accumulator. On the GPU: two mma.sync m16n8k16 per step, the operands
// loaded by ldmatrix from shared memory (32-bit shared addresses; nvcuda::wmma's loads compiled to generic 64-bit
// loads plus a transpose instruction per register, up to a third of a kernel's instructions). The fragment
// layouts are the PTX ISA's for m16n8k16 (g = lane / 4, t = lane % 4):
//     A (16 x 16): r0 = A(g, 2t .. 2t+1), r1 = A(g+8, 2t ..), r2 = A(g, 2t+8 ..), r3 = A(g+8, 2t+8 ..)
//     B (16 x 16, two 16 x 8 halves h): r[2h] = B(2t .. 2t+1, 8h+g), r[2h+1] = B(2t+8 .., 8h+g)
//     accumulator: x[4h + 0..1] = C(g, 8h+2t ..), x[4h + 2..3] = C(g+8, 8h+2t ..)
// Layout tags wm::row_major / wm::col_major: A(i, k) = a[i lda + k] / a[k lda + i]; B(k, j) = b[k ldb + j] /
// b[j ldb + k]. Every operand row must be 16-byte aligned (strides and column offsets multiples of 8 elements).
// Under SEQMIX_TC_EMULATE the same calls run nvcuda::wmma's emulation above (whole tiles).
#ifndef SEQMIX_TC_EMULATE
struct FragC {
  static constexpr int num_elements = 8;
  float x[8];
};
template <class L>
struct FragA {
  unsigned r[4];
};
template <class L>
struct FragB {
  unsigned r[4];
};

__device__ __forceinline__ int lane_id() { return int(threadIdx.x) & 31; }
__device__ __forceinline__ unsigned smem_u32(const void* p) { return unsigned(__cvta_generic_to_shared(p)); }

// Four 8 x 8 b16 matrices; lanes 8 m .. 8 m + 7 give the row addresses of matrix m (volatile: the reads stay
// between the barriers that order them against the writes of other threads).
template <bool Trans>
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], unsigned row) {
  if constexpr (Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row));
}
// Operand walks along k: the lane's ldmatrix row address (32-bit shared) of a 16 x 16 operand tile and the byte step
// to the next k tile, computed once per product instead of 64-bit pointer arithmetic per step.
// A: row-major steps 16 columns, col-major (stored rows are k) 16 rows; B: row-major (stored rows are k) 16 rows,
// col-major 16 columns.
template <class L>
struct AWalk {
  unsigned addr, step;
  __device__ __forceinline__ AWalk(const bf16* a, int lda) {
    const int l = lane_id();
    if constexpr (std::is_same_v<L, wm::row_major>) {  // matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15)
      addr = smem_u32(a + (l & 15) * lda + ((l >> 4) << 3));
      step = 32;
    } else {  // stored rows are k: transposed loads, k blocks in the slow position
      addr = smem_u32(a + ((l & 7) + ((l >> 4) << 3)) * lda + (((l >> 3) & 1) << 3));
      step = 32u * unsigned(lda);
    }
  }
  __device__ __forceinline__ void load(FragA<L>& f) const { ldsm_x4<!std::is_same_v<L, wm::row_major>>(f.r, addr); }
  __device__ __forceinline__ void next() { addr += step; }
};
template <class L>
struct BWalk {
  unsigned addr, step;
  __device__ __forceinline__ BWalk(const bf16* b, int ldb) {
    const int l = lane_id();
    if constexpr (std::is_same_v<L, wm::row_major>) {  // stored rows are k: transposed loads
      addr = smem_u32(b + ((l & 7) + (((l >> 3) & 1) << 3)) * ldb + ((l >> 4) << 3));
      step = 32u * unsigned(ldb);
    } else {  // stored rows are j
      addr = smem_u32(b + ((l & 7) + ((l >> 4) << 3)) * ldb + (((l >> 3) & 1) << 3));
      step = 32;
    }
  }
  __device__ __forceinline__ void load(FragB<L>& f) const { ldsm_x4<std::is_same_v<L, wm::row_major>>(f.r, addr); }
  __device__ __forceinline__ void next() { addr += step; }
};
// One operand tile (the first step of a walk).
template <class L>
__device__ __forceinline__ void load_a(FragA<L>& f, const bf16* a, int lda) {
  AWalk<L>(a, lda).load(f);
}
template <class L>
__device__ __forceinline__ void load_b(FragB<L>& f, const bf16* b, int ldb) {
  BWalk<L>(b, ldb).load(f);
}

__device__ __forceinline__ void mma_16816(float* c, const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <class LA, class LB>
__device__ __forceinline__ void mma(FragC& acc, const FragA<LA>& a, const FragB<LB>& b) {
  mma_16816(acc.x, a.r, b.r[0], b.r[1]);
  mma_16816(acc.x + 4, a.r, b.r[2], b.r[3]);
}
__device__ __forceinline__ void fill(FragC& acc, float v) {
#pragma unroll
  for (int e = 0; e < 8; ++e) acc.x[e] = v;
}
__device__ __forceinline__ void scale(FragC& acc, float m) {
#pragma unroll
  for (int e = 0; e < 8; ++e) acc.x[e] *= m;
}
// Row r of the tile times m[r] (m: the tile's 16 row factors; lane l holds rows l / 4 and l / 4 + 8).
__device__ __forceinline__ void scale_rows(FragC& acc, const float* m) {
  const int g = lane_id() >> 2;
  const float m0 = m[g], m1 = m[g + 8];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    acc.x[4 * h] *= m0, acc.x[4 * h + 1] *= m0;
    acc.x[4 * h + 2] *= m1, acc.x[4 * h + 3] *= m1;
  }
}
// The accumulator to / from an f32 tile in shared memory (row stride ld: even; 8-byte aligned), a float2 per
// row piece (the "memory" clobber orders them against the plain loads and stores around them).
__device__ __forceinline__ void store_acc(float* p, const FragC& acc, int ld) {
  const int l = lane_id(), g = l >> 2, t = l & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(smem_u32(p + (g + 8 * r) * ld + 8 * h + 2 * t)),
                   "f"(acc.x[4 * h + 2 * r]), "f"(acc.x[4 * h + 2 * r + 1])
                   : "memory");
}
__device__ __forceinline__ void load_acc(FragC& acc, const float* p, int ld) {
  const int l = lane_id(), g = l >> 2, t = l & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];"
                   : "=f"(acc.x[4 * h + 2 * r]), "=f"(acc.x[4 * h + 2 * r + 1])
                   : "r"(smem_u32(p + (g + 8 * r) * ld + 8 * h + 2 * t))
                   : "memory");
}
// Half h of the accumulator as the lane's row piece of 4 (row g for an even t, g + 8 for an odd one; columns
// 8 h + 2 (t & ~1) ..): x[0 .. 1] hold row g, x[2 .. 3] row g + 8; the quad partner gives the other column pair.
__device__ __forceinline__ void quad_piece(const FragC& acc, int h, bool odd, float (&q)[4]) {
  const float* x = acc.x + 4 * h;
  const float r0 = __shfl_xor_sync(0xffffffffu, odd ? x[0] : x[2], 1);
  const float r1 = __shfl_xor_sync(0xffffffffu, odd ? x[1] : x[3], 1);
  q[0] = odd ? r0 : x[0];
  q[1] = odd ? r1 : x[1];
  q[2] = odd ? x[2] : r0;
  q[3] = odd ? x[3] : r1;
}
// f(r, c, x) on the lane's two row pieces of 4 (x[0 .. 3] = acc(r, c .. c + 3)) straight from the registers: lanes
// t and t ^ 1 of a quad swap a column pair by shuffles, so that the even lane holds row g and the odd one row g + 8
// (no scratch tile, no __syncwarp). sc is unused here (the emulation goes through it).
template <class F>
__device__ __forceinline__ void for_quads(const FragC& acc, float* sc, F&& f) {
  (void)sc;
  const int l = lane_id(), g = l >> 2, t = l & 3;
  const bool odd = (t & 1) != 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float q[4];
    quad_piece(acc, h, odd, q);
    f(odd ? g + 8 : g, 8 * h + 2 * (t & ~1), q);
  }
}
// As for_quads, with a row reduction: f(r, c, x) (x writable) returns the piece's contribution to row r; row(r, sum)
// gets the sum over the tile row's 16 columns, on the one lane of each row whose t < 2 (lanes t and t ^ 2 hold a
// row's four pieces: one shuffle), the same lane for row r in every call.
template <class F, class Row>
__device__ __forceinline__ void for_quads_rows(const FragC& acc, float* sc, F&& f, Row&& row) {
  (void)sc;
  const int l = lane_id(), g = l >> 2, t = l & 3;
  const bool odd = (t & 1) != 0;
  const int r = odd ? g + 8 : g;
  float part = 0.f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float q[4];
    quad_piece(acc, h, odd, q);
    part += f(r, 8 * h + 2 * (t & ~1), q);
  }
  part += __shfl_xor_sync(0xffffffffu, part, 2);
  if (t < 2) row(r, part);
}
#else
using FragC = wm::fragment<wm::accumulator, 16, 16, 16, float>;
template <class L>
using FragA = wm::fragment<wm::matrix_a, 16, 16, 16, bf16, L>;
template <class L>
using FragB = wm::fragment<wm::matrix_b, 16, 16, 16, bf16, L>;
template <class L>
inline void load_a(FragA<L>& f, const bf16* a, int lda) { wm::load_matrix_sync(f, a, unsigned(lda)); }
template <class L>
inline void load_b(FragB<L>& f, const bf16* b, int ldb) { wm::load_matrix_sync(f, b, unsigned(ldb)); }
template <class LA, class LB>
inline void mma(FragC& acc, const FragA<LA>& a, const FragB<LB>& b) { wm::mma_sync(acc, a, b, acc); }
template <class L>
struct AWalk {
  const bf16* p;
  int ld;
  size_t step;
  AWalk(const bf16* a, int lda) : p(a), ld(lda), step(std::is_same_v<L, wm::row_major> ? 16 : size_t(16) * lda) {}
  void load(FragA<L>& f) const { load_a(f, p, ld); }
  void next() { p += step; }
};
template <class L>
struct BWalk {
  const bf16* p;
  int ld;
  size_t step;
  BWalk(const bf16* b, int ldb) : p(b), ld(ldb), step(std::is_same_v<L, wm::row_major> ? size_t(16) * ldb : 16) {}
  void load(FragB<L>& f) const { load_b(f, p, ld); }
  void next() { p += step; }
};
inline void fill(FragC& acc, float v) { wm::fill_fragment(acc, v); }
inline void scale(FragC& acc, float m) {
  if (!emu_lane0()) return;
  for (auto& r : acc.x)
    for (float& e : r) e *= m;
}
inline void scale_rows(FragC& acc, const float* m) {
  if (!emu_lane0()) return;
  for (int r = 0; r < 16; ++r)
    for (float& e : acc.x[r]) e *= m[r];
}
inline void store_acc(float* p, const FragC& acc, int ld) { wm::store_matrix_sync(p, acc, unsigned(ld), wm::mem_row_major); }
inline void load_acc(FragC& acc, const float* p, int ld) {
  wm::check_ptr(p, unsigned(ld), 4);
  if (!emu_lane0()) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) acc.x[r][c] = p[r * ld + c];
}
template <class F, class Row>
inline void for_quads_rows(const FragC& acc, float* sc, F&& f, Row&& row) {  // through the scratch tile, a row per lane
  store_acc(sc, acc, kScrLd);
  __syncwarp();
  const Lanes w = lanes();
  for (int r = w.lane; r < 16; r += w.nlanes) {
    float part = 0.f;
    for (int c = 0; c < 16; c += 4) {
      float x[4] = {sc[r * kScrLd + c], sc[r * kScrLd + c + 1], sc[r * kScrLd + c + 2], sc[r * kScrLd + c + 3]};
      part += f(r, c, x);
    }
    row(r, part);
  }
  __syncwarp();
}
template <class F>
inline void for_quads(const FragC& acc, float* sc, F&& f) {  // through the scratch tile sc (16 x kScrLd)
  store_acc(sc, acc, kScrLd);
  __syncwarp();
  const Lanes w = lanes();
  for (int q = w.lane; q < 64; q += w.nlanes) {
    const int r = q >> 2, c = (q & 3) << 2;
    const float x[4] = {sc[r * kScrLd + c], sc[r * kScrLd + c + 1], sc[r * kScrLd + c + 2], sc[r * kScrLd + c + 3]};
    f(r, c, x);
  }
  __syncwarp();
}
#endif

// acc += a (16 x 16, layout LA) * b (16 x 16, layout LB), bf16 operands in shared memory.
template <class LA, class LB>
__device__ __forceinline__ void mma16(FragC& acc, const bf16* a, int lda, const bf16* b, int ldb) {
  FragA<LA> fa;
  FragB<LB> fb;
  load_a(fa, a, lda);
  load_b(fb, b, ldb);
  mma(acc, fa, fb);
}

// The accumulator (or two) into the warp's f32 scratch tile(s) (16 x kScrLd, row-major), then f() on the
// warp's lanes (the epilogue, reading the scratch) between __syncwarp()s.
template <class F>
__device__ __forceinline__ void through_scratch(float* sc, const FragC& acc, F&& f) {
  store_acc(sc, acc, kScrLd);
  __syncwarp();
  f();
  __syncwarp();
}
template <class F>
__device__ __forceinline__ void through_scratch(float* sc, const FragC& a1, float* sc2, const FragC& a2, F&& f) {
  store_acc(sc, a1, kScrLd);
  store_acc(sc2, a2, kScrLd);
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
