"""Our LAMB against an independent float64 reference, in one process (no DeepSpeed).
The multi-rank ZeRO check is in test_pretrain_zero.py."""
from __future__ import annotations

import math

import pytest
import torch

from bertspeed.pretrain import lamb as lamb_module
from bertspeed.pretrain.lamb import Lamb, Segment


def reference_lamb(weights, grads_per_step, lr, betas, eps, weight_decays, adaptive_all=False):
    """Plain float64 LAMB (NVIDIA/apex FusedLAMB semantics), one parameter at a time, written
    from the paper's equations without torch's foreach ops."""
    b1, b2 = betas
    w = [x.double().clone() for x in weights]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            update = m_hat / (v_hat.sqrt() + eps) + weight_decays[i] * w[i]
            ratio = 1.0
            if weight_decays[i] != 0 or adaptive_all:
                w_norm = math.sqrt(float((w[i] * w[i]).sum()))
                u_norm = math.sqrt(float((update * update).sum()))
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            w[i] = w[i] - lr * ratio * update
    return w


def random_problem(seed=0, steps=6):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (11,), (3, 4, 2)]
    weights = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
    weights[2] = torch.zeros(11)  # a zero-norm parameter: trust ratio falls back to 1
    grads = [[torch.randn(s, generator=gen) * (k + 1) for s in shapes] for k in range(steps)]
    return weights, grads


PATHS = ["compiled", "cpu_update", "foreach_update"]


def take_path(path, monkeypatch):
    """Run LAMB as it runs on a CPU with `_lamb_cpu` built ('compiled'), without it ('cpu_update'), or with a GPU's
    multi-tensor last update ('foreach_update')."""
    if path != "compiled":
        monkeypatch.setattr(lamb_module, "_lamb_cpu", None)
    monkeypatch.setattr(lamb_module, "_update_per_view", lambda device: path == "cpu_update")


def test_compiled_passes_are_built():
    assert lamb_module._lamb_cpu is not None, "bertspeed/pretrain/_lamb_cpu.c is not built: pip install -e ."


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("use_nvlamb", [False, True])
def test_lamb_matches_float64_reference(use_nvlamb, path, monkeypatch):
    take_path(path, monkeypatch)
    weights, grads = random_problem()
    lr, betas, eps, wd = 0.01, (0.9, 0.999), 1e-6, 0.01
    decays = [wd, 0.0, wd, 0.0]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = Lamb([{"params": [params[0], params[2]], "weight_decay": wd},
                {"params": [params[1], params[3]], "weight_decay": 0.0}],
               lr=lr, betas=betas, eps=eps, use_nvlamb=use_nvlamb)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    expected = reference_lamb(weights, grads, lr, betas, eps, decays, adaptive_all=use_nvlamb)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)
    moved = [float((p.detach().double() - w.double()).abs().max()) for p, w in zip(params, weights)]
    assert min(moved) > 1e-3  # every parameter really moved


def flat_partitions(weights, num_parts):
    """Concatenate parameters into one flat vector (with tail padding) and cut it into equal
    partitions, as ZeRO 1/2 does; returns the partitions and each one's segment list."""
    sizes = [w.numel() for w in weights]
    total = sum(sizes)
    part = -(-total // num_parts)
    flat = torch.zeros(part * num_parts)
    flat[:total] = torch.cat([w.reshape(-1) for w in weights])
    parts, layouts = [], []
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for r in range(num_parts):
        lo, hi = r * part, (r + 1) * part
        segments = []
        for i, (s, n) in enumerate(zip(starts, sizes)):
            a, b = max(lo, s), min(hi, s + n)
            if a < b:
                segments.append(Segment(i, a - lo, b - a))
        parts.append(torch.nn.Parameter(flat[lo:hi].clone()))
        layouts.append(segments)
    return parts, layouts, starts, sizes


def flat_grads(grads, num_parts):
    parts, *_ = flat_partitions(grads, num_parts)
    return [p.detach() for p in parts]


@pytest.mark.parametrize("path", PATHS[:2])
def test_partitioned_flat_tensors_use_per_parameter_trust_ratios(path, monkeypatch):
    """Parameters cut across partitions (as ZeRO 1/2 cuts them): with the layout attached, the
    result equals unpartitioned LAMB; without it (one ratio per partition, DeepSpeed's
    behaviour) it does not, so the layout is what makes the difference."""
    take_path(path, monkeypatch)
    weights, grads = random_problem(seed=1)
    lr, betas, eps, wd = 0.02, (0.9, 0.999), 1e-6, 0.01
    expected = reference_lamb(weights, grads, lr, betas, eps, [wd] * len(weights))

    def run(with_layout):
        parts, layouts, starts, sizes = flat_partitions(weights, 3)
        owners = [{seg.param_index for seg in s} for s in layouts]
        assert owners[0] & owners[1] or owners[1] & owners[2], "no parameter is cut by a partition boundary"
        opt = Lamb([{"params": parts, "weight_decay": wd}], lr=lr, betas=betas, eps=eps)
        if with_layout:
            opt.attach_layout({id(p): s for p, s in zip(parts, layouts)}, num_params=len(weights))
        for step_grads in grads:
            for p, g in zip(parts, flat_grads(step_grads, 3)):
                p.grad = g.clone()
            opt.step()
        flat = torch.cat([p.detach() for p in parts])
        return [flat[s:s + n].view_as(w).double() for s, n, w in zip(starts, sizes, weights)]

    for got, e in zip(run(with_layout=True), expected):
        torch.testing.assert_close(got, e, rtol=1e-5, atol=1e-6)
    per_partition = run(with_layout=False)
    worst = max(float((g - e).abs().max()) for g, e in zip(per_partition, expected))
    assert worst > 1e-3, "per-partition trust ratios should differ from per-parameter ones"


def test_compiled_chunks_give_the_same_bits_on_any_thread_count(monkeypatch):
    """Tensors longer than a chunk are split into chunks run on torch's threads; the chunks are fixed, so one and
    two threads give identical parameters, and the float64 reference's to fp32 tolerance."""
    monkeypatch.setattr(lamb_module, "CHUNK", 16)
    weights, grads = random_problem(seed=2, steps=3)
    expected = reference_lamb(weights, grads, 0.01, (0.9, 0.999), 1e-6, [0.01] * len(weights))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            params = [torch.nn.Parameter(w.clone()) for w in weights]
            opt = Lamb(params, lr=0.01, weight_decay=0.01)
            for step_grads in grads:
                for p, g in zip(params, step_grads, strict=True):
                    p.grad = g.clone()
                opt.step()
            results.append([p.detach().clone() for p in params])
    finally:
        torch.set_num_threads(threads)
    for one, two, e in zip(*results, expected, strict=True):
        assert torch.equal(one, two)
        torch.testing.assert_close(one.double(), e, rtol=1e-5, atol=1e-6)


def test_compiled_passes_refuse_mismatched_arrays():
    np = pytest.importorskip("numpy")
    a = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="one length"):
        lamb_module._lamb_cpu.apply(a, a, np.zeros(5, dtype=np.float32), 1e-6, 1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match="float32"):
        lamb_module._lamb_cpu.apply(a, a, np.zeros(4), 1e-6, 1.0, 0.0, 0.1)


def test_invalid_hyperparameters_are_refused():
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="betas"):
        Lamb(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        Lamb(p, lr=-1.0)
