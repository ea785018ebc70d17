"""`bertspeed evaluate`: scores of any checkpoint on held-out shards equal transformers' forward pass over the
same rows (MLM and NSP accuracy and loss, accuracy where the input is [MASK]), on one rank and on two."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pretrain_helpers import ROOT, env, make_shards

from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.checkpoint import save_pretrained
from bertspeed.model.tokenizer import read_vocab
from bertspeed.pretrain.evaluate import main

SAMPLES = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("evaluate")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=1, paragraphs_per_shard=80)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=128)
    save_pretrained(BertForPreTraining(config), tmp / "hf", vocab_file=vocab_file)
    return tmp, shards


def reference_scores(model_dir: Path, shard: Path, vocab_file: Path) -> dict:
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForPreTraining.from_pretrained(model_dir).eval()
    with h5py.File(shard) as f:
        rows = {k: f[k][:SAMPLES] for k in f}
    mask_id = read_vocab(vocab_file)["[MASK]"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(rows["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(rows["input_mask"], dtype=torch.long),
                    token_type_ids=torch.tensor(rows["segment_ids"], dtype=torch.long))
    logits, nsp = out.prediction_logits.double(), out.seq_relationship_logits.double()
    losses, hits, at_mask = [], [], []
    for i in range(SAMPLES):
        count = int((rows["masked_lm_positions"][i] > 0).sum())
        positions, ids = rows["masked_lm_positions"][i][:count], rows["masked_lm_ids"][i][:count]
        row = logits[i, positions]
        losses += list((torch.logsumexp(row, -1) - row[torch.arange(count), torch.tensor(ids)]).numpy())
        hits += list(row.argmax(-1).numpy() == ids)
        at_mask += list(rows["input_ids"][i][positions] == mask_id)
    labels = torch.tensor(rows["next_sentence_labels"], dtype=torch.long)
    hits, at_mask = np.array(hits), np.array(at_mask)
    return {"mlm_loss": float(np.mean(losses)), "mlm_acc": float(hits.mean()),
            "mlm_acc_at_mask": float(hits[at_mask].mean()),
            "nsp_loss": float(torch.nn.functional.cross_entropy(nsp, labels)),
            "nsp_acc": float((nsp.argmax(-1) == labels).double().mean()), "sequences": SAMPLES}


def test_scores_equal_transformers_on_one_and_two_ranks(setup, vocab_file, capsys):
    tmp, shards = setup
    want = reference_scores(tmp / "hf", next(shards.glob("*.hdf5")), vocab_file)
    args = ["--model", str(tmp / "hf"), "--eval_dir", str(shards), "--eval_samples", str(SAMPLES),
            "--batch_size", "8"]
    assert main([*args, "--output_file", str(tmp / "one.json")]) == 0
    one = json.loads((tmp / "one.json").read_text())
    assert json.loads(capsys.readouterr().out) == one
    for key, value in want.items():
        assert one[key] == pytest.approx(value, abs=2e-5), key
    # Two ranks split each shard in halves; over all (an even number of) rows they score the same rows.
    with h5py.File(next(shards.glob("*.hdf5"))) as f:
        half = len(f["input_ids"]) // 2
    args = ["--model", str(tmp / "hf"), "--eval_dir", str(shards), "--eval_samples", str(2 * half),
            "--batch_size", str(half)]
    assert main([*args, "--output_file", str(tmp / "all.json")]) == 0
    launcher = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run([str(launcher), "--num_gpus", "2", "--master_port", str(29300 + os.getpid() % 500),
                             "--module", "bertspeed.pretrain.evaluate", *args, "--output_file", str(tmp / "two.json")],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp / name).read_text()) for name in ("all.json", "two.json"))
    assert one["sequences"] == two["sequences"] == 2 * half
    for key in want:
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_a_model_without_pretraining_heads_is_refused(setup, tmp_path, vocab_file, capsys):
    from bertspeed.model import BertForSequenceClassification
    tmp, shards = setup
    save_pretrained(BertForSequenceClassification(BertConfig.preset("tiny")), tmp_path / "cls", vocab_file=vocab_file)
    assert main(["--model", str(tmp_path / "cls"), "--eval_dir", str(shards)]) == 2
    assert "has no pretraining heads" in capsys.readouterr().err
