"""fp32 Linear layers on a CPU through oneDNN where it is the faster GEMM library there.

PyTorch runs an fp32 `F.linear` on a CPU through MKL's sgemm. On an AMD EPYC (Zen 4) MKL reached 93-104 GFLOP/s
per core on BERT's shapes and oneDNN's dense linear (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's
inductor emits for CPU linears) 108-113. `linear()` takes oneDNN on AMD CPUs with AVX-512 (BERTSPEED_CPU_GEMM=
onednn|mkl overrides that; use_onednn): its dense linear for the forward and the input gradient, its inner-product
backward-weights primitive for the weight and bias gradients together (1.01-1.02x a bert-base step against MKL's
gᵀx and a separate bias sum, even with its operands copied into oneDNN tensors; neutral at bert-mini). Everything
else — CUDA, bf16 and fp16, autocast, torch.compile — takes `F.linear`. Same parameters, keys and results to fp32
rounding.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from bertspeed.training.hardware import cpu_flags, cpu_vendor, onednn_linear, onednn_op, onednn_weight_grad

GEMM_ENV = "BERTSPEED_CPU_GEMM"


@lru_cache(maxsize=None)
def cpu_kind() -> tuple[str, bool]:
    """(the CPU's vendor_id, whether it has AVX-512F)."""
    return cpu_vendor(), "avx512f" in cpu_flags()


def use_onednn() -> bool:
    """oneDNN for fp32 CPU linears: BERTSPEED_CPU_GEMM if set, else on AMD CPUs with AVX-512 (Zen 4 and later),
    where it was measured faster than MKL (AVX2-only AMD and Intel's CPUs keep MKL). A fixed rule, not a timing,
    so that every rank and every resumed run of a job computes with the same library and gets the same bits."""
    choice = os.environ.get(GEMM_ENV, "").lower()
    if choice not in ("", "onednn", "mkl"):
        raise ValueError(f"{GEMM_ENV}={choice!r}: expected 'onednn' or 'mkl'")
    wanted = choice == "onednn" if choice else cpu_kind() == ("AuthenticAMD", True)
    return wanted and onednn_op() is not None


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = onednn_linear(g, weight.t()).view(*grad.shape[:-1], weight.shape[1])
        bias_grad = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1]:
            dw, db = onednn_weight_grad(g, rows, weight, bias_grad)
        elif bias_grad:
            db = g.sum(0)
        return dx, dw, db


def uses_onednn(x: torch.Tensor) -> bool:
    """Whether `linear` runs an fp32 input `x` (with an fp32 weight) through oneDNN."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling() and use_onednn())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN for fp32 on a CPU where that is faster (module doc)."""
    if weight.dtype == torch.float32 and uses_onednn(x):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward is `linear()`."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
