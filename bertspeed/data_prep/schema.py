"""The HDF5 shard schema (NVIDIA-compatible). The one place these names and dtypes live.

One file per shard, byte-shuffled gzip-compressed datasets; N instances, L = sequence length,
P = max predictions per sequence.
"""
from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 1

# name -> (dtype, shape in terms of N, L, P)
MASKED_FIELDS = {
    "input_ids": (np.int32, ("N", "L")),  # WordPiece ids, 0-padded
    "input_mask": (np.int8, ("N", "L")),  # 1 = real token
    "segment_ids": (np.int8, ("N", "L")),  # 0 / 1
    "masked_lm_positions": (np.int32, ("N", "P")),  # ascending, 0-padded (a 0 ends the list)
    "masked_lm_ids": (np.int32, ("N", "P")),  # original ids, 0-padded
    "next_sentence_labels": (np.int8, ("N",)),  # 1 = B is random, 0 = true next
}
# Unmasked shards (dynamic masking in the loader) have no masked_lm_* datasets.
UNMASKED_FIELDS = {k: v for k, v in MASKED_FIELDS.items() if not k.startswith("masked_lm_")}
# Unmasked shards also mark word starts for whole-word masking (1 = first piece of a word).
WORD_START_FIELD = ("word_starts", np.int8, ("N", "L"))

# gzip level 1 after HDF5's byte-shuffle filter (both built into every HDF5, so any h5py reader, NVIDIA's
# included, reads them): written in half the CPU time of plain gzip level 4 (NVIDIA's) and about 10 % smaller
# on phase-1 shards (issue 20: it was a quarter of data prep's time). shards.ChunkWriter applies both itself
# (NumPy shuffle, ISA-L deflate) and writes whole chunks.
COMPRESSION = "gzip"
COMPRESSION_LEVEL = 1
SHUFFLE = True
MANIFEST = "manifest.json"

# Masking definition (BERT / NVIDIA): 15 % of tokens, 80 % [MASK], 10 % random, 10 % kept.
MASKED_LM_PROB = 0.15
MAX_PREDICTIONS = {128: 20, 512: 80}


def phase_dir_name(seq_len: int, max_predictions: int) -> str:
    """Folder of one phase's shards under an output directory written with --phases."""
    return f"seq_len_{seq_len}_max_pred_{max_predictions}"


def phase_seq_len(dir_name: str) -> int:
    """The sequence length in a phase_dir_name."""
    return int(dir_name.removeprefix("seq_len_").split("_max_pred_")[0])


def valid_predictions(masked_lm_positions: np.ndarray) -> np.ndarray:
    """Which masked_lm_* entries are real: NVIDIA's reader stops at the first 0 position
    (position 0 is [CLS]), so every entry from there on is padding."""
    return np.cumprod(masked_lm_positions > 0, axis=-1).astype(bool)


def num_predictions(num_tokens: int, max_predictions: int, prob: float = MASKED_LM_PROB) -> int:
    """How many positions to mask among `num_tokens` maskable tokens."""
    return min(max_predictions, max(1, int(round(num_tokens * prob))))
