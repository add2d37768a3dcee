// Faster variants of the tensor-core attention kernels, selected at run time (SEQMIX_ATTN_FWD /
// SEQMIX_ATTN_BWD, read once by the launchers in flash_attention.cu; 0 = the kernels of
// flash_attention.cu). Included by flash_attention.cu inside its anonymous namespace, after the PTX
// wrappers, load_tile, FwdParams and BwdParams; the same fragment conventions apply.
//
// Forward flash_fwd_v_kernel<D, Bc, kLazy, kQKUnroll> (variants 1-5):
//   * Bc keys per tile (64 at D = 128 fits 255 registers without spills now that the scale is folded in);
//   * the scale is folded into the exponent: p = 2^(s * scale_log2 - m), one FFMA instead of FMUL + FADD,
//     with the running max kept in the scaled log2 domain (the launcher only picks these for scale > 0);
//   * (Bc = 32 only) warps whose 32 rows see no key of a tile (the diagonal / window edge) skip it;
//   * K / V tile loads through running pointers (load_tile_lean), and at Bc = 64 a rolled QK^T k-loop:
//     what frees the registers for 64-key tiles at D = 128 (ptxas: 255 registers, ~4 bytes of spill);
//   * kLazy: the running max only moves (and O / l are only rescaled) when some row of the warp exceeds
//     it by more than kLazyThresh (log2 units); otherwise the stale max is kept, so p <= 2^kLazyThresh,
//     harmless in f32 / bf16. O / l / lse stay exact: l and O use the same max.
//
// Backward flash_bwd_v_kernel<D, NWR, kLean, kRollS> (variants 1-8): the FA2 kernel of flash_attention.cu generalized to
// 2 * NWR warps and Bc = 32 * NWR keys per CTA (NWR = 4: the default tiling; NWR = 2: 4 warps, 64 keys,
// two CTAs per SM), plus
//   * lse (pre-scaled to log2) and D_i read once per thread per tile into registers (8 + 8 values);
//     p = 2^(s * scale_log2 - lse_2) by one FFMA;
//   * warp-uniform skipping of 16-wide k-steps / whole warp tiles that are entirely masked (diagonal and
//     window-edge tiles): S^T / dP^T mma of fully masked warp tiles, dV / dK k-steps over query blocks
//     that see none of the warp's keys, dQ k-steps over key blocks no query of the warp sees.

constexpr float kLazyThresh = 8.f;

// load_tile with a running source pointer made opaque to the compiler: the per-chunk global addresses are
// formed as the copies are issued instead of being hoisted out of the tile loop into (64-bit) registers.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_lean(uint32_t tile, const bf16_t* g, int64_t stride, int row0, int nrows,
                                               int tid) {
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerIt = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && kRowsPerIt % 8 == 0 && ROWS % kRowsPerIt == 0, "tile split");
  const int r0 = tid / kChunks, ch = tid % kChunks;
  int row = row0 + r0;
  const bf16_t* src = g + int64_t(row) * stride + ch * 8;
  asm volatile("" : "+l"(src));
  const int64_t step = int64_t(kRowsPerIt) * stride;
  const uint32_t dst = tile + uint32_t((r0 * D + ((ch ^ (r0 & 7)) << 3)) * 2);  // (r & 7) == (r0 & 7) for all its
#pragma unroll
  for (int it = 0; it < ROWS / kRowsPerIt; ++it) {
    const bool ok = row < nrows;
    cp_async16(dst + uint32_t(it * kRowsPerIt * D * 2), ok ? src : g, ok);
    src += step;
    row += kRowsPerIt;
  }
}

template <int D, int Bc>
constexpr int fwd_v_smem_bytes() {
  return (kFwdBr * D + 4 * Bc * D) * int(sizeof(bf16_t));  // Q + 2 x K + 2 x V
}

// kQKUnroll: unroll factor of the k-loop of S = Q K^T (0: full). At D = 128 with Bc = 64 a rolled loop is
// what keeps the kernel within 255 registers (ptxas otherwise prefetches fragments of later k-steps and
// spills). kSkip: the masked-warp skip (costs registers: only with Bc = 32).
// MT: 16-row m-tiles per warp; 128 / (16 MT) warps per 128-query CTA (MT = 1: 8 warps of 16 rows, at most
// 128 registers for two CTAs per SM, so 16 warps per SM hide latency; K / V fragments then feed one mma
// each instead of two).
// kSmemEpi: O goes out through this warp's own rows of sQ (only this warp ever reads them) as 16-byte
// row-contiguous stores instead of 4-byte scattered ones.
template <int D, int Bc, bool kLazy, int kQKUnroll, int MT = 2, bool kSmemEpi = false>
__global__ void __launch_bounds__(128 / MT * 2, 2) flash_fwd_v_kernel(FwdParams p) {
  constexpr int kThreads = 128 / MT * 2;  // 8 / MT warps
  constexpr bool kSkip = Bc <= 32;
  constexpr int kUnroll = kQKUnroll > 0 ? kQKUnroll : D / 16;
  constexpr int Br = kFwdBr;
  static_assert(Br == 16 * MT * (kThreads / 32), "128 queries per CTA");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sK = sQ + Br * D;      // [2][Bc * D]
  bf16_t* sV = sK + 2 * Bc * D;  // [2][Bc * D]

  const Geometry& g = p.g;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m_block = int(gridDim.y) - 1 - int(blockIdx.y);  // longest (latest) query tiles first
  const int bh = blockIdx.x;
  const int b = bh / g.H, h = bh % g.H, hk = h / g.group;
  const int q0 = m_block * Br;
  const int q_end = min(q0 + Br, g.Tq);

  const int j_hi = min(g.Tk - 1, q_end - 1 + g.off);
  const int j_lo = g.window > 0 ? max(0, q0 + g.off - g.window + 1) : 0;
  const int n_hi = j_hi >= j_lo ? j_hi / Bc : -1;
  const int n_lo = j_hi >= j_lo ? j_lo / Bc : 0;

  const bf16_t* qg = p.q + b * p.sq.b + h * p.sq.h;
  const bf16_t* kg = p.k + b * p.sk.b + hk * p.sk.h;
  const bf16_t* vg = p.v + b * p.sv.b + hk * p.sv.h;

  if (n_hi >= n_lo) {
    load_tile<D, Br, kThreads>(sQ, qg, p.sq.t, q0, g.Tq, tid);
    load_tile<D, Bc, kThreads>(sK, kg, p.sk.t, n_hi * Bc, g.Tk, tid);
    load_tile<D, Bc, kThreads>(sV, vg, p.sv.t, n_hi * Bc, g.Tk, tid);
  }
  cp_async_commit();

  float o_acc[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o_acc[mt][i][0] = o_acc[mt][i][1] = o_acc[mt][i][2] = o_acc[mt][i][3] = 0.f;
  // Scaled log2-domain row max (rows g, g + 8 of each m-tile; -inf: nothing seen yet); partial row sums.
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m_run[mt][0] = m_run[mt][1] = -INFINITY, l_run[mt][0] = l_run[mt][1] = 0.f;

  const float sl2 = p.scale_log2;
  const int wrow0 = q0 + warp * 16 * MT;         // this warp's first row
  const int row_base = wrow0 + (lane >> 2);  // m-tile mt's rows: row_base + 16 mt + {0, 8}

  // ldmatrix byte offsets. Every fragment row address of this lane is row * 2D + 16 (chunk ^ (lane & 7))
  // with chunk = 2 k + (a lane bit), i.e. (lane base) ^ (32 k): one register per operand layout, XORed with
  // an immediate per k-step (no register per fragment address; that is what lets Bc = 64 fit).
  //   Q (A, rows wrow + 16 mt + rA) and V (B^T by .trans, rows 16 t + rA): rA = (lane & 7) + 8 ((lane >> 3) & 1),
  //     chunk bit lane >> 4;  K (B, rows 16 nn + rB): rB = (lane & 7) + 8 (lane >> 4), chunk bit (lane >> 3) & 1.
  const uint32_t off_a =
      uint32_t(((lane & 7) + ((lane >> 3) & 1) * 8) * 2 * D + ((((lane >> 4) ^ (lane & 7))) << 4));
  const uint32_t off_b =
      uint32_t(((lane & 7) + (lane >> 4) * 8) * 2 * D + (((((lane >> 3) & 1) ^ (lane & 7))) << 4));
  const uint32_t sQ_w = smem_addr(sQ) + uint32_t(warp * 16 * MT * 2 * D);
  const uint32_t sK_a = smem_addr(sK), sV_a = smem_addr(sV);

  for (int n = n_hi, it = 0; n >= n_lo; --n, ++it) {
    const int buf = it & 1;
    cp_async_wait_all();
    __syncthreads();  // tile n has landed, and every warp is done with tile n + 1 (buffer buf ^ 1)
    if (n - 1 >= n_lo) {
      int bb = b, hh = hk;
      asm volatile("" : "+r"(bb), "+r"(hh));  // K / V row pointers recomputed here, not held across the loop
      load_tile_lean<D, Bc, kThreads>(smem_addr(sK + (buf ^ 1) * Bc * D), p.k + bb * p.sk.b + hh * p.sk.h, p.sk.t,
                                      (n - 1) * Bc, g.Tk, tid);
      load_tile_lean<D, Bc, kThreads>(smem_addr(sV + (buf ^ 1) * Bc * D), p.v + bb * p.sv.b + hh * p.sv.h, p.sv.t,
                                      (n - 1) * Bc, g.Tk, tid);
    }
    cp_async_commit();
    const int k0 = n * Bc;
    // Warp-uniform: no row of this warp sees any key of the tile (all after the diagonal, or all before the
    // window): the tile changes nothing for this warp.
    if (kSkip && (k0 > wrow0 + 16 * MT - 1 + g.off || (g.window > 0 && k0 + Bc - 1 <= wrow0 + g.off - g.window)))
      continue;
    uint32_t oa = off_a, ob = off_b;
    asm volatile("" : "+r"(oa), "+r"(ob));  // opaque here: the XORed addresses are formed per use, not hoisted
    const uint32_t sKb = sK_a + uint32_t(buf * Bc * D * 2);
    const uint32_t sVb = sV_a + uint32_t(buf * Bc * D * 2);

    float s[MT][Bc / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < Bc / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll kUnroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4(qa[mt], sQ_w + uint32_t(mt * 16 * 2 * D) + (oa ^ uint32_t(kk * 32)));
#pragma unroll
      for (int nn = 0; nn < Bc / 16; ++nn) {
        uint32_t kf[4];
        ldmatrix_x4(kf, sKb + uint32_t(nn * 16 * 2 * D) + (ob ^ uint32_t(kk * 32)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * nn], qa[mt], kf[0], kf[1]);
          mma_bf16(s[mt][2 * nn + 1], qa[mt], kf[2], kf[3]);
        }
      }
    }

    // Mask (raw scores; -inf stays -inf through the FFMA below).
    const bool need_mask = k0 + Bc - 1 > wrow0 + g.off || k0 + Bc > g.Tk ||
                           (g.window > 0 && k0 <= wrow0 + 16 * MT - 1 + g.off - g.window);
    if (need_mask) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < Bc / 8; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = row_base + mt * 16 + (e >= 2 ? 8 : 0);
            const int col = k0 + i * 8 + (lane & 3) * 2 + (e & 1);
            const bool visible =
                col <= row + g.off && col < g.Tk && (g.window <= 0 || col > row + g.off - g.window);
            if (!visible) s[mt][i][e] = -INFINITY;
          }
    }

    // Row max of the raw scores (quad shuffles), scaled into the log2 domain (scale > 0).
    float mx[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float m = s[mt][0][2 * r];
#pragma unroll
        for (int i = 0; i < Bc / 8; ++i) m = fmaxf(m, fmaxf(s[mt][i][2 * r], s[mt][i][2 * r + 1]));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        mx[mt][r] = m * sl2;  // -inf stays -inf
      }
    bool rescale = true;
    if constexpr (kLazy) {
      bool need = false;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) need |= mx[mt][r] > m_run[mt][r] + kLazyThresh;
      rescale = __any_sync(0xffffffffu, need);
    }
    if (rescale) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float m_new = fmaxf(m_run[mt][r], mx[mt][r]);
          const float m_use = m_new == -INFINITY ? 0.f : m_new;
          const float corr = fast_exp2(m_run[mt][r] - m_use);  // m_run = -inf: 0 (O and l are 0 anyway)
          m_run[mt][r] = m_new;
          l_run[mt][r] *= corr;
#pragma unroll
          for (int i = 0; i < D / 8; ++i) {
            o_acc[mt][i][2 * r] *= corr;
            o_acc[mt][i][2 * r + 1] *= corr;
          }
        }
    }
    // p = 2^(s scale_log2 - m): with kLazy and no rescale, s scale_log2 <= m + kLazyThresh.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float neg_m = m_run[mt][r] == -INFINITY ? 0.f : -m_run[mt][r];
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < Bc / 8; ++i) {
          s[mt][i][2 * r] = fast_exp2(fmaf(s[mt][i][2 * r], sl2, neg_m));
          s[mt][i][2 * r + 1] = fast_exp2(fmaf(s[mt][i][2 * r + 1], sl2, neg_m));
          sum += s[mt][i][2 * r] + s[mt][i][2 * r + 1];
        }
        l_run[mt][r] += sum;
      }

#pragma unroll
    for (int t = 0; t < Bc / 16; ++t) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack_bf16(s[mt][2 * t][0], s[mt][2 * t][1]);
        pa[mt][1] = pack_bf16(s[mt][2 * t][2], s[mt][2 * t][3]);
        pa[mt][2] = pack_bf16(s[mt][2 * t + 1][0], s[mt][2 * t + 1][1]);
        pa[mt][3] = pack_bf16(s[mt][2 * t + 1][2], s[mt][2 * t + 1][3]);
      }
#pragma unroll
      for (int dd = 0; dd < D / 16; ++dd) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, sVb + uint32_t(t * 16 * 2 * D) + (oa ^ uint32_t(dd * 32)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(o_acc[mt][2 * dd], pa[mt], vf[0], vf[1]);
          mma_bf16(o_acc[mt][2 * dd + 1], pa[mt], vf[2], vf[3]);
        }
      }
    }
  }

  // Epilogue: O / l and lse (natural log). A row that saw no key: O = 0, lse = +inf.
  if constexpr (kSmemEpi) {
    bf16_t* sO = sQ + warp * 16 * MT * D;  // this warp's rows (local row lr = 16 mt + (lane >> 2) + 8 r)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float l = l_run[mt][r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int lr = mt * 16 + (lane >> 2) + r * 8;
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
          *reinterpret_cast<uint32_t*>(sO + swz<D>(lr, i) + (lane & 3) * 2) =
              pack_bf16(o_acc[mt][i][2 * r] * inv, o_acc[mt][i][2 * r + 1] * inv);
        const int row = wrow0 + lr;
        if (row < g.Tq && (lane & 3) == 0)
          p.lse[(int64_t(b) * g.H + h) * g.Tq + row] = l > 0.f ? (m_run[mt][r] + log2f(l)) * kLn2 : INFINITY;
      }
    }
    __syncwarp();
    constexpr int kChunks = D / 8;
#pragma unroll
    for (int it = 0; it < 16 * MT * kChunks / 32; ++it) {
      const int c = it * 32 + lane;
      const int lr = c / kChunks, ch = c % kChunks;
      const int row = wrow0 + lr;
      if (row < g.Tq)
        *reinterpret_cast<uint4*>(p.o + b * p.so.b + int64_t(row) * p.so.t + h * p.so.h + ch * 8) =
            *reinterpret_cast<const uint4*>(sO + swz<D>(lr, ch));
    }
    return;
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = l_run[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int row = row_base + mt * 16 + r * 8;
      if (row < g.Tq) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        bf16_t* orow = p.o + b * p.so.b + int64_t(row) * p.so.t + h * p.so.h + (lane & 3) * 2;
#pragma unroll
        for (int i = 0; i < D / 8; ++i)
          *reinterpret_cast<__nv_bfloat162*>(orow + i * 8) =
              __floats2bfloat162_rn(o_acc[mt][i][2 * r] * inv, o_acc[mt][i][2 * r + 1] * inv);
        if ((lane & 3) == 0)
          p.lse[(int64_t(b) * g.H + h) * g.Tq + row] = l > 0.f ? (m_run[mt][r] + log2f(l)) * kLn2 : INFINITY;
      }
    }
  }
}

// ============================================================================================
// Backward variants
// ============================================================================================

template <int D, int NWR>
constexpr int bwd_v_smem_bytes() {
  constexpr int Bc = 32 * NWR;
  return (2 * Bc * D + 4 * kBwdBr * D + 2 * Bc * kBwdBr) * int(sizeof(bf16_t)) + 4 * kBwdBr * int(sizeof(float));
}

// Warp tiling (2 NWR warps, wr = warp % NWR, wc = warp / NWR, wq = warp & 1, wd = warp >> 1):
//   S^T, dP^T [Bc keys x 64 queries]: keys 32 wr + [0, 32), queries 32 wc + [0, 32)
//   dV, dK    [Bc keys x D]:          keys 32 wr + [0, 32), columns (D/2) wc + [0, D/2)
//   dQ        [64 queries x D]:       queries 32 wq + [0, 32), columns (D/NWR) wd + [0, D/NWR)
// kLean: ldmatrix addresses as (per-lane base) ^ (immediate), the bases made opaque once per query tile, so
// no register is spent per fragment address (see flash_fwd_v_kernel); kRollS: the k-loop of S^T / dP^T
// rolled (fewer registers held for fragment prefetch).
// kStepSkip: the per-k-step skips in dV / dK and dQ (branches inside unrolled mma loops; off: only the
// whole-warp S^T / dP^T skip remains).
template <int D, int NWR, bool kLean, bool kRollS, bool kStepSkip = true>
__global__ void __launch_bounds__(64 * NWR, NWR == 4 ? 1 : 2) flash_bwd_v_kernel(BwdParams p) {
  constexpr int kThreads = 64 * NWR;
  constexpr int Bc = 32 * NWR, Br = kBwdBr;
  static_assert(Br == 64, "two 32-query warp columns");
  constexpr int kNB = D / 16;          // 8-column blocks per warp in dK / dV (D/2 columns)
  constexpr int kQNB = D / (8 * NWR);  // 8-column blocks per warp in dQ (D/NWR columns)
  static_assert(kQNB % 2 == 0, "dQ warp tiles of whole 16-column ldmatrix blocks");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sV = sK + Bc * D;
  bf16_t* sQ = sV + Bc * D;       // [2][Br * D]
  bf16_t* sdO = sQ + 2 * Br * D;  // [2][Br * D]
  bf16_t* sP = sdO + 2 * Br * D;  // P^T  [Bc][Br]
  bf16_t* sdS = sP + Bc * Br;     // dS^T [Bc][Br]
  float* sL = reinterpret_cast<float*>(sdS + Bc * Br);  // [2][Br]
  float* sDv = sL + 2 * Br;                              // [2][Br]

  const Geometry& g = p.g;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp % NWR, wc = warp / NWR, wq = warp & 1, wd = warp >> 1;
  const int n_block = blockIdx.y;
  const int b = blockIdx.x / g.Hkv, hk = blockIdx.x % g.Hkv;
  const int k0 = n_block * Bc;
  const int k_end = min(k0 + Bc, g.Tk);

  const int i_lo = max(0, k0 - g.off);
  int i_hi = g.Tq - 1;
  if (g.window > 0) i_hi = min(i_hi, k_end - 1 - g.off + g.window - 1);
  const int m_lo = i_hi >= i_lo ? i_lo / Br : 0;
  const int n_m = i_hi >= i_lo ? i_hi / Br - m_lo + 1 : 0;
  const int total = n_m * g.group;

  float dk_acc[2][kNB][4], dv_acc[2][kNB][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < kNB; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk_acc[mt][i][e] = dv_acc[mt][i][e] = 0.f;

  const bf16_t* kg = p.k + b * p.sk.b + hk * p.sk.h;
  const bf16_t* vg = p.v + b * p.sv.b + hk * p.sv.h;

  auto load_q_tile = [&](int it, int buf) {
    const int h = hk * g.group + it / n_m;
    const int q0 = (m_lo + it % n_m) * Br;
    load_tile_lean<D, Br, kThreads>(smem_addr(sQ + buf * Br * D), p.q + b * p.sq.b + h * p.sq.h, p.sq.t, q0, g.Tq, tid);
    load_tile_lean<D, Br, kThreads>(smem_addr(sdO + buf * Br * D), p.dout + b * p.sdo.b + h * p.sdo.h, p.sdo.t, q0,
                                    g.Tq, tid);
    const int64_t rowbase = (int64_t(b) * g.H + h) * g.Tq;
    if (tid < Br) {
      const int row = q0 + tid;
      const bool ok = row < g.Tq;
      cp_async4(smem_addr(sL + buf * Br + tid), p.lse + rowbase + (ok ? row : 0), ok);
    } else if (tid < 2 * Br) {
      const int row = q0 + tid - Br;
      const bool ok = row < g.Tq;
      cp_async4(smem_addr(sDv + buf * Br + tid - Br), p.dvec + rowbase + (ok ? row : 0), ok);
    }
  };
  static_assert(kThreads >= 2 * Br, "the lse / D tiles take one thread per row");

  if (total > 0) {
    load_tile<D, Bc, kThreads>(sK, kg, p.sk.t, k0, g.Tk, tid);
    load_tile<D, Bc, kThreads>(sV, vg, p.sv.t, k0, g.Tk, tid);
    load_q_tile(0, 0);
    cp_async_commit();
  }

  // This warp's key rows [kw0, kw0 + 31] in S^T / dV / dK.
  const int kw0 = k0 + wr * 32;

  // Lean ldmatrix byte offsets (kLean). With rA = (lane & 7) + 8 ((lane >> 3) & 1), rB = (lane & 7) +
  // 8 (lane >> 4), c0 = (lane >> 4) ^ (lane & 7), c1 = ((lane >> 3) & 1) ^ (lane & 7), a fragment row
  // address is row * W * 2 + 16 (chunk ^ (row & 7)) where chunk = even constant + lane bit and row & 7 =
  // lane & 7, hence (lane base) ^ (32 k) plus a row-block constant. Warp-dependent chunk offsets (wc, wq, wd
  // terms) are multiples of a power of two above every immediate they are combined with, so they XOR in.
  const uint32_t la_d = uint32_t(((lane & 7) + ((lane >> 3) & 1) * 8) * 2 * D + (((lane >> 4) ^ (lane & 7)) << 4));
  const uint32_t lb_d = uint32_t(((lane & 7) + (lane >> 4) * 8) * 2 * D + (((((lane >> 3) & 1) ^ (lane & 7))) << 4));
  const uint32_t la_r = uint32_t(((lane & 7) + ((lane >> 3) & 1) * 8) * 2 * Br + (((lane >> 4) ^ (lane & 7)) << 4));
  const uint32_t lb_r = uint32_t(((lane & 7) + (lane >> 4) * 8) * 2 * Br + (((((lane >> 3) & 1) ^ (lane & 7))) << 4));
  const uint32_t l_dvdk_b = la_d ^ uint32_t((wc * (D / 16)) << 4);        // dO / Q (.trans) in dV / dK
  const uint32_t l_dq_a = lb_r ^ uint32_t((wq * 4) << 4);                 // dS (.trans) in dQ
  const uint32_t l_dq_b = la_d ^ uint32_t((wd * (D / (8 * NWR))) << 4);  // K (.trans) in dQ
  const uint32_t sK_s = smem_addr(sK), sV_s = smem_addr(sV), sQ_s = smem_addr(sQ), sdO_s = smem_addr(sdO),
                 sP_s = smem_addr(sP), sdS_s = smem_addr(sdS);

  for (int it = 0; it < total; ++it) {
    const int buf = it & 1;
    const int h = hk * g.group + it / n_m;
    const int q0 = (m_lo + it % n_m) * Br;
    cp_async_wait_all();
    __syncthreads();
    if (it + 1 < total) load_q_tile(it + 1, buf ^ 1);
    cp_async_commit();

    const bf16_t* sQb = sQ + buf * Br * D;
    const bf16_t* sdOb = sdO + buf * Br * D;
    const float* sLb = sL + buf * Br;
    const float* sDvb = sDv + buf * Br;
    uint32_t o_ad = la_d, o_bd = lb_d, o_ar = la_r, o_dvdk = l_dvdk_b, o_dqa = l_dq_a, o_dqb = l_dq_b;
    if (kLean) asm volatile("" : "+r"(o_ad), "+r"(o_bd), "+r"(o_ar), "+r"(o_dvdk), "+r"(o_dqa), "+r"(o_dqb));
    const uint32_t sQb_s = sQ_s + uint32_t(buf * Br * D * 2), sdOb_s = sdO_s + uint32_t(buf * Br * D * 2);

    // Is the key block [ka, ka + na) invisible to every query of [qa, qa + nq)? (warp-uniform)
    auto hidden = [&](int ka, int na, int qa, int nq) {
      return ka > qa + nq - 1 + g.off || (g.window > 0 && ka + na - 1 <= qa + g.off - g.window);
    };

    // (1) S^T = K Q^T and (2) dP^T = V dO^T: this warp's 32 keys x 32 queries.
    float st[2][4][4], dpt[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[mt][i][e] = dpt[mt][i][e] = 0.f;
    if (!hidden(kw0, 32, q0 + wc * 32, 32)) {
#pragma unroll(kRollS ? 1 : D / 16)
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[2][4], va[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          if (kLean) {
            const uint32_t a = uint32_t((wr * 32 + mt * 16) * 2 * D) + (o_ad ^ uint32_t(kk * 32));
            ldmatrix_x4(ka[mt], sK_s + a);
            ldmatrix_x4(va[mt], sV_s + a);
          } else {
            const int a_off = swz<D>(wr * 32 + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, kk * 2 + (lane >> 4));
            ldmatrix_x4(ka[mt], smem_addr(sK + a_off));
            ldmatrix_x4(va[mt], smem_addr(sV + a_off));
          }
        }
#pragma unroll
        for (int nn = 0; nn < 2; ++nn) {
          uint32_t qb[4], ob[4];
          if (kLean) {
            const uint32_t a = uint32_t((wc * 32 + nn * 16) * 2 * D) + (o_bd ^ uint32_t(kk * 32));
            ldmatrix_x4(qb, sQb_s + a);
            ldmatrix_x4(ob, sdOb_s + a);
          } else {
            const int b_off = swz<D>(wc * 32 + nn * 16 + (lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1));
            ldmatrix_x4(qb, smem_addr(sQb + b_off));
            ldmatrix_x4(ob, smem_addr(sdOb + b_off));
          }
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma_bf16(st[mt][2 * nn], ka[mt], qb[0], qb[1]);
            mma_bf16(st[mt][2 * nn + 1], ka[mt], qb[2], qb[3]);
            mma_bf16(dpt[mt][2 * nn], va[mt], ob[0], ob[1]);
            mma_bf16(dpt[mt][2 * nn + 1], va[mt], ob[2], ob[3]);
          }
        }
      }
    }

    // (3) P^T = 2^(S^T scale_log2 - lse_2) (masked), dS^T = P^T (dP^T - D). This thread's queries:
    // wc * 32 + i * 8 + (lane & 3) * 2 + {0, 1}.
    float lse2[4][2], dv_i[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int q_l = wc * 32 + i * 8 + (lane & 3) * 2;
      const float2 l2 = *reinterpret_cast<const float2*>(sLb + q_l);
      const float2 d2 = *reinterpret_cast<const float2*>(sDvb + q_l);
      lse2[i][0] = -l2.x * kLog2e;
      lse2[i][1] = -l2.y * kLog2e;
      dv_i[i][0] = d2.x;
      dv_i[i][1] = d2.y;
    }
    const bool need_mask = k0 + Bc - 1 > q0 + g.off || q0 + Br > g.Tq || k0 + Bc > g.Tk ||
                           (g.window > 0 && k0 <= q0 + Br - 1 + g.off - g.window);
    const float sl2 = p.scale_log2;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float pv = fast_exp2(fmaf(st[mt][i][e], sl2, lse2[i][e & 1]));
          if (need_mask) {
            const int key = kw0 + mt * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
            const int q = q0 + wc * 32 + i * 8 + (lane & 3) * 2 + (e & 1);
            const bool visible = key <= q + g.off && q < g.Tq && key < g.Tk &&
                                 (g.window <= 0 || key > q + g.off - g.window);
            if (!visible) pv = 0.f;
          }
          st[mt][i][e] = pv;
          dpt[mt][i][e] = pv * (dpt[mt][i][e] - dv_i[i][e & 1]);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = wr * 32 + mt * 16 + (lane >> 2) + r * 8;
          const int col = wc * 32 + i * 8 + (lane & 3) * 2;
          const int off = swz<Br>(row, col >> 3) + (col & 7);
          *reinterpret_cast<uint32_t*>(sP + off) = pack_bf16(st[mt][i][2 * r], st[mt][i][2 * r + 1]);
          *reinterpret_cast<uint32_t*>(sdS + off) = pack_bf16(dpt[mt][i][2 * r], dpt[mt][i][2 * r + 1]);
        }
      }
    }
    __syncthreads();

    // (4) dV += P^T dO and (5) dK += dS^T Q: this warp's 32 keys x D/2 columns, k-dim = 64 queries; query
    // blocks that see none of the warp's keys are all zero in P^T and dS^T.
#pragma unroll
    for (int t = 0; t < Br / 16; ++t) {
      if (kStepSkip && hidden(kw0, 32, q0 + t * 16, 16)) continue;
      uint32_t pa[2][4], sa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (kLean) {
          const uint32_t a = uint32_t((wr * 32 + mt * 16) * 2 * Br) + (o_ar ^ uint32_t(t * 32));
          ldmatrix_x4(pa[mt], sP_s + a);
          ldmatrix_x4(sa[mt], sdS_s + a);
        } else {
          const int a_off = swz<Br>(wr * 32 + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, t * 2 + (lane >> 4));
          ldmatrix_x4(pa[mt], smem_addr(sP + a_off));
          ldmatrix_x4(sa[mt], smem_addr(sdS + a_off));
        }
      }
#pragma unroll
      for (int dd = 0; dd < kNB / 2; ++dd) {
        uint32_t ob[4], qb[4];
        if (kLean) {
          const uint32_t a = uint32_t(t * 16 * 2 * D) + (o_dvdk ^ uint32_t(dd * 32));
          ldmatrix_x4_trans(ob, sdOb_s + a);
          ldmatrix_x4_trans(qb, sQb_s + a);
        } else {
          const int b_off = swz<D>(t * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, wc * (D / 16) + dd * 2 + (lane >> 4));
          ldmatrix_x4_trans(ob, smem_addr(sdOb + b_off));
          ldmatrix_x4_trans(qb, smem_addr(sQb + b_off));
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_bf16(dv_acc[mt][2 * dd], pa[mt], ob[0], ob[1]);
          mma_bf16(dv_acc[mt][2 * dd + 1], pa[mt], ob[2], ob[3]);
          mma_bf16(dk_acc[mt][2 * dd], sa[mt], qb[0], qb[1]);
          mma_bf16(dk_acc[mt][2 * dd + 1], sa[mt], qb[2], qb[3]);
        }
      }
    }

    // (6) dQ_tile = dS K: this warp's 32 queries x D/NWR columns, k-dim = Bc keys; key blocks no query of
    // the warp sees are zero in dS.
    float dq[2][kQNB][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < kQNB; ++i) dq[mt][i][0] = dq[mt][i][1] = dq[mt][i][2] = dq[mt][i][3] = 0.f;
#pragma unroll
    for (int t = 0; t < Bc / 16; ++t) {
      if (kStepSkip && hidden(k0 + t * 16, 16, q0 + wq * 32, 32)) continue;
      uint32_t da[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        if (kLean)
          ldmatrix_x4_trans(da[mt], sdS_s + uint32_t(t * 16 * 2 * Br) + (o_dqa ^ uint32_t(mt * 32)));
        else
          ldmatrix_x4_trans(da[mt], smem_addr(sdS + swz<Br>(t * 16 + (lane & 7) + (lane >> 4) * 8,
                                                            wq * 4 + mt * 2 + ((lane >> 3) & 1))));
#pragma unroll
      for (int dd = 0; dd < kQNB / 2; ++dd) {
        uint32_t kb[4];
        if (kLean)
          ldmatrix_x4_trans(kb, sK_s + uint32_t(t * 16 * 2 * D) + (o_dqb ^ uint32_t(dd * 32)));
        else
          ldmatrix_x4_trans(kb, smem_addr(sK + swz<D>(t * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                      wd * (D / (8 * NWR)) + dd * 2 + (lane >> 4))));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_bf16(dq[mt][2 * dd], da[mt], kb[0], kb[1]);
          mma_bf16(dq[mt][2 * dd + 1], da[mt], kb[2], kb[3]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int q = q0 + wq * 32 + mt * 16 + (lane >> 2) + r * 8;
        if (q < g.Tq) {
          float* dst = p.dq_acc + ((int64_t(b) * g.Tq + q) * g.H + h) * D + wd * (D / NWR) + (lane & 3) * 2;
#pragma unroll
          for (int i = 0; i < kQNB; ++i) atomic_add2(dst + i * 8, dq[mt][i][2 * r], dq[mt][i][2 * r + 1]);
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = kw0 + mt * 16 + (lane >> 2) + r * 8;
      if (key < g.Tk) {
        const int64_t base = b * p.sdk.b + int64_t(key) * p.sdk.t + hk * p.sdk.h + wc * (D / 2) + (lane & 3) * 2;
#pragma unroll
        for (int i = 0; i < kNB; ++i) {
          *reinterpret_cast<__nv_bfloat162*>(p.dk + base + i * 8) =
              __floats2bfloat162_rn(dk_acc[mt][i][2 * r] * p.scale, dk_acc[mt][i][2 * r + 1] * p.scale);
          *reinterpret_cast<__nv_bfloat162*>(p.dv + base + i * 8) =
              __floats2bfloat162_rn(dv_acc[mt][i][2 * r], dv_acc[mt][i][2 * r + 1]);
        }
      }
    }
  }
}

// ============================================================================================
// Backward pre / post passes for the bf16 tensor-core path (SEQMIX_ATTN_BWD >= 3)
// ============================================================================================

// D_i = rowsum(dO_i * O_i) with 16-byte loads (D / 8 threads per row), and the same rows of dq_acc zeroed
// (replaces the separate memset). Rows are (b, i, h), h fastest.
template <int D>
__global__ void __launch_bounds__(256) dot_do_o_zero_kernel(const bf16_t* __restrict__ dout, Strides sdo,
                                                             const bf16_t* __restrict__ o, Strides so,
                                                             float* __restrict__ dvec, float* __restrict__ dq_acc,
                                                             int B, int Tq, int H) {
  constexpr int kTPR = D / 8;  // threads per row: 8 or 16, a power of two dividing 32
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kTPR;
  const int part = threadIdx.x % kTPR;
  const bool ok = row < int64_t(B) * Tq * H;
  float s = 0.f;
  if (ok) {
    const int h = int(row % H);
    const int i = int((row / H) % Tq);
    const int b = int(row / (int64_t(H) * Tq));
    const uint4 gv = *reinterpret_cast<const uint4*>(dout + b * sdo.b + int64_t(i) * sdo.t + h * sdo.h + part * 8);
    const uint4 ov = *reinterpret_cast<const uint4*>(o + b * so.b + int64_t(i) * so.t + h * so.h + part * 8);
    const uint32_t gw[4] = {gv.x, gv.y, gv.z, gv.w}, ow[4] = {ov.x, ov.y, ov.z, ov.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // bf16 -> f32 is exact as a 16-bit shift (low half = lower column)
      s += __uint_as_float(gw[k] << 16) * __uint_as_float(ow[k] << 16) +
           __uint_as_float(gw[k] & 0xffff0000u) * __uint_as_float(ow[k] & 0xffff0000u);
    }
    float4* z = reinterpret_cast<float4*>(dq_acc + row * D + part * 8);
    z[0] = make_float4(0.f, 0.f, 0.f, 0.f);
    z[1] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int off = kTPR / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (ok && part == 0) {
    const int h = int(row % H);
    const int i = int((row / H) % Tq);
    const int b = int(row / (int64_t(H) * Tq));
    dvec[(int64_t(b) * H + h) * Tq + i] = s;
  }
}

// dq = dq_acc * scale as bf16, 8 elements per thread (n a multiple of 8).
__global__ void dq_convert8_kernel(const float* __restrict__ acc, bf16_t* __restrict__ dq, int64_t n8, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 a = reinterpret_cast<const float4*>(acc)[2 * i];
    const float4 c = reinterpret_cast<const float4*>(acc)[2 * i + 1];
    uint4 out;
    out.x = pack_bf16(a.x * scale, a.y * scale);
    out.y = pack_bf16(a.z * scale, a.w * scale);
    out.z = pack_bf16(c.x * scale, c.y * scale);
    out.w = pack_bf16(c.z * scale, c.w * scale);
    reinterpret_cast<uint4*>(dq)[i] = out;
  }
}
