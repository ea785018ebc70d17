// C entry points of the CPU harness library (loaded by kernels/harness.py
// through ctypes): the real launchers, running the device code on
// emulated CUDA threads (emulate.h). Not part of the GPU build.
#include "launchers.h"
#include "philox.cuh"

using bertspeed::DType;

namespace {

// Each lane shuffles its own lane id (tests the emulated shuffle rules).
__global__ void shuffle_probe_kernel(int down, int arg, int width, int* out) {
  const int lane = int(threadIdx.x);
  out[lane] = down ? __shfl_down_sync(0xffffffffu, lane, unsigned(arg), width)
                   : __shfl_xor_sync(0xffffffffu, lane, arg, width);
}

// Thread 0 leaves before the block's __syncthreads (a bug the emulation must report).
__global__ void divergent_sync_kernel(int* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

}  // namespace

extern "C" {

const char* harness_error_string(int code) { return bertspeed::error_string(code); }

int harness_layer_norm_forward(int x_type, int w_type, const void* x, const void* residual, const void* bias,
                               const void* gamma, const void* beta, void* y, float* mean, float* rstd,
                               int64_t rows, int64_t cols, float eps) {
  return bertspeed::layer_norm_forward(DType(x_type), DType(w_type), x, residual, bias, gamma, beta, y, mean, rstd,
                                       rows, cols, eps, nullptr);
}

int64_t harness_layer_norm_backward_workspace(int64_t rows, int64_t cols) {
  return bertspeed::layer_norm_backward_workspace(rows, cols);
}

int harness_layer_norm_backward(int x_type, int w_type, const void* dy, const void* x, const void* residual,
                                const void* bias, const void* gamma, const float* mean, const float* rstd, void* dx,
                                void* dgamma, void* dbeta, float* workspace, int64_t rows, int64_t cols) {
  return bertspeed::layer_norm_backward(DType(x_type), DType(w_type), dy, x, residual, bias, gamma, mean, rstd, dx,
                                        dgamma, dbeta, workspace, rows, cols, nullptr);
}

int harness_softmax_forward(int type, const void* scores, const float* mask, void* probs, void* out, int64_t rows,
                            int64_t cols, int64_t rows_per_batch, float scale, double dropout_p, uint64_t seed,
                            uint64_t offset) {
  return bertspeed::softmax_forward(DType(type), scores, mask, probs, out, rows, cols, rows_per_batch, scale,
                                    dropout_p, seed, offset, nullptr);
}

int harness_softmax_backward(int type, const void* grad_out, const void* probs, void* grad_in, int64_t rows,
                             int64_t cols, float scale, double dropout_p, uint64_t seed, uint64_t offset) {
  return bertspeed::softmax_backward(DType(type), grad_out, probs, grad_in, rows, cols, scale, dropout_p, seed,
                                     offset, nullptr);
}

void harness_shuffle_probe(int down, int arg, int width, int* out) {
  BERTSPEED_LAUNCH(shuffle_probe_kernel, dim3(1), dim3(32), nullptr, down, arg, width, out);
}

void harness_divergent_sync_probe(int* out) {
  BERTSPEED_LAUNCH(divergent_sync_kernel, dim3(1), dim3(64), nullptr, out);
}

void harness_philox_words(uint64_t seed, uint64_t first, int64_t n, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = bertspeed::philox_word(seed, first + uint64_t(i));
}

}  // extern "C"
