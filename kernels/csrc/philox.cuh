// Counter-based random bits for dropout: Philox4x32-10 (Salmon et al., SC'11).
// Element i of a tensor uses word (i % 4) of philox(seed, offset + i / 4), so
// any thread regenerates any element's bits; kernels/reference.py computes
// the same bits with torch ops and the CPU harness checks they agree.
#pragma once
#include "cuda_compat.h"

namespace bertspeed {

__host__ __device__ __forceinline__ uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

__host__ __device__ __forceinline__ uint32_t philox_word(uint64_t seed, uint64_t element) {
  const uint64_t counter = element / 4;
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  switch (element % 4) {
    case 0: return c0;
    case 1: return c1;
    case 2: return c2;
    default: return c3;
  }
}

// Keep an element iff its top 24 random bits are >= floor(p * 2^24).
__host__ __device__ __forceinline__ bool dropout_keep(uint64_t seed, uint64_t element, uint32_t threshold) {
  return (philox_word(seed, element) >> 8) >= threshold;
}

}  // namespace bertspeed
