"""Helpers of the fault suite (tests/test_faults*.py): small runs of run_pretraining.py that can be
killed at a chosen moment, and checks that a checkpoint folder is complete."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from pretrain_helpers import ROOT, VENV_BIN, env
from safetensors.torch import load_file

SCRIPT = str(ROOT / "pretrain" / "run_pretraining.py")


def command(args: list[str], ranks: int = 0, port: int = 29700) -> list[str]:
    """ranks == 0: one plain python process; otherwise the deepspeed launcher with that many ranks."""
    if ranks == 0:
        return [sys.executable, SCRIPT, *args]
    return [str(VENV_BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(port), SCRIPT, *args]


def start(cmd: list[str], extra_env: dict | None = None) -> subprocess.Popen:
    """In its own session, so the whole process group (launcher and ranks) can be signalled."""
    stderr = tempfile.TemporaryFile("w+")  # not a pipe: nobody reads it while the run goes on
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env(), **(extra_env or {})}, stdout=subprocess.DEVNULL,
                            stderr=stderr, text=True, start_new_session=True)
    proc.stderr_file = stderr
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for the process; on timeout SIGKILL its group and fail. Returns (exit code, stderr)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{proc.args} did not exit within {timeout} s")
    proc.stderr_file.seek(0)
    stderr = proc.stderr_file.read()
    proc.stderr_file.close()
    return proc.returncode, stderr


def metric_steps(out: Path) -> int:
    """The last step recorded in metrics.jsonl (0 if none)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    return len([x for x in lines if x.strip()])


def wait_for_step(out: Path, proc: subprocess.Popen, step: int, started: float, timeout: float = 120) -> bool:
    """True once metrics.jsonl holds `step` records written by a process that began at `started`
    (run_config.json is rewritten after a resume has dropped the records it will redo); False if
    the process ended first."""
    deadline = time.time() + timeout
    config = out / "run_config.json"
    while time.time() < deadline:
        if config.exists() and config.stat().st_mtime >= started and metric_steps(out) >= step:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"{out}: step {step} not reached within {timeout} s")


def latest_step(out: Path) -> int | None:
    path = out / "latest"
    return int(path.read_text().strip().removeprefix("global_step")) if path.exists() else None


def assert_complete_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every file a resume or an export reads is present and loads; returns the fp32 weights."""
    assert (folder / "config.json").is_file(), folder
    assert (folder / "mp_rank_00_model_states.pt").stat().st_size > 0, folder  # a resume loads it
    weights = load_file(folder / "model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values()), folder
    return weights
