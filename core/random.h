// Philox4x32-10 counter-based RNG: the same (seed, counter) gives the same numbers on the CPU and the
// GPU, so a seed gives identical weights and dropout masks on either device.
//
// Mapping, shared by every backend:
//   uniform element i of a draw at (seed, offset): block = offset + i / 4, lane = i % 4,
//     r = philox(counter = {lo(block), hi(block), 0, 0}, key = {lo(seed), hi(seed)}),
//     u = ((r[lane] >> 8) + 0.5) * 2^-24, in (0, 1).
//   normal element i: block = offset + i / 2, (u1, u2) = lanes 2*(i%2), 2*(i%2)+1,
//     z = sqrt(-2 ln u1) * cos(2 pi u2).
// A Generator hands out disjoint block ranges: a draw of n uniforms advances the offset by
// ceil(n / 4) blocks, n normals by ceil(n / 2).
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace seqmix {

struct PhiloxOut {
  uint32_t v[4];
};

SEQMIX_HD PhiloxOut philox4x32_10(uint64_t block, uint64_t seed) {
  uint32_t c0 = uint32_t(block), c1 = uint32_t(block >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = uint32_t(p1);
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = uint32_t(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

SEQMIX_HD float philox_to_unit(uint32_t r) { return (float(r >> 8) + 0.5f) * (1.0f / 16777216.0f); }

SEQMIX_HD float philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  PhiloxOut r = philox4x32_10(offset + i / 4, seed);
  return philox_to_unit(r.v[i % 4]);
}

SEQMIX_HD float philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  PhiloxOut r = philox4x32_10(offset + i / 2, seed);
  int pair = int(i % 2);
  float u1 = philox_to_unit(r.v[2 * pair]);
  float u2 = philox_to_unit(r.v[2 * pair + 1]);
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
#else
  return float(std::sqrt(-2.0 * std::log(double(u1))) * std::cos(6.283185307179586 * double(u2)));
#endif
}

// A stream of Philox blocks. Not thread-safe: one per thread or guarded by the caller.
struct Generator {
  uint64_t seed = 0;
  uint64_t offset = 0;  // next unused block
  explicit Generator(uint64_t s = 0) : seed(s) {}
  // Reserves `blocks` blocks and returns the first.
  uint64_t take(uint64_t blocks) {
    uint64_t o = offset;
    offset += blocks;
    return o;
  }
};

Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace seqmix
