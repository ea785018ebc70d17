"""Optimizer choice, parameter groups and the learning-rate schedule (per phase)."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from bertspeed.pretrain.lamb import Lamb
from bertspeed.training.params import param_groups
from bertspeed.training.thor import DEFAULTS as THOR_DEFAULTS
from bertspeed.training.thor import Momentum, Thor, check_hyperparameters, polynomial

OPTIMIZERS = ("lamb", "adamw", "thor", "momentum")
# THOR's settings in the DeepSpeed JSON's optimizer.params, with the MindSpore BERT-THOR (BERT-large) values
THOR_PARAMS = {**THOR_DEFAULTS, "damping_min": 1e-6, "damping_power": 4.0}


def thor_params(params: dict, source: str) -> dict:
    """optimizer.params of a "THOR" section, defaults filled in and checked (errors name the key)."""
    unknown = set(params) - set(THOR_PARAMS) - {"weight_decay", "lr"}
    if unknown:
        raise ValueError(f"{source}: optimizer.params {sorted(unknown)} are not THOR settings "
                         f"({', '.join(sorted(THOR_PARAMS))})")
    merged = {**THOR_PARAMS, **params}
    try:
        check_hyperparameters(merged["lr"], merged["damping"], merged["momentum"], merged["frequency"],
                              merged["split_dim"])
        if not 0 <= merged["damping_min"] <= merged["damping"]:
            raise ValueError(f"THOR damping_min must be in [0, damping], got {merged['damping_min']}")
    except ValueError as e:
        raise ValueError(f"{source}: optimizer.params: {e}") from None
    return merged


def use_deepspeed_fused_lamb(optimizer_type: str, zero_stage: int) -> bool:
    """DeepSpeed's fused Lamb (CUDA kernel) keeps per-layer trust ratios only without ZeRO:
    it is used exactly when the device is CUDA and the ZeRO stage is 0."""
    return optimizer_type == "lamb" and zero_stage == 0 and torch.cuda.is_available()


def build_optimizer(model, optimizer_type: str, lr: float, weight_decay: float, betas, eps: float,
                    use_nvlamb: bool = False, params: dict | None = None, total_steps: int = 1,
                    batch_size: int = 1, gradient_accumulation_steps: int = 1):
    """`params`: the DeepSpeed JSON's optimizer.params (THOR's and Momentum's own settings)."""
    groups = param_groups(model, weight_decay)
    params = params or {}
    if optimizer_type == "thor":
        p = thor_params({k: v for k, v in params.items() if k not in ("lr", "weight_decay")}, "THOR")
        return Thor(model, groups, lr=lr, momentum=p["momentum"], frequency=p["frequency"], split_dim=p["split_dim"],
                    damping=polynomial(p["damping"], p["damping_min"], total_steps, p["damping_power"]),
                    batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps)
    if optimizer_type == "momentum":
        return Momentum(groups, lr=lr, momentum=params.get("momentum", 0.9), weight_decay=weight_decay)
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
