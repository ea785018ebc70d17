"""A NEZHA model through the usual drivers: pretraining, a SIGKILL after a checkpoint and --resume
(bit-exact against the uninterrupted run), then SQuAD finetuning from the pretrained run folder."""
from __future__ import annotations

import json

import pytest
import torch
from fault_helpers import command, finish, start
from pretrain_helpers import ds_config, losses, make_shards, run_pretraining, tiny_model_config
from safetensors.torch import load_file

from bertspeed.finetune import run_squad
from bertspeed.finetune.metrics import squad_v1_evaluate
from bertspeed.model.config import BertConfig

pytestmark = pytest.mark.timeout(600)
STEPS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("nezha")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=1, paragraphs_per_shard=48)
    model = tiny_model_config(tmp / "model.json", position_embedding_type="nezha", max_relative_position=8,
                              max_position_embeddings=32)  # relative positions: longer shards (64) are fine
    ds = ds_config(tmp / "ds.json", micro=4, accumulation=1, optimizer="AdamW", clipping=0.0)

    def args(name):
        return ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
                "--output_dir", str(tmp / name), "--max_steps", str(STEPS), "--checkpoint_interval", "3",
                "--warmup_steps", "2"]

    run_pretraining(args("reference"), ranks=0)
    proc = start(command(args("killed")), {"BERTSPEED_FAULT_KILL_IN_SAVE": "after_latest@3"})
    code, stderr = finish(proc, timeout=180)
    assert code != 0, stderr[-2000:]
    run_pretraining([*args("killed"), "--resume"], ranks=0)
    return tmp


def test_nezha_pretrains_and_resumes_bit_exactly(runs):
    reference, killed = runs / "reference", runs / "killed"
    config = BertConfig.from_json_file(reference / f"global_step{STEPS}")
    assert config.is_nezha and config.max_relative_position == 8
    assert json.loads((reference / f"global_step{STEPS}" / "config.json").read_text())["model_type"] == "nezha"
    want = load_file(reference / f"global_step{STEPS}" / "model.safetensors")
    got = load_file(killed / f"global_step{STEPS}" / "model.safetensors")
    assert not any("position_embeddings" in key for key in want)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert losses(killed) == losses(reference) and len(losses(reference)) == STEPS


def test_nezha_finetunes_on_squad(runs, squad_dev, vocab_file, tmp_path):
    data = json.loads(squad_dev.read_text())["data"][:1]
    data[0]["paragraphs"] = [{**p, "qas": p["qas"][:2]} for p in data[0]["paragraphs"][:4]]
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": data}))
    out = tmp_path / "squad_out"
    run_squad.main(["--train_file", str(squad), "--predict_file", str(squad), "--model_dir", str(runs / "reference"),
                    "--vocab_file", str(vocab_file), "--output_dir", str(out), "--num_train_epochs", "1",
                    "--train_batch_size", "8",
                    "--max_seq_length", "96", "--doc_stride", "32"])
    predictions = json.loads((out / "predictions.json").read_text())
    assert json.loads((out / "eval_results.json").read_text()) == pytest.approx(squad_v1_evaluate(data, predictions))
    assert BertConfig.from_json_file(out / "model").is_nezha
