"""The CUDA device code, executed on the CPU by the harness, against float64 references.

The harness library is the real launchers + kernels compiled by g++ against
kernels/csrc/emulate.h (threads, __syncthreads, warp shuffles emulated), so
a wrong index, a missing sync or a broken reduction shows up here.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from bertspeed.kernels import reference


def gxx_major() -> int:
    if shutil.which("g++") is None:
        return 0
    return int(subprocess.run(["g++", "-dumpversion"], capture_output=True, text=True).stdout.split(".")[0])


pytestmark = pytest.mark.skipif(gxx_major() < 12, reason="g++ >= 12 (C++20 <barrier>, _Float16) builds the CPU harness")

COLS = (1, 31, 100, 768, 1024, 4096)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# |out - ref| <= atol + rtol |ref|: rounding of the output type plus float32 arithmetic.
TOLERANCE = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2**-10), torch.bfloat16: (1e-2, 2**-7)}
PLANTED_BUG = ("BERTSPEED_PLANTED_BUG_SKIP_SHUFFLE=1",)


@pytest.fixture(scope="module")
def harness():
    from bertspeed.kernels.harness import harness as get

    return get()


def assert_matches(out, ref, dtype, what):
    atol, rtol = TOLERANCE[dtype]
    err = (out.double() - ref.double()).abs()
    bound = atol + rtol * ref.double().abs()
    assert out.shape == ref.shape, what
    bad = err > bound
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.numel()} off, worst error {err.max().item():.3g}"


def randn(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)


def layer_norm_inputs(rows, cols, dtype, weight_dtype=None):
    weight_dtype = weight_dtype or dtype
    x = randn(rows, cols, dtype=dtype, scale=3.0) + 1.5  # an offset makes cancellation matter
    return (x, randn(rows, cols, dtype=dtype), randn(cols, dtype=dtype, scale=0.1),
            randn(cols, dtype=weight_dtype), randn(cols, dtype=weight_dtype))


def f64(*tensors):
    return [None if t is None else t.double() for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cols", COLS)
def test_layer_norm_forward_backward(harness, cols, dtype):
    torch.manual_seed(cols)
    x, residual, bias, weight, beta = layer_norm_inputs(3, cols, dtype)
    y, mean, rstd = harness.layer_norm_forward(x, residual, bias, weight, beta, 1e-5)
    y_ref, mean_ref, rstd_ref = reference.layer_norm_forward(*f64(x, residual, bias, weight, beta), 1e-5)
    assert_matches(y, y_ref, dtype, "y")
    assert_matches(mean, mean_ref, torch.float32, "mean")
    assert_matches(rstd, rstd_ref, torch.float32, "rstd")

    dy = randn(3, cols, dtype=dtype)
    grads = harness.layer_norm_backward(dy, x, residual, bias, weight, mean, rstd)
    grads_ref = reference.layer_norm_backward(*f64(dy, x, residual, bias, weight), mean_ref, rstd_ref)
    for got, want, name in zip(grads, grads_ref, ("dx", "dweight", "dbeta")):
        assert_matches(got, want, dtype, name)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_layer_norm_half_input_float32_weights_many_rows(harness, dtype):
    """Mixed precision (half activations, float32 LayerNorm weights); 70 rows exercise the chunked dgamma."""
    torch.manual_seed(1)
    x, residual, _, weight, beta = layer_norm_inputs(70, 100, dtype, weight_dtype=torch.float32)
    y, mean, rstd = harness.layer_norm_forward(x, residual, None, weight, beta, 1e-12)
    y_ref, mean_ref, rstd_ref = reference.layer_norm_forward(*f64(x, residual, None, weight, beta), 1e-12)
    assert_matches(y, y_ref, dtype, "y")
    dy = randn(70, 100, dtype=dtype)
    dx, dweight, dbeta = harness.layer_norm_backward(dy, x, residual, None, weight, mean, rstd)
    dx_ref, dweight_ref, dbeta_ref = reference.layer_norm_backward(*f64(dy, x, residual, None, weight),
                                                                   mean_ref, rstd_ref)
    assert dweight.dtype == torch.float32
    assert_matches(dx, dx_ref, dtype, "dx")
    assert_matches(dweight, dweight_ref, torch.float32, "dweight")
    assert_matches(dbeta, dbeta_ref, torch.float32, "dbeta")


def softmax_inputs(cols, dtype):
    """Scores (2 batches, 2 heads, 2 queries, cols); batch 1 is fully masked, batch 0 partly."""
    scores = randn(2, 2, 2, cols, dtype=dtype, scale=4.0)
    mask = torch.randn(2, cols).float()
    mask[0, torch.rand(cols) < 0.3] = -math.inf
    mask[0, 0] = 0.0  # batch 0 keeps at least one key
    mask[1] = -math.inf
    return scores, mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cols", COLS)
def test_masked_softmax_forward_backward(harness, cols, dtype):
    torch.manual_seed(cols)
    scores, mask = softmax_inputs(cols, dtype)
    scale = 1 / math.sqrt(64)
    _, probs = harness.softmax_forward(scores, mask, scale)
    _, probs_ref = reference.softmax_forward(scores.double(), mask.double(), scale, 0.0, 0)
    assert_matches(probs, probs_ref, dtype, "probs")
    assert torch.equal(probs[1], torch.zeros_like(probs[1])), "a fully masked row must give zeros"
    assert probs_ref[0].sum(-1).sub(1).abs().max() < 1e-12

    grad_out = randn(*scores.shape, dtype=dtype)
    grad = harness.softmax_backward(grad_out, probs, scale)
    grad_ref = reference.softmax_backward(grad_out.double(), probs.double(), scale, 0.0, 0)
    assert_matches(grad, grad_ref, dtype, "grad scores")
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_softmax_without_mask(harness):
    torch.manual_seed(0)
    scores = randn(5, 100)
    _, probs = harness.softmax_forward(scores, None, 0.5)
    assert_matches(probs, torch.softmax(scores.double() * 0.5, -1), torch.float32, "probs")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_dropout_mask_identical_to_reference(harness, dtype):
    torch.manual_seed(0)
    scores, mask = softmax_inputs(768, dtype)
    p, seed = 0.3, 2**40 + 12345
    out, probs = harness.softmax_forward(scores, mask, 0.125, p, seed)
    out_ref, _ = reference.softmax_forward(scores.double(), mask.double(), 0.125, p, seed)
    kept = probs[0] > 0
    assert torch.equal(out[0][kept] != 0, out_ref[0][kept] != 0), "dropout masks differ"
    assert_matches(out, out_ref, dtype, "dropout out")
    dropped = float((out[0][kept] == 0).float().mean())
    assert abs(dropped - p) < 0.05

    grad_out = randn(*scores.shape, dtype=dtype)
    grad = harness.softmax_backward(grad_out, probs, 0.125, p, seed)
    grad_ref = reference.softmax_backward(grad_out.double(), probs.double(), 0.125, p, seed)
    assert_matches(grad, grad_ref, dtype, "dropout grad")


def test_philox_bits_match_torch_reference(harness):
    for seed, first in ((0, 0), (123, 5), (2**63 + 7, 2**40 - 3)):
        device = harness.philox_words(seed, first, 64)
        torch_ref = reference.philox_words(seed, torch.arange(first, first + 64))
        assert torch.equal(device, torch_ref), (seed, first)
    assert len(set(harness.philox_words(1, 0, 4096).tolist())) > 4000  # not degenerate


def test_planted_reduction_bug_is_caught():
    """Dropping one shuffle step of the warp reduction must make the checks above fail."""
    from bertspeed.kernels.harness import harness as get

    buggy = get(PLANTED_BUG)
    torch.manual_seed(768)
    x, residual, bias, weight, beta = layer_norm_inputs(3, 768, torch.float32)
    y, _, _ = buggy.layer_norm_forward(x, residual, bias, weight, beta, 1e-5)
    y_ref, _, _ = reference.layer_norm_forward(*f64(x, residual, bias, weight, beta), 1e-5)
    with pytest.raises(AssertionError, match="off"):
        assert_matches(y, y_ref, torch.float32, "y")
    scores, mask = softmax_inputs(100, torch.float32)
    _, probs = buggy.softmax_forward(scores, mask, 0.125)
    _, probs_ref = reference.softmax_forward(scores.double(), mask.double(), 0.125, 0.0, 0)
    with pytest.raises(AssertionError, match="off"):
        assert_matches(probs, probs_ref, torch.float32, "probs")


@pytest.mark.parametrize("kind,arg,width", [("xor", 1, 32), ("xor", 16, 32), ("xor", 4, 8), ("down", 1, 32),
                                            ("down", 5, 32), ("down", 3, 8)])
def test_emulated_shuffles_follow_cuda_rules(harness, kind, arg, width):
    """Each lane shuffles its lane id; CUDA keeps the own value when the source leaves the segment."""
    got = harness.shuffle_probe(kind, arg, width)
    expected = []
    for lane in range(32):
        segment = lane // width * width
        src = lane ^ arg if kind == "xor" else lane + arg
        expected.append(src if segment <= src < segment + width else lane)
    assert got == expected


def test_guard_zones_catch_out_of_bounds_access(harness):
    """A launch over one row too many reads the NaN guard and writes past the outputs' ends."""
    from bertspeed.kernels.harness import Guards, _ptr

    g = Guards()
    x, residual, bias, weight, beta = (g.input(t) for t in layer_norm_inputs(3, 31, torch.float32))
    y, mean, rstd = g.output(x.shape), g.output((3,)), g.output((3,))
    harness.lib.harness_layer_norm_forward(0, 0, *map(_ptr, (x, residual, bias, weight, beta, y, mean, rstd)),
                                           4, 31, 1e-5)
    with pytest.raises(RuntimeError, match="out-of-bounds write"):
        g.verify()
    g = Guards()
    scores = g.input(torch.randn(2, 8))
    harness.lib.harness_softmax_forward(0, _ptr(scores), None, _ptr(scores), None, 2, 8, 2, 1.0, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match="wrote into one of its inputs"):
        g.verify()


def test_divergent_syncthreads_is_reported_not_hung(tmp_path):
    """A thread skipping __syncthreads hangs its block: the emulation aborts with a message instead."""
    code = ("import torch; from bertspeed.kernels.harness import harness; "
            "harness().lib.harness_divergent_sync_probe(torch.zeros(64, dtype=torch.int32).data_ptr())")
    env = {**os.environ, "BERTSPEED_EMULATION_DEADLOCK_SECONDS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "deadlock: threads wait at a __syncthreads" in proc.stderr


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_path_of_the_ops_through_the_device_code(harness, dtype, monkeypatch):
    """kernels.ops' CUDA implementations, with the extension served by the harness, equal the CPU ops."""
    from bertspeed.kernels import ops
    from bertspeed.kernels.harness import ExtensionShim

    monkeypatch.setattr(ops, "extension", lambda: ExtensionShim(harness))
    torch.manual_seed(0)
    x, residual, bias, weight, beta = layer_norm_inputs(6, 100, dtype)
    x, residual = x.view(2, 3, 100), residual.view(2, 3, 100)
    got = ops._layer_norm_fwd_cuda(x, residual, bias, weight, beta, 1e-5)
    want = ops.layer_norm_fwd(x, residual, bias, weight, beta, 1e-5)
    for g, w, name in zip(got, want, ("y", "mean", "rstd")):
        assert_matches(g, w, dtype if name == "y" else torch.float32, name)
    dy = randn(2, 3, 100, dtype=dtype)
    got = ops._layer_norm_bwd_cuda(dy, x, residual, bias, weight, want[1], want[2])
    for g, w, name in zip(got, ops.layer_norm_bwd(dy, x, residual, bias, weight, want[1], want[2]),
                          ("dx", "dweight", "dbeta")):
        assert_matches(g, w, dtype, name)

    scores, mask = softmax_inputs(31, dtype)
    seed = torch.tensor([77])
    for p in (0.0, 0.2):
        got = ops._softmax_fwd_cuda(scores, mask, 0.3, p, seed)
        want = ops.softmax_fwd(scores, mask, 0.3, p, seed)
        assert got[0].shape == want[0].shape
        for g, w in zip(got, want):
            assert_matches(g, w, dtype, f"softmax p={p}")
        grad_out = randn(*scores.shape, dtype=dtype)
        assert_matches(ops._softmax_bwd_cuda(grad_out, got[1], 0.3, p, seed),
                       ops.softmax_bwd(grad_out, got[1], 0.3, p, seed), dtype, f"softmax grad p={p}")
