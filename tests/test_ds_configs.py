"""Every ds_configs/*.json is parsed by DeepSpeed and its batch arithmetic holds for the world
sizes it is meant for (GPU configs: 8-64 ranks; CPU configs: 1-2 ranks)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pretrain_helpers import ROOT, env

CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
pytestmark = pytest.mark.timeout(300)


def check(files, worlds):
    cmd = [sys.executable, "-m", "bertspeed.pretrain.check_config", *map(str, files), "--world_size", *map(str, worlds)]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)


def test_the_recipe_set_is_complete():
    names = {p.name for p in CONFIGS}
    for model in ("base", "large"):
        for phase in ("phase1", "phase2"):
            assert any(n.startswith(f"bert_{model}_{phase}_") for n in names), (model, phase)
    for part in ("zero1", "zero2", "zero3", "fp16", "bf16"):
        assert any(part in n and n.startswith("bert_") for n in names), part
    assert any(n.startswith("cpu_") for n in names)


def test_every_config_loads_with_deepspeed_and_its_batch_arithmetic_holds(tmp_path):
    gpu = [p for p in CONFIGS if not p.name.startswith("cpu_")]
    cpu = [p for p in CONFIGS if p.name.startswith("cpu_")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 100, "train_micro_batch_size_per_gpu": 64,
                               "gradient_accumulation_steps": 1}))
    results = {}
    for files, worlds in ((gpu, (8, 16, 32, 64)), (cpu, (1, 2))):
        proc = check(files, worlds)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                results[(r["file"], r["world_size"])] = r
    assert len(results) == 4 * len(gpu) + 2 * len(cpu)
    for r in results.values():
        assert r["micro"] * r["accumulation"] * r["world_size"] == r["global"]
        assert r["gradient_clipping"] == 1.0
        if "phase1" in r["file"] and "_large_" in r["file"] and r["optimizer"] == "lamb":
            assert r["global"] == 65536  # NVIDIA's phase-1 recipe
    proc = check([bad], (2,))
    assert proc.returncode == 1 and "bad.json" in proc.stderr and "train_batch_size is 100" in proc.stderr
