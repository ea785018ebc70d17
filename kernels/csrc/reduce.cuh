// Warp and block reductions in float32, shared by the LayerNorm and softmax kernels.
#pragma once
#include "cuda_compat.h"

// Test hook: -DBERTSPEED_PLANTED_BUG_SKIP_SHUFFLE=<offset> drops that shuffle
// step from every warp reduction; the CPU harness test proves it is caught.
#ifndef BERTSPEED_PLANTED_BUG_SKIP_SHUFFLE
#define BERTSPEED_PLANTED_BUG_SKIP_SHUFFLE 0
#endif

namespace bertspeed {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
  static constexpr float identity = 0.0f;
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a > b ? a : b; }
  static constexpr float identity = -INFINITY;
};

// Butterfly reduction: every lane ends with the warp's result.
template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    if (offset == BERTSPEED_PLANTED_BUG_SKIP_SHUFFLE) continue;
    v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

// Every thread of the block gets the result. blockDim.x must be a multiple of
// 32 (and at most 1024); the whole block must call it (it syncs).
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, Op op) {
  __shared__ float partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_reduce(v, op);
  __syncthreads();  // a previous call may still be reading `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / kWarpSize) ? partial[lane] : Op::identity;
  return warp_reduce(v, op);
}

}  // namespace bertspeed
