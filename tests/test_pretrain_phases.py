"""One process, plain python: loss falls on real text, phase 2 starts from phase 1, export loads
in transformers with identical outputs, bad input fails clearly."""
from __future__ import annotations

import json

import pytest
import torch
from pretrain_helpers import ds_config, losses, make_shards, run_pretraining, tiny_model_config

from bertspeed.model.checkpoint import read_state_dict, resolve_model_dir
from bertspeed.model.config import BertConfig
from bertspeed.model.model import BertForPreTraining
from bertspeed.pretrain.data import PretrainingData, list_shards

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def phase_runs(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("phases")
    shards1 = make_shards(tmp / "p1_shards", squad_dev, vocab_file, num_shards=3)
    shards2 = make_shards(tmp / "p2_shards", squad_dev, vocab_file, num_shards=2, seq_len=128, max_pred=20,
                          offset=400, seed=1)
    model = tiny_model_config(tmp / "model.json")
    ds = ds_config(tmp / "ds.json", micro=8, accumulation=1)
    common = ["--deepspeed_config", str(ds), "--vocab_file", str(vocab_file), "--warmup_proportion", "0.1"]
    run_pretraining(["--input_dir", str(shards1), "--config_file", str(model), "--output_dir", str(tmp / "p1"),
                     "--max_steps", "60", "--checkpoint_interval", "30", "--learning_rate", "0.03",
                     "--eval_dir", str(shards2), "--eval_interval", "30", "--eval_samples", "64",
                     "--report_to", "tensorboard", *common],
                    ranks=0)
    run_pretraining(["--input_dir", str(shards2), "--init_checkpoint", str(tmp / "p1"),
                     "--output_dir", str(tmp / "p2"), "--max_steps", "10", "--checkpoint_interval", "10",
                     "--learning_rate", "0.01", *common, "--warmup_steps", "2"], ranks=0)
    return tmp


def test_loss_falls_on_real_text(phase_runs):
    mlm = losses(phase_runs / "p1", "train/mlm_loss")
    first, last = mlm[1], sum(mlm[s] for s in range(51, 61)) / 10
    assert first > 10.0  # ln(30522) = 10.33: an untrained model
    assert last < first - 2.5, (first, last)
    records = [json.loads(x) for x in (phase_runs / "p1" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/mlm_acc" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert evals[-1]["eval/mlm_acc"] > 0.05 and evals[-1]["eval/mlm_loss"] < evals[0]["eval/mlm_loss"] + 1
    assert {"optim/lr", "optim/grad_norm", "perf/seq_per_s", "perf/tokens_per_s"} <= set(records[0])
    summary = json.loads((phase_runs / "p1" / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["ranks_identical"]


def test_tensorboard_events_match_metrics_jsonl(phase_runs):
    """--report_to tensorboard: the event files, read back by TensorBoard's own reader, hold every
    numeric value of metrics.jsonl under the same name and step (as float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [json.loads(line) for line in (phase_runs / "p1" / "metrics.jsonl").read_text().splitlines()]
    expected = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(key, {})[record["step"]] = value
    events = EventAccumulator(str(phase_runs / "p1" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    assert {"train/loss", "optim/lr", "eval/mlm_acc", "perf/seq_per_s"} <= set(expected)
    for key, by_step in expected.items():
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == list(by_step), key
        assert [s.value for s in scalars] == pytest.approx([float(torch.tensor(v, dtype=torch.float32))
                                                            for v in by_step.values()], rel=1e-6, abs=0), key
    assert len(expected["train/loss"]) == 60 and sorted(expected["eval/mlm_acc"]) == [30, 60]


def test_phase2_starts_from_phase1(phase_runs):
    # phase 1 evaluated its final model on the phase-2 shards (seq 128): phase 2 starts there,
    # far below a fresh model (~10.3)
    p1_on_p2_data = losses(phase_runs / "p1", "eval/mlm_loss")[60]
    p2 = losses(phase_runs / "p2", "train/mlm_loss")
    assert p2[1] < 9.5 and abs(p2[1] - p1_on_p2_data) < 1.0, (p1_on_p2_data, p2[1])
    lr = losses(phase_runs / "p2", "optim/lr")
    # a fresh schedule: linear warmup over 2 steps to the phase-2 peak, then decay
    assert lr[1] == pytest.approx(0.005) and lr[2] == pytest.approx(0.01)
    assert lr[10] < lr[3] < lr[2]
    config = json.loads((phase_runs / "p2" / "run_config.json").read_text())
    assert config["args"]["init_checkpoint"].endswith("p1") and config["resumed_from_step"] is None
    # the phase-2 weights were trained from the phase-1 weights, and moved
    w1 = read_state_dict(resolve_model_dir(phase_runs / "p1"))
    w2 = read_state_dict(resolve_model_dir(phase_runs / "p2"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    delta = (w2[key] - w1[key]).norm() / w1[key].norm()
    assert 0 < delta < 0.5


def test_checkpoint_contract_and_export(phase_runs, tmp_path):
    out = phase_runs / "p1"
    assert (out / "latest").read_text().strip() == "global_step60"
    assert sorted(p.name for p in out.glob("global_step*")) == ["global_step30", "global_step60"]
    for name in ("config.json", "model.safetensors", "vocab.txt", "mp_rank_00_model_states.pt"):
        assert (out / "global_step60" / name).is_file()
    proc = run_pretraining_export(out, tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    transformers = pytest.importorskip("transformers")
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    config = BertConfig.from_json_file(tmp_path / "hf")
    ours = BertForPreTraining(config).eval()
    ours.load_state_dict(read_state_dict(tmp_path / "hf"), strict=False)
    ours.tie_weights()
    batch = next(PretrainingData(list_shards(phase_runs / "p1_shards"), 4, 0, 1, seed=0))
    with torch.no_grad():
        a = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        b = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"])
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, rtol=1e-4, atol=1e-4)


def run_pretraining_export(run_dir, output_dir):
    import subprocess
    import sys

    from pretrain_helpers import ROOT, env
    return subprocess.run([sys.executable, "-m", "bertspeed.pretrain.export", str(run_dir), "--output_dir", str(output_dir)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)


def test_bad_input_fails_clearly(phase_runs, tmp_path):
    model = phase_runs / "model.json"
    bad_ds = tmp_path / "ds.json"
    bad_ds.write_text(json.dumps({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4,
                                  "gradient_accumulation_steps": 2, "optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}}))
    base = ["--input_dir", str(phase_runs / "p1_shards"), "--config_file", str(model),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "2"]
    proc = run_pretraining([*base, "--deepspeed_config", str(bad_ds)], ranks=0, check=False)
    assert proc.returncode == 2 and "train_batch_size is 10" in proc.stderr and "ds.json" in proc.stderr
    z3 = ds_config(tmp_path / "z3.json", micro=4, accumulation=1, stage=3)
    proc = run_pretraining([*base, "--deepspeed_config", str(z3)], ranks=0, check=False)
    assert proc.returncode == 2 and "ZeRO stage 3 is refused" in proc.stderr
    proc = run_pretraining([*base[:-2], "--max_steps", "0", "--deepspeed_config", str(z3)], ranks=0, check=False)
    assert proc.returncode == 2 and "--max_steps must be positive" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bf16_with_zero1_matches_bf16_without_zero(phase_runs, tmp_path):
    """DeepSpeed's bf16 mode, one process: ZeRO 1 (flat fp32 partitions, layout attached) agrees with
    ZeRO 0 (per-parameter fp32 master weights) within bf16 rounding. (This is a bf16 smoke check:
    at this tolerance it cannot tell per-partition from per-parameter trust ratios; the fp32
    two-rank test in test_pretrain_zero.py and test_lamb.py do that.)"""
    runs = {}
    for stage in (0, 1):
        ds = ds_config(tmp_path / f"bf16_z{stage}.json", micro=8, accumulation=1, stage=stage, precision="bf16")
        out = tmp_path / f"z{stage}"
        run_pretraining(["--deepspeed_config", str(ds), "--input_dir", str(phase_runs / "p1_shards"),
                         "--config_file", str(phase_runs / "model.json"), "--output_dir", str(out),
                         "--max_steps", "6", "--checkpoint_interval", "6", "--learning_rate", "0.03"], ranks=0)
        runs[stage] = losses(out)
    runtime = json.loads((tmp_path / "z1" / "run_config.json").read_text())["optimizer_runtime"]
    assert runtime["flat_tensors_with_layout"] == 2  # decay and no-decay groups, flattened
    for step in runs[0]:
        assert runs[1][step] == pytest.approx(runs[0][step], rel=5e-3), step
    assert runs[1][6] < runs[1][1]


@pytest.mark.slow
def test_compile_gives_the_same_losses(phase_runs, tmp_path):
    """--compile (torch.compile per encoder layer) is an implementation switch: without dropout
    the losses equal eager mode's within float tolerance, and checkpoints keep their key names."""
    model = tiny_model_config(tmp_path / "model.json", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ds = ds_config(tmp_path / "ds.json", micro=8, accumulation=1, precision="bf16")
    got = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        run_pretraining(["--deepspeed_config", str(ds), "--input_dir", str(phase_runs / "p1_shards"),
                         "--config_file", str(model), "--output_dir", str(out), "--max_steps", "4",
                         "--checkpoint_interval", "4", *flag], ranks=0)
        got[bool(flag)] = losses(out)
    for step in got[False]:
        assert got[True][step] == pytest.approx(got[False][step], rel=2e-3), step
    eager = read_state_dict(resolve_model_dir(tmp_path / "eager"))
    compiled = read_state_dict(resolve_model_dir(tmp_path / "compiled"))
    assert eager.keys() == compiled.keys()


def test_eval_accuracy_at_mask_positions_matches_a_plain_loop(phase_runs, vocab_file):
    from bertspeed.model.tokenizer import read_vocab
    from bertspeed.pretrain.data import eval_batches
    logged = {r["step"]: r for r in map(json.loads, (phase_runs / "p1" / "metrics.jsonl").read_text().splitlines())}
    mask_id = read_vocab(vocab_file)["[MASK]"]
    model = BertForPreTraining(BertConfig.from_json_file(resolve_model_dir(phase_runs / "p1") / "config.json"))
    model.load_state_dict(read_state_dict(resolve_model_dir(phase_runs / "p1")), strict=False)
    model.eval()
    hits = total = 0
    shards = list_shards(phase_runs / "p2_shards")
    with torch.no_grad():
        for batch in eval_batches(shards, 8, 0, 1, 64):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).prediction_logits
            for row, position in (batch["labels"] != -100).nonzero().tolist():
                if batch["input_ids"][row, position] == mask_id:
                    total += 1
                    hits += int(logits[row, position].argmax() == batch["labels"][row, position])
    assert total > 0
    assert logged[60]["eval/mlm_acc_at_mask"] == pytest.approx(hits / total, abs=1.5 / total)
