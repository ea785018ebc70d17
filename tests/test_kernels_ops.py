"""The torch custom ops: registration (opcheck), gradients (gradcheck), torch.compile, name clash with PyPI `kernels`."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertspeed.kernels import ops, reference


def layer_norm_args(dtype=torch.float32, residual=True, bias=True, requires_grad=False):
    g = torch.Generator().manual_seed(0)

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)

    return (make(2, 3, 16), make(2, 3, 16) if residual else None, make(16) if bias else None, make(16), make(16),
            1e-5)


def softmax_args(dropout_p, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, 5, generator=g, dtype=dtype).requires_grad_(requires_grad)
    mask = torch.zeros(2, 5, dtype=dtype)
    mask[0, 3:] = -math.inf
    mask[1, :] = -math.inf  # a fully masked batch
    return scores, mask, 0.5, dropout_p, torch.tensor([987654321])


@pytest.mark.parametrize("residual,bias", [(True, True), (False, False), (True, False)])
def test_opcheck_layer_norm(residual, bias):
    torch.library.opcheck(ops.layer_norm_fwd, layer_norm_args(residual=residual, bias=bias, requires_grad=True))
    x, res, b, w, beta, _ = layer_norm_args(residual=residual, bias=bias)
    _, mean, rstd = ops.layer_norm_fwd(x, res, b, w, beta, 1e-5)
    torch.library.opcheck(ops.layer_norm_bwd, (torch.randn_like(x), x, res, b, w, mean, rstd))


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_opcheck_softmax(dropout_p):
    torch.library.opcheck(ops.softmax_fwd, softmax_args(dropout_p, requires_grad=True))
    scores, _, scale, p, seed = softmax_args(dropout_p)
    probs = torch.softmax(scores, -1)
    torch.library.opcheck(ops.softmax_bwd, (torch.randn_like(scores), probs, scale, p, seed))


def test_gradcheck_layer_norm():
    args = layer_norm_args(torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.layer_norm_fwd(*a, 1e-5)[0], args[:-1])


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_gradcheck_masked_softmax(dropout_p):
    scores, mask, scale, p, seed = softmax_args(dropout_p, torch.float64, requires_grad=True)
    output = 0 if dropout_p > 0 else 1
    assert torch.autograd.gradcheck(lambda s: ops.softmax_fwd(s, mask, scale, p, seed)[output], (scores,))


def test_ops_match_torch_modules():
    x, res, b, w, beta, eps = layer_norm_args()
    expected = torch.nn.functional.layer_norm(x + b + res, (16,), w, beta, eps)
    torch.testing.assert_close(ops.layer_norm(x, w, beta, eps, residual=res, bias=b), expected)
    scores, mask, scale, _, _ = softmax_args(0.0)
    probs = ops.masked_softmax(scores, mask, scale)
    torch.testing.assert_close(probs[0], torch.softmax(scores[0] * scale + mask[0], -1))
    assert torch.equal(probs[1], torch.zeros_like(probs[1]))


def test_dropout_is_seeded_by_torch_rng():
    scores = torch.randn(2, 2, 3, 64)
    torch.manual_seed(5)
    a = ops.masked_softmax(scores, None, 1.0, 0.5)
    torch.manual_seed(5)
    b = ops.masked_softmax(scores, None, 1.0, 0.5)
    c = ops.masked_softmax(scores, None, 1.0, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = a != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(a[kept], 2 * torch.softmax(scores, -1)[kept])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="mask must be"):
        ops.masked_softmax(torch.randn(2, 3, 4), torch.zeros(3, 4), 1.0)
    with pytest.raises(ValueError, match="dropout_p"):
        ops.masked_softmax(torch.randn(2, 3, 4), None, 1.0, 1.0)


def test_torch_compile_traces_the_ops_fullgraph():
    x, res, _, w, beta, eps = layer_norm_args(requires_grad=True)
    scores, mask, scale, _, _ = softmax_args(0.0, requires_grad=True)

    def block(x, res, scores):
        return ops.layer_norm(x, w, beta, eps, residual=res).sum() + ops.masked_softmax(scores, mask, scale).pow(2).sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    eager_loss = block(x, res, scores)
    eager_grads = torch.autograd.grad(eager_loss, (x, res, scores))
    loss = compiled(x, res, scores)
    grads = torch.autograd.grad(loss, (x, res, scores))
    torch.testing.assert_close(loss, eager_loss)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)


def test_importing_kernels_is_cheap_and_builds_nothing():
    code = "import sys, bertspeed.kernels; assert 'torch' not in sys.modules, 'import bertspeed.kernels pulled torch in'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_transformers_works_beside_us_from_the_repository_root():
    """The top-level kernels/ folder holds only CUDA sources: no __init__.py, so it cannot shadow Hugging
    Face's `kernels` package, which transformers imports (the fresh-venv check is in test_packaging.py)."""
    root = Path(__file__).resolve().parents[1]
    assert not (root / "kernels" / "__init__.py").exists()
    code = ("from transformers import BertConfig, BertModel; import torch; "
            "m = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, "
            "intermediate_size=32)).eval(); "
            "out = m(torch.tensor([[1, 2, 3, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]])); "
            "assert out.last_hidden_state.shape == (1, 4, 16)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_reference_dropout_keeps_expected_fraction():
    scale = reference.dropout_scale((100_000,), 0.1, seed=3)
    assert abs(float((scale == 0).float().mean()) - 0.1) < 0.005
    assert scale.unique().tolist() == pytest.approx([0.0, 1 / 0.9])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_without_cuda_the_extension_is_unavailable_with_a_clear_warning():
    ops.extension.cache_clear()
    try:
        with pytest.warns(UserWarning, match="using the PyTorch reference path: .*CPU build|not found"):
            assert ops.extension() is None
        assert ops.extension_available() is False
    finally:
        ops.extension.cache_clear()
