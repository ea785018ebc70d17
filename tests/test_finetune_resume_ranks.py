"""A 2-rank finetuning run through the deepspeed launcher (DeepSpeed engine, ZeRO 1: each rank holds
its part of the optimizer state), SIGKILLed on both ranks inside a checkpoint save and mid-epoch, each
time resumed through the launcher, ends with the uninterrupted run's weights bit for bit and the same
losses and scores."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from pretrain_helpers import ROOT, VENV_BIN, env
from safetensors.torch import load_file

from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.checkpoint import save_pretrained
from bertspeed.training.metrics import read_metrics

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vocab_file, glue_dir):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("finetune resume ranks")
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), root / "tiny", vocab_file=vocab_file)
    (root / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}))
    # 32 examples, micro 4 x 2 ranks: 4 steps an epoch; step 6 is in the second epoch.
    return root, ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_name_or_path",
                  str(root / "tiny"), "--deepspeed", str(root / "ds.json"), "--max_train_samples", "32",
                  "--max_eval_samples", "8", "--max_seq_length", "64", "--per_device_train_batch_size", "4",
                  "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1", "--no_test_predictions",
                  "--learning_rate", "1e-4"]


def launch(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    extra = {"BERTSPEED_FAULT_KILL_AT": kill_at} if kill_at else {}
    port = str(29800 + os.getpid() % 100)
    return subprocess.run([str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port,
                           str(ROOT / "finetune" / "run_glue.py"), *args], cwd=ROOT, env={**env(), **extra},
                          capture_output=True, text=True, timeout=600)


def without_perf(out: Path) -> list[dict]:
    return [{k: v for k, v in record.items() if not k.startswith("perf/")} for record in read_metrics(out)]


@pytest.mark.slow
def test_two_ranks_killed_in_a_save_and_mid_epoch_resume_through_the_launcher(setup):
    root, args = setup
    reference, out = root / "reference", root / "interrupted"
    done = launch([*args, "--output_dir", str(reference)])
    assert done.returncode == 0, done.stderr[-3000:]
    killed = launch([*args, "--output_dir", str(out), "--resume"], kill_at="save@4")  # inside DeepSpeed's save
    assert killed.returncode != 0 and (out / "latest").read_text().strip() == "global_step2"
    assert (out / ".global_step4.partial").is_dir()
    killed = launch([*args, "--output_dir", str(out), "--resume"], kill_at="step@5")  # mid-epoch
    assert killed.returncode != 0 and (out / "latest").read_text().strip() == "global_step4"
    assert not (out / ".global_step4.partial").exists()
    assert sorted(p.name for p in (out / "global_step4").glob("rng_state_*.pt")) == ["rng_state_0.pt",
                                                                                      "rng_state_1.pt"]
    done = launch([*args, "--output_dir", str(out), "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert without_perf(out) == without_perf(reference)
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "eval_results.json").read_text()) == json.loads(
        (reference / "eval_results.json").read_text())
    ours, theirs = load_file(out / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
