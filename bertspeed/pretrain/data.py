"""Pretraining data from HDF5 shards (ours and NVIDIA's): one global sample order shared by every
world size, each rank reading its own micro-batches of it, background prefetch of the next shard,
dynamic masking for unmasked shards, exact position.

The order: an epoch is every row of every shard, shards in an order shuffled per epoch, the rows of
a shard in an order shuffled per (epoch, shard), all from one seed; global sample g is row g % N of
epoch g // N (N rows in all). Optimizer step s uses global samples [s G, (s + 1) G) for a global
batch G = micro x accumulation x world size, cut into G / micro micro-batches; micro-batch k of the
step goes to rank k // accumulation (its accumulation step k % accumulation). So any world size with
the same global batch (and micro-batch) feeds every step the same micro-batches, and the position in
the data is one number, the global samples consumed. Dynamic masking draws from (seed, global
micro-batch, shard), so it does not depend on the world size either.

Each rank reads (decompresses) every shard but keeps only its own rows, about 1 / world size of
them, for the current shard and the prefetched next one; nothing is dropped at shard ends.
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


READ_BLOCK = 8192  # rows read from an HDF5 dataset at a time (then filtered to the rows wanted)


def read_rows(shard: Shard, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The given rows (ascending file row numbers) of a shard, read block by block so that memory
    holds the wanted rows plus one block."""
    fields = list(MASKED_FIELDS if shard.masked else UNMASKED_FIELDS)
    try:
        with h5py.File(shard.path, "r") as f:
            if not shard.masked and WORD_START_FIELD[0] in f:
                fields.append(WORD_START_FIELD[0])
            parts = {name: [] for name in fields}
            lo = int(rows[0]) if len(rows) else 0
            hi = int(rows[-1]) + 1 if len(rows) else 0
            for block in range(lo, hi, READ_BLOCK):
                wanted = rows[(rows >= block) & (rows < block + READ_BLOCK)] - block
                if len(wanted):
                    for name in fields:
                        parts[name].append(f[name][block:min(hi, block + READ_BLOCK)][wanted])
            return {name: (np.concatenate(p) if p else f[name][0:0]) for name, p in parts.items()}
    except OSError as e:  # truncated or corrupt after the header
        raise ShardError(f"{shard.path}: cannot read rows {rows[:1]}..{rows[-1:]} ({e})") from None


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
    """Infinite iterator of one rank's micro-batches of the global sample order (module docstring);
    `state()` / `load_state()` for resume, also on another world size with the same global batch."""

    def __init__(self, shards: list[Shard], batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True, masking: MaskingSpec | None = None, vocab_size: int | None = None,
                 accumulation: int = 1):
        self.shards = [s for s in shards if s.num_rows > 0]
        if not self.shards:
            raise ShardError("every shard is empty")
        if any(not s.masked for s in self.shards) and masking is None:
            raise ShardError("unmasked shards found but no dynamic masking configured (pass --vocab_file)")
        self.batch_size, self.rank, self.world_size, self.accumulation = batch_size, rank, world_size, accumulation
        self.global_batch = batch_size * accumulation * world_size
        self.seed, self.shuffle, self.masking, self.vocab_size = seed, shuffle, masking, vocab_size
        self.rows_per_epoch = sum(s.num_rows for s in self.shards)  # global samples in an epoch
        self.start, self.micro_batches = 0, 0  # position: global samples before this run, micro-batches since
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
        self._current = None  # ((epoch, order index), (global indices, tensors))
        self._next = None  # ((epoch, order index), future of the same)

    @property
    def seq_len(self) -> int:
        return self.shards[0].seq_len

    @property
    def samples(self) -> int:
        """Global samples consumed by the optimizer steps completed (at a step boundary)."""
        return self.start + self.micro_batches // self.accumulation * self.global_batch

    @property
    def epoch(self) -> int:
        return self.samples // self.rows_per_epoch

    def state(self) -> dict:
        return {"samples": self.samples, "global_batch": self.global_batch, "micro_batch": self.batch_size,
                "seed": self.seed, "rows_per_epoch": self.rows_per_epoch, "shuffle": self.shuffle}

    def load_state(self, state: dict) -> None:
        if "samples" not in state:
            raise ValueError("the data position was saved per rank (before global sample order): resume "
                             "it with the bertspeed version that wrote it, or start a new run from its weights")
        changes = {"rows_per_epoch": "the shards changed", "global_batch": "the global batch changed",
                   "shuffle": "--no_shuffle was added or dropped"}
        for key, what in changes.items():
            if state[key] != getattr(self, key):
                raise ValueError(f"data position was saved with {key} {state[key]}, now {getattr(self, key)}: {what}")
        self.start, self.micro_batches, self.seed = state["samples"], 0, state["seed"]
        self._current, self._next = None, None

    def _order(self, epoch: int) -> list[int]:
        order = np.arange(len(self.shards))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        return order.tolist()

    def _owner(self, g: np.ndarray) -> np.ndarray:
        """The rank that reads global sample g."""
        return (g % self.global_batch) // self.batch_size // self.accumulation

    def _offsets(self, epoch: int) -> np.ndarray:
        """Global index (within the epoch) of the first row of each shard in the epoch's order."""
        return np.cumsum([0] + [self.shards[i].num_rows for i in self._order(epoch)])

    def _load(self, epoch: int, k: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """This rank's rows of shard k of the epoch's order: (their global indices ascending, tensors)."""
        shard_index = self._order(epoch)[k]
        shard = self.shards[shard_index]
        first = epoch * self.rows_per_epoch + int(self._offsets(epoch)[k])
        g = first + np.arange(shard.num_rows)
        mine = self._owner(g) == self.rank
        g = g[mine]
        order = np.arange(shard.num_rows)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, shard_index]).permutation(shard.num_rows)
        rows = order[mine]
        ascending = np.argsort(rows, kind="stable")
        arrays = read_rows(shard, rows[ascending])
        arrays = {name: a[np.argsort(ascending, kind="stable")] for name, a in arrays.items()}  # global order
        if self.vocab_size is not None:  # an id past the embedding table would fail deep in the model
            check_token_ids(shard, arrays, self.vocab_size)
        if shard.masked:
            input_ids = arrays["input_ids"]
            labels = labels_from_positions(arrays["masked_lm_positions"], arrays["masked_lm_ids"], shard.seq_len)
        else:
            input_ids, labels = self._mask(arrays, g, shard_index)
        return g, to_tensors(arrays, labels, input_ids)

    def _mask(self, arrays: dict, g: np.ndarray, shard_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Dynamic masking, one draw per (seed, global micro-batch, shard): the same on any world size."""
        micro = g // self.batch_size
        if not len(g):
            return arrays["input_ids"].astype(np.int64), np.full(arrays["input_ids"].shape, IGNORE_INDEX, np.int64)
        ids = np.empty(arrays["input_ids"].shape, dtype=np.int64)
        labels = np.empty(arrays["input_ids"].shape, dtype=np.int64)
        cuts = np.flatnonzero(np.diff(micro)) + 1
        for lo, hi in zip([0, *cuts], [*cuts, len(g)]):
            rng = np.random.default_rng([self.seed, int(micro[lo]), shard_index])
            part = {name: a[lo:hi] for name, a in arrays.items()}
            ids[lo:hi], labels[lo:hi] = dynamic_mask(part, self.masking, rng)
        return ids, labels

    def _locate(self, g: int) -> tuple[int, int, int]:
        """(epoch, index in the epoch's shard order, samples left in that shard) of global sample g."""
        epoch, within = divmod(g, self.rows_per_epoch)
        offsets = self._offsets(epoch)
        k = int(np.searchsorted(offsets, within, side="right")) - 1
        return epoch, k, int(offsets[k + 1]) - within

    def _slice(self, epoch: int, k: int):
        """This rank's rows of shard k of `epoch`, starting the prefetch of the next shard's."""
        if self._current is not None and self._current[0] == (epoch, k):
            return self._current[1]
        if self._next is not None and self._next[0] == (epoch, k):
            loaded = self._next[1].result()
        else:
            loaded = self._load(epoch, k)
        self._current = ((epoch, k), loaded)
        following = (epoch, k + 1) if k + 1 < len(self.shards) else (epoch + 1, 0)
        self._next = (following, self._pool.submit(self._load, *following))
        return loaded

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        step, i = divmod(self.micro_batches, self.accumulation)
        g = self.start + step * self.global_batch + (self.rank * self.accumulation + i) * self.batch_size
        parts, need = [], self.batch_size
        while need > 0:
            epoch, k, left = self._locate(g)
            indices, tensors = self._slice(epoch, k)
            row = int(np.searchsorted(indices, g))
            take = min(need, left)
            parts.append({name: t[row:row + take] for name, t in tensors.items()})
            need, g = need - take, g + take
        self.micro_batches += 1
        if len(parts) == 1:
            return parts[0]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def eval_batches(shards: list[Shard], batch_size: int, rank: int, world_size: int, max_samples: int,
                 masking: MaskingSpec | None = None, seed: int = 1234):
    """Held-out micro-batches for one rank: its micro-batches of the first max_samples rows of the
    shards in file order, with fixed masking, so every evaluation sees the same data (and, when
    max_samples is a multiple of batch_size x world_size, every world size the same samples)."""
    data = PretrainingData(shards, batch_size, rank, world_size, seed, shuffle=False, masking=masking)
    try:
        total = min(max_samples, data.rows_per_epoch) // world_size
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
