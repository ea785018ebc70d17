"""THOR and Momentum through the pretraining driver: selected by the DeepSpeed JSON or --optimizer,
killed after a checkpoint and resumed bit-exactly (THOR's inverses and momentum are checkpointed),
refused clearly where they cannot run; --num_train_epochs, --no_shuffle and --end_learning_rate."""
from __future__ import annotations

import json

import pytest
import torch
from fault_helpers import command, finish, start
from pretrain_helpers import ds_config, losses, make_shards, run_pretraining, tiny_model_config
from safetensors.torch import load_file

pytestmark = pytest.mark.timeout(600)
STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("thor")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=1, paragraphs_per_shard=48)
    model = tiny_model_config(tmp / "model.json")
    ds = ds_config(tmp / "ds.json", micro=4, accumulation=2, optimizer="THOR", lr=2e-3, clipping=0.0)
    config = json.loads(ds.read_text())
    config["optimizer"]["params"] = {"lr": 2e-3, "damping": 0.05, "damping_min": 0.01, "frequency": 2,
                                     "split_dim": 32}
    ds.write_text(json.dumps(config))
    return tmp, shards, model, ds


def args(setup, name, *extra):
    tmp, shards, model, ds = setup
    return ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(tmp / name), "--checkpoint_interval", "3", "--warmup_steps", "1", *extra]


def test_thor_resumes_bit_exactly(setup):
    tmp = setup[0]
    run_pretraining(args(setup, "reference", "--max_steps", str(STEPS)), ranks=0)
    proc = start(command(args(setup, "killed", "--max_steps", str(STEPS))),
                 {"BERTSPEED_FAULT_KILL_IN_SAVE": "after_latest@3"})
    assert finish(proc, timeout=180)[0] != 0
    run_pretraining([*args(setup, "killed", "--max_steps", str(STEPS)), "--resume"], ranks=0)
    want = load_file(tmp / "reference" / f"global_step{STEPS}" / "model.safetensors")
    got = load_file(tmp / "killed" / f"global_step{STEPS}" / "model.safetensors")
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert losses(tmp / "killed") == losses(tmp / "reference")
    run_config = json.loads((tmp / "reference" / "run_config.json").read_text())
    assert run_config["optimizer"] == "thor" and run_config["optimizer_runtime"]["class"] == "Thor"


def test_momentum_epochs_no_shuffle_and_end_lr(setup):
    tmp = setup[0]
    out = tmp / "momentum"
    run_pretraining(args(setup, "momentum", "--optimizer", "momentum", "--num_train_epochs", "1", "--no_shuffle",
                         "--end_learning_rate", "1e-3"), ranks=0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = max(r["step"] for r in records if "train/loss" in r)
    sequences = json.loads((out / "run_config.json").read_text())
    assert steps == sequences["args"]["max_steps"] >= 2  # one epoch of the shard at a global batch of 8
    lrs = [r["optim/lr"] for r in records if "optim/lr" in r]
    assert min(lrs) >= 1e-3 - 1e-12 and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert json.loads((out / "run_config.json").read_text())["optimizer_runtime"]["class"] == "Momentum"


@pytest.mark.parametrize("change, message", [
    ({"zero_optimization": {"stage": 1}}, "THOR runs with ZeRO stage 0 in fp32 only"),
    ({"optimizer": {"type": "THOR", "params": {"lr": 1e-3, "frequency": 0}}}, "optimizer.params: THOR frequency"),
    ({"optimizer": {"type": "THOR", "params": {"lr": 1e-3, "damping": -1}}}, "optimizer.params: THOR damping"),
])
def test_thor_refusals_name_the_setting(setup, change, message):
    tmp = setup[0]
    bad = tmp / "bad.json"
    bad.write_text(json.dumps({**json.loads(setup[3].read_text()), **change}))
    proc = run_pretraining(["--deepspeed_config", str(bad), *args(setup, "bad", "--max_steps", "2")[2:]],
                           ranks=0, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_thor_and_momentum_finetune_and_thor_refuses_bf16(tmp_path, glue_dir, vocab_file, capsys):
    from bertspeed.finetune import run_glue
    from bertspeed.model import BertConfig, BertForPreTraining
    from bertspeed.model.checkpoint import save_pretrained
    from bertspeed.training.metrics import read_metrics
    torch.manual_seed(0)
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), tmp_path / "hf", vocab_file=vocab_file)
    base = ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_dir", str(tmp_path / "hf"),
            "--max_train_samples", "64", "--max_eval_samples", "32", "--max_seq_length", "64", "--max_steps", "4",
            "--train_batch_size", "16", "--logging_steps", "1", "--no_test_predictions", "--learning_rate", "1e-3"]
    for optim in ("thor", "momentum"):
        out = tmp_path / optim
        assert run_glue.entry([*base, "--output_dir", str(out), "--optim", optim, "--precision", "fp32"]) == 0
        losses = [r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
        assert len(losses) == 4 and all(0 < x < 10 for x in losses)
    assert run_glue.entry([*base, "--output_dir", str(tmp_path / "bf16"), "--optim", "thor", "--bf16"]) == 2
    assert "--optim thor runs in fp32 without ZeRO" in capsys.readouterr().err
