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

On a CPU, fp32 tensors go through the two compiled passes of `_lamb_cpu.c` (10 reads and writes of
parameter-sized memory instead of PyTorch's multi-tensor ops' 23, split into fixed chunks run on torch's thread
count); elsewhere, or where it is not built, the multi-tensor ops compute the same update.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.distributed as dist
from torch.optim import Optimizer

try:
    from bertspeed.pretrain import _lamb_cpu
except ImportError:  # not built (no C compiler at install): the multi-tensor ops do the same step
    _lamb_cpu = None

CHUNK = 1 << 20  # floats per call of the compiled passes: fixed, so the sums do not depend on the thread count


@dataclass(frozen=True)
class Segment:
    param_index: int  # index of the model parameter this slice belongs to
    start: int  # offset within the flat tensor
    numel: int


def _update_per_view(device: torch.device) -> bool:
    """Apply the trust ratios view by view (one pass each, faster on a CPU) rather than with two
    multi-tensor kernels (a GPU's foreach ops, which one launch per view would slow down)."""
    return device.type == "cpu"


def _folded_corrections(group, step: int) -> tuple[float, float]:
    """(eps', scale) with u = m / (sqrt(v) + eps') * scale + wd w equal to (m / c1) / (sqrt(v / c2) + eps) + wd w:
    the bias corrections c1 = 1 - b1^t and c2 = 1 - b2^t folded into two scalars save two passes over memory."""
    beta1, beta2 = group["betas"]
    c1, c2 = (1 - beta1 ** step, 1 - beta2 ** step) if group["bias_correction"] else (1.0, 1.0)
    return group["eps"] * math.sqrt(c2), math.sqrt(c2) / c1


def _compiled_passes(tensors) -> bool:
    """Whether `_lamb_cpu` is built and can take all of these tensors (fp32, contiguous, on a CPU)."""
    return _lamb_cpu is not None and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


@lru_cache(maxsize=1)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="lamb")


def _run_chunks(kernel, views: list[tuple], extra: list[tuple]) -> list[list]:
    """kernel(*arrays, *extra[k]) on every chunk of views[k] (tuples of 1-D NumPy arrays of one length), on torch's
    thread count (the kernels release the GIL). Returns each view's chunk results in order."""
    chunks = [(k, [a[start:start + CHUNK] for a in arrays])
              for k, arrays in enumerate(views) for start in range(0, len(arrays[0]), CHUNK)]
    threads = torch.get_num_threads()

    def call(chunk):
        return kernel(*chunk[1], *extra[chunk[0]])
    results = list(_pool(threads).map(call, chunks)) if threads > 1 and len(chunks) > 1 else map(call, chunks)
    per_view = [[] for _ in views]
    for (k, _), result in zip(chunks, results, strict=True):
        per_view[k].append(result)
    return per_view


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
                self._trust_ratios([], torch.zeros(2, 0), 0)
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
        if _compiled_passes([*params, *grads, *exp_avgs, *exp_avg_sqs]):
            self._compiled_step(group, step, adaptive, params, grads, exp_avgs, exp_avg_sqs)
            return

        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        eps, scale = _folded_corrections(group, step)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps)
        if group["weight_decay"] != 0:
            updates = torch._foreach_mul(params, group["weight_decay"])
            torch._foreach_addcdiv_(updates, exp_avgs, denom, value=scale)
        else:
            updates = torch._foreach_div(exp_avgs, denom)
            if scale != 1.0:
                torch._foreach_mul_(updates, scale)
        if adaptive:
            slots, (w_views, u_views) = self._views(params, params, updates)
            squares = torch.zeros(2, len(slots))
            if slots:
                squares = torch.stack([torch.stack(torch._foreach_norm(views)).float().cpu() ** 2
                                       for views in (w_views, u_views)])
            ratios = self._trust_ratios(slots, squares, len(params))
            if _update_per_view(params[0].device):
                for w, u, ratio in zip(w_views, u_views, ratios, strict=True):
                    w.add_(u, alpha=-group["lr"] * ratio)  # w -= lr * r * u
                return
            torch._foreach_mul_(u_views, ratios)  # in place on views of `updates`
        torch._foreach_add_(params, updates, alpha=-group["lr"])  # w -= lr * r * u

    def _compiled_step(self, group, step, adaptive, params, grads, exp_avgs, exp_avg_sqs):
        """The same step in `_lamb_cpu`'s two passes: moments (and the norms), then w -= lr * r * u."""
        beta1, beta2 = group["betas"]
        constants = (*_folded_corrections(group, step), group["weight_decay"])
        slots, tensor_views = self._views(params, grads, exp_avgs, exp_avg_sqs, params)
        views = [tuple(t.detach().numpy() for t in ts) for ts in zip(*tensor_views)]  # (g, m, v, w) per view
        moments = (1 - beta1, beta2, 1 - beta2, *constants)
        sums = _run_chunks(_lamb_cpu.moments, views, [moments] * len(views))
        if adaptive:
            squares = torch.tensor([[sum(chunk[i] for chunk in chunks) for chunks in sums] for i in (0, 1)])
            ratios = self._trust_ratios(slots, squares, len(params))  # squares: (2, views)
        else:
            ratios = [1.0] * len(views)
        _run_chunks(_lamb_cpu.apply, [v[1:] for v in views],
                    [(*constants, group["lr"] * ratio) for ratio in ratios])

    def _views(self, params, *tensor_lists):
        """Per view of the parameters (a whole parameter, or a parameter's slice of a flat tensor): the slot of the
        parameter it belongs to, and the same view of every tensor list (lists of tensors shaped as `params`)."""
        slots, views = [], [[] for _ in tensor_lists]
        n = self._num_params
        for k, p in enumerate(params):
            segments = self._layout.get(id(p))
            if segments is None:  # a whole parameter: a private slot after the model's parameters
                slots.append(n + k)
                for out, tensors in zip(views, tensor_lists, strict=True):
                    out.append(tensors[k].view(-1))
                continue
            for s in segments:
                slots.append(s.param_index)
                for out, tensors in zip(views, tensor_lists, strict=True):
                    out.append(tensors[k].view(-1).narrow(0, s.start, s.numel))
        return slots, views

    def _trust_ratios(self, slots, squares, num_local):
        """Each view's trust ratio ||w|| / ||u|| (1 where either is 0), from its sums of squares (2, views) summed
        per parameter, over the ranks that hold slices of it."""
        n = self._num_params
        sums = torch.zeros(2, n + num_local, dtype=torch.float32)
        if slots:
            sums.index_add_(1, torch.tensor(slots), squares)
        if self._group is not None and n > 0:  # slices of one parameter on several ranks
            shared = sums[:, :n].contiguous().to(self._reduce_device())
            dist.all_reduce(shared, op=dist.ReduceOp.SUM, group=self._group)
            sums[:, :n] = shared.cpu()
        w_norm, u_norm = sums.sqrt()
        ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
        return ratio[slots].tolist() if slots else []

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
