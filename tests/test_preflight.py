"""The GPU preflight (bertspeed preflight / make gpu-check) in its CPU mode: the report lists every GPU
item as skipped with the reason, a crashing item is a failed item and exit 1, and the on-device kernel
check's code runs here on the ops' CPU composition against the float64 reference."""
from __future__ import annotations

import json

import pytest
import torch

from bertspeed.preflight import gpu, run

GPU_ITEMS = [name for name, (_, needs) in run.ITEMS.items() if needs is run.no_cuda_reason]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU mode only")
def test_cpu_mode_reports_every_gpu_item_as_skipped_with_the_reason(tmp_path, capsys):
    assert run.main(["--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "preflight.json").read_text())
    items = {r["item"]: r for r in report["items"]}
    assert list(items) == list(run.ITEMS)
    assert len(GPU_ITEMS) == 4 and any(name.startswith("throughput") for name in GPU_ITEMS)
    for name in [*GPU_ITEMS, "kernels: torch extension build"]:
        assert items[name]["status"] == "skip", name
        assert "CPU" in items[name]["detail"] or "no CUDA device" in items[name]["detail"], items[name]
    assert items["environment"]["status"] == "pass" and items["environment"]["numbers"]["torch"] == torch.__version__
    assert items["kernels: nvcc build (sm_80/sm_90, no spills)"]["status"] in ("pass", "skip")
    table = (tmp_path / "preflight.md").read_text()
    for name, r in items.items():
        assert f"| {name} | {r['status'].upper()} |" in table
    assert f"{len(GPU_ITEMS) + 1} skipped" in table or f"{len(GPU_ITEMS) + 2} skipped" in table
    assert "[skip] fp16 dynamic loss scaling" in capsys.readouterr().out


def test_a_failing_item_is_reported_and_the_exit_code_is_one(tmp_path, monkeypatch):
    def broken(device):
        raise RuntimeError("illegal memory access")

    monkeypatch.setattr(run, "ITEMS", {"environment": run.ITEMS["environment"], "broken": (broken, lambda: None),
                                       "wrong": (lambda device: (False, "off by 3", {}), lambda: None)})
    assert run.main(["--output_dir", str(tmp_path)]) == 1
    items = {r["item"]: r for r in json.loads((tmp_path / "preflight.json").read_text())["items"]}
    assert items["broken"]["status"] == "fail" and "RuntimeError: illegal memory access" in items["broken"]["detail"]
    assert items["wrong"] == {**items["wrong"], "status": "fail", "detail": "off by 3"}
    assert "1 passed, 2 failed, 0 skipped" in (tmp_path / "preflight.md").read_text()


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert run.main(["--output_dir", str(target)]) == 2
    assert "--output_dir" in capsys.readouterr().err


def test_kernel_check_code_runs_against_float64_on_cpu():
    ok, detail, errors = gpu.kernels_match_reference(torch.device("cpu"), batch=1)
    assert ok, detail
    assert len(errors) == 12  # LayerNorm and softmax, forward and backward, three dtypes
    assert errors["layer_norm_fwd_fp32"] < 1e-6 and errors["layer_norm_fwd_bf16"] > errors["layer_norm_fwd_fp32"]
