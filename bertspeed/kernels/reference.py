"""PyTorch compositions of what the CUDA kernels compute.

They are the CPU implementation of the ops (float32 arithmetic for float32
and half inputs) and, fed float64 tensors, the float64 references the tests
compare the kernels with. Definitions shared with the kernels:

- LayerNorm: pre = x + bias + residual; statistics over the last dim,
  biased variance; mean and rstd returned for the backward pass.
- Softmax: probs = softmax(scale * scores + mask), mask (batches, cols)
  additive, broadcast over the rows of each batch; a row whose logits are
  all -inf gets zero probabilities and a zero gradient.
- Dropout: element e keeps iff (philox(seed, e) >> 8) >= floor(p * 2^24);
  kept values are scaled by 1 / (1 - p). Same bits as csrc/philox.cuh.
"""
from __future__ import annotations

import math

import torch

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
MASK32 = 0xFFFFFFFF


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pre_norm(x, residual, bias, dtype):
    pre = x.to(dtype)
    if bias is not None:
        pre = pre + bias.to(dtype)
    if residual is not None:
        pre = pre + residual.to(dtype)
    return pre


def layer_norm_forward(x, residual, bias, weight, beta, eps):
    """-> (y like x, mean, rstd) with mean/rstd of shape x.shape[:-1]."""
    dtype = compute_dtype(x.dtype)
    pre = _pre_norm(x, residual, bias, dtype)
    mean = pre.mean(-1)
    centered = pre - mean.unsqueeze(-1)
    rstd = torch.rsqrt((centered * centered).mean(-1) + eps)
    y = centered * rstd.unsqueeze(-1) * weight.to(dtype) + beta.to(dtype)
    return y.to(x.dtype), mean, rstd


def layer_norm_backward(dy, x, residual, bias, weight, mean, rstd):
    """-> (dx like x, dweight, dbeta like weight)."""
    dtype = compute_dtype(x.dtype)
    xhat = (_pre_norm(x, residual, bias, dtype) - mean.unsqueeze(-1).to(dtype)) * rstd.unsqueeze(-1).to(dtype)
    dy = dy.to(dtype)
    g = dy * weight.to(dtype)
    dx = rstd.unsqueeze(-1) * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    rows = tuple(range(dy.dim() - 1))
    dweight = (dy * xhat).sum(rows)
    dbeta = dy.sum(rows)
    return dx.to(x.dtype), dweight.to(weight.dtype), dbeta.to(weight.dtype)


def _mulhilo(a, m):
    """(hi, lo) 32-bit halves of a * m for int64 tensors a < 2^32 without int64 overflow."""
    low_product = (a & 0xFFFF) * m
    mid = (a >> 16) * m + (low_product >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (low_product & 0xFFFF)


def philox_words(seed: int, elements: torch.Tensor) -> torch.Tensor:
    """Word (e % 4) of Philox4x32-10 at counter e // 4, key seed; int64 tensor of uint32 values."""
    counter = elements // 4
    c = [counter & MASK32, counter >> 32, torch.zeros_like(counter), torch.zeros_like(counter)]
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(c[0], PHILOX_M[0])
        hi1, lo1 = _mulhilo(c[2], PHILOX_M[1])
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
    return torch.stack(c, -1).gather(-1, (elements % 4).unsqueeze(-1)).squeeze(-1)


def dropout_scale(shape, dropout_p: float, seed: int, device=None) -> torch.Tensor:
    """float32 tensor of 0 (dropped) or 1 / (1 - p) (kept), element e = flat index."""
    elements = torch.arange(math.prod(shape), device=device, dtype=torch.int64).view(shape)
    keep = (philox_words(seed, elements) >> 8) >= math.floor(dropout_p * 2**24)
    return keep.to(torch.float32) * float(1.0 / (1.0 - dropout_p))


def softmax_forward(scores, mask, scale: float, dropout_p: float, seed: int):
    """-> (out, probs); out is dropout(probs), or an empty tensor when dropout_p == 0."""
    dtype = compute_dtype(scores.dtype)
    cols = scores.shape[-1]
    logits = scores.to(dtype) * scale
    if mask is not None:
        logits = (logits.reshape(mask.shape[0], -1, cols) + mask.to(dtype).unsqueeze(1)).reshape(scores.shape)
    top = logits.amax(-1, keepdim=True)
    masked_row = top == -math.inf
    exp = torch.exp(logits - torch.where(masked_row, 0.0, top))
    probs = torch.where(masked_row, 0.0, exp / exp.sum(-1, keepdim=True))
    if dropout_p == 0:
        return scores.new_empty(0), probs.to(scores.dtype)
    out = probs * dropout_scale(scores.shape, dropout_p, seed, scores.device).to(dtype)
    return out.to(scores.dtype), probs.to(scores.dtype)


def softmax_backward(grad_out, probs, scale: float, dropout_p: float, seed: int):
    dtype = compute_dtype(probs.dtype)
    g = grad_out.to(dtype)
    if dropout_p > 0:
        g = g * dropout_scale(probs.shape, dropout_p, seed, probs.device).to(dtype)
    p = probs.to(dtype)
    return (scale * p * (g - (g * p).sum(-1, keepdim=True))).to(probs.dtype)
