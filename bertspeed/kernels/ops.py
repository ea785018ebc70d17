"""The fused ops as torch custom ops (namespace `bertspeed`).

Each op has a CPU implementation (the PyTorch composition of
bertspeed/kernels/reference.py), a CUDA implementation (the extension, built on first
use; the reference path with one warning when it cannot be built), a fake
kernel for torch.compile, and an autograd formula. Public entry points:
`layer_norm(...)` and `masked_softmax(...)`.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
from torch import Tensor

from bertspeed.kernels import reference

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension, or None (with a warning saying why) when it cannot be built here."""
    from bertspeed.kernels.build import KernelBuildError, load_extension

    try:
        return load_extension()
    except (KernelBuildError, OSError, RuntimeError) as err:
        warnings.warn(f"bertspeed fused kernels unavailable, using the PyTorch reference path: {err}")
        return None


def extension_available() -> bool:
    """True on a CUDA machine whose extension builds (the first call builds it)."""
    return torch.cuda.is_available() and extension() is not None


def _use_extension(*tensors: Tensor) -> bool:
    return all(t.dtype in SUPPORTED_DTYPES for t in tensors) and extension() is not None


def _flat_rows(t: Tensor) -> int:
    return t.numel() // t.shape[-1]


# ---------------------------------------------------------------- LayerNorm


@torch.library.custom_op("bertspeed::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: Tensor, residual: Optional[Tensor], bias: Optional[Tensor], weight: Tensor, beta: Tensor,
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm(x + bias + residual) over the last dim -> (y, mean, rstd)."""
    return reference.layer_norm_forward(x, residual, bias, weight, beta, eps)


@layer_norm_fwd.register_kernel("cuda")
def _layer_norm_fwd_cuda(x, residual, bias, weight, beta, eps):
    if not _use_extension(x, weight):
        return reference.layer_norm_forward(x, residual, bias, weight, beta, eps)
    y = torch.empty_like(x)
    mean = x.new_empty(x.shape[:-1], dtype=torch.float32)
    rstd = torch.empty_like(mean)
    extension().layer_norm_forward(x, residual, bias, weight, beta, y, mean, rstd, eps)
    return y, mean, rstd


@layer_norm_fwd.register_fake
def _(x, residual, bias, weight, beta, eps):
    stats = x.new_empty(x.shape[:-1], dtype=reference.compute_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("bertspeed::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: Tensor, x: Tensor, residual: Optional[Tensor], bias: Optional[Tensor], weight: Tensor,
                   mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dweight, dbeta); d(residual) is dx and d(bias) is dx summed over rows."""
    return reference.layer_norm_backward(dy, x, residual, bias, weight, mean, rstd)


@layer_norm_bwd.register_kernel("cuda")
def _layer_norm_bwd_cuda(dy, x, residual, bias, weight, mean, rstd):
    if not _use_extension(x, weight):
        return reference.layer_norm_backward(dy, x, residual, bias, weight, mean, rstd)
    dx, dweight, dbeta = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)
    extension().layer_norm_backward(dy, x, residual, bias, weight, mean, rstd, dx, dweight, dbeta)
    return dx, dweight, dbeta


@layer_norm_bwd.register_fake
def _(dy, x, residual, bias, weight, mean, rstd):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _layer_norm_setup(ctx, inputs, output):
    x, residual, bias, weight, _, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.has_residual, ctx.has_bias = residual is not None, bias is not None
    ctx.save_for_backward(x, residual, bias, weight, mean, rstd)


def _layer_norm_backward(ctx, dy, _dmean, _drstd):
    x, residual, bias, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None, None
    dx, dweight, dbeta = layer_norm_bwd(dy.contiguous(), x, residual, bias, weight, mean, rstd)
    dresidual = dx if ctx.has_residual else None
    dbias = dx.reshape(-1, x.shape[-1]).sum(0, dtype=torch.float32).to(bias.dtype) if ctx.has_bias else None
    return dx, dresidual, dbias, dweight, dbeta, None


torch.library.register_autograd("bertspeed::layer_norm_fwd", _layer_norm_backward, setup_context=_layer_norm_setup)


def layer_norm(x: Tensor, weight: Tensor, beta: Tensor, eps: float, residual: Tensor | None = None,
               bias: Tensor | None = None) -> Tensor:
    """LayerNorm(x + bias + residual) over the last dim (mean and rstd are not differentiable)."""
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x = x.to(dtype).contiguous()
    residual = None if residual is None else residual.to(dtype).contiguous()
    bias = None if bias is None else bias.to(dtype).contiguous()
    if weight.dtype not in (dtype, torch.float32):
        weight, beta = weight.to(dtype), beta.to(dtype)
    return layer_norm_fwd(x, residual, bias, weight.contiguous(), beta.to(weight.dtype).contiguous(), eps)[0]


# ---------------------------------------------------------------- softmax


@torch.library.custom_op("bertspeed::softmax_fwd", mutates_args=())
def softmax_fwd(scores: Tensor, mask: Optional[Tensor], scale: float, dropout_p: float,
                seed: Tensor) -> tuple[Tensor, Tensor]:
    """-> (out, probs): probs = softmax(scale * scores + mask), out = dropout(probs) (empty if dropout_p == 0).

    mask: additive (batches, cols), broadcast over the rows of each batch.
    seed: int64 CPU tensor of one element, the Philox key of the dropout.
    """
    return reference.softmax_forward(scores, mask, scale, dropout_p, int(seed.item()))


@softmax_fwd.register_kernel("cuda")
def _softmax_fwd_cuda(scores, mask, scale, dropout_p, seed):
    if not _use_extension(scores):
        return reference.softmax_forward(scores, mask, scale, dropout_p, int(seed.item()))
    probs = torch.empty_like(scores)
    out = torch.empty_like(scores) if dropout_p > 0 else scores.new_empty(0)
    mask32 = None if mask is None else mask.to(torch.float32).contiguous()
    rows_per_batch = _flat_rows(scores) // mask.shape[0] if mask is not None else max(_flat_rows(scores), 1)
    extension().softmax_forward(scores, mask32, probs, out if dropout_p > 0 else None, rows_per_batch, scale,
                                dropout_p, int(seed.item()))
    return out, probs


@softmax_fwd.register_fake
def _(scores, mask, scale, dropout_p, seed):
    out = torch.empty_like(scores) if dropout_p > 0 else scores.new_empty(0)
    return out, torch.empty_like(scores)


@torch.library.custom_op("bertspeed::softmax_bwd", mutates_args=())
def softmax_bwd(grad_out: Tensor, probs: Tensor, scale: float, dropout_p: float, seed: Tensor) -> Tensor:
    """Gradient of softmax_fwd's output (out if dropout_p > 0, else probs) w.r.t. scores."""
    return reference.softmax_backward(grad_out, probs, scale, dropout_p, int(seed.item()))


@softmax_bwd.register_kernel("cuda")
def _softmax_bwd_cuda(grad_out, probs, scale, dropout_p, seed):
    if not _use_extension(probs):
        return reference.softmax_backward(grad_out, probs, scale, dropout_p, int(seed.item()))
    grad_in = torch.empty_like(probs)
    extension().softmax_backward(grad_out, probs, grad_in, scale, dropout_p, int(seed.item()))
    return grad_in


@softmax_bwd.register_fake
def _(grad_out, probs, scale, dropout_p, seed):
    return torch.empty_like(probs)


def _softmax_setup(ctx, inputs, output):
    _, _, ctx.scale, ctx.dropout_p, _ = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1], inputs[4])


def _softmax_backward(ctx, grad_out, grad_probs):
    probs, seed = ctx.saved_tensors
    grad = None
    if ctx.dropout_p > 0 and grad_out is not None:
        grad = softmax_bwd(grad_out.contiguous(), probs, ctx.scale, ctx.dropout_p, seed)
    if grad_probs is not None:
        from_probs = softmax_bwd(grad_probs.contiguous(), probs, ctx.scale, 0.0, seed)
        grad = from_probs if grad is None else grad + from_probs
    return grad, None, None, None, None


torch.library.register_autograd("bertspeed::softmax_fwd", _softmax_backward, setup_context=_softmax_setup)


def masked_softmax(scores: Tensor, mask: Tensor | None, scale: float, dropout_p: float = 0.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """dropout(softmax(scale * scores + mask)) over the last dim; the mask is not differentiable.

    scores (batches, ..., cols); mask additive (batches, cols), e.g. 0 / -inf.
    A row whose logits are all -inf gives zeros. The dropout seed is drawn
    from `generator` (default: torch's CPU generator), so torch.manual_seed
    and activation checkpointing (which restores RNG state) replay it.
    """
    if mask is not None and (mask.dim() != 2 or mask.shape[0] != scores.shape[0] or mask.shape[1] != scores.shape[-1]):
        raise ValueError(f"mask must be (batches, cols) = ({scores.shape[0]}, {scores.shape[-1]}), "
                         f"got {tuple(mask.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    seed = torch.randint(0, 2**62, (1,), generator=generator) if dropout_p > 0 else torch.zeros(1, dtype=torch.int64)
    mask = None if mask is None else mask.detach().to(scores.device).contiguous()
    out, probs = softmax_fwd(scores.contiguous(), mask, float(scale), float(dropout_p), seed)
    return out if dropout_p > 0 else probs
