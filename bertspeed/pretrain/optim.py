"""Optimizer choice, parameter groups and the learning-rate schedule (per phase)."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from bertspeed.pretrain.lamb import Lamb
from bertspeed.training.params import param_groups

OPTIMIZERS = ("lamb", "adamw")




def use_deepspeed_fused_lamb(optimizer_type: str, zero_stage: int) -> bool:
    """DeepSpeed's fused Lamb (CUDA kernel) keeps per-layer trust ratios only without ZeRO:
    it is used exactly when the device is CUDA and the ZeRO stage is 0."""
    return optimizer_type == "lamb" and zero_stage == 0 and torch.cuda.is_available()


def build_optimizer(model, optimizer_type: str, lr: float, weight_decay: float, betas, eps: float,
                    use_nvlamb: bool = False):
    groups = param_groups(model, weight_decay)
    if optimizer_type == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, use_nvlamb=use_nvlamb)
    if optimizer_type == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {optimizer_type!r}")


def warmup_poly_lambda(total_steps: int, warmup_steps: int, power: float = 0.5, end_ratio: float = 0.0):
    """Linear warmup to the peak over warmup_steps, then polynomial decay towards end_ratio x peak at
    total_steps (NVIDIA's PolyWarmUpScheduler: degree 0.5, end 0; MindSpore's end_learning_rate). Step s
    (0-based) gets this multiplier of the peak lr: (s + 1) / W during warmup, then
    e + (1 - e) (1 - (s - W + 1) / (T - W + 1)) ** power, strictly decreasing within the phase."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        decay_steps = max(1, total_steps - warmup_steps + 1)
        return end_ratio + (1.0 - end_ratio) * max(0.0, 1.0 - (step - warmup_steps + 1) / decay_steps) ** power
    return factor


def build_schedule(optimizer, total_steps: int, warmup_steps: int, power: float = 0.5,
                   end_ratio: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, warmup_poly_lambda(total_steps, warmup_steps, power, end_ratio))
