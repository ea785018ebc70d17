"""Pretraining data from HDF5 shards (ours and NVIDIA's): equal disjoint slices per rank,
background prefetch of the next shard, dynamic masking for unmasked shards, exact position.

Every shard is split into `world_size` contiguous slices of n // world_size rows (the remainder
is dropped), and rank r reads slice r only. So each rank sees the same number of samples from
every shard, no rank runs out early, and each rank holds at most two slices in memory (the
current one and the prefetched next one). The order of shards is shuffled per epoch and the rows
of a slice are shuffled per (epoch, shard, rank), all from one seed, so the position in the
data is just (epoch, samples consumed in the epoch) and resuming reproduces the same batches.
"""
from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from bertspeed.data_prep import masking as mlm_masking
from bertspeed.data_prep.schema import (
    MASKED_FIELDS,
    MASKED_LM_PROB,
    MAX_PREDICTIONS,
    UNMASKED_FIELDS,
    WORD_START_FIELD,
    valid_predictions,
)
from bertspeed.model.model import IGNORE_INDEX
from bertspeed.model.tokenizer import SPECIAL_TOKENS

SHARD_SUFFIXES = (".hdf5", ".h5")


class ShardError(ValueError):
    """A shard that does not follow the schema; the message names the file and the dataset."""


@dataclass(frozen=True)
class Shard:
    path: Path
    num_rows: int
    seq_len: int
    masked: bool  # static masking (masked_lm_* present) or dynamic (masked in the loader)


def inspect_shard(path: Path) -> Shard:
    try:
        with h5py.File(path, "r") as f:
            masked = "masked_lm_positions" in f
            fields = MASKED_FIELDS if masked else UNMASKED_FIELDS
            for name, (dtype, dims) in fields.items():
                if name not in f:
                    raise ShardError(f"{path}: missing dataset {name!r}")
                if f[name].ndim != len(dims):
                    raise ShardError(f"{path}: dataset {name!r} has {f[name].ndim} dims, expected {len(dims)}")
                if not np.issubdtype(f[name].dtype, np.integer):
                    raise ShardError(f"{path}: dataset {name!r} has dtype {f[name].dtype}, expected {np.dtype(dtype)}")
            rows = {name: f[name].shape[0] for name in fields}
            if len(set(rows.values())) != 1:
                raise ShardError(f"{path}: datasets disagree on the number of rows: {rows}")
            return Shard(path, f["input_ids"].shape[0], f["input_ids"].shape[1], masked)
    except OSError as e:
        raise ShardError(f"{path}: not a readable HDF5 file ({e})") from None


def list_shards(input_dir: str | Path) -> list[Shard]:
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"--input_dir {input_dir} is not a directory")
    paths = sorted(p for p in input_dir.iterdir() if p.suffix in SHARD_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"--input_dir {input_dir} has no *.hdf5 shards")
    shards = [inspect_shard(p) for p in paths]
    lengths = {s.seq_len for s in shards}
    if len(lengths) != 1:
        raise ShardError(f"{input_dir}: shards have different sequence lengths {sorted(lengths)}")
    return shards


@dataclass
class MaskingSpec:
    """Dynamic masking (unmasked shards only), with data_prep's masking rule."""
    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]  # never masked ([CLS], [SEP], [PAD], ...)
    max_predictions: int
    whole_word: bool = False  # uses the shards' word_starts


def read_slice(shard: Shard, rank: int, world_size: int) -> dict[str, np.ndarray]:
    per_rank = shard.num_rows // world_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    fields = MASKED_FIELDS if shard.masked else UNMASKED_FIELDS
    try:
        with h5py.File(shard.path, "r") as f:
            out = {name: f[name][lo:hi] for name in fields}
            if not shard.masked and WORD_START_FIELD[0] in f:
                out[WORD_START_FIELD[0]] = f[WORD_START_FIELD[0]][lo:hi]
    except OSError as e:  # truncated or corrupt after the header
        raise ShardError(f"{shard.path}: cannot read rows {lo}-{hi} ({e})") from None
    return out


def check_token_ids(shard: Shard, arrays: dict, vocab_size: int) -> None:
    for name in ("input_ids", "masked_lm_ids"):
        if name in arrays and arrays[name].size:
            low, high = int(arrays[name].min()), int(arrays[name].max())
            if low < 0 or high >= vocab_size:
                raise ShardError(f"{shard.path}: dataset {name!r} holds token id {high if high >= vocab_size else low}, "
                                 f"outside the model's vocab_size {vocab_size}")


def labels_from_positions(positions: np.ndarray, ids: np.ndarray, seq_len: int) -> np.ndarray:
    """NVIDIA's masked_lm_positions/ids -> (N, L) labels, -100 elsewhere. A 0 ends the list."""
    labels = np.full((positions.shape[0], seq_len), IGNORE_INDEX, dtype=np.int64)
    valid = valid_predictions(positions)
    rows = np.broadcast_to(np.arange(positions.shape[0])[:, None], positions.shape)
    labels[rows[valid], positions[valid]] = ids[valid]
    return labels


def dynamic_mask(arrays: dict, spec: MaskingSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask an unmasked slice with data_prep's masking functions; returns (input_ids, labels)."""
    ids = arrays["input_ids"].astype(np.int64)
    real = arrays["input_mask"].astype(bool)
    maskable = real & ~np.isin(ids, spec.special_ids)
    seq_len = ids.shape[1]
    if not spec.whole_word:
        masked, positions, mlm_ids = mlm_masking.mask_batch(rng, ids, maskable, real.sum(1), spec.vocab_size,
                                                        spec.max_predictions, spec.mask_id)
        return masked, labels_from_positions(positions, mlm_ids, seq_len)
    if WORD_START_FIELD[0] not in arrays:
        raise ShardError(f"whole-word dynamic masking needs the {WORD_START_FIELD[0]!r} dataset in the shards")
    masked, labels = ids.copy(), np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    for i in range(len(ids)):
        n = int(real[i].sum())
        row, positions, originals = mlm_masking.mask_tokens(
            rng, ids[i, :n], ~maskable[i, :n], spec.vocab_size, spec.max_predictions, spec.mask_id,
            word_starts=arrays[WORD_START_FIELD[0]][i, :n].astype(bool))
        masked[i, :n] = row
        labels[i, positions] = originals
    return masked, labels


def to_tensors(arrays: dict, labels: np.ndarray, input_ids: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.from_numpy(input_ids.astype(np.int64)),
        "attention_mask": torch.from_numpy(arrays["input_mask"].astype(np.int64)),
        "token_type_ids": torch.from_numpy(arrays["segment_ids"].astype(np.int64)),
        "labels": torch.from_numpy(labels),
        "next_sentence_label": torch.from_numpy(arrays["next_sentence_labels"].astype(np.int64)),
    }


class PretrainingData:
    """Infinite iterator of micro-batches for one rank; `state()` / `load_state()` for resume."""

    def __init__(self, shards: list[Shard], batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True, masking: MaskingSpec | None = None, vocab_size: int | None = None):
        self.shards = [s for s in shards if s.num_rows // world_size > 0]
        if not self.shards:
            raise ShardError(f"every shard has fewer rows than the {world_size} ranks")
        if any(not s.masked for s in self.shards) and masking is None:
            raise ShardError("unmasked shards found but no dynamic masking configured (pass --vocab_file)")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.masking, self.vocab_size = seed, shuffle, masking, vocab_size
        self.rows_per_epoch = sum(s.num_rows // world_size for s in self.shards)
        self.epoch, self.consumed = 0, 0  # position: samples of this epoch already returned
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
        self._current = None  # (epoch, order index, tensors)
        self._next = None  # future of the following slice

    @property
    def seq_len(self) -> int:
        return self.shards[0].seq_len

    def state(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "world_size": self.world_size,
                "seed": self.seed, "rows_per_epoch": self.rows_per_epoch}

    def load_state(self, state: dict) -> None:
        if state["world_size"] != self.world_size or state["rows_per_epoch"] != self.rows_per_epoch:
            raise ValueError(f"data position was saved with world size {state['world_size']} and "
                             f"{state['rows_per_epoch']} rows per rank and epoch; now {self.world_size} "
                             f"and {self.rows_per_epoch}: the shards or the world size changed")
        self.epoch, self.consumed, self.seed = state["epoch"], state["consumed"], state["seed"]
        self._current, self._next = None, None

    def _order(self, epoch: int) -> list[int]:
        order = np.arange(len(self.shards))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        return order.tolist()

    def _load(self, epoch: int, k: int) -> dict[str, torch.Tensor]:
        shard_index = self._order(epoch)[k]
        shard = self.shards[shard_index]
        arrays = read_slice(shard, self.rank, self.world_size)
        if self.vocab_size is not None:  # an id past the embedding table would fail deep in the model
            check_token_ids(shard, arrays, self.vocab_size)
        rng = np.random.default_rng([self.seed, epoch, shard_index, self.rank])
        if shard.masked:
            input_ids = arrays["input_ids"]
            labels = labels_from_positions(arrays["masked_lm_positions"], arrays["masked_lm_ids"], shard.seq_len)
        else:
            input_ids, labels = dynamic_mask(arrays, self.masking, rng)
        tensors = to_tensors(arrays, labels, input_ids)
        if self.shuffle:
            perm = torch.from_numpy(rng.permutation(len(input_ids)))
            tensors = {name: t[perm] for name, t in tensors.items()}
        return tensors

    def _locate(self, epoch: int, consumed: int) -> tuple[int, int]:
        """(index in the epoch's shard order, row within that slice) of sample `consumed`."""
        for k, shard_index in enumerate(self._order(epoch)):
            rows = self.shards[shard_index].num_rows // self.world_size
            if consumed < rows:
                return k, consumed
            consumed -= rows
        raise AssertionError("position past the end of the epoch")

    def _slice(self, epoch: int, k: int) -> dict[str, torch.Tensor]:
        """The tensors of slice k of `epoch`, starting the prefetch of the one after it."""
        if self._current is not None and self._current[:2] == (epoch, k):
            return self._current[2]
        if self._next is not None and self._next[0][:2] == (epoch, k):
            tensors = self._next[1].result()
        else:
            tensors = self._load(epoch, k)
        self._current = (epoch, k, tensors)
        following = (epoch, k + 1) if k + 1 < len(self.shards) else (epoch + 1, 0)
        self._next = (following, self._pool.submit(self._load, *following))
        return tensors

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        parts, need = [], self.batch_size
        while need > 0:
            k, row = self._locate(self.epoch, self.consumed)
            tensors = self._slice(self.epoch, k)
            take = min(need, len(tensors["input_ids"]) - row)
            parts.append({name: t[row:row + take] for name, t in tensors.items()})
            need -= take
            self.consumed += take
            if self.consumed == self.rows_per_epoch:
                self.epoch, self.consumed = self.epoch + 1, 0
        if len(parts) == 1:
            return parts[0]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def eval_batches(shards: list[Shard], batch_size: int, rank: int, world_size: int, max_samples: int,
                 masking: MaskingSpec | None = None, seed: int = 1234):
    """Held-out micro-batches for one rank: the first max_samples // world_size rows of its slices,
    in file order, with fixed masking, so every evaluation sees the same data."""
    data = PretrainingData(shards, batch_size, rank, world_size, seed, shuffle=False, masking=masking)
    try:
        total = min(max_samples // world_size, data.rows_per_epoch)
        for _ in range(total // batch_size):
            yield next(data)
    finally:
        data.close()


def dynamic_masking(shards: list[Shard], vocab: dict | None, vocab_size: int, max_predictions: int | None,
                    whole_word: bool = False, source: str = "the shards") -> MaskingSpec | None:
    """Masking for unmasked shards (data_prep --masking dynamic), None when every shard is masked already."""
    if all(s.masked for s in shards):
        return None
    if vocab is None:
        raise ValueError(f"{source} holds unmasked shards (dynamic masking): pass --vocab_file")
    seq_len = shards[0].seq_len
    count = max_predictions or MAX_PREDICTIONS.get(seq_len, round(seq_len * MASKED_LM_PROB))
    return MaskingSpec(vocab_size, vocab["[MASK]"], tuple(vocab[t] for t in SPECIAL_TOKENS), count, whole_word)
