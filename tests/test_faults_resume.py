"""SIGKILL at many points (between steps, mid-step, inside every phase of a checkpoint save), each
followed by --resume: at most one checkpoint interval is lost, `latest` always names a complete
checkpoint equal to the uninterrupted run's checkpoint of that step, and the final weights and
every logged loss equal the uninterrupted run's exactly. SIGTERM: checkpoint, clean exit, resume.

Most kill points run one plain python process (8 s per start); the two-rank launcher case runs
in test_faults_ranks.py."""
from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
import torch
from fault_helpers import assert_complete_checkpoint, command, finish, latest_step, start, wait_for_step
from pretrain_helpers import ds_config, losses, make_shards, run_pretraining, tiny_model_config
from safetensors.torch import load_file

pytestmark = pytest.mark.timeout(900)
STEPS, INTERVAL = 24, 4
# (kind, where): "save" kills inside the save of step `where` (pretrain/checkpoint.py SAVE_POINTS);
# "step" SIGKILLs the process group a random moment after step `where` was logged.
KILL_POINTS = [
    ("save", "after_deepspeed_save@4"),  # inside the very first save: no `latest` yet
    ("save", "start@8"),
    ("step", 9),
    ("save", "after_weights@12"),
    ("save", "after_latest@12"),  # `latest` replaced, old checkpoints not yet pruned
    ("step", 13),
    ("save", "before_latest@16"),
    ("step", 17),
    ("step", 18),
    ("save", "after_deepspeed_save@20"),
    ("step", 22),
    ("save", "before_latest@24"),  # inside the final save
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("faults resume")  # a space in every path
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=2, paragraphs_per_shard=48)
    model = tiny_model_config(tmp / "model.json")
    ds = ds_config(tmp / "ds.json", micro=4, accumulation=1, optimizer="AdamW", clipping=0.0)
    return tmp, shards, model, ds


def run_args(setup, name, steps=STEPS, keep=2):
    tmp, shards, model, ds = setup
    return ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(tmp / name), "--max_steps", str(steps), "--checkpoint_interval", str(INTERVAL),
            "--keep_checkpoints", str(keep), "--warmup_steps", "2",
            "--precision", "fp32"]  # compared bit for bit across runs: not "auto" (a GEMM timing probe)


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted run, keeping every checkpoint for comparison."""
    run_pretraining(run_args(setup, "reference", keep=100), ranks=0)
    return setup[0] / "reference"


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_at_twelve_points_then_resume_equals_uninterrupted(setup, reference):
    out = setup[0] / "killed"
    args = run_args(setup, "killed")
    rng = random.Random(8)
    report = []
    for kind, where in KILL_POINTS:
        before = latest_step(out) or 0
        extra = {"BERTSPEED_FAULT_KILL_IN_SAVE": where} if kind == "save" else {}
        started = time.time()
        proc = start(command([*args, "--resume"]), extra)
        if kind == "step":
            assert wait_for_step(out, proc, where, started), "the run ended before the kill point"
            time.sleep(rng.uniform(0, 0.1))  # a random moment inside the next step or save
            os.killpg(proc.pid, signal.SIGKILL)
        code, stderr = finish(proc, timeout=180)
        assert code == -signal.SIGKILL, f"{where}: exit {code}\n{stderr[-3000:]}"
        reached = max(losses(out), default=0)
        kept = latest_step(out)
        # at most one checkpoint interval is lost, and never a completed checkpoint
        assert reached - (kept or 0) <= INTERVAL, (where, reached, kept)
        assert (kept or 0) >= before, (where, kept, before)
        if kept is not None:
            weights = assert_complete_checkpoint(out / f"global_step{kept}")
            assert same_weights(weights, load_file(reference / f"global_step{kept}" / "model.safetensors")), kept
        report.append((kind, where, reached, kept))
    print("kill points (kind, where, last step logged, latest checkpoint):", *report, sep="\n  ")
    assert len(report) >= 10
    run_pretraining([*args, "--resume"], ranks=0)
    assert latest_step(out) == STEPS
    got, want = losses(out), losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want  # every step after a kill was redone exactly
    assert same_weights(load_file(out / f"global_step{STEPS}" / "model.safetensors"),
                        load_file(reference / f"global_step{STEPS}" / "model.safetensors"))
    assert sorted(p.name for p in out.glob("global_step*")) == [f"global_step{STEPS - INTERVAL}",
                                                               f"global_step{STEPS}"]


def test_sigterm_writes_a_checkpoint_quickly_and_the_resume_matches(setup, reference):
    """Preemption: SIGTERM to the process group mid-run -> a checkpoint of the current step within a
    bounded time, exit 143; --resume finishes with the uninterrupted run's losses and weights."""
    out = setup[0] / "sigterm"
    args = run_args(setup, "sigterm")
    proc = start(command(args))
    assert wait_for_step(out, proc, 6, started=0)
    os.killpg(proc.pid, signal.SIGTERM)
    signalled = time.time()
    code, stderr = finish(proc, timeout=60)
    assert code == 143, stderr[-3000:]
    assert time.time() - signalled < 60
    stopped = latest_step(out)
    assert stopped == max(losses(out)) and 6 <= stopped < STEPS  # nothing lost at all
    assert json.loads((out / "summary.json").read_text())["stopped_by_signal"]
    assert_complete_checkpoint(out / f"global_step{stopped}")
    run_pretraining([*args, "--resume"], ranks=0)
    assert json.loads((out / "run_config.json").read_text())["resumed_from_step"] == stopped
    assert losses(out) == losses(reference)
    assert same_weights(load_file(out / f"global_step{STEPS}" / "model.safetensors"),
                        load_file(reference / f"global_step{STEPS}" / "model.safetensors"))
