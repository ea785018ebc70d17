"""--eval_steps (evaluation during training, logged as eval/ metrics lines) and optim/grad_norm
(global L2 norm of the gradients before clipping) in OUT/metrics.jsonl, for the plain-PyTorch path,
DeepSpeed and the three drivers. Every metrics line must be strict JSON (no NaN / Infinity)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_finetune_drivers import FIXTURES, run_glue_two_ranks_zero3, run_script, tiny_model  # noqa: F401

from bertspeed.finetune import run_glue, run_ner, run_squad
from bertspeed.finetune.settings import FinetuneSettings
from bertspeed.finetune.trainer import Trainer, collate_padded
from bertspeed.model import BertConfig
from bertspeed.model.heads import BertForSequenceClassification
from bertspeed.training.distributed import Runtime
from bertspeed.training.metrics import MetricsWriter


def _reject(token):
    raise ValueError(f"not JSON: {token}")


def metrics_lines(out: Path) -> list[dict]:
    """OUT/metrics.jsonl, parsed strictly: NaN / Infinity tokens fail."""
    return [json.loads(line, parse_constant=_reject) for line in (out / "metrics.jsonl").read_text().splitlines()]


def eval_steps_of(lines, key: str) -> list[int]:
    return [x["step"] for x in lines if key in x]


def assert_grad_norms(lines):
    train = [x for x in lines if "train/loss" in x]
    assert train and all(0 < x["optim/grad_norm"] < math.inf for x in train)


def count_calls(monkeypatch, owner, name: str) -> list:
    calls, original = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapper)
    return calls


# ---------------------------------------------------------------- trainer pieces

def _one_step_trainer(tmp_path, max_grad_norm: float):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=120, num_labels=3))
    settings = FinetuneSettings(model_dir="unused", output_dir=str(tmp_path), num_train_epochs=1, learning_rate=1e-3,
                                train_batch_size=4, max_grad_norm=max_grad_norm, warmup_proportion=0.0)
    trainer = Trainer(model, settings, Runtime(0, 1, 0, torch.device("cpu"), False), "fp32")
    optimizer, scheduler = trainer._setup_optimizer(total_steps=10, batch=settings.batch_sizes(1))
    features = [{"input_ids": [2, 5 + i, 9, 3 + 2 * i, 3][: 3 + i % 3], "token_type_ids": [0] * (3 + i % 3),
                 "labels": i % 3} for i in range(4)]
    return trainer, optimizer, scheduler, collate_padded(features)


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.0])
def test_plain_grad_norm_is_the_global_norm_before_clipping(tmp_path, max_grad_norm):
    trainer, optimizer, scheduler, batch = _one_step_trainer(tmp_path, max_grad_norm)
    trainer.model.eval()  # no dropout: one graph, two gradient computations
    loss = trainer.model(**batch).loss
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    expected = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.double()) for g in grads if g is not None])).item()
    before = [p.detach().clone() for p in params]
    trainer._backward_step(loss, optimizer, scheduler, micro_step=1)
    assert trainer.step == 1 and trainer.grad_norms == [pytest.approx(expected, rel=1e-5)]
    assert expected > 1e-2  # so the 1e-3 threshold really clips, yet the unclipped norm is logged
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    trainer._log_train({"running": [loss.item()], "seen": 4, "tokens": 20}, 0, None)
    trainer.log.close()
    [line] = metrics_lines(tmp_path)
    assert line["optim/grad_norm"] == pytest.approx(expected, rel=1e-5) and trainer.grad_norms == []


def test_grad_norm_mean_skips_non_finite_and_deepspeed_forms(tmp_path):
    trainer, _, scheduler, _ = _one_step_trainer(tmp_path, 1.0)
    for norm in (torch.tensor(2.0), None, 4.0, float("inf")):  # DeepSpeed: tensor, None (disabled), float
        trainer._record_grad_norm(norm)
    trainer._log_train({"running": [1.0], "seen": 4, "tokens": 20}, 0, None)
    trainer._record_grad_norm(float("nan"))
    trainer._log_train({"running": [1.0], "seen": 4, "tokens": 20}, 0, None)
    trainer._log_train({"running": [1.0], "seen": 4, "tokens": 20}, 0, None)
    trainer.log.close()
    lines = metrics_lines(tmp_path)
    assert [x.get("optim/grad_norm", "absent") for x in lines] == [3.0, None, "absent"]


def test_metrics_log_writes_null_for_non_finite(tmp_path):
    log = MetricsWriter(tmp_path, enabled=True)
    log.write(3, {"eval/pearson": float("nan"), "eval/x": float("-inf"), "eval/n": 7})
    log.close()
    assert metrics_lines(tmp_path) == [{"step": 3, "eval/pearson": None, "eval/x": None, "eval/n": 7}]


def test_eval_steps_must_not_be_negative():
    with pytest.raises(ValueError, match="--eval_steps"):
        FinetuneSettings(model_dir="m", output_dir="o", eval_steps=-1)


# ---------------------------------------------------------------- drivers

def test_run_glue_eval_steps(tmp_path, glue_dir, tiny_model, monkeypatch):  # noqa: F811
    """48 MRPC pairs, batch 8 (2 x 4 accumulated): 6 steps; eval lines at 2 and 4, the final one at 6.
    Periodic evaluations write no files and do not change training: final scores and losses equal
    those of a run without --eval_steps."""
    common = ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_dir", str(tiny_model / "hf"),
              "--num_train_epochs", "1", "--train_batch_size", "8", "--gradient_accumulation_steps", "2",
              "--max_train_samples", "48", "--max_eval_samples", "40", "--max_seq_length", "64",
              "--learning_rate", "1e-3", "--logging_steps", "1", "--no_test_predictions", "--no_save_model"]
    written = count_calls(monkeypatch, run_glue.glue, "write_submission")
    run_glue.main([*common, "--output_dir", str(tmp_path / "every2"), "--eval_steps", "2"])
    assert [Path(p).name for p in written] == ["dev_predictions.tsv"]
    lines = metrics_lines(tmp_path / "every2")
    assert eval_steps_of(lines, "eval/acc") == [2, 4, 6]
    assert eval_steps_of(lines, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert all(set(x) == {"step", "eval/acc", "eval/f1", "eval/acc_and_f1", "eval/eval_examples"}
               for x in lines if "eval/acc" in x)
    assert_grad_norms(lines)
    assert lines[-1]["perf/eval_seconds"] > 0

    run_glue.main([*common, "--output_dir", str(tmp_path / "end")])
    plain = metrics_lines(tmp_path / "end")
    assert eval_steps_of(plain, "eval/acc") == [6] and "perf/eval_seconds" not in plain[-1]
    scores = json.loads((tmp_path / "every2" / "eval_results.json").read_text())
    assert json.loads((tmp_path / "end" / "eval_results.json").read_text()) == pytest.approx(scores)
    assert [x["train/loss"] for x in plain if "train/loss" in x] == pytest.approx(
        [x["train/loss"] for x in lines if "train/loss" in x])
    assert [x["optim/grad_norm"] for x in plain if "train/loss" in x] == pytest.approx(
        [x["optim/grad_norm"] for x in lines if "train/loss" in x])


def test_run_squad_v2_eval_steps(tmp_path, tiny_model, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    fixture = FIXTURES / "squad_v2_tiny.json"
    written = count_calls(monkeypatch, run_squad, "write_json_atomic")
    run_squad.main(["--train_file", str(fixture), "--predict_file", str(fixture), "--version_2_with_negative",
                    "--model_dir", str(tiny_model / "hf"), "--output_dir", str(out), "--num_train_epochs", "2",
                    "--train_batch_size", "2", "--max_seq_length", "64", "--doc_stride", "24",
                    "--logging_steps", "1", "--eval_steps", "2", "--no_save_model"])
    assert sorted(Path(p).name for p in written) == ["nbest_predictions.json", "null_odds.json", "predictions.json"]
    lines = metrics_lines(out)
    assert lines[-1]["train/steps"] == 6 and eval_steps_of(lines, "eval/f1") == [2, 4, 6]
    assert all({"eval/exact", "eval/f1", "eval/HasAns_f1", "eval/NoAns_f1"} <= set(x)
               for x in lines if "eval/f1" in x)
    assert_grad_norms(lines)


def test_run_ner_eval_steps(tmp_path, tiny_model, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    train = FIXTURES / "conll_train.txt"
    written = count_calls(monkeypatch, run_ner.ner, "write_predictions")
    run_ner.main(["--train_file", str(train), "--eval_file", str(train), "--model_dir", str(tiny_model / "hf"),
                  "--output_dir", str(out), "--num_train_epochs", "3", "--train_batch_size", "4",
                  "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_steps", "1", "--no_save_model"])
    assert [Path(p).name for p in written] == ["eval_predictions.txt"]
    lines = metrics_lines(out)
    steps = lines[-1]["train/steps"]
    assert eval_steps_of(lines, "eval/f1") == list(range(1, steps + 1))
    assert_grad_norms(lines)


@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_grad_norm_and_eval_steps(tmp_path, glue_dir, tiny_model, stage):  # noqa: F811
    """Stage 0 (fp32: our own norm, DeepSpeed keeps none) and ZeRO-2 (DeepSpeed's norm) log the same
    first-step norm as the plain-PyTorch run: same weights, same batch, norm before clipping."""
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    common = ["finetune/run_glue.py", "--task_name", "MRPC", "--data_dir", glue_dir / "MRPC",
              "--model_dir", tiny_model / "hf", "--max_train_samples", "32", "--max_eval_samples", "24",
              "--train_batch_size", "8", "--gradient_accumulation_steps", "2", "--num_train_epochs", "1",
              "--logging_steps", "1", "--eval_steps", "2", "--no_test_predictions", "--no_save_model"]
    result = run_script(*common, "--output_dir", tmp_path / "ds", "--deepspeed_config", config)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = metrics_lines(tmp_path / "ds")
    assert eval_steps_of(lines, "eval/acc") == [2, 4] and eval_steps_of(lines, "train/loss") == [1, 2, 3, 4]
    assert_grad_norms(lines)
    run_glue.main([str(a) for a in common[1:]] + ["--output_dir", str(tmp_path / "plain")])
    plain = metrics_lines(tmp_path / "plain")
    assert lines[0]["optim/grad_norm"] == pytest.approx(plain[0]["optim/grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_deepspeed_two_ranks_zero3_eval_steps(tmp_path, glue_dir, tiny_model):  # noqa: F811
    """`deepspeed --num_gpus 2` (two CPU ranks), ZeRO-3: both ranks take part in every evaluation
    during training (predictions are gathered across ranks), and DeepSpeed's norm is logged."""
    out = run_glue_two_ranks_zero3(tmp_path, glue_dir, tiny_model, "--logging_steps", "1", "--eval_steps", "1",
                                   "--no_save_model")
    lines = metrics_lines(out)
    assert eval_steps_of(lines, "eval/pearson") == [1, 2, 3, 4] and eval_steps_of(lines, "train/loss") == [1, 2, 3, 4]
    assert all(x["eval/eval_examples"] == 50 for x in lines if "eval/pearson" in x)
    assert_grad_norms(lines)
