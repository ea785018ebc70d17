"""A finetuning run (run_glue.py, plain PyTorch, one process) SIGKILLed mid-epoch, inside a checkpoint
save and during an evaluation, and stopped by SIGTERM, each time continued with --resume, ends with
the uninterrupted run's weights bit for bit, its eval_results.json and every logged loss, learning
rate, gradient norm and evaluation (only the perf/ timings differ), and TensorBoard events that match
metrics.jsonl (an attempt's events after its checkpoint are purged). Kill points are injected with
BERTSPEED_FAULT_KILL_AT (bertspeed/training/faults.py)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from pretrain_helpers import ROOT, env
from safetensors.torch import load_file
from tensorboard_helpers import tensorboard_matches_metrics

from bertspeed.finetune import run_glue
from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.checkpoint import save_pretrained
from bertspeed.training.metrics import read_metrics

pytestmark = pytest.mark.timeout(600)
SCRIPT = str(ROOT / "finetune" / "run_glue.py")
# 32 examples in micro batches of 4: 8 steps an epoch, so step 10 is in the second epoch. Checkpoints
# every 3 steps, evaluation every 4, a metrics line every 2 (a checkpoint at an odd step holds a loss
# not yet logged).
STEPS = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vocab_file, glue_dir):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("finetune resume")  # a space in every path
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), root / "tiny", vocab_file=vocab_file)
    return root, ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_name_or_path",
                  str(root / "tiny"), "--max_train_samples", "32", "--max_eval_samples", "8", "--max_seq_length", "64",
                  "--per_device_train_batch_size", "4", "--max_steps", str(STEPS), "--save_steps", "3",
                  "--eval_steps", "4", "--logging_steps", "2", "--no_test_predictions", "--learning_rate", "1e-4"]


def run(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    extra = {"BERTSPEED_FAULT_KILL_AT": kill_at} if kill_at else {}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env={**env(), **extra}, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(setup):
    root, args = setup
    done = run([*args, "--output_dir", str(root / "reference")])
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "reference"


def without_perf(out) -> list[dict]:
    return [{k: v for k, v in record.items() if not k.startswith("perf/")} for record in read_metrics(out)]


def latest(out) -> str | None:
    return (out / "latest").read_text().strip() if (out / "latest").exists() else None


def test_killed_three_ways_and_stopped_by_sigterm_then_resumed_equals_uninterrupted(setup, reference):
    root, args = setup
    out = root / "interrupted"
    resumed = [*args, "--output_dir", str(out), "--resume", "--report_to", "tensorboard"]
    # (kill point, expected exit code, the checkpoint `latest` names afterwards)
    for kill_at, code, after in [("step@5", -signal.SIGKILL, "global_step3"),  # mid-epoch
                                 ("save@6", -signal.SIGKILL, "global_step3"),  # inside the save of step 6
                                 ("eval@8", -signal.SIGKILL, "global_step6"),  # evaluating at step 8
                                 ("step@7:TERM", 143, "global_step7")]:  # preempted: checkpoint, exit 143
        done = run(resumed, kill_at)
        assert done.returncode == code, (kill_at, done.stderr[-3000:])
        assert latest(out) == after, kill_at
        assert not list(out.glob(".global_step*")) or kill_at == "save@6"  # only a killed save leaves a partial
    assert "stopped by a signal at step 7" in done.stderr
    done = run(resumed)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "at step 7" in done.stdout

    assert without_perf(out) == without_perf(reference)
    assert [r["step"] for r in read_metrics(out) if "eval/acc" in r] == [4, 8, 10]
    assert {"train/loss", "eval/acc"} <= tensorboard_matches_metrics(out)  # redone steps' events purged
    assert json.loads((out / "eval_results.json").read_text()) == json.loads(
        (reference / "eval_results.json").read_text())
    ours, theirs = load_file(out / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert sorted(p.name for p in out.glob("global_step*")) == ["global_step3", "global_step6", "global_step7",
                                                                 "global_step9"]
    assert not list(out.glob(".global_step*"))  # the killed save's leftovers were cleared

    # The folder now holds this run's checkpoints: a fresh start there, or a resume with other
    # training settings, is refused; nothing changes.
    before = sorted(p.name for p in out.iterdir())
    assert run_glue.entry([*args, "--output_dir", str(out)]) == 2
    assert run_glue.entry([*args, "--output_dir", str(out), "--resume", "--learning_rate", "2e-4"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    # A run that does not train may use the folder and leaves the checkpoints alone.
    assert run_glue.entry([*args, "--model_name_or_path", str(out / "model"), "--do_eval", "--output_dir",
                           str(out)]) == 0
    assert sorted(p.name for p in out.glob("global_step*")) == ["global_step3", "global_step6", "global_step7",
                                                                 "global_step9"]
    assert json.loads((out / "eval_results.json").read_text()) == json.loads(
        (reference / "eval_results.json").read_text())


def test_save_total_limit_keeps_the_newest_and_overwrite_starts_over(setup, capsys):
    """--save_total_limit 2 keeps global_step6 and global_step9; --overwrite_output_dir starts over
    (in this process: no need for a fresh interpreter here)."""
    root, args = setup
    out = root / "limited"
    run_glue.main([*args, "--output_dir", str(out), "--save_total_limit", "2", "--eval_steps", "0"])
    assert sorted(p.name for p in out.glob("global_step*")) == ["global_step6", "global_step9"]
    assert latest(out) == "global_step9"
    assert "micro 4 per rank x accumulation 1 x world 1 = global 4" in capsys.readouterr().out
    run_glue.main([*args, "--output_dir", str(out), "--overwrite_output_dir", "--max_steps", "2"])
    assert not list(out.glob("global_step*")) and latest(out) is None
