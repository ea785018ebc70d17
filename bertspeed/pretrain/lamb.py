"""LAMB with NVIDIA's semantics, vectorised with torch's foreach ops, and correct under ZeRO.

Update for each parameter w with gradient g (step t, bias correction on):

    m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * w
    r = ||w|| / ||u||  if both norms > 0 else 1      (per *parameter*, not per tensor the optimizer holds)
    w = w - lr * r * u

As in apex's FusedLAMB (NVIDIA DeepLearningExamples BERT), the trust ratio is applied only to
parameters with weight decay unless `use_nvlamb=True`; biases and LayerNorm go in a group with
weight_decay 0 (see `bertspeed.training.params.param_groups`). Global gradient clipping is DeepSpeed's
(`gradient_clipping` in its config), done before `step`.

Under ZeRO 1/2 (and DeepSpeed's bf16 optimizer) the tensors in the param groups are flat fp32
partitions: one tensor holds pieces of many parameters and one parameter may be split across
ranks. `attach_partition_layout(engine)` tells the optimizer, for every flat tensor, which
slice belongs to which model parameter. `step` then computes per-slice sums of squares,
all-reduces one small vector (one entry per parameter) over the data-parallel group, and so
applies exactly the trust ratio unpartitioned LAMB would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.optim import Optimizer


@dataclass(frozen=True)
class Segment:
    param_index: int  # index of the model parameter this slice belongs to
    start: int  # offset within the flat tensor
    numel: int


def _update_per_view(device: torch.device) -> bool:
    """Apply the trust ratios view by view (one pass each, faster on a CPU) rather than with two
    multi-tensor kernels (a GPU's foreach ops, which one launch per view would slow down)."""
    return device.type == "cpu"


class Lamb(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, bias_correction: bool = True, use_nvlamb: bool = False):
        if lr < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"Lamb: invalid lr={lr}, eps={eps} or weight_decay={weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb: betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction)
        super().__init__(params, defaults)
        self.use_nvlamb = use_nvlamb
        self._layout: dict[int, list[Segment]] = {}  # id(flat tensor) -> its slices
        self._num_params = 0
        self._group = None  # process group the flat tensors are partitioned over

    def attach_layout(self, layout: dict[int, list[Segment]], num_params: int, process_group=None):
        """Declare flat tensors (by id) as concatenations of parameter slices, partitioned over
        `process_group` (None: not partitioned, the whole of every parameter is local)."""
        self._layout, self._num_params, self._group = dict(layout), num_params, process_group

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            self._step_group(group, params)
        return loss

    def _step_group(self, group, params):
        beta1, beta2 = group["betas"]
        adaptive = group["weight_decay"] != 0 or self.use_nvlamb
        if not params:  # still join the collective so partitioned ranks never hang
            if adaptive:
                self._trust_ratios([], [])
            return
        grads, exp_avgs, exp_avg_sqs = [], [], []
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("Lamb does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            grads.append(p.grad.to(p.dtype))
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        step = self.state[params[0]]["step"]

        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        c1, c2 = (1 - beta1 ** step, 1 - beta2 ** step) if group["bias_correction"] else (1.0, 1.0)
        # u = (m / c1) / (sqrt(v / c2) + eps) + wd w, with the corrections folded into two scalars:
        # m / (sqrt(v) + eps sqrt(c2)) * (sqrt(c2) / c1) + wd w takes four passes over memory instead of six.
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, group["eps"] * math.sqrt(c2))
        scale = math.sqrt(c2) / c1
        if group["weight_decay"] != 0:
            updates = torch._foreach_mul(params, group["weight_decay"])
            torch._foreach_addcdiv_(updates, exp_avgs, denom, value=scale)
        else:
            updates = torch._foreach_div(exp_avgs, denom)
            if scale != 1.0:
                torch._foreach_mul_(updates, scale)
        if adaptive:
            w_views, u_views, ratios = self._trust_ratios(params, updates)
            if _update_per_view(params[0].device):
                for w, u, ratio in zip(w_views, u_views, ratios, strict=True):
                    w.add_(u, alpha=-group["lr"] * ratio)  # w -= lr * r * u
                return
            torch._foreach_mul_(u_views, ratios)  # in place on views of `updates`
        torch._foreach_add_(params, updates, alpha=-group["lr"])  # w -= lr * r * u

    def _trust_ratios(self, params, updates):
        """Views of `params` and of `updates` (whole tensors, or the slices of flat tensors) and the
        trust ratio of the parameter each view belongs to."""
        w_views, u_views, slots = [], [], []
        n = self._num_params
        for k, (p, u) in enumerate(zip(params, updates)):
            segments = self._layout.get(id(p))
            if segments is None:  # a whole parameter: a private slot after the model's parameters
                w_views.append(p.view(-1)), u_views.append(u.view(-1)), slots.append(n + k)
                continue
            for s in segments:
                w_views.append(p.view(-1).narrow(0, s.start, s.numel))
                u_views.append(u.view(-1).narrow(0, s.start, s.numel))
                slots.append(s.param_index)
        sums = torch.zeros(2, n + len(params), dtype=torch.float32)
        if w_views:
            index = torch.tensor(slots)
            sums[0].index_add_(0, index, torch.stack(torch._foreach_norm(w_views)).float().cpu() ** 2)
            sums[1].index_add_(0, index, torch.stack(torch._foreach_norm(u_views)).float().cpu() ** 2)
        if self._group is not None and n > 0:  # slices of one parameter on several ranks
            shared = sums[:, :n].contiguous().to(self._reduce_device())
            dist.all_reduce(shared, op=dist.ReduceOp.SUM, group=self._group)
            sums[:, :n] = shared.cpu()
        w_norm, u_norm = sums.sqrt()
        ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
        return w_views, u_views, ratio[slots].tolist() if slots else []

    def _reduce_device(self):
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")


def partition_layout(module: torch.nn.Module, optimizer: Optimizer):
    """Where each model parameter lives in the flat fp32 tensors of a DeepSpeed ZeRO 1/2 (or bf16)
    optimizer, read from DeepSpeed's own low->high precision mapping (`param._hp_mapping`).
    Returns (layout, number of parameters, process group); layout is empty when the optimizer
    holds the model's parameters (or per-parameter fp32 copies) directly."""
    params = list(module.parameters())
    flat_by_storage = {}
    for group in optimizer.param_groups:
        for t in group["params"]:
            flat_by_storage[t.untyped_storage().data_ptr()] = t
    layout: dict[int, list[Segment]] = {}
    process_group = None
    for index, p in enumerate(params):
        if not hasattr(p, "_hp_mapping"):
            continue
        process_group = getattr(p, "_dp_group", None)
        mapping = p._hp_mapping
        if mapping is None:  # no slice of this parameter on this rank
            continue
        flat = flat_by_storage.get(mapping.hp_fragment.untyped_storage().data_ptr())
        if flat is None:
            raise RuntimeError(f"Lamb: parameter {index} maps to a tensor the optimizer does not hold")
        address = mapping.hp_fragment_address
        layout.setdefault(id(flat), []).append(Segment(index, address.start, address.numel))
    return layout, len(params), process_group
