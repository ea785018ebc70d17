"""The two ops a custom kernel can replace: LayerNorm (+ residual add) and attention.

By default they are PyTorch's own: F.layer_norm and F.scaled_dot_product_attention, on every device.
`use_fused_kernels(True)` (the drivers' --fused_kernels) routes them through the fused ops of
`bertspeed/kernels/` instead: results and state-dict keys do not change, but attention then materialises
the (B, heads, T, T) score matrix for the fused masked softmax. On CUDA the ops use the compiled extension
(the reference path, with a warning, when it cannot be built); on CPU they run their PyTorch reference path.
The CUDA path has not been run on a GPU yet, hence opt-in.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bertspeed.kernels import ops as fused_ops
from bertspeed.model.nezha import relative_attention

FUSED_KERNELS_HELP = ("use bertspeed's fused LayerNorm/softmax CUDA kernels (default: PyTorch's "
                      "scaled_dot_product_attention and LayerNorm)")
_FUSED = {"enabled": False}


def use_fused_kernels(enabled: bool) -> None:
    """Route LayerNorm and attention through our fused ops (True) or PyTorch's (False, the default)."""
    _FUSED["enabled"] = bool(enabled)


def fused_kernels_enabled() -> bool:
    return _FUSED["enabled"]


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose forward can add a residual first: LayerNorm(x + residual)."""

    def forward(self, x, residual=None):
        if fused_kernels_enabled() and len(self.normalized_shape) == 1 and self.elementwise_affine:
            return fused_ops.layer_norm(x, self.weight, self.bias, self.eps, residual=residual)
        if residual is not None:
            x = x + residual
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def attention(q, k, v, key_mask, dropout_p: float, relative=None):
    """Softmax attention; q (B, heads, Q, D), k, v (B, heads, T, D); key_mask, True = attend, (B, T) for all
    queries alike, or (B, Q, T) per query (not with `relative`), or None; relative: NEZHA's
    (table, max_relative_position), or None for BERT."""
    if key_mask is not None:
        # A sequence (or query) with no real token to attend to attends to everything (as an additive mask does).
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)
    if relative is not None:
        return relative_attention(q, k, v, key_mask, dropout_p, *relative)
    if fused_kernels_enabled():
        additive = None
        scores = q @ k.transpose(-2, -1)  # (B, heads, Q, T)
        if key_mask is not None and key_mask.dim() == 3:
            scores = scores.masked_fill(~key_mask[:, None], -math.inf)
        elif key_mask is not None:
            additive = torch.zeros(key_mask.shape, device=q.device).masked_fill(~key_mask, -math.inf)
        probs = fused_ops.masked_softmax(scores, additive, 1.0 / math.sqrt(q.shape[-1]), dropout_p)
        return probs @ v
    mask = None if key_mask is None else key_mask[:, None] if key_mask.dim() == 3 else key_mask[:, None, None, :]
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.requires_grad:
        # Training in bf16 on CPU: SDPA's bf16 backward is slow there (a bert-mini bf16 step 1.10x faster
        # with attention in fp32); fp32 is also the more exact of the two.
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
