"""The model behind the fused-kernel switch: same outputs, same gradients, same state-dict keys."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bertspeed.model import layers
from bertspeed.model.config import BertConfig
from bertspeed.model.model import BertForPreTraining


@pytest.fixture(autouse=True)
def restore_switch():
    yield
    layers.use_fused_kernels(False)


def tiny_config(dropout=0.0):
    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout)


def batch():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 100, (3, 12), generator=g)
    attention_mask = torch.ones(3, 12, dtype=torch.long)
    attention_mask[0, 7:] = 0
    attention_mask[2, :] = 0  # no real token at all
    labels = torch.full((3, 12), -100)
    labels[:, 2] = input_ids[:, 2]
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                next_sentence_label=torch.tensor([0, 1, 0]))


def loss_and_grads(model, fused, **kwargs):
    layers.use_fused_kernels(fused)
    model.zero_grad()
    out = model(**batch(), **kwargs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_switch_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).train()
    keys_before = list(model.state_dict())
    unfused, grads_unfused = loss_and_grads(model, False)
    fused, grads_fused = loss_and_grads(model, True)
    torch.testing.assert_close(fused.prediction_logits, unfused.prediction_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.loss, unfused.loss, atol=1e-6, rtol=1e-6)
    assert grads_fused.keys() == grads_unfused.keys() and len(grads_fused) > 20
    for name, grad in grads_fused.items():
        torch.testing.assert_close(grad, grads_unfused[name], atol=1e-5, rtol=1e-4, msg=name)
    assert list(model.state_dict()) == keys_before


def test_fused_switch_under_bf16_autocast():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    outputs = []
    for fused in (False, True):
        layers.use_fused_kernels(fused)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outputs.append(model(**batch()).loss.float())
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-2, rtol=2e-2)


def test_fused_dropout_replays_under_activation_checkpointing():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(dropout=0.2)).train()
    torch.manual_seed(1)
    plain, grads_plain = loss_and_grads(model, True)
    model.set_gradient_checkpointing(True)
    torch.manual_seed(1)
    checkpointed, grads_checkpointed = loss_and_grads(model, True)
    torch.manual_seed(2)
    other, _ = loss_and_grads(model, True)
    assert torch.equal(plain.loss, checkpointed.loss)
    assert not torch.equal(plain.loss, other.loss)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_fused_kernels_are_opt_in(monkeypatch):
    """Off in a fresh process whatever the device or extension: SDPA and PyTorch's LayerNorm."""
    fresh = subprocess.run([sys.executable, "-c", "from bertspeed.model import layers; "
                            "print(layers.fused_kernels_enabled())"], capture_output=True, text=True, timeout=120)
    assert fresh.stdout.strip() == "False", fresh.stderr
    sdpa_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: sdpa_calls.append(1) or sdpa(*args, **kwargs))
    with torch.no_grad():
        BertForPreTraining(tiny_config()).eval()(**batch())
    assert len(sdpa_calls) == 2  # one per layer
    layers.use_fused_kernels(True)
    assert layers.fused_kernels_enabled() is True
    layers.use_fused_kernels(False)
    assert layers.fused_kernels_enabled() is False


def test_switch_routes_through_the_fused_ops(monkeypatch):
    calls = {"layer_norm": 0, "masked_softmax": 0}
    for name in calls:
        original = getattr(layers.fused_ops, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(layers.fused_ops, name, counted)
    model = BertForPreTraining(tiny_config()).eval()
    loss_and_grads(model, False)
    assert calls == {"layer_norm": 0, "masked_softmax": 0}
    loss_and_grads(model, True)
    # embeddings + 2 per layer + MLM head LayerNorms; one softmax per layer
    assert calls == {"layer_norm": 1 + 2 * 2 + 1, "masked_softmax": 2}
