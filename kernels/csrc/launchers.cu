// Launcher definitions: grid/block choice and dtype dispatch. Compiled by
// nvcc for the GPU, and as plain C++ (with emulate.h) for the CPU harness.
#include <cmath>

#include "launchers.h"
#include "layernorm.cuh"
#include "softmax.cuh"

namespace bertspeed {
namespace {

template <typename T> struct Tag { using type = T; };

// Calls f(Tag<T>{}, Tag<W>{}) for the supported (input, weight) type pairs.
template <typename F>
int with_types(DType x, DType w, F&& f) {
  if (x == DType::F32 && w == DType::F32) return f(Tag<float>{}, Tag<float>{});
  if (x == DType::F16 && w == DType::F16) return f(Tag<__half>{}, Tag<__half>{});
  if (x == DType::F16 && w == DType::F32) return f(Tag<__half>{}, Tag<float>{});
  if (x == DType::BF16 && w == DType::BF16) return f(Tag<__nv_bfloat16>{}, Tag<__nv_bfloat16>{});
  if (x == DType::BF16 && w == DType::F32) return f(Tag<__nv_bfloat16>{}, Tag<float>{});
  return kUnsupportedDtype;
}

bool bad_shape(int64_t rows, int64_t cols) { return rows < 0 || cols < 1 || cols > INT32_MAX || rows > INT32_MAX; }

// One block per row: a warp per 32 columns, at most kRowThreads threads.
dim3 row_threads(int64_t cols) { return dim3(unsigned(cols >= kRowThreads ? kRowThreads : (cols + 31) / 32 * 32)); }

int64_t chunks_for(int64_t rows) {  // row chunks of the two-stage parameter-gradient reduction
  const int64_t chunks = (rows + 31) / 32;
  return chunks < 1 ? 1 : (chunks > 128 ? 128 : chunks);
}

Dropout make_dropout(double p, uint64_t seed, uint64_t offset) {
  return Dropout{seed, offset, uint32_t(std::floor(p * 16777216.0)), float(1.0 / (1.0 - p))};
}

}  // namespace

const char* error_string(int code) {
  if (code == kUnsupportedDtype) return "unsupported dtype combination";
  if (code == kBadShape) return "unsupported shape (need cols >= 1 and rows, cols < 2^31)";
  return cudaGetErrorString(cudaError_t(code));
}

int layer_norm_forward(DType x_type, DType w_type, const void* x, const void* residual, const void* bias,
                       const void* gamma, const void* beta, void* y, float* mean, float* rstd, int64_t rows,
                       int64_t cols, float eps, void* stream) {
  if (bad_shape(rows, cols)) return kBadShape;
  if (rows == 0) return 0;
  return with_types(x_type, w_type, [&](auto tx, auto tw) {
    using T = typename decltype(tx)::type;
    using W = typename decltype(tw)::type;
    PreNorm<T> pre{static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(bias)};
    BERTSPEED_LAUNCH((layer_norm_fwd_kernel<T, W>), dim3(unsigned(rows)), row_threads(cols),
                     static_cast<cudaStream_t>(stream), pre, static_cast<const W*>(gamma),
                     static_cast<const W*>(beta), static_cast<T*>(y), mean, rstd, int(cols), eps);
    return int(cudaGetLastError());
  });
}

int64_t layer_norm_backward_workspace(int64_t rows, int64_t cols) { return 2 * chunks_for(rows) * cols; }

int layer_norm_backward(DType x_type, DType w_type, const void* dy, const void* x, const void* residual,
                        const void* bias, const void* gamma, const float* mean, const float* rstd, void* dx,
                        void* dgamma, void* dbeta, float* workspace, int64_t rows, int64_t cols, void* stream) {
  if (bad_shape(rows, cols)) return kBadShape;
  const int64_t chunks = chunks_for(rows);
  const int rows_per_chunk = int((rows + chunks - 1) / chunks);
  return with_types(x_type, w_type, [&](auto tx, auto tw) {
    using T = typename decltype(tx)::type;
    using W = typename decltype(tw)::type;
    auto s = static_cast<cudaStream_t>(stream);
    PreNorm<T> pre{static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(bias)};
    if (rows > 0) {
      BERTSPEED_LAUNCH((layer_norm_bwd_input_kernel<T, W>), dim3(unsigned(rows)), row_threads(cols), s,
                       static_cast<const T*>(dy), pre, static_cast<const W*>(gamma), mean, rstd,
                       static_cast<T*>(dx), int(cols));
    }
    float* part_g = workspace;
    float* part_b = workspace + chunks * cols;
    const unsigned tiles = unsigned((cols + kParamTileCols - 1) / kParamTileCols);
    BERTSPEED_LAUNCH((layer_norm_bwd_params_partial_kernel<T>), dim3(tiles, unsigned(chunks)),
                     dim3(kParamTileCols, kParamTileRows), s, static_cast<const T*>(dy), pre, mean, rstd, part_g,
                     part_b, int(rows), int(cols), rows_per_chunk);
    BERTSPEED_LAUNCH((layer_norm_bwd_params_final_kernel<W>), dim3(unsigned((cols + 255) / 256)), dim3(256), s,
                     part_g, part_b, static_cast<W*>(dgamma), static_cast<W*>(dbeta), int(chunks), int(cols));
    return int(cudaGetLastError());
  });
}

int softmax_forward(DType type, const void* scores, const float* mask, void* probs, void* out, int64_t rows,
                    int64_t cols, int64_t rows_per_batch, float scale, double dropout_p, uint64_t seed,
                    uint64_t offset, void* stream) {
  if (bad_shape(rows, cols) || rows_per_batch < 1) return kBadShape;
  if (rows == 0) return 0;
  return with_types(type, type, [&](auto tx, auto) {
    using T = typename decltype(tx)::type;
    Logits<T> logit{static_cast<const T*>(scores), mask, int(cols), int(rows_per_batch), scale};
    const Dropout dropout = make_dropout(dropout_p, seed, offset);
    auto s = static_cast<cudaStream_t>(stream);
    if (dropout_p > 0) {
      BERTSPEED_LAUNCH((softmax_fwd_kernel<T, true>), dim3(unsigned(rows)), row_threads(cols), s, logit,
                       static_cast<T*>(probs), static_cast<T*>(out), dropout);
    } else {
      BERTSPEED_LAUNCH((softmax_fwd_kernel<T, false>), dim3(unsigned(rows)), row_threads(cols), s, logit,
                       static_cast<T*>(probs), static_cast<T*>(out), dropout);
    }
    return int(cudaGetLastError());
  });
}

int softmax_backward(DType type, const void* grad_out, const void* probs, void* grad_in, int64_t rows,
                     int64_t cols, float scale, double dropout_p, uint64_t seed, uint64_t offset, void* stream) {
  if (bad_shape(rows, cols)) return kBadShape;
  if (rows == 0) return 0;
  return with_types(type, type, [&](auto tx, auto) {
    using T = typename decltype(tx)::type;
    const Dropout dropout = make_dropout(dropout_p, seed, offset);
    auto s = static_cast<cudaStream_t>(stream);
    auto g = static_cast<const T*>(grad_out);
    auto p = static_cast<const T*>(probs);
    if (dropout_p > 0) {
      BERTSPEED_LAUNCH((softmax_bwd_kernel<T, true>), dim3(unsigned(rows)), row_threads(cols), s, g, p,
                       static_cast<T*>(grad_in), int(cols), scale, dropout);
    } else {
      BERTSPEED_LAUNCH((softmax_bwd_kernel<T, false>), dim3(unsigned(rows)), row_threads(cols), s, g, p,
                       static_cast<T*>(grad_in), int(cols), scale, dropout);
    }
    return int(cudaGetLastError());
  });
}

}  // namespace bertspeed
