"""Parameter groups: biases and LayerNorm parameters without weight decay (BERT's rule, as NVIDIA's
and Hugging Face's recipes apply it)."""
from __future__ import annotations

import torch

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, then biases and LayerNorm (weight decay 0). Tied parameters
    appear once; frozen ones not at all."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
