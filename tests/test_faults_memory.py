"""Host memory stays flat over a long run: thousands of tiny steps (many epochs, shard prefetches,
checkpoints, metrics records) in one process; RSS is sampled from outside."""
from __future__ import annotations

import json

import numpy as np
import psutil
import pytest
from fault_helpers import command, finish, start, wait_for_step
from pretrain_helpers import ds_config, write_shard

from bertspeed.data_prep.schema import MASKED_FIELDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
STEPS, WARMUP, GROWTH_BOUND_MB = 2500, 500, 30


def synthetic_shard(path, rows, seq_len=32, max_pred=5, vocab=1000, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(rows, seq_len))
    ids[:, 0], ids[:, -1] = 2, 3
    positions = np.sort(rng.choice(np.arange(1, seq_len - 1), size=(rows, max_pred)), axis=1)
    positions = np.array([np.unique(p).tolist() + [0] * (max_pred - len(np.unique(p))) for p in positions])
    arrays = {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids),
              "masked_lm_positions": positions, "masked_lm_ids": np.take_along_axis(ids, positions, 1),
              "next_sentence_labels": rng.integers(0, 2, size=rows)}
    write_shard(path, {k: v.astype(MASKED_FIELDS[k][0]) for k, v in arrays.items()})


def test_rss_is_flat_over_thousands_of_steps(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        synthetic_shard(shards / f"s{k}.hdf5", rows=40 + 7 * k, seed=k)
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"model_type": "bert", "vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}))
    ds = ds_config(tmp_path / "ds.json", micro=2, accumulation=1, optimizer="AdamW", clipping=1.0)
    out = tmp_path / "out"
    proc = start(command(["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
                          "--output_dir", str(out), "--max_steps", str(STEPS), "--checkpoint_interval", "500",
                          "--keep_checkpoints", "1"]))
    rss = {}
    try:
        for step in (WARMUP, STEPS // 2, STEPS - 100):
            assert wait_for_step(out, proc, step, started=0, timeout=400)
            rss[step] = psutil.Process(proc.pid).memory_info().rss / 2 ** 20
    finally:
        code, stderr = finish(proc, timeout=400)
    assert code == 0, stderr[-3000:]
    print("RSS MB by step:", {k: round(v, 1) for k, v in rss.items()})
    growth = max(rss.values()) - rss[WARMUP]
    assert growth < GROWTH_BOUND_MB, rss
