"""fp32 CPU linears through oneDNN (bertspeed/model/cpu_linear.py): output and gradients against float64."""
import pytest
import torch
import torch.nn.functional as F

from bertspeed.model.cpu_linear import GEMM_ENV, Linear, linear, use_onednn
from bertspeed.training.hardware import onednn_op

pytestmark = pytest.mark.skipif(onednn_op() is None, reason="this PyTorch build has no oneDNN linear")


@pytest.fixture
def onednn(monkeypatch):
    monkeypatch.setenv(GEMM_ENV, "onednn")
    assert use_onednn()


@pytest.mark.parametrize("bias", [True, False])
def test_output_and_gradients_equal_float64(onednn, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, 24, generator=gen)[:, ::2]  # (3, 19, 24), not contiguous
    w = torch.randn(41, 24, generator=gen)
    b = torch.randn(41, generator=gen) if bias else None

    def leaves(dtype):  # in fp32, x stays a strided view
        return [None if t is None else t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
    got, ref = leaves(torch.float32), leaves(torch.float64)
    upstream = torch.randn(3, 19, 41, generator=gen)
    out, expected = linear(*got), F.linear(*ref)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    (out * upstream).sum().backward()
    (expected * upstream.double()).sum().backward()
    for leaf, want in zip(got, ref, strict=True):
        if leaf is not None:
            torch.testing.assert_close(leaf.grad.double(), want.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("frozen", ["weight", "bias"])
def test_frozen_weight_or_bias_and_no_grad(onednn, frozen):
    layer = Linear(8, 5)
    getattr(layer, frozen).requires_grad_(False)
    x = torch.randn(4, 8, requires_grad=True)
    layer(x).sum().backward()
    assert getattr(layer, frozen).grad is None and x.grad is not None
    trained = layer.bias if frozen == "weight" else layer.weight
    expected = torch.ones(4, 5).sum(0) if frozen == "weight" else torch.ones(4, 5).t() @ x.detach()
    torch.testing.assert_close(trained.grad, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)


def test_bf16_and_autocast_take_pytorchs_linear(onednn):
    x, w = torch.randn(4, 8), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(linear(x, w), F.linear(x, w))
    assert torch.equal(linear(x.bfloat16(), w.bfloat16()), F.linear(x.bfloat16(), w.bfloat16()))


def test_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(GEMM_ENV, "blas")
    with pytest.raises(ValueError, match=GEMM_ENV):
        use_onednn()
    monkeypatch.setenv(GEMM_ENV, "mkl")
    assert not use_onednn()


@pytest.mark.parametrize("kind, expected", [(("AuthenticAMD", True), True), (("AuthenticAMD", False), False),
                                            (("GenuineIntel", True), False), (("", False), False)])
def test_avx512_amd_cpus_take_onednn_unless_told(monkeypatch, kind, expected):
    from bertspeed.model import cpu_linear
    monkeypatch.delenv(GEMM_ENV, raising=False)
    monkeypatch.setattr(cpu_linear, "cpu_kind", lambda: kind)
    assert use_onednn() is expected
    monkeypatch.setenv(GEMM_ENV, "onednn")
    assert use_onednn()
