"""THOR against an explicit float64 Kronecker-factored natural gradient (inverses by eigendecomposition),
its first-order limit, its refresh frequency, its state across a save/restore, and bad settings."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bertspeed.model.layers import LayerNorm
from bertspeed.training.params import param_groups
from bertspeed.training.thor import Thor

B, T, V = 3, 5, 7


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 4)
        self.fc1 = nn.Linear(4, 6)
        self.LayerNorm = LayerNorm(6)
        self.fc2 = nn.Linear(6, V)

    def forward(self, ids, keep=None):
        h = self.emb(ids)
        y1 = self.fc1(h)
        z = torch.tanh(self.LayerNorm(y1))
        out = self.fc2(z)
        if keep is not None:
            keep.update(h=h, y1=y1, z=z, out=out)
            for t in (h, y1, out):
                t.retain_grad()
        return nn.functional.cross_entropy(out.reshape(-1, V), ids.roll(1, 1).reshape(-1))


def batch(seed):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def inverse(matrix, damping, split):
    """Block-diagonal (split) inverse of matrix + damping I, each block by eigendecomposition."""
    out = np.zeros_like(matrix)
    for s in range(0, len(matrix), split):
        values, vectors = np.linalg.eigh(matrix[s:s + split, s:s + split])
        out[s:s + split, s:s + split] = vectors @ np.diag(1 / (values + damping)) @ vectors.T
    return out


def reference_update(model, ids, damping, split):
    """-(natural gradient) of each parameter for one step, lr 1, no momentum or decay, in float64."""
    keep = {}
    model(ids, keep).backward()
    root = np.sqrt(damping)
    n = B * T

    def rows(t, scale=1.0):
        return t.detach().reshape(n, -1).numpy() * scale

    def kron_step(weight, a_rows, d_rows):  # vec(G^-1 g A^-1) = (A^-1 (x) G^-1) vec(g), column-major vec
        a_inv, g_inv = inverse(a_rows.T @ a_rows / n, root, split), inverse(d_rows.T @ d_rows / n, root, split)
        g = weight.grad.numpy()
        return -(np.kron(a_inv, g_inv) @ g.T.reshape(-1)).reshape(g.shape[1], g.shape[0]).T

    want = {"fc1.weight": kron_step(model.fc1.weight, rows(keep["h"]), rows(keep["y1"].grad, B)),
            "fc2.weight": kron_step(model.fc2.weight, rows(keep["z"]), rows(keep["out"].grad, B))}
    counts = np.bincount(ids.reshape(-1).numpy(), minlength=V) / n
    d = rows(keep["h"].grad, B)
    want["emb.weight"] = -(model.emb.weight.grad.numpy() / (counts + root)[:, None]) @ inverse(d.T @ d / n, root, split)
    for name in ("LayerNorm.weight", "LayerNorm.bias"):
        g = model.get_parameter(name).grad.numpy()
        want[name] = -g / (g * g / B + root)
    for name in ("fc1.bias", "fc2.bias"):
        want[name] = -model.get_parameter(name).grad.numpy()
    return want


@pytest.mark.parametrize("split", [4, 3])
def test_update_equals_float64_kronecker_natural_gradient(split):
    torch.manual_seed(0)
    model = Tiny().double()
    reference = copy.deepcopy(model)
    ids = batch(1)
    want = reference_update(reference, ids, damping=0.03, split=split)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = Thor(model, param_groups(model, 0.0), lr=1.0, damping=0.03, momentum=0.0, frequency=1,
                     split_dim=split, batch_size=B)
    model(ids).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        np.testing.assert_allclose((p.detach() - before[name]).numpy(), want[name], rtol=1e-6, atol=1e-9,
                                   err_msg=name)


def test_large_damping_reduces_to_the_first_order_rule():
    torch.manual_seed(0)
    model = Tiny().double()
    damping = 1e12
    optimizer = Thor(model, param_groups(model, 0.0), lr=damping, damping=damping, momentum=0.0, frequency=1,
                     split_dim=4, batch_size=B)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model(batch(2)).backward()
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    optimizer.step()
    for name in ("fc1.weight", "fc2.weight"):  # (G + sqrt(l))^-1 g (A + sqrt(l))^-1 -> g / l
        step = model.get_parameter(name).detach() - before[name]
        torch.testing.assert_close(step, -grads[name], rtol=1e-4, atol=1e-12)


def run(model, optimizer, seeds):
    for seed in seeds:
        optimizer.zero_grad()
        model(batch(seed)).backward()
        optimizer.step()


def test_frequency_momentum_and_resume_are_exact():
    torch.manual_seed(0)
    model = Tiny()
    make = lambda m: Thor(m, param_groups(m, 0.01), lr=0.05, damping=0.1, momentum=0.9, frequency=3,  # noqa: E731
                          split_dim=4, batch_size=B)
    optimizer = make(model)
    run(model, optimizer, [1])
    first = optimizer.state[model.fc1.weight]["A_inv"].clone()
    run(model, optimizer, [2, 3])  # steps 1 and 2 reuse the inverses of step 0
    assert torch.equal(optimizer.state[model.fc1.weight]["A_inv"], first)
    snapshot = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    run(model, optimizer, [4, 5, 6, 7])  # step 3 measures again
    assert not torch.equal(optimizer.state[model.fc1.weight]["A_inv"], first)

    resumed = Tiny()
    resumed.load_state_dict(snapshot[0])
    optimizer2 = make(resumed)
    optimizer2.load_state_dict(snapshot[1])
    run(resumed, optimizer2, [4, 5, 6, 7])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("setting, value, message", [
    ("damping", -1.0, "THOR damping must be >= 0"),
    ("frequency", 0, "THOR frequency must be a positive integer"),
    ("split_dim", 64, "THOR split_dim 64 is larger than every layer"),
    ("lr", 0.0, "THOR lr must be positive"),
])
def test_bad_settings_name_the_setting(setting, value, message):
    model = Tiny()
    with pytest.raises(ValueError, match=message):
        Thor(model, param_groups(model, 0.0), **{"split_dim": 4, setting: value})


def test_momentum_matches_torch_sgd_step_for_step():
    from bertspeed.training.thor import Momentum
    torch.manual_seed(0)
    ours, theirs = Tiny(), Tiny()
    theirs.load_state_dict(ours.state_dict())
    optimizers = [Momentum(param_groups(ours, 0.01), lr=0.1, momentum=0.9),
                  torch.optim.SGD(param_groups(theirs, 0.01), lr=0.1, momentum=0.9)]
    for seed in range(6):
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            model(batch(seed)).backward()
            optimizer.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_end_learning_rate_matches_the_closed_form():
    from bertspeed.pretrain.optim import warmup_poly_lambda
    peak, end, total, warmup, power = 1e-3, 1e-5, 50, 5, 2.0
    factor = warmup_poly_lambda(total, warmup, power, end_ratio=end / peak)
    for step in range(total):
        if step < warmup:
            want = peak * (step + 1) / warmup
        else:
            want = end + (peak - end) * (1 - (step - warmup + 1) / (total - warmup + 1)) ** power
        assert peak * factor(step) == pytest.approx(want, rel=1e-12)
    assert peak * factor(total - 1) == pytest.approx(end + (peak - end) * (1 / (total - warmup + 1)) ** power)


def _thor_run(rank=0, world=1, init_file=None, result_file=None):
    """Three THOR steps on a global batch of 2B sequences, this rank's share of it; weights of rank 0."""
    import torch.distributed as dist

    from bertspeed.training.distributed import shutdown_distributed
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Tiny().double()
    optimizer = Thor(model, param_groups(model, 0.01), lr=0.1, damping=0.05, momentum=0.9, frequency=2, split_dim=4,
                     batch_size=2 * B)
    for seed in range(3):
        ids = torch.cat([batch(seed), batch(100 + seed)]).chunk(world)[rank]
        optimizer.zero_grad()
        model(ids).backward()
        for p in model.parameters() if world > 1 else ():  # data parallel: the mean gradient, as DeepSpeed's
            dist.all_reduce(p.grad)
            p.grad /= world
        optimizer.step()
    if world > 1:
        if rank == 0:
            torch.save(model.state_dict(), result_file)
        shutdown_distributed()  # both ranks done before gloo is torn down (a rank tearing down early aborted once)
    return model.state_dict()


def test_two_ranks_equal_one_rank_at_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp
    one = _thor_run()
    mp.spawn(_thor_run, args=(2, str(tmp_path / "init"), str(tmp_path / "w2.pt")), nprocs=2, join=True)
    two = torch.load(tmp_path / "w2.pt", weights_only=True)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-9, atol=1e-12, msg=name)


def test_every_bert_projection_is_preconditioned():
    """THOR's hooks see the query, key and value projections (BERT fuses them into one GEMM otherwise), and
    the last layer on every token (not only at the loss's positions)."""
    from bertspeed.model import BertConfig, BertForPreTraining
    from bertspeed.pretrain.calibrate import synthetic_batch
    config = BertConfig.preset("tiny", vocab_size=200, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    batch = synthetic_batch(config, 4, 16, 3)
    plain_loss = model(**batch).loss.detach()
    optimizer = Thor(model, param_groups(model, 0.0), lr=0.01, damping=0.1, momentum=0.0, frequency=1,
                     split_dim=32, batch_size=4)
    assert not model.bert.last_layer_skips_tokens()
    loss = model(**batch).loss
    torch.testing.assert_close(loss, plain_loss)  # the unfused projections compute the same
    loss.backward()
    optimizer.step()
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith("decoder")}
    assert {f"bert.encoder.layer.1.attention.self.{n}" for n in ("query", "key", "value")} <= linears
    missing = [name for name in linears if "A_inv" not in optimizer.state[model.get_submodule(name).weight]]
    assert not missing
