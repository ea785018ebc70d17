"""Run the CUDA device code on the CPU: ctypes bindings of the harness library.

The library (built by kernels.build.build_harness) is csrc/launchers.cu and
the kernel headers compiled by g++ against csrc/emulate.h, so these calls go
through the same launchers and kernels as the GPU build. Inputs and outputs
are contiguous CPU torch tensors.
"""
from __future__ import annotations

import ctypes
import functools
import math

import torch

from bertspeed.kernels.build import build_harness

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
    "harness_divergent_sync_probe": ([_p], None),
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
        g = Guards()
        args = [g.input(t) for t in (x, residual, bias, weight, beta)]
        y, mean, rstd = g.output(x.shape, x.dtype), g.output(x.shape[:-1]), g.output(x.shape[:-1])
        self._check(self.lib.harness_layer_norm_forward(
            DTYPE_CODES[x.dtype], DTYPE_CODES[weight.dtype], *map(_ptr, args), _ptr(y), _ptr(mean), _ptr(rstd),
            rows, cols, eps))
        g.verify()
        return y, mean, rstd

    def layer_norm_backward(self, dy, x, residual, bias, weight, mean, rstd):
        cols = x.shape[-1]
        rows = x.numel() // cols
        g = Guards()
        args = [g.input(t) for t in (dy, x, residual, bias, weight, mean, rstd)]
        dx, dweight, dbeta = g.output(x.shape, x.dtype), g.output(weight.shape, weight.dtype), \
            g.output(weight.shape, weight.dtype)
        workspace = g.output((self.lib.harness_layer_norm_backward_workspace(rows, cols),))
        self._check(self.lib.harness_layer_norm_backward(
            DTYPE_CODES[x.dtype], DTYPE_CODES[weight.dtype], *map(_ptr, args), _ptr(dx), _ptr(dweight),
            _ptr(dbeta), _ptr(workspace), rows, cols))
        g.verify()
        return dx, dweight, dbeta

    def softmax_forward(self, scores, mask, scale, dropout_p=0.0, seed=0):
        cols = scores.shape[-1]
        rows = scores.numel() // cols
        rows_per_batch = rows // mask.shape[0] if mask is not None else rows
        g = Guards()
        scores, mask = g.input(scores), g.input(mask)
        probs = g.output(scores.shape, scores.dtype)
        out = g.output(scores.shape, scores.dtype) if dropout_p > 0 else None
        self._check(self.lib.harness_softmax_forward(
            DTYPE_CODES[scores.dtype], _ptr(scores), _ptr(mask), _ptr(probs), _ptr(out), rows, cols,
            max(rows_per_batch, 1), scale, dropout_p, seed, 0))
        g.verify()
        return out, probs

    def softmax_backward(self, grad_out, probs, scale, dropout_p=0.0, seed=0):
        cols = probs.shape[-1]
        g = Guards()
        grad_out, probs = g.input(grad_out), g.input(probs)
        grad_in = g.output(probs.shape, probs.dtype)
        self._check(self.lib.harness_softmax_backward(
            DTYPE_CODES[probs.dtype], _ptr(grad_out), _ptr(probs), _ptr(grad_in), probs.numel() // cols, cols,
            scale, dropout_p, seed, 0))
        g.verify()
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


class ExtensionShim:
    """The torch extension's interface (csrc/binding.cpp), served by the harness on CPU tensors.

    Lets tests run the CUDA-path glue of bertspeed/kernels/ops.py (allocation, argument
    order, rows_per_batch, mask conversion) end to end through the device code.
    """

    def __init__(self, harness: Harness):
        self.lib, self._check = harness.lib, harness._check

    def layer_norm_forward(self, x, residual, bias, gamma, beta, y, mean, rstd, eps):
        self._check(self.lib.harness_layer_norm_forward(
            DTYPE_CODES[x.dtype], DTYPE_CODES[gamma.dtype], *map(_ptr, (x, residual, bias, gamma, beta, y, mean, rstd)),
            x.numel() // x.shape[-1], x.shape[-1], eps))

    def layer_norm_backward(self, dy, x, residual, bias, gamma, mean, rstd, dx, dgamma, dbeta):
        rows, cols = x.numel() // x.shape[-1], x.shape[-1]
        workspace = torch.empty(self.lib.harness_layer_norm_backward_workspace(rows, cols))
        self._check(self.lib.harness_layer_norm_backward(
            DTYPE_CODES[x.dtype], DTYPE_CODES[gamma.dtype],
            *map(_ptr, (dy, x, residual, bias, gamma, mean, rstd, dx, dgamma, dbeta, workspace)), rows, cols))

    def softmax_forward(self, scores, mask, probs, out, rows_per_batch, scale, dropout_p, seed):
        self._check(self.lib.harness_softmax_forward(
            DTYPE_CODES[scores.dtype], _ptr(scores), _ptr(mask), _ptr(probs), _ptr(out),
            scores.numel() // scores.shape[-1], scores.shape[-1], rows_per_batch, scale, dropout_p, seed, 0))

    def softmax_backward(self, grad_out, probs, grad_in, scale, dropout_p, seed):
        self._check(self.lib.harness_softmax_backward(
            DTYPE_CODES[probs.dtype], _ptr(grad_out), _ptr(probs), _ptr(grad_in), probs.numel() // probs.shape[-1],
            probs.shape[-1], scale, dropout_p, seed, 0))


class Guards:
    """Places each tensor between guard zones, like a memory checker would.

    Inputs sit between NaNs, so a kernel reading past an end gets NaN into
    its results. Outputs sit between a sentinel value, so `verify()` reports
    writes past an end; it also reports writes into an input.
    """

    WIDTH = 64  # elements on each side (keeps 128-byte alignment)
    SENTINEL = -7777.0

    def __init__(self):
        self.outputs, self.inputs = [], []  # (raw buffer, numel), (view, copy of the input)

    def _place(self, shape, dtype, fill):
        n = math.prod(shape)
        raw = torch.full((n + 2 * self.WIDTH,), fill, dtype=dtype)
        return raw, n, raw[self.WIDTH:self.WIDTH + n].view(shape)

    def input(self, t):
        if t is None:
            return None
        _, _, view = self._place(t.shape, t.dtype, math.nan)
        view.copy_(t)
        self.inputs.append((view, t.clone()))
        return view

    def output(self, shape, dtype=torch.float32):
        raw, n, view = self._place(tuple(shape), dtype, self.SENTINEL)
        self.outputs.append((raw, n))
        return view

    def verify(self):
        for raw, n in self.outputs:
            guards = torch.cat([raw[:self.WIDTH], raw[self.WIDTH + n:]])
            if not (guards == self.SENTINEL).all():
                raise RuntimeError("out-of-bounds write: a kernel wrote into a guard zone")
        for view, original in self.inputs:
            if not torch.equal(view, original):
                raise RuntimeError("a kernel wrote into one of its inputs")


def _ptr(t):
    if t is None:
        return None
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("harness tensors must be contiguous CPU tensors")
    return t.data_ptr()


@functools.lru_cache(maxsize=None)
def harness(defines: tuple[str, ...] = ()) -> Harness:
    return Harness(defines)

