"""Shards written by data_prep's CLI (static and dynamic masking) through our loader and a short
single-process training run."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from pretrain_helpers import ROOT, ds_config, env, losses, run_pretraining, squad_paragraphs, tiny_model_config

from bertspeed.model.model import IGNORE_INDEX
from bertspeed.model.tokenizer import SPECIAL_TOKENS, read_vocab
from bertspeed.pretrain.data import MaskingSpec, PretrainingData, list_shards

pytestmark = pytest.mark.timeout(600)


def create(tmp, squad_dev, vocab_file, masking):
    text = tmp / "text.txt"
    if not text.exists():
        with text.open("w") as f:
            for p in squad_paragraphs(squad_dev)[:300]:
                f.write("\n".join(s for s in re.split(r"(?<=[.!?])\s+", p.strip()) if s) + "\n\n")
    out = tmp / masking
    cmd = [sys.executable, "-m", "bertspeed.data_prep.create_pretraining_data", "--input", str(text), "--vocab_file",
           str(vocab_file), "--output_dir", str(out), "--max_seq_length", "64", "--max_predictions_per_seq", "10",
           "--masking", masking, "--num_shards", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("dp")
    return {m: create(tmp, squad_dev, vocab_file, m) for m in ("static", "dynamic")}, tmp


def spec_for(vocab_file, whole_word=False):
    vocab = read_vocab(vocab_file)
    return MaskingSpec(len(vocab), vocab["[MASK]"], tuple(vocab[t] for t in SPECIAL_TOKENS), 10, whole_word)


@pytest.mark.parametrize("whole_word", [False, True])
def test_dynamic_masking(shard_sets, vocab_file, whole_word):
    shards = list_shards(shard_sets[0]["dynamic"])
    assert not any(s.masked for s in shards)
    spec = spec_for(vocab_file, whole_word)
    data = PretrainingData(shards, 64, 0, 1, seed=5, masking=spec)
    batch = next(data)
    labels, ids, real = batch["labels"], batch["input_ids"], batch["attention_mask"].bool()
    chosen = labels != IGNORE_INDEX
    assert (chosen & ~real).sum() == 0  # never padding
    rate = chosen.sum().item() / real.sum().item()
    assert 0.10 < rate <= 0.16, rate
    assert 0.7 < (ids[chosen] == spec.mask_id).float().mean() < 0.9  # 80 % [MASK]
    special = torch.isin(labels[chosen], torch.tensor(spec.special_ids))
    assert not special.any()  # [CLS]/[SEP] never chosen
    # the same position in the data gives the same masks; the next epoch gives new ones
    again = PretrainingData(shards, 64, 0, 1, seed=5, masking=spec)
    assert torch.equal(next(again)["labels"], labels)
    again.load_state({**data.state(), "samples": data.rows_per_epoch})  # the first sample of epoch 1
    first_of_epoch1 = next(again)
    assert not torch.equal(first_of_epoch1["labels"], labels)
    data.close(), again.close()


def test_static_shards_of_data_prep_match_their_positions(shard_sets):
    shards = list_shards(shard_sets[0]["static"])
    assert all(s.masked for s in shards)
    import h5py
    with h5py.File(shards[0].path) as f:
        positions = f["masked_lm_positions"][:4]
    batch = next(PretrainingData(shards[:1], 4, 0, 1, seed=0, shuffle=False))
    for i in range(4):
        valid = positions[i][np.cumprod(positions[i] > 0).astype(bool)]
        assert torch.equal(torch.nonzero(batch["labels"][i] != IGNORE_INDEX).view(-1), torch.from_numpy(valid).long())


def test_training_on_dynamic_shards(shard_sets, vocab_file):
    sets, tmp = shard_sets
    model = tiny_model_config(tmp / "model.json")
    ds = ds_config(tmp / "ds.json", micro=8, accumulation=1)
    args = ["--deepspeed_config", str(ds), "--input_dir", str(sets["dynamic"]), "--config_file", str(model),
            "--output_dir", str(tmp / "run"), "--max_steps", "12", "--checkpoint_interval", "12",
            "--learning_rate", "0.03", "--eval_dir", str(sets["static"]), "--eval_samples", "64"]
    proc = run_pretraining(args, ranks=0, check=False)
    assert proc.returncode == 2 and "--vocab_file" in proc.stderr  # unmasked shards need the vocab
    run_pretraining([*args, "--vocab_file", str(vocab_file)], ranks=0)
    mlm = losses(tmp / "run", "train/mlm_loss")
    assert len(mlm) == 12 and mlm[12] < mlm[1] - 0.5
    records = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/mlm_acc" in records[-1]
