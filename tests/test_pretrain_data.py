"""The HDF5 loader: one global order split among ranks, exact position, schema errors; batch arithmetic."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from pretrain_helpers import make_shards

from bertspeed.pretrain.args import resolve_batch
from bertspeed.pretrain.data import PretrainingData, ShardError, labels_from_positions, list_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, squad_dev, vocab_file):
    return make_shards(tmp_path_factory.mktemp("shards"), squad_dev, vocab_file, num_shards=3,
                       paragraphs_per_shard=40)


def rows_seen(data, batches):
    seen = []
    for _ in range(batches):
        b = next(data)
        seen.extend(tuple(r) for r in b["input_ids"].tolist())
    return seen


def test_ranks_split_one_global_order(shard_dir):
    """Ranks read disjoint micro-batches of one global order: 3 ranks x accumulation 2 give, step by
    step, exactly the micro-batches 1 rank x accumulation 6 reads; an epoch drops no row."""
    shards = list_shards(shard_dir)
    assert len({s.num_rows for s in shards}) > 1  # unequal shard sizes
    world, accumulation, micro = 3, 2, 4
    loaders = [PretrainingData(shards, micro, r, world, seed=7, accumulation=accumulation) for r in range(world)]
    single = PretrainingData(shards, micro, 0, 1, seed=7, accumulation=accumulation * world)
    steps = loaders[0].rows_per_epoch // (micro * accumulation * world) + 2  # crosses the epoch end
    seen = []
    for _ in range(steps):
        step_rows = [rows_seen(d, accumulation) for d in loaders]
        seen.extend(row for rows in step_rows for row in rows)
        assert [row for rows in step_rows for row in rows] == rows_seen(single, accumulation * world)
    epoch = seen[:single.rows_per_epoch]
    assert single.rows_per_epoch == sum(s.num_rows for s in shards)
    assert len(set(epoch)) == len(epoch) == single.rows_per_epoch  # every row once (rows are distinct)
    for d in [*loaders, single]:
        d.close()


def test_resume_position_reproduces_batches(shard_dir):
    shards = list_shards(shard_dir)
    data = PretrainingData(shards, 5, 1, 2, seed=3)
    rows_seen(data, 9)
    state = data.state()
    assert state["samples"] == 9 * 10
    expected = [next(data) for _ in range(30)]  # crosses shard and epoch boundaries
    data.close()
    resumed = PretrainingData(shards, 5, 1, 2, seed=3)
    resumed.load_state(state)
    for e in expected:
        got = next(resumed)
        for k in e:
            assert torch.equal(got[k], e[k])
    assert resumed.epoch >= 1
    resumed.close()
    other = PretrainingData(shards, 5, 1, 3, seed=3)  # global batch 15, saved with 10
    with pytest.raises(ValueError, match="global_batch 10, now 15"):
        other.load_state(state)
    other.close()
    unshuffled = PretrainingData(shards, 5, 0, 2, seed=3, shuffle=False)
    with pytest.raises(ValueError, match="shuffle True, now False"):
        unshuffled.load_state(state)
    unshuffled.close()


def test_epochs_reshuffle(shard_dir):
    shards = list_shards(shard_dir)
    data = PretrainingData(shards, 1, 0, 1, seed=0)
    first = rows_seen(data, data.rows_per_epoch)
    second = rows_seen(data, data.rows_per_epoch)
    assert sorted(first) == sorted(second) and first != second
    data.close()


def reference_labels(positions, ids, seq_len):
    """Independent reference: walk each row and stop at its first 0 position, as NVIDIA's reader does."""
    labels = np.full((positions.shape[0], seq_len), -100, dtype=np.int64)
    for row in range(positions.shape[0]):
        for position, token in zip(positions[row], ids[row]):
            if position == 0:
                break
            labels[row, position] = token
    return labels


def test_labels_stop_at_first_zero():
    positions = np.array([[1, 3, 0, 0], [2, 0, 5, 0]])  # row 1: NVIDIA's reader stops at the first 0
    ids = np.array([[11, 13, 0, 0], [12, 0, 15, 0]])
    expected = np.full((2, 6), -100)
    expected[0, 1], expected[0, 3], expected[1, 2] = 11, 13, 12
    assert np.array_equal(labels_from_positions(positions, ids, 6), expected)


def test_labels_match_reference():
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(np.arange(1, 30), size=(4, 6)), axis=1).astype(np.int32)
    positions[1, 4:] = 0
    positions[2, 2] = 0  # NVIDIA's reader stops at the first 0
    ids = rng.integers(5, 100, size=(4, 6)).astype(np.int32)
    ours = labels_from_positions(positions, ids, 32)
    assert np.array_equal(ours, reference_labels(positions, ids, 32))


def test_bad_shards_name_file_and_field(tmp_path, shard_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    src = sorted(shard_dir.iterdir())[0]
    with h5py.File(src) as f, h5py.File(bad / "x.hdf5", "w") as g:
        for name in f:
            if name != "segment_ids":
                g.create_dataset(name, data=f[name][:])
    with pytest.raises(ShardError, match=r"x\.hdf5.*segment_ids"):
        list_shards(bad)
    (bad / "x.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(ShardError, match="x.hdf5"):
        list_shards(bad)
    with pytest.raises(FileNotFoundError, match="no \\*.hdf5"):
        list_shards(tmp_path)


def test_batch_arithmetic():
    assert resolve_batch({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}, 2).accumulation == 4
    assert resolve_batch({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2}, 4).global_ == 64
    with pytest.raises(ValueError, match="8 x .*2 x world size 2 = 32, but train_batch_size is 48"):
        resolve_batch({"train_batch_size": 48, "train_micro_batch_size_per_gpu": 8,
                       "gradient_accumulation_steps": 2}, 2)
    with pytest.raises(ValueError, match="train_batch_size"):
        resolve_batch({"train_batch_size": 60, "train_micro_batch_size_per_gpu": 8}, 2)
