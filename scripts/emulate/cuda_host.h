// Host emulation of the CUDA built-ins for the CPU emulation harnesses of the tensor-core kernels
// (scripts/lr_tc_emulate.cc, scripts/delta_emulate.cc): include first, before any kernel source. Supplies
// threadIdx / blockIdx / blockDim / gridDim, __syncthreads / __syncthreads_and / __syncwarp, emu_shfl_xor (the
// warp shuffle, with SEQMIX_EMU_THREADS only), __expf, the block
// launch (emu::launch: shared memory NaN-filled per block), NaN-filled host buffers (emu::Buf), rounding and
// the max-relative-error comparison. Defines SEQMIX_TC_EMULATE, under which layers/mixers/common/
// tc_tiles.cuh supplies nvcuda::wmma on whole 16 x 16 tiles and the shared-memory pointer.
//
// SEQMIX_EMU_THREADS=0 (default): one thread per block for the tensor-core kernels (their loops then cover
// every tile / piece / element; syncs are no-ops); a launch of n threads runs the body n times in turn.
// SEQMIX_EMU_THREADS=1: the real block size, one std::thread per CUDA thread, __syncthreads / __syncwarp as
// std::barriers: a missing barrier shows as wrong results (a __syncthreads removed from chunk_fwd_tc gave
// o errors of 0.35), a divergent one hangs. ThreadSanitizer did not report that seeded race, so it is no
// race detector here.
#pragma once
#define SEQMIX_EMU_CUDA_HOST_H 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __global__
#define __global__
#undef __shared__
#define __shared__

#ifndef SEQMIX_EMU_THREADS
#define SEQMIX_EMU_THREADS 0
#endif
#if SEQMIX_EMU_THREADS
#include <atomic>
#include <barrier>
#include <memory>
#include <thread>
thread_local uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim, gridDim;
std::unique_ptr<std::barrier<>> g_block_bar;
std::vector<std::unique_ptr<std::barrier<>>> g_warp_bar;
std::atomic<int> g_and{1};
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline int __syncthreads_and(int x) {
  if (!x) g_and.store(0);
  g_block_bar->arrive_and_wait();
  const int r = g_and.load();
  g_block_bar->arrive_and_wait();
  if (threadIdx.x == 0) g_and.store(1);
  g_block_bar->arrive_and_wait();
  return r;
}
inline void __syncwarp(unsigned = 0xffffffffu) { g_warp_bar[threadIdx.x / 32]->arrive_and_wait(); }
// __shfl_xor_sync over the whole warp: a slot per thread between two warp barriers.
std::vector<float> g_shfl;
inline float emu_shfl_xor(float x, int m) {
  const unsigned t = threadIdx.x;
  g_shfl[t] = x;
  __syncwarp();
  const float r = g_shfl[(t & ~31u) | ((t & 31u) ^ unsigned(m))];
  __syncwarp();
  return r;
}
// WMMA (tc_tiles.cuh's emulation): lane 0 of each warp does the whole tile.
inline bool emu_lane0() { return threadIdx.x % 32 == 0; }
#else
uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
inline void __syncthreads() {}
inline int __syncthreads_and(int x) { return x; }
inline void __syncwarp(unsigned = 0xffffffffu) {}
inline bool emu_lane0() { return true; }
inline float emu_shfl_xor(float, int) {  // a shuffle needs the other lanes running: SEQMIX_EMU_THREADS=1
  std::fprintf(stderr, "emu_shfl_xor: build with SEQMIX_EMU_THREADS=1 (THREADS=1)\n");
  std::abort();
}
#endif
inline float __expf(float x) { return std::exp(x); }
template <class T>
inline T __ldg(const T* p) {  // the read-only cache load: a plain load here
  return *p;
}

#define SEQMIX_TC_EMULATE 1
#include "layers/mixers/common/tc_tiles.cuh"

namespace emu {

// The block size a tensor-core kernel of `threads` threads runs with here: the real one with
// SEQMIX_EMU_THREADS, else 1.
constexpr int block_threads(int threads) { return SEQMIX_EMU_THREADS ? threads : 1; }

// Runs kernel() for every block of grid and every one of `threads` threads (in turn, or one std::thread each
// with SEQMIX_EMU_THREADS), with smem bytes of 128-byte aligned, NaN-filled shared memory per block
// (tc::emu_smem; null when smem is 0): a read of an unwritten operand shows as NaN.
template <class K>
void launch(dim3 grid, int threads, size_t smem, K&& kernel) {
  std::vector<unsigned char> buf(smem + 128);
  unsigned char* aligned = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(buf.data()) + 127) & ~uintptr_t(127));
  gridDim = grid;
  blockDim = dim3(unsigned(threads), 1, 1);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = make_uint3(x, y, z);
        if (smem) std::memset(aligned, 0xff, smem);  // NaN
        seqmix::mixers::tc::emu_smem = smem ? aligned : nullptr;
#if SEQMIX_EMU_THREADS
        g_block_bar = std::make_unique<std::barrier<>>(threads);
        g_warp_bar.clear();
        g_shfl.assign(size_t(threads), 0.f);
        for (int w = 0; w < (threads + 31) / 32; ++w) g_warp_bar.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = make_uint3(unsigned(t), 0, 0);
            kernel();
          });
        for (auto& th : pool) th.join();
#else
        for (int t = 0; t < threads; ++t) {
          threadIdx = make_uint3(unsigned(t), 0, 0);
          kernel();
        }
#endif
      }
}

// A 256-byte aligned host buffer of n elements, NaN-filled (0xff bytes): an output left unwritten shows.
template <typename T>
struct Buf {
  T* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t n_ = 0) : n(n_) {
    if (n) {
      p = static_cast<T*>(std::aligned_alloc(256, ((n * sizeof(T) + 255) / 256) * 256));
      std::memset(static_cast<void*>(p), 0xff, n * sizeof(T));
    }
  }
  ~Buf() { std::free(p); }
  Buf(Buf&& o) noexcept : p(o.p), n(o.n) {
    o.p = nullptr;
    o.n = 0;
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  size_t size() const { return n; }
  const T& operator[](size_t i) const { return p[i]; }
};

// x rounded to T (bf16, f16 or f32) and back.
template <class T>
double round_to(double x) {
  return double(seqmix::mixers::tc::tof(seqmix::mixers::tc::fromf<T>(float(x))));
}

// max |got - ref| / max(max |ref|, 1e-3); infinite (and *bad set) when got has a non-finite value or another size.
inline double max_rel(const std::vector<double>& got, const std::vector<double>& ref, bool* bad = nullptr) {
  if (got.size() != ref.size()) {
    if (bad) *bad = true;
    return INFINITY;
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) {
      if (bad) *bad = true;
      return INFINITY;
    }
    num = std::max(num, std::abs(got[i] - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / std::max(den, 1e-3);
}

}  // namespace emu
