"""The fused MLM decoder + cross-entropy (bertspeed/model/mlm_loss.py) gives the plain path's loss and gradients."""
import pytest
import torch
import torch.nn.functional as F

from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.mlm_loss import linear_cross_entropy


def leaves(M=37, H=8, V=101, bias=True):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(M, H, generator=gen, requires_grad=True)
    w = torch.randn(V, H, generator=gen, requires_grad=True)
    b = torch.randn(V, generator=gen, requires_grad=True) if bias else None
    labels = torch.randint(0, V, (M,), generator=gen)
    labels[:4] = torch.tensor([0, V - 1, 31, 32])  # first/last word and both sides of a tile edge (cols=32)
    return x, w, b, labels


def loss_and_grads(fn, tensors, scale=0.7):
    for t in tensors:
        if t is not None:
            t.grad = None
    loss = fn()
    (loss * scale).backward()  # an incoming gradient other than 1
    return [loss.detach()] + [t.grad.clone() for t in tensors if t is not None]


@pytest.mark.parametrize("bias", [True, False])
def test_equals_plain_cross_entropy_fp32(bias):
    x, w, b, labels = leaves(bias=bias)
    expected = loss_and_grads(lambda: F.cross_entropy(F.linear(x, w, b), labels), (x, w, b))
    # row and vocabulary tiles that do not divide 37 rows / 101 words
    got = loss_and_grads(lambda: linear_cross_entropy(x, w, b, labels, rows=16, cols=32), (x, w, b))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_plain_to_bf16_rounding():
    x, w, b, labels = leaves()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(lambda: F.cross_entropy(F.linear(x, w, b).float(), labels), (x, w, b))
        got = loss_and_grads(lambda: linear_cross_entropy(x, w, b, labels, rows=16, cols=32), (x, w, b))
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2 * e.abs().max().item())


def test_no_grad_gives_the_loss_only():
    x, w, b, labels = leaves()
    with torch.no_grad():
        got = linear_cross_entropy(x, w, b, labels, rows=16, cols=32)
        torch.testing.assert_close(got, F.cross_entropy(F.linear(x, w, b), labels))


def test_labels_outside_the_vocabulary_are_refused():
    x, w, b, labels = leaves()
    labels[0] = 101
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 101\)"):
        linear_cross_entropy(x, w, b, labels)


def test_pretraining_model_fused_equals_unfused():
    """Training mode: fused loss (default) vs the logits path; tied decoder gradient included."""
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 99, (3, 11), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, [2, 5, 7]] = torch.randint(0, 99, (3, 3), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": labels, "next_sentence_label": torch.tensor([0, 1, 0])}
    results = []
    for fused in (False, True):
        model.fused_mlm_loss = fused
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        assert (out.prediction_logits is None) == fused
        results.append((out.mlm_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-6, msg=name)
