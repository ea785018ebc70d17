"""nvcc compiles every kernel for sm_80 and sm_90, and the build fails on register spills."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bertspeed.kernels.build import CUDA_ARCHS, KernelBuildError, cuda_home, nvcc_check

pytestmark = pytest.mark.skipif(
    not Path("/usr/local/cuda/bin/nvcc").exists() and cuda_home() is None,
    reason="nvcc not found (/usr/local/cuda/bin/nvcc or CUDA_HOME): the CUDA compile checks need the toolkit")

KERNELS = ["layer_norm_fwd_kernel", "layer_norm_bwd_input_kernel", "layer_norm_bwd_params_partial_kernel",
           "layer_norm_bwd_params_final_kernel", "softmax_fwd_kernel", "softmax_bwd_kernel"]

# 64 values live at once: 72 registers uncapped, spills under -maxrregcount=32.
REGISTER_HUNGRY = """
__global__ void needs_registers(const float* in, float* out) {
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = in[threadIdx.x + i * 32];
#pragma unroll
  for (int r = 0; r < 8; ++r)
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = acc[i] * acc[(i + r + 1) % 64] + 1.0f;
#pragma unroll
  for (int i = 0; i < 64; ++i) out[threadIdx.x + i * 32] = acc[i];
}
"""


def test_every_kernel_compiles_for_both_archs_without_spills():
    usage = nvcc_check()
    for arch in (f"sm_{a}" for a in CUDA_ARCHS):
        names = [name for name, a in usage if a == arch]
        for kernel in KERNELS:
            assert any(re.search(rf"\d+{kernel}I", n) for n in names), f"{kernel} missing for {arch}"
        assert len(names) == 28, f"{arch}: expected 28 instantiations (dtype pairs x dropout), got {len(names)}"
    assert all(u["spill_stores"] == 0 and u["spill_loads"] == 0 for u in usage.values())
    assert all(u["registers"] and u["registers"] <= 64 for u in usage.values()), usage


def test_spill_check_fails_when_a_kernel_spills(tmp_path):
    source = tmp_path / "hungry.cu"
    source.write_text(REGISTER_HUNGRY)
    usage = nvcc_check(source)  # enough registers: passes
    assert {u["registers"] for u in usage.values()} == {72}
    with pytest.raises(KernelBuildError, match=r"register spills:\n.*needs_registers.*sm_80"):
        nvcc_check(source, extra_flags=("-maxrregcount=32",))


def test_compile_errors_are_reported(tmp_path):
    source = tmp_path / "broken.cu"
    source.write_text("__global__ void broken() { undeclared_name = 1; }\n")
    with pytest.raises(KernelBuildError, match="undeclared_name"):
        nvcc_check(source)


def test_make_kernels_entry_point_reports_each_build(capsys):
    """`python -m bertspeed.kernels.build` (make kernels): harness and nvcc builds succeed, the rest says why it skipped."""
    import torch

    from bertspeed.kernels.build import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "[ok] CPU harness" in out and "[ok] nvcc sm_80/sm_90, no spills" in out
    if torch.version.cuda is None:
        assert "[skip] torch extension: torch" in out and "CPU build" in out
