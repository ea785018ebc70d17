// LayerNorm over the last dimension of a (rows, cols) tensor, with an
// optional bias (cols) and residual (rows, cols) added first:
//   pre = x + bias + residual,  y = (pre - mean) * rstd * gamma + beta
// T: input/output type (float, __half, __nv_bfloat16); W: gamma/beta type
// (T or float). Statistics and arithmetic are float32; mean and rstd are
// saved (float32, one per row) for the backward pass, which recomputes `pre`.
#pragma once
#include "reduce.cuh"

namespace bertspeed {

constexpr int kRowThreads = 128;  // threads per block for the row kernels
constexpr int kParamTileCols = 32, kParamTileRows = 8;

template <typename T>
struct PreNorm {  // the LayerNorm input before normalisation
  const T* x;
  const T* residual;  // may be null
  const T* bias;      // may be null
  __device__ __forceinline__ float operator()(size_t row_offset, int col) const {
    float v = to_float(x[row_offset + col]);
    if (bias) v += to_float(bias[col]);
    if (residual) v += to_float(residual[row_offset + col]);
    return v;
  }
};

template <typename T, typename W>
__global__ void __launch_bounds__(kRowThreads) layer_norm_fwd_kernel(
    PreNorm<T> pre, const W* gamma, const W* beta, T* y, float* mean_out, float* rstd_out, int cols, float eps) {
  const size_t offset = size_t(blockIdx.x) * cols;
  float sum = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += pre(offset, c);
  const float mean = block_reduce(sum, SumOp()) / cols;
  float squares = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = pre(offset, c) - mean;
    squares += d * d;
  }
  const float rstd = rsqrtf(block_reduce(squares, SumOp()) / cols + eps);
  if (threadIdx.x == 0) {
    mean_out[blockIdx.x] = mean;
    rstd_out[blockIdx.x] = rstd;
  }
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float normed = (pre(offset, c) - mean) * rstd;
    y[offset + c] = from_float<T>(normed * to_float(gamma[c]) + to_float(beta[c]));
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma.
template <typename T, typename W>
__global__ void __launch_bounds__(kRowThreads) layer_norm_bwd_input_kernel(
    const T* dy, PreNorm<T> pre, const W* gamma, const float* mean, const float* rstd, T* dx, int cols) {
  const size_t offset = size_t(blockIdx.x) * cols;
  const float mu = mean[blockIdx.x], inv_std = rstd[blockIdx.x];
  float sum_g = 0.0f, sum_g_xhat = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = to_float(dy[offset + c]) * to_float(gamma[c]);
    sum_g += g;
    sum_g_xhat += g * (pre(offset, c) - mu) * inv_std;
  }
  const float mean_g = block_reduce(sum_g, SumOp()) / cols;
  const float mean_g_xhat = block_reduce(sum_g_xhat, SumOp()) / cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = to_float(dy[offset + c]) * to_float(gamma[c]);
    const float xhat = (pre(offset, c) - mu) * inv_std;
    dx[offset + c] = from_float<T>(inv_std * (g - mean_g - xhat * mean_g_xhat));
  }
}

// Stage 1 of dgamma = sum_rows(dy * xhat), dbeta = sum_rows(dy): block
// (32, 8) sums a 32-column tile over one chunk of rows into float partials.
template <typename T>
__global__ void __launch_bounds__(kParamTileCols * kParamTileRows) layer_norm_bwd_params_partial_kernel(
    const T* dy, PreNorm<T> pre, const float* mean, const float* rstd, float* dgamma_part, float* dbeta_part,
    int rows, int cols, int rows_per_chunk) {
  __shared__ float tile_g[kParamTileRows][kParamTileCols + 1];
  __shared__ float tile_b[kParamTileRows][kParamTileCols + 1];
  const int col = blockIdx.x * kParamTileCols + threadIdx.x;
  const int first = blockIdx.y * rows_per_chunk;
  const int last = min(rows, first + rows_per_chunk);
  float acc_g = 0.0f, acc_b = 0.0f;
  if (col < cols) {
    for (int r = first + threadIdx.y; r < last; r += kParamTileRows) {
      const size_t offset = size_t(r) * cols;
      const float d = to_float(dy[offset + col]);
      acc_g += d * (pre(offset, col) - mean[r]) * rstd[r];
      acc_b += d;
    }
  }
  tile_g[threadIdx.y][threadIdx.x] = acc_g;
  tile_b[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    for (int i = 1; i < kParamTileRows; ++i) {
      acc_g += tile_g[i][threadIdx.x];
      acc_b += tile_b[i][threadIdx.x];
    }
    dgamma_part[size_t(blockIdx.y) * cols + col] = acc_g;
    dbeta_part[size_t(blockIdx.y) * cols + col] = acc_b;
  }
}

// Stage 2: one thread per column adds the chunk partials.
template <typename W>
__global__ void layer_norm_bwd_params_final_kernel(const float* dgamma_part, const float* dbeta_part, W* dgamma,
                                                   W* dbeta, int chunks, int cols) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float g = 0.0f, b = 0.0f;
  for (int i = 0; i < chunks; ++i) {
    g += dgamma_part[size_t(i) * cols + col];
    b += dbeta_part[size_t(i) * cols + col];
  }
  dgamma[col] = from_float<W>(g);
  dbeta[col] = from_float<W>(b);
}

}  // namespace bertspeed
