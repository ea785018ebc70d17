"""The two ops a custom kernel can replace: LayerNorm (+ residual add) and attention.

`use_fused_kernels(True)` routes them through the fused ops of `kernels/`
(implementation switch only: results and state-dict keys do not change).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_FUSED = {"enabled": False}


def use_fused_kernels(enabled: bool) -> None:
    _FUSED["enabled"] = bool(enabled)


def fused_kernels_enabled() -> bool:
    return _FUSED["enabled"]


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose forward can add a residual first: LayerNorm(x + residual)."""

    def forward(self, x, residual=None):
        if residual is not None:
            x = x + residual
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def attention(q, k, v, key_mask, dropout_p: float):
    """Softmax attention; q, k, v (B, heads, T, D); key_mask (B, T) bool, True = attend, or None."""
    mask = None
    if key_mask is not None:
        # A sequence with no real token attends to everything (as an additive mask does).
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)
        mask = key_mask[:, None, None, :]  # (B, 1, 1, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
