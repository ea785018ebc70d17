// Host launchers for the fused kernels: raw pointers, a stream, an error code.
// Free of torch and of CUDA headers, so the torch binding (g++), the CUDA
// build (nvcc) and the CPU harness (g++ with the emulation) all include it.
#pragma once
#include <cstdint>

namespace bertspeed {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

constexpr int kUnsupportedDtype = -1;
constexpr int kBadShape = -2;
const char* error_string(int code);  // 0 = success

// x, residual, y: (rows, cols) of x_type; bias, gamma, beta: (cols); bias is
// of x_type, gamma/beta of w_type (x_type or F32); mean, rstd: (rows) float32.
// residual and bias may be null.
int layer_norm_forward(DType x_type, DType w_type, const void* x, const void* residual, const void* bias,
                       const void* gamma, const void* beta, void* y, float* mean, float* rstd, int64_t rows,
                       int64_t cols, float eps, void* stream);

// Floats of scratch memory layer_norm_backward needs.
int64_t layer_norm_backward_workspace(int64_t rows, int64_t cols);

// dx like x; dgamma, dbeta like gamma. The gradient of residual is dx and
// that of bias is dx summed over rows (left to the caller).
int layer_norm_backward(DType x_type, DType w_type, const void* dy, const void* x, const void* residual,
                        const void* bias, const void* gamma, const float* mean, const float* rstd, void* dx,
                        void* dgamma, void* dbeta, float* workspace, int64_t rows, int64_t cols, void* stream);

// scores, probs, out: (rows, cols); mask: null or float32 (rows / rows_per_batch, cols).
// out is written iff dropout_p > 0 (and may be null otherwise).
int softmax_forward(DType type, const void* scores, const float* mask, void* probs, void* out, int64_t rows,
                    int64_t cols, int64_t rows_per_batch, float scale, double dropout_p, uint64_t seed,
                    uint64_t offset, void* stream);

int softmax_backward(DType type, const void* grad_out, const void* probs, void* grad_in, int64_t rows,
                     int64_t cols, float scale, double dropout_p, uint64_t seed, uint64_t offset, void* stream);

}  // namespace bertspeed
