// Thin torch binding: checks, output pointers and the current stream, then
// the raw-pointer launchers of launchers.h. Outputs are allocated by the
// caller (kernels/ops.py). The only file of the build that includes torch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "launchers.h"

namespace {

using bertspeed::DType;
using Tensors = std::initializer_list<const at::Tensor*>;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    default: TORCH_CHECK(false, "bertspeed kernels: unsupported dtype ", t.scalar_type());
  }
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

const void* optional_ptr(const std::optional<at::Tensor>& t, const at::Tensor& like, const char* name) {
  if (!t) return nullptr;
  check(*t, like, name);
  return t->data_ptr();
}

void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.get_device()).stream(); }

void ok(int code) { TORCH_CHECK(code == 0, "bertspeed kernel launch failed: ", bertspeed::error_string(code)); }

int64_t rows_of(const at::Tensor& t) { return t.size(-1) == 0 ? 0 : t.numel() / t.size(-1); }

void layer_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                        const std::optional<at::Tensor>& bias, const at::Tensor& gamma, const at::Tensor& beta,
                        at::Tensor& y, at::Tensor& mean, at::Tensor& rstd, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  for (const at::Tensor* t : Tensors{&x, &gamma, &beta, &y, &mean, &rstd}) check(*t, x, "every tensor");
  ok(bertspeed::layer_norm_forward(dtype_of(x), dtype_of(gamma), x.data_ptr(), optional_ptr(residual, x, "residual"),
                                   optional_ptr(bias, x, "bias"), gamma.data_ptr(), beta.data_ptr(), y.data_ptr(),
                                   mean.data_ptr<float>(), rstd.data_ptr<float>(), rows_of(x), x.size(-1),
                                   float(eps), stream_of(x)));
}

void layer_norm_backward(const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& residual,
                         const std::optional<at::Tensor>& bias, const at::Tensor& gamma, const at::Tensor& mean,
                         const at::Tensor& rstd, at::Tensor& dx, at::Tensor& dgamma, at::Tensor& dbeta) {
  const c10::cuda::CUDAGuard guard(x.device());
  for (const at::Tensor* t : Tensors{&dy, &x, &gamma, &mean, &rstd, &dx, &dgamma, &dbeta}) check(*t, x, "every tensor");
  const int64_t rows = rows_of(x), cols = x.size(-1);
  auto workspace = at::empty({bertspeed::layer_norm_backward_workspace(rows, cols)}, x.options().dtype(at::kFloat));
  ok(bertspeed::layer_norm_backward(dtype_of(x), dtype_of(gamma), dy.data_ptr(), x.data_ptr(),
                                    optional_ptr(residual, x, "residual"), optional_ptr(bias, x, "bias"),
                                    gamma.data_ptr(), mean.data_ptr<float>(), rstd.data_ptr<float>(), dx.data_ptr(),
                                    dgamma.data_ptr(), dbeta.data_ptr(), workspace.data_ptr<float>(), rows, cols,
                                    stream_of(x)));
}

void softmax_forward(const at::Tensor& scores, const std::optional<at::Tensor>& mask, at::Tensor& probs,
                     std::optional<at::Tensor> out, int64_t rows_per_batch, double scale, double dropout_p,
                     int64_t seed) {
  const c10::cuda::CUDAGuard guard(scores.device());
  check(scores, scores, "scores");
  check(probs, scores, "probs");
  TORCH_CHECK(!mask || mask->scalar_type() == at::kFloat, "mask must be float32");
  TORCH_CHECK(dropout_p == 0 || out, "dropout needs an output tensor");
  ok(bertspeed::softmax_forward(dtype_of(scores), scores.data_ptr(),
                                static_cast<const float*>(optional_ptr(mask, scores, "mask")), probs.data_ptr(),
                                out ? out->data_ptr() : nullptr, rows_of(scores), scores.size(-1), rows_per_batch,
                                float(scale), dropout_p, uint64_t(seed), 0, stream_of(scores)));
}

void softmax_backward(const at::Tensor& grad_out, const at::Tensor& probs, at::Tensor& grad_in, double scale,
                      double dropout_p, int64_t seed) {
  const c10::cuda::CUDAGuard guard(probs.device());
  for (const at::Tensor* t : Tensors{&grad_out, &probs, &grad_in}) check(*t, probs, "every tensor");
  ok(bertspeed::softmax_backward(dtype_of(probs), grad_out.data_ptr(), probs.data_ptr(), grad_in.data_ptr(),
                                 rows_of(probs), probs.size(-1), float(scale), dropout_p, uint64_t(seed), 0,
                                 stream_of(probs)));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("layer_norm_forward", &layer_norm_forward);
  m.def("layer_norm_backward", &layer_norm_backward);
  m.def("softmax_forward", &softmax_forward);
  m.def("softmax_backward", &softmax_backward);
}
