"""HDF5 shard writing, balanced shard ranges, done markers and the manifest.

Shard s holds the global instances [s*N//S, (s+1)*N//S): sizes differ by at most one.
A shard is written under a temporary name, fsynced, hashed, then renamed (or uploaded)
to training_SSSSS.hdf5; a done marker in the work directory records its hash, so a
rerun skips it. The manifest is written last, also via a temporary name.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
from isal import isal_zlib

from bertspeed.data_prep import schema
from bertspeed.data_prep.storage import is_s3, s3_exists, upload_file
from bertspeed.training import atomic

CHUNK_ROWS = 1024
ISAL_LEVEL = 1  # ISA-L's levels are 0-3; its 1 gives zlib level 1's size on shard chunks


def shard_name(index: int) -> str:
    # NVIDIA's run_pretraining.py picks files whose name contains "training".
    return f"training_{index:05d}.hdf5"


def shard_ranges(total: int, num_shards: int) -> list[tuple[int, int]]:
    return [(s * total // num_shards, (s + 1) * total // num_shards) for s in range(num_shards)]


def fields_for(static_masking: bool) -> dict:
    if static_masking:
        return schema.MASKED_FIELDS
    name, dtype, shape = schema.WORD_START_FIELD
    return {**schema.UNMASKED_FIELDS, name: (dtype, shape)}


def write_shard(path: Path, pieces, num_rows: int, seq_len: int, max_pred: int, static_masking: bool) -> None:
    """Write `pieces` (an iterable of dicts of arrays, in order) as one HDF5 shard of num_rows rows."""
    dims = {"N": num_rows, "L": seq_len, "P": max_pred}
    # No HDF5 chunk cache: with it (HDF5 2.0's default 1 MB per dataset) the writer's peak RSS grew with the
    # shard's rows (63 MB at 10,000 rows, 97 MB at 75,000 in one process); without, 58 and 65 MB.
    with h5py.File(path, "w", rdcc_nbytes=0) as f:
        writers = {name: ChunkWriter(f, name, dtype, tuple(dims[d] for d in shape))
                   for name, (dtype, shape) in fields_for(static_masking).items()}
        for piece in pieces:
            for name, writer in writers.items():
                writer.append(piece[name])
        for writer in writers.values():
            writer.close()
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class ChunkWriter:
    """One dataset, written a whole chunk of CHUNK_ROWS rows at a time with HDF5's direct chunk write, each chunk
    byte-shuffled (NumPy) and deflated by ISA-L (python-isal) exactly as the shuffle and gzip filters the dataset
    declares would store it: any HDF5 reader decodes it with its own zlib. ISA-L's level 1 deflates the same
    chunks 6x faster than zlib's level 1 (HDF5's own), to the same size: it was a quarter of data prep's CPU."""

    def __init__(self, f: h5py.File, name: str, dtype, shape: tuple[int, ...]):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.chunk_rows = max(1, min(CHUNK_ROWS, shape[0]))
        self.ds = f.create_dataset(name, shape, dtype=self.dtype, chunks=(self.chunk_rows,) + shape[1:],
                                   compression=schema.COMPRESSION, compression_opts=schema.COMPRESSION_LEVEL,
                                   shuffle=schema.SHUFFLE)
        self.pending: list[np.ndarray] = []
        self.pending_rows = self.written = 0

    def append(self, rows: np.ndarray) -> None:
        """Whole chunks go straight from `rows`; only the part of a chunk left over waits (copied, so that the
        piece it came from can be freed)."""
        if self.pending_rows:
            take = min(self.chunk_rows - self.pending_rows, len(rows))
            self.pending.append(rows[:take].copy())
            self.pending_rows += take
            rows = rows[take:]
            if self.pending_rows == self.chunk_rows:
                self._write(np.concatenate(self.pending))
                self.pending, self.pending_rows = [], 0
        full = len(rows) // self.chunk_rows * self.chunk_rows
        for start in range(0, full, self.chunk_rows):
            self._write(rows[start:start + self.chunk_rows])
        if full < len(rows):
            self.pending, self.pending_rows = [rows[full:].copy()], len(rows) - full

    def close(self) -> None:
        if self.pending_rows:
            rows = np.concatenate(self.pending)  # the edge chunk: stored whole, zero rows past the dataset's end
            self._write(np.concatenate([rows, np.zeros((self.chunk_rows - len(rows),) + rows.shape[1:], rows.dtype)]),
                        len(rows))
        if self.written != self.ds.shape[0]:
            raise RuntimeError(f"{self.ds.file.filename}: wrote {self.written} rows of {self.ds.name}, "
                               f"expected {self.ds.shape[0]}")

    def _write(self, chunk: np.ndarray, rows: int | None = None) -> None:
        if self.written >= self.ds.shape[0]:
            raise RuntimeError(f"{self.ds.file.filename}: more rows for {self.ds.name} than {self.ds.shape[0]}")
        raw = np.ascontiguousarray(chunk, self.dtype)
        if schema.SHUFFLE and raw.itemsize > 1:  # HDF5's shuffle: every element's first byte, then second, ...
            raw = raw.view(np.uint8).reshape(-1, raw.itemsize).T
        data = isal_zlib.compress(raw.tobytes(), ISAL_LEVEL)
        self.ds.id.write_direct_chunk((self.written,) + (0,) * (len(self.ds.shape) - 1), data)
        self.written += self.chunk_rows if rows is None else rows


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputDir:
    """Where finished files go: a local directory or an s3:// prefix."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        if not is_s3(self.uri):
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    def target(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def exists(self, name: str) -> bool:
        return s3_exists(self.target(name)) if is_s3(self.uri) else os.path.isfile(self.target(name))

    def publish(self, local_tmp: Path, name: str) -> None:
        """Atomically make a finished local temp file visible under its final name."""
        if is_s3(self.uri):
            upload_file(local_tmp, self.target(name))  # an S3 object appears whole or not at all
            os.unlink(local_tmp)
        else:
            os.replace(local_tmp, self.target(name))


def write_json_atomic(path: Path, data: dict) -> None:
    """data_prep's JSON files (manifests, markers): one-space indent, sorted keys."""
    atomic.write_json_atomic(path, data, indent=1, sort_keys=True)


def read_done_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_piece(part_path: Path, start: int, end: int, names) -> dict[str, np.ndarray]:
    with np.load(part_path, allow_pickle=False) as part:
        return {name: part[name][start:end] for name in names}
