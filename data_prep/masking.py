"""BERT masked-LM masking: the one definition used for static shards and by pretrain's loader.

As in Google's / NVIDIA's create_pretraining_data.py: count = min(P, max(1, round(len * 0.15)))
with len counting [CLS]/[SEP]; candidates are the non-special tokens (or whole words, a word
being a first piece plus its "##" continuations); chosen positions get [MASK] 80 %, a random
vocabulary id 10 %, and stay unchanged 10 %. Positions come back ascending.
"""
from __future__ import annotations

import numpy as np

from data_prep.schema import MASKED_LM_PROB, num_predictions


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
