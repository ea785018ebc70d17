"""SIGTERM -> checkpoint and clean stop (one process and through the launcher); too many bad fp16
steps in a row -> stop with a clear error and no new checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from pretrain_helpers import ROOT, VENV_BIN, ds_config, env, losses, make_shards, run_pretraining, tiny_model_config

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("rel")
    return tmp, make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=2), tiny_model_config(tmp / "model.json")


def start(cmd, out):
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_steps(out, proc, steps, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = out / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach {steps} steps (exit code {proc.poll()})")


def sigterm_run(setup, name, ranks, world):
    tmp, shards, model = setup
    out = tmp / name
    ds = ds_config(tmp / f"{name}.json", micro=4, accumulation=1, world=world, stage=2 if ranks else 0)
    args = ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(out), "--max_steps", "100000", "--checkpoint_interval", "100000"]
    script = str(ROOT / "pretrain" / "run_pretraining.py")
    cmd = ([sys.executable, script] if not ranks else
           [str(VENV_BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", "29671", script]) + args
    proc = start(cmd, out)
    wait_for_steps(out, proc, 3)
    # as a scheduler (or Ctrl-C in a terminal) does: signal the whole process group
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out, args, proc.returncode, stderr


def test_sigterm_checkpoints_and_stops(setup):
    out, args, code, stderr = sigterm_run(setup, "term1", ranks=0, world=1)
    assert code == 143, stderr[-3000:]
    last_step = max(losses(out))
    assert (out / "latest").read_text().strip() == f"global_step{last_step}"
    assert (out / f"global_step{last_step}" / "model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by_signal"] and summary["steps"] == last_step
    # the checkpoint resumes
    resume_args = [a if a != "100000" else str(last_step + 2) for a in args]
    run_pretraining([*resume_args, "--resume"], ranks=0)
    assert json.loads((out / "run_config.json").read_text())["resumed_from_step"] == last_step
    assert max(losses(out)) == last_step + 2


@pytest.mark.slow
def test_sigterm_through_the_launcher_checkpoints_every_rank(setup):
    out, _, code, stderr = sigterm_run(setup, "term2", ranks=2, world=2)
    assert code != 0  # the launcher reports the interruption
    last_step = max(losses(out))
    tag = (out / "latest").read_text().strip()
    assert tag == f"global_step{last_step}", stderr[-3000:]
    for rank in (0, 1):
        assert (out / tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["stopped_by_signal"]


def test_diverging_run_stops_with_a_clear_error(setup, tmp_path):
    """A learning rate of 1e30 makes the loss non-finite within a few steps; the run stops after
    --max_bad_steps of them, exits 3, and writes no checkpoint of the broken state.
    (fp16 overflow skips count the same way; DeepSpeed refuses fp16 on this CPU.)"""
    tmp, shards, model = setup
    ds = ds_config(tmp_path / "ds.json", micro=4, accumulation=1, optimizer="AdamW", lr=1e30, clipping=0.0)
    args = ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "50", "--checkpoint_interval", "2",
            "--max_bad_steps", "3", "--warmup_steps", "0"]
    proc = run_pretraining(args, ranks=0, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "3 bad steps in a row" in proc.stderr
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in records[-3:]] == [None] * 3  # non-finite losses are written as null
    latest = (tmp_path / "out" / "latest")
    if latest.exists():  # a checkpoint from before the blow-up only
        good = [r["step"] for r in records if r["train/loss"] is not None]
        assert int(latest.read_text().strip().removeprefix("global_step")) <= max(good)


def test_bad_step_counter_counts_skipped_and_non_finite_steps():
    from bertspeed.pretrain.guard import BadStepCounter, TrainingDiverged
    counter = BadStepCounter(limit=3)
    counter.update(1, 2.0, 0)
    counter.update(2, 2.0, 1)  # an fp16 overflow skip
    counter.update(3, float("nan"), 1)
    assert counter.run == 2
    counter.update(4, 1.5, 1)  # a good step resets the run
    assert counter.run == 0
    counter.update(5, 1.5, 2), counter.update(6, 1.5, 3)
    with pytest.raises(TrainingDiverged, match="3 bad steps in a row"):
        counter.update(7, float("inf"), 3)
