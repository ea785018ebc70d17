// Attention-score softmax over the last dimension of a (rows, cols) tensor:
//   probs = softmax(scale * scores + mask[row / rows_per_batch]),
//   out   = dropout(probs)  (kDropout only; kept values scaled by 1 / (1 - p))
// mask: optional additive float32 (batches, cols), e.g. 0 / -inf for padding.
// A row whose every logit is -inf ("fully masked") gets all-zero probs and
// a zero gradient. Arithmetic is float32 whatever T is.
#pragma once
#include "philox.cuh"
#include "reduce.cuh"

namespace bertspeed {

struct Dropout {
  uint64_t seed, offset;  // element e of the tensor uses philox(seed, offset + e)
  uint32_t threshold;     // keep iff the top 24 random bits >= threshold
  float keep_scale;       // 1 / (1 - p)
  __device__ __forceinline__ float mask(size_t element) const {
    return dropout_keep(seed, offset + element, threshold) ? keep_scale : 0.0f;
  }
};

template <typename T>
struct Logits {
  const T* scores;
  const float* mask;  // may be null
  int cols, rows_per_batch;
  float scale;
  __device__ __forceinline__ float operator()(int row, int col) const {
    float v = scale * to_float(scores[size_t(row) * cols + col]);
    if (mask) v += mask[size_t(row / rows_per_batch) * cols + col];
    return v;
  }
};

template <typename T, bool kDropout>
__global__ void __launch_bounds__(kRowThreads) softmax_fwd_kernel(Logits<T> logit, T* probs, T* out,
                                                                  Dropout dropout) {
  const int row = blockIdx.x, cols = logit.cols;
  const size_t offset = size_t(row) * cols;
  float top = -INFINITY;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) top = fmaxf(top, logit(row, c));
  top = block_reduce(top, MaxOp());
  if (top == -INFINITY) {  // fully masked row (block-uniform exit)
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      probs[offset + c] = from_float<T>(0.0f);
      if (kDropout) out[offset + c] = from_float<T>(0.0f);
    }
    return;
  }
  float sum = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(logit(row, c) - top);
  const float inv_sum = 1.0f / block_reduce(sum, SumOp());
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float p = expf(logit(row, c) - top) * inv_sum;
    probs[offset + c] = from_float<T>(p);
    if (kDropout) out[offset + c] = from_float<T>(p * dropout.mask(offset + c));
  }
}

// grad_scores = scale * p * (g - sum(g * p)),  g = grad_out (* dropout mask).
template <typename T, bool kDropout>
__global__ void __launch_bounds__(kRowThreads) softmax_bwd_kernel(const T* grad_out, const T* probs, T* grad_in,
                                                                  int cols, float scale, Dropout dropout) {
  const size_t offset = size_t(blockIdx.x) * cols;
  float dot = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float g = to_float(grad_out[offset + c]);
    if (kDropout) g *= dropout.mask(offset + c);
    dot += g * to_float(probs[offset + c]);
  }
  dot = block_reduce(dot, SumOp());
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float g = to_float(grad_out[offset + c]);
    if (kDropout) g *= dropout.mask(offset + c);
    const float p = to_float(probs[offset + c]);
    grad_in[offset + c] = from_float<T>(scale * p * (g - dot));
  }
}

}  // namespace bertspeed
