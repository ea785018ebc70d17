"""The two ops a custom kernel can replace: LayerNorm (+ residual add) and attention.

`use_fused_kernels(True)` routes them through the fused ops of `kernels/`
(implementation switch only: results and state-dict keys do not change).
The default (None) is on for CUDA tensors when the extension builds, off
otherwise; on CPU, switched on, the ops run their PyTorch reference path.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bertspeed.kernels import ops as fused_ops

_FUSED = {"enabled": None}  # None: automatic (see module docstring)


def use_fused_kernels(enabled: bool | None) -> None:
    _FUSED["enabled"] = None if enabled is None else bool(enabled)


def fused_kernels_enabled(tensor: torch.Tensor | None = None) -> bool:
    """Whether the fused ops are used (for `tensor`'s device under the automatic default)."""
    if _FUSED["enabled"] is not None:
        return _FUSED["enabled"]
    return tensor is not None and tensor.is_cuda and fused_ops.extension_available()


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose forward can add a residual first: LayerNorm(x + residual)."""

    def forward(self, x, residual=None):
        if fused_kernels_enabled(x) and len(self.normalized_shape) == 1 and self.elementwise_affine:
            return fused_ops.layer_norm(x, self.weight, self.bias, self.eps, residual=residual)
        if residual is not None:
            x = x + residual
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def attention(q, k, v, key_mask, dropout_p: float):
    """Softmax attention; q, k, v (B, heads, T, D); key_mask (B, T) bool, True = attend, or None."""
    if key_mask is not None:
        # A sequence with no real token attends to everything (as an additive mask does).
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)
    if fused_kernels_enabled(q):
        additive = None
        if key_mask is not None:
            additive = torch.zeros(key_mask.shape, device=q.device).masked_fill(~key_mask, -math.inf)
        scores = q @ k.transpose(-2, -1)  # (B, heads, T, T)
        probs = fused_ops.masked_softmax(scores, additive, 1.0 / math.sqrt(q.shape[-1]), dropout_p)
        return probs @ v
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
