// Thin torch binding: checks, output pointers and the current stream, then
// the raw-pointer launchers of launchers.h. Outputs are allocated by the
// caller (kernels/ops.py). The only file of the build that includes torch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "launchers.h"

namespace {

using bertspeed::DType;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    default: TORCH_CHECK(false, "bertspeed kernels: unsupported dtype ", t.scalar_type());
  }
}

// Same device as `like`, contiguous, of `dtype` and with `numel` elements.
void* checked(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, int64_t numel,
                    const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.numel() == numel, name, " must have ", numel, " elements, got ", t.numel());
  return t.data_ptr();
}

void* checked(const std::optional<at::Tensor>& t, const at::Tensor& like, at::ScalarType dtype,
                    int64_t numel, const char* name) {
  return t ? checked(*t, like, dtype, numel, name) : nullptr;
}

void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.get_device()).stream(); }

void ok(int code) { TORCH_CHECK(code == 0, "bertspeed kernel launch failed: ", bertspeed::error_string(code)); }

int64_t rows_of(const at::Tensor& t) { return t.numel() / t.size(-1); }

void layer_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                        const std::optional<at::Tensor>& bias, const at::Tensor& gamma, const at::Tensor& beta,
                        at::Tensor& y, at::Tensor& mean, at::Tensor& rstd, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel(), cols = x.size(-1), rows = rows_of(x);
  const auto t = x.scalar_type(), w = gamma.scalar_type();
  ok(bertspeed::layer_norm_forward(
      dtype_of(x), dtype_of(gamma), checked(x, x, t, n, "x"), checked(residual, x, t, n, "residual"),
      checked(bias, x, t, cols, "bias"), checked(gamma, x, w, cols, "gamma"), checked(beta, x, w, cols, "beta"),
      checked(y, x, t, n, "y"), static_cast<float*>(checked(mean, x, at::kFloat, rows, "mean")),
      static_cast<float*>(checked(rstd, x, at::kFloat, rows, "rstd")), rows, cols, float(eps), stream_of(x)));
}

void layer_norm_backward(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& residual,
                         const std::optional<at::Tensor>& bias, const at::Tensor& gamma, const at::Tensor& mean,
                         const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dgamma, at::Tensor& dbeta) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel(), cols = x.size(-1), rows = rows_of(x);
  const auto t = x.scalar_type(), w = gamma.scalar_type();
  auto workspace = at::empty({bertspeed::layer_norm_backward_workspace(rows, cols)}, x.options().dtype(at::kFloat));
  ok(bertspeed::layer_norm_backward(
      dtype_of(x), dtype_of(gamma), checked(dy, x, t, n, "dy"), checked(x, x, t, n, "x"),
      checked(residual, x, t, n, "residual"), checked(bias, x, t, cols, "bias"), checked(gamma, x, w, cols, "gamma"),
      static_cast<const float*>(checked(mean, x, at::kFloat, rows, "mean")),
      static_cast<const float*>(checked(rstd, x, at::kFloat, rows, "rstd")), checked(dx, x, t, n, "dx"),
      checked(dgamma, x, w, cols, "dgamma"), checked(dbeta, x, w, cols, "dbeta"), workspace.data_ptr<float>(),
      rows, cols, stream_of(x)));
}

void softmax_forward(const at::Tensor& scores, const std::optional<at::Tensor>& mask, at::Tensor& probs,
                     const std::optional<at::Tensor>& out, int64_t rows_per_batch, double scale, double dropout_p,
                     int64_t seed) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t n = scores.numel(), cols = scores.size(-1), rows = rows_of(scores);
  const auto t = scores.scalar_type();
  TORCH_CHECK(rows_per_batch > 0 && rows % rows_per_batch == 0, "rows_per_batch must divide the rows");
  TORCH_CHECK(dropout_p == 0 || out, "dropout needs an output tensor");
  ok(bertspeed::softmax_forward(
      dtype_of(scores), checked(scores, scores, t, n, "scores"),
      static_cast<const float*>(checked(mask, scores, at::kFloat, rows / rows_per_batch * cols, "mask")),
      checked(probs, scores, t, n, "probs"), checked(out, scores, t, n, "out"), rows, cols, rows_per_batch,
      float(scale), dropout_p, uint64_t(seed), 0, stream_of(scores)));
}

void softmax_backward(const at::Tensor& grad_out, const at::Tensor& probs, at::Tensor& grad_in, double scale,
                      double dropout_p, int64_t seed) {
  const c10::cuda::CUDAGuard guard(probs.device());
  const auto t = probs.scalar_type();
  const int64_t n = probs.numel();
  ok(bertspeed::softmax_backward(
      dtype_of(probs), checked(grad_out, probs, t, n, "grad_out"), checked(probs, probs, t, n, "probs"),
      checked(grad_in, probs, t, n, "grad_in"), rows_of(probs), probs.size(-1), float(scale), dropout_p,
      uint64_t(seed), 0, stream_of(probs)));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("layer_norm_forward", &layer_norm_forward);
  m.def("layer_norm_backward", &layer_norm_backward);
  m.def("softmax_forward", &softmax_forward);
  m.def("softmax_backward", &softmax_backward);
}
