"""Run the CUDA device code on the CPU: ctypes bindings of the harness library.

The library (built by kernels.build.build_harness) is csrc/launchers.cu and
the kernel headers compiled by g++ against csrc/emulate.h, so these calls go
through the same launchers and kernels as the GPU build. Inputs and outputs
are contiguous CPU torch tensors.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from kernels.build import build_harness

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_p, _i64, _u64, _f32, _f64, _int = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_float,
                                    ctypes.c_double, ctypes.c_int)
SIGNATURES = {
    "harness_error_string": ([_int], ctypes.c_char_p),
    "harness_layer_norm_forward": ([_int, _int] + [_p] * 8 + [_i64, _i64, _f32], _int),
    "harness_layer_norm_backward_workspace": ([_i64, _i64], _i64),
    "harness_layer_norm_backward": ([_int, _int] + [_p] * 11 + [_i64, _i64], _int),
    "harness_softmax_forward": ([_int] + [_p] * 4 + [_i64, _i64, _i64, _f32, _f64, _u64, _u64], _int),
    "harness_softmax_backward": ([_int] + [_p] * 3 + [_i64, _i64, _f32, _f64, _u64, _u64], _int),
    "harness_philox_words": ([_u64, _u64, _i64, _p], None),
    "harness_shuffle_probe": ([_int, _int, _int, _p], None),
}


class Harness:
    def __init__(self, defines: tuple[str, ...] = ()):
        self.lib = ctypes.CDLL(str(build_harness(defines)))
        for name, (args, result) in SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, result

    def _check(self, code: int) -> None:
        if code != 0:
            raise RuntimeError(f"harness launch failed: {self.lib.harness_error_string(code).decode()}")

    def layer_norm_forward(self, x, residual, bias, weight, beta, eps):
        cols = x.shape[-1]
        rows = x.numel() // cols
        y = torch.empty_like(x)
        mean = torch.empty(x.shape[:-1], dtype=torch.float32)
        rstd = torch.empty_like(mean)
        self._check(self.lib.harness_layer_norm_forward(
            DTYPE_CODES[x.dtype], DTYPE_CODES[weight.dtype], _ptr(x), _ptr(residual), _ptr(bias), _ptr(weight),
            _ptr(beta), _ptr(y), _ptr(mean), _ptr(rstd), rows, cols, eps))
        return y, mean, rstd

    def layer_norm_backward(self, dy, x, residual, bias, weight, mean, rstd):
        cols = x.shape[-1]
        rows = x.numel() // cols
        dx, dweight, dbeta = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)
        workspace = torch.empty(self.lib.harness_layer_norm_backward_workspace(rows, cols), dtype=torch.float32)
        self._check(self.lib.harness_layer_norm_backward(
            DTYPE_CODES[x.dtype], DTYPE_CODES[weight.dtype], _ptr(dy), _ptr(x), _ptr(residual), _ptr(bias),
            _ptr(weight), _ptr(mean), _ptr(rstd), _ptr(dx), _ptr(dweight), _ptr(dbeta), _ptr(workspace), rows, cols))
        return dx, dweight, dbeta

    def softmax_forward(self, scores, mask, scale, dropout_p=0.0, seed=0):
        cols = scores.shape[-1]
        rows = scores.numel() // cols
        rows_per_batch = rows // mask.shape[0] if mask is not None else rows
        probs = torch.empty_like(scores)
        out = torch.empty_like(scores) if dropout_p > 0 else None
        self._check(self.lib.harness_softmax_forward(
            DTYPE_CODES[scores.dtype], _ptr(scores), _ptr(mask), _ptr(probs), _ptr(out), rows, cols,
            max(rows_per_batch, 1), scale, dropout_p, seed, 0))
        return out, probs

    def softmax_backward(self, grad_out, probs, scale, dropout_p=0.0, seed=0):
        cols = probs.shape[-1]
        grad_in = torch.empty_like(probs)
        self._check(self.lib.harness_softmax_backward(
            DTYPE_CODES[probs.dtype], _ptr(grad_out), _ptr(probs), _ptr(grad_in), probs.numel() // cols, cols,
            scale, dropout_p, seed, 0))
        return grad_in

    def philox_words(self, seed: int, first: int, n: int) -> torch.Tensor:
        out = torch.empty(n, dtype=torch.int32)
        self.lib.harness_philox_words(seed, first, n, _ptr(out))
        return out.to(torch.int64) & 0xFFFFFFFF

    def shuffle_probe(self, kind: str, arg: int, width: int) -> list[int]:
        """What each of 32 lanes receives from __shfl_{xor,down}_sync(lane id, arg, width)."""
        out = torch.empty(32, dtype=torch.int32)
        self.lib.harness_shuffle_probe(int(kind == "down"), arg, width, _ptr(out))
        return out.tolist()


def _ptr(t):
    if t is None:
        return None
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("harness tensors must be contiguous CPU tensors")
    return t.data_ptr()


@functools.lru_cache(maxsize=None)
def harness(defines: tuple[str, ...] = ()) -> Harness:
    return Harness(defines)

