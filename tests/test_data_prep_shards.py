"""Shards written chunk by chunk (ISA-L deflate, direct chunk writes) read back exactly through plain HDF5."""
from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from bertspeed.data_prep import schema, shards


def pieces_of(arrays: dict, sizes: list[int]):
    start = 0
    for size in sizes:
        yield {name: a[start:start + size] for name, a in arrays.items()}
        start += size


def random_rows(rng, num_rows: int, seq_len: int, max_pred: int) -> dict:
    dims = {"N": num_rows, "L": seq_len, "P": max_pred}
    return {name: rng.integers(0, 30_000 if dtype == np.int32 else 2, [dims[d] for d in shape]).astype(dtype)
            for name, (dtype, shape) in schema.MASKED_FIELDS.items()}


@pytest.mark.parametrize("sizes", [[0, 1, 1023, 1, 700, 0, 2500], [1024, 1024], [5], [1], [3000]])
def test_shard_reads_back_exactly_with_the_declared_filters(tmp_path, sizes):
    rng = np.random.default_rng(len(sizes))
    arrays = random_rows(rng, sum(sizes), 16, 3)
    path = tmp_path / "shard.hdf5"
    shards.write_shard(path, pieces_of(arrays, sizes), sum(sizes), 16, 3, static_masking=True)
    with h5py.File(path) as f:
        assert sorted(f) == sorted(arrays)
        for name, want in arrays.items():
            ds = f[name]
            assert ds.compression == schema.COMPRESSION and ds.shuffle == schema.SHUFFLE and ds.dtype == want.dtype
            np.testing.assert_array_equal(ds[:], want)
        # the first stored chunk, undone by hand: zlib inflate, then HDF5's byte unshuffle
        ds = f["input_ids"]
        _, data = ds.id.read_direct_chunk((0, 0))
        rows = ds.chunks[0]
        raw = np.frombuffer(zlib.decompress(data), np.uint8).reshape(4, -1).T.copy().view("<i4").reshape(rows, 16)
        np.testing.assert_array_equal(raw, arrays["input_ids"][:rows])


def test_wrong_row_count_is_an_error_naming_the_file(tmp_path):
    arrays = random_rows(np.random.default_rng(0), 10, 8, 2)
    for rows in (9, 11):
        with pytest.raises(RuntimeError, match="shard.hdf5"):
            shards.write_shard(tmp_path / "shard.hdf5", pieces_of(arrays, [10]), rows, 8, 2, static_masking=True)
