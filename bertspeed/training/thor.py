"""THOR (Chen et al., AAAI 2021; MindSpore's `nn.thor`): Kronecker-factored natural gradient with
momentum, for BERT pretraining and finetuning.

Per nn.Linear (weight W, out x in): A = E[a a^T] over the layer's input rows and G = E[d d^T] over the
gradients of the per-sequence loss at its output rows. Every `frequency` steps both are measured in that
step's forward and backward passes (a forward hook, and a gradient hook on the output), averaged over
micro-batches and data-parallel ranks, damped and inverted in diagonal blocks of `split_dim`:

    g' = (G + sqrt(lambda) I)^-1  g  (A + sqrt(lambda) I)^-1

Other steps reuse the stored inverses. nn.Embedding: A is diagonal (how often each row is looked up per
input row), so g' = diag(A + sqrt(lambda))^-1 g (G + sqrt(lambda) I)^-1; a weight tied to an embedding (the
MLM decoder) is preconditioned as the embedding. LayerNorm weights and biases: the diagonal Fisher,
g' = g / (g^2 / batch + sqrt(lambda)). Linear biases and anything else: g as it is. Then MindSpore's
momentum rule with L2 weight decay: g' += wd * w;  m = momentum * m + g';  w -= lr * m.
The damping lambda follows `damping_schedule(step)` (the seed decays it polynomially like the learning rate).

Runs on the model's own parameters (no ZeRO partitioning, fp32 master weights = model weights): the
pretraining driver refuses ZeRO stages >= 1 and fp16/bf16 with THOR. Its whole state (momentum, inverses,
step) is in `state_dict()`, so a resumed run continues bit-exactly.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


DEFAULTS = {"lr": 0.006464, "damping": 0.007035, "momentum": 0.9, "weight_decay": 0.0, "frequency": 100,
            "split_dim": 128}  # the MindSpore BERT-THOR (BERT-large, MLPerf) recipe


def block_inverse(matrix: torch.Tensor, damping: float, split_dim: int) -> torch.Tensor:
    """Inverse of the block-diagonal part (blocks of split_dim) of matrix + damping I, by Cholesky."""
    out = torch.zeros_like(matrix)
    for start in range(0, matrix.shape[0], split_dim):
        block = matrix[start:start + split_dim, start:start + split_dim]
        block = block + damping * torch.eye(block.shape[0], dtype=block.dtype, device=block.device)
        out[start:start + split_dim, start:start + split_dim] = torch.cholesky_inverse(torch.linalg.cholesky(block))
    return out


def polynomial(start: float, end: float, total_steps: int, power: float):
    """MindSpore's polynomial decay from `start` to `end` over total_steps (then `end`)."""
    def value(step: int) -> float:
        return end + (start - end) * (1.0 - min(step, total_steps) / total_steps) ** power
    return value


class Thor(torch.optim.Optimizer):
    def __init__(self, model: nn.Module, param_groups, lr: float = DEFAULTS["lr"], damping=DEFAULTS["damping"],
                 momentum: float = DEFAULTS["momentum"], frequency: int = DEFAULTS["frequency"],
                 split_dim: int = DEFAULTS["split_dim"], batch_size: int = 1, gradient_accumulation_steps: int = 1):
        check_hyperparameters(lr, damping, momentum, frequency, split_dim)
        super().__init__(param_groups, dict(lr=lr, momentum=momentum, weight_decay=0.0))
        self.damping_schedule = damping if callable(damping) else (lambda step, d=float(damping): d)
        self.frequency, self.split_dim = frequency, split_dim
        self.batch_size, self.accumulation = batch_size, gradient_accumulation_steps
        self.state["thor"] = {"step": 0}
        self._kinds: dict[int, tuple[str, nn.Module]] = {}
        self._sums: dict[int, dict] = {}
        self._attach(model)

    # ------------------------------------------------------------------ factors, measured by hooks
    def _attach(self, model: nn.Module) -> None:
        embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        for module in model.modules():
            linear = isinstance(module, nn.Linear) and id(module.weight) not in embedded
            if linear or isinstance(module, nn.Embedding):
                kind = "linear" if linear else "embedding"
                self._kinds[id(module.weight)] = (kind, module)
                module.register_forward_hook(self._forward_hook)
                module.measured_by_hooks = True  # BERT then calls it as a module on every token (model.py)
            elif isinstance(module, nn.LayerNorm):  # bertspeed.model.layers.LayerNorm subclasses it
                for p in (module.weight, module.bias):
                    self._kinds[id(p)] = ("diagonal", module)
        factored = [m.weight.shape for kind, m in self._kinds.values() if kind != "diagonal"]
        largest = max((max(shape) for shape in factored), default=0)
        if self.split_dim > largest:
            raise ValueError(f"THOR split_dim {self.split_dim} is larger than every layer "
                             f"(largest dimension {largest})")

    @property
    def measuring(self) -> bool:
        """Factors are measured in the forward/backward passes of every `frequency`-th step (0 first)."""
        return torch.is_grad_enabled() and self.state["thor"]["step"] % self.frequency == 0

    def _add(self, module, name: str, value: torch.Tensor) -> None:
        sums = self._sums.setdefault(id(module.weight), {})
        total, count = sums.get(name, (0.0, 0))
        sums[name] = (total + value.detach().double(), count + 1)

    def _forward_hook(self, module, inputs, output):
        """A from the layer's input now; G from the gradient at its output, when backward reaches it."""
        if not (self.measuring and module.training and output.requires_grad):
            return
        x = inputs[0]
        if isinstance(module, nn.Embedding):  # one-hot inputs: A is diagonal, the row frequencies
            ids = x.reshape(-1)
            counts = torch.bincount(ids, minlength=module.num_embeddings).double()
            self._add(module, "A", counts / ids.numel())
        else:
            rows = x.reshape(-1, x.shape[-1]).double()
            self._add(module, "A", rows.T @ rows / rows.shape[0])
        output.register_hook(lambda grad: self._add_g(module, grad))

    def _add_g(self, module, grad: torch.Tensor) -> None:
        # undo the loss's mean over the micro-batch's sequences and the 1/accumulation scaling: G is the
        # covariance of per-sequence loss gradients
        per_sequence = grad.shape[0] * self.accumulation
        rows = grad.reshape(-1, grad.shape[-1]).double() * per_sequence
        self._add(module, "G", rows.T @ rows / rows.shape[0])

    def _refresh_inverses(self, damping: float) -> None:
        for key, sums in self._sums.items():
            kind, module = self._kinds[key]
            if len(sums) < 2:  # looked up but not in the loss's graph this step: keep the old inverses
                continue
            A, G = (sums[name][0] / sums[name][1] for name in ("A", "G"))
            if dist.is_initialized() and dist.get_world_size() > 1:  # factors averaged over the ranks
                for factor in (A, G):
                    dist.all_reduce(factor)
                    factor /= dist.get_world_size()
            root = math.sqrt(damping)
            state = self.state[module.weight]
            A_inv = 1.0 / (A + root) if kind == "embedding" else block_inverse(A, root, self.split_dim)
            state["A_inv"] = A_inv.to(module.weight.dtype)
            state["G_inv"] = block_inverse(G, root, self.split_dim).to(module.weight.dtype)
        self._sums.clear()

    # ------------------------------------------------------------------ the update
    def precondition(self, p: torch.Tensor, grad: torch.Tensor, damping: float) -> torch.Tensor:
        kind = self._kinds.get(id(p), ("plain", None))[0]
        state = self.state[p]
        if kind == "linear" and "A_inv" in state:
            return state["G_inv"] @ grad @ state["A_inv"]
        if kind == "embedding" and "A_inv" in state:
            return state["A_inv"][:, None] * grad @ state["G_inv"]
        if kind == "diagonal":
            return grad / (grad * grad / self.batch_size + math.sqrt(damping))
        return grad

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        thor = self.state["thor"]
        damping = self.damping_schedule(thor["step"])
        if self._sums:
            self._refresh_inverses(damping)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum_update(p, self.precondition(p, p.grad, damping), group, self.state[p])
        thor["step"] += 1
        return loss


def momentum_update(p: torch.Tensor, update: torch.Tensor, group: dict, state: dict) -> None:
    """MindSpore's ApplyMomentum with L2 decay: u += wd * w;  m = momentum * m + u;  w -= lr * m."""
    if group["weight_decay"]:
        update = update + group["weight_decay"] * p
    if "momentum" not in state:
        state["momentum"] = torch.zeros_like(p)
    state["momentum"].mul_(group["momentum"]).add_(update)
    p.add_(state["momentum"], alpha=-group["lr"])


class Momentum(torch.optim.Optimizer):
    """SGD with momentum as MindSpore's Momentum optimizer (its BERT recipes' third choice): the rule of
    `momentum_update` on the plain gradient."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        if not lr > 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"Momentum: lr must be > 0, momentum in [0, 1), weight_decay >= 0; got {lr}, {momentum}, "
                             f"{weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    momentum_update(p, p.grad, group, self.state[p])
        return loss


def check_hyperparameters(lr, damping, momentum, frequency, split_dim) -> None:
    """Bad THOR settings are errors naming the setting (as the DeepSpeed JSON / flags spell it)."""
    if not lr > 0:
        raise ValueError(f"THOR lr must be positive, got {lr}")
    if not callable(damping) and not damping >= 0:
        raise ValueError(f"THOR damping must be >= 0, got {damping}")
    if not 0 <= momentum < 1:
        raise ValueError(f"THOR momentum must be in [0, 1), got {momentum}")
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"THOR frequency must be a positive integer, got {frequency!r}")
    if not isinstance(split_dim, int) or split_dim < 1:
        raise ValueError(f"THOR split_dim must be a positive integer, got {split_dim!r}")
