"""BERT masked-LM masking: the one definition used for static shards and by pretrain's loader.

As in Google's / NVIDIA's create_pretraining_data.py: count = min(P, max(1, round(len * 0.15)))
with len counting [CLS]/[SEP]; candidates are the non-special tokens (or whole words, a word
being a first piece plus its "##" continuations); chosen positions get [MASK] 80 %, a random
vocabulary id 10 %, and stay unchanged 10 %. Positions come back ascending.
"""
from __future__ import annotations

import numpy as np

from bertspeed.data_prep.schema import MASKED_LM_PROB, num_predictions


def mask_tokens(rng: np.random.Generator, ids: np.ndarray, special_mask: np.ndarray, vocab_size: int,
                max_predictions: int, mask_id: int, word_starts: np.ndarray | None = None,
                masked_lm_prob: float = MASKED_LM_PROB) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask one unpadded sequence.

    ids: [n] token ids; special_mask: [n] bool, True for [CLS]/[SEP] (never masked);
    word_starts: [n] bool, True where a word starts (first WordPiece); given => whole-word masking.
    Returns (masked ids [n], positions [k] ascending, original ids at those positions [k]).
    """
    ids = np.asarray(ids)
    candidates = np.flatnonzero(~np.asarray(special_mask, dtype=bool))
    count = num_predictions(len(ids), max_predictions, masked_lm_prob)
    if word_starts is None:
        positions = np.sort(rng.permutation(candidates)[:count])
    else:
        positions = _whole_word_positions(rng, candidates, np.asarray(word_starts, dtype=bool), count)
    labels = ids[positions]
    masked = ids.copy()
    action = rng.random(len(positions))
    masked[positions[action < 0.8]] = mask_id
    random_slots = positions[action >= 0.9]
    masked[random_slots] = rng.integers(0, vocab_size, len(random_slots))
    return masked, positions, labels


def _whole_word_positions(rng, candidates: np.ndarray, word_starts: np.ndarray, count: int) -> np.ndarray:
    """Pick whole words in random order while they fit in `count` positions (BERT's rule)."""
    if len(candidates) == 0:
        return candidates
    new_word = word_starts[candidates].copy()
    new_word[0] = True
    new_word[1:] |= np.diff(candidates) != 1  # a special token in between also ends a word
    starts = np.flatnonzero(new_word)
    ends = np.append(starts[1:], len(candidates))
    chosen, total = [], 0
    for w in rng.permutation(len(starts)):
        if total >= count:
            break
        size = ends[w] - starts[w]
        if total + size > count:
            continue
        chosen.append(candidates[starts[w]:ends[w]])
        total += size
    return np.sort(np.concatenate(chosen)) if chosen else candidates[:0]


def continuation_table(id_to_token: list[str]) -> np.ndarray:
    """[vocab] bool: True for "##" continuation pieces; word_starts = ~table[ids]."""
    return np.array([t.startswith("##") for t in id_to_token], dtype=bool)


def mask_batch(rng: np.random.Generator, ids: np.ndarray, maskable: np.ndarray, lengths: np.ndarray,
               vocab_size: int, max_predictions: int, mask_id: int,
               masked_lm_prob: float = MASKED_LM_PROB) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mask_tokens for a padded batch at once (token-level masking, same rule and statistics).

    ids: [n, L]; maskable: [n, L] bool, False for [CLS]/[SEP]/padding; lengths: [n] real lengths.
    Returns (masked ids [n, L], positions [n, P] ascending and 0-padded, labels [n, P] 0-padded).
    """
    n, seq_len = ids.shape
    counts = np.minimum(max_predictions, np.maximum(1, np.round(lengths * masked_lm_prob))).astype(np.int64)
    counts = np.minimum(counts, maskable.sum(1))
    keys = np.where(maskable, rng.random((n, seq_len)), 2.0)
    order = np.argsort(keys, axis=1)[:, :max_predictions]
    if order.shape[1] < max_predictions:
        order = np.pad(order, ((0, 0), (0, max_predictions - order.shape[1])))
    chosen = np.arange(max_predictions)[None, :] < counts[:, None]
    positions = np.sort(np.where(chosen, order, seq_len), axis=1)  # unchosen sort to the end
    valid = positions < seq_len
    positions = np.where(valid, positions, 0)
    rows = np.arange(n)[:, None]
    labels = np.where(valid, ids[rows, positions], 0)
    masked = ids.copy()
    action = rng.random((n, max_predictions))
    r, c = np.nonzero(valid & (action < 0.8))
    masked[r, positions[r, c]] = mask_id
    r, c = np.nonzero(valid & (action >= 0.9))
    masked[r, positions[r, c]] = rng.integers(0, vocab_size, len(r))
    return masked, positions.astype(ids.dtype), labels.astype(ids.dtype)
