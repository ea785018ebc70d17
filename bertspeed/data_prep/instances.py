"""BERT pretraining instances from tokenized documents (Google's / NVIDIA's algorithm).

A document is a list of segments (sentences), each a list of WordPiece ids. Segments
are packed up to a target length (a random shorter one with probability
short_seq_prob); the packed chunk is cut into A and B; B is the true continuation or,
with probability 0.5 (always when the chunk is one segment), a random span of
another document. Differences from NVIDIA: BERT always takes a random B when the chunk
is a single segment, which pushes the random share to about 57 % on Wikipedia-like
text; we first cut such a segment at a random token, so the share is 50 %. For
bounded memory and worker-count independence, the "other document" is drawn from the same block of
documents (data_prep.create_pretraining_data groups the stream into blocks of about a
megabyte of text), and every document has its own RNG seeded from
(seed, dupe round, global document index).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import chain

import numpy as np

from bertspeed.data_prep.masking import mask_batch, mask_tokens
from bertspeed.data_prep.schema import MASKED_LM_PROB


@dataclass(frozen=True)
class InstanceSpec:
    max_seq_length: int = 128
    max_predictions: int = 20
    short_seq_prob: float = 0.1
    masked_lm_prob: float = MASKED_LM_PROB
    whole_word_mask: bool = False
    static_masking: bool = True  # False: unmasked shards with word_starts, masked by the loader

    def __post_init__(self):
        if self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        if not 1 <= self.max_predictions <= self.max_seq_length:
            raise ValueError(f"--max_predictions_per_seq must be in [1, max_seq_length], got {self.max_predictions}")


@dataclass(frozen=True)
class Specials:
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int
    continuation: np.ndarray  # [vocab] bool, "##" pieces


# Rows turned into arrays (and masked) at a time: the masking temporaries (float64 sort keys, int64 argsort)
# take 16 bytes per token, so a block of short documents (dictionary text: five times the instances per MB
# of prose) made a 20 MB spike when done at once; in batches the peak no longer depends on the text's kind.
ARRAY_ROWS = 1024


def document_seed(seed: int, dupe: int, doc_index: int) -> int:
    """A distinct Random() seed per (seed, dupe round, document); documents < 2**48, dupes < 2**16."""
    return (seed << 64) | (dupe << 48) | doc_index


def create_block_instances(docs: list[list[list[int]]], first_doc_index: int, spec: InstanceSpec,
                           specials: Specials, seed: int, dupe_factor: int) -> dict[str, np.ndarray]:
    """All instances of a block of documents, as arrays in the HDF5 schema."""
    numbered = [(first_doc_index + i, [s for s in d if s]) for i, d in enumerate(docs)]
    numbered = [(number, doc) for number, doc in numbered if doc]
    docs = [doc for _, doc in numbered]
    rows = []  # (tokens_a, tokens_b, is_random_next)
    for dupe in range(dupe_factor):
        for index, (number, _) in enumerate(numbered):
            rng = random.Random(document_seed(seed, dupe, number))
            rows += _document_instances(docs, index, spec, rng)
    rng = np.random.default_rng([seed, dupe_factor, first_doc_index])
    batches = [_to_arrays(rows[i:i + ARRAY_ROWS], spec, specials, rng) for i in range(0, max(len(rows), 1), ARRAY_ROWS)]
    return batches[0] if len(batches) == 1 else {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _randint(rng: random.Random, low: int, high: int) -> int:
    """Uniform in [low, high]; several times cheaper than Random.randint."""
    return low + int(rng.random() * (high - low + 1))


def _document_instances(docs, index, spec: InstanceSpec, rng: random.Random):
    document = docs[index]
    max_num_tokens = spec.max_seq_length - 3
    target = max_num_tokens
    if rng.random() < spec.short_seq_prob:
        target = _randint(rng, 2, max_num_tokens)
    out, chunk, length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            lone = len(chunk) == 1 and len(chunk[0]) >= 2
            if lone:  # cut a lone segment so it can still get a true next half (see module doc)
                cut = _randint(rng, 1, len(chunk[0]) - 1)
                chunk = [chunk[0][:cut], chunk[0][cut:]]
            a_end = _randint(rng, 1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = list(chain.from_iterable(chunk[:a_end]))
            if len(chunk) == 1 or rng.random() < 0.5:
                tokens_b, is_random = _random_segment(docs, index, target - len(tokens_a), rng)
                if not lone:
                    i -= len(chunk) - a_end  # put the unused segments back
            else:
                tokens_b, is_random = list(chain.from_iterable(chunk[a_end:])), False
            _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
            out.append((tokens_a, tokens_b, is_random))
            chunk, length = [], 0
        i += 1
    return out


def _random_segment(docs, index, target_length, rng: random.Random):
    other = index
    for _ in range(10):
        other = _randint(rng, 0, len(docs) - 1)
        if other != index:
            break
    doc = docs[other]
    tokens = []
    for seg in doc[_randint(rng, 0, len(doc) - 1):]:
        tokens += seg
        if len(tokens) >= target_length:
            break
    return tokens, other != index


def _truncate_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random):
    """BERT's truncation in closed form: repeatedly drop a token from the longer list (B on ties),
    from its front or back with probability 1/2 each."""
    excess = len(tokens_a) + len(tokens_b) - max_num_tokens
    if excess <= 0:
        return
    gap = min(abs(len(tokens_a) - len(tokens_b)), excess)
    rest = excess - gap
    cut_a = rest // 2 + (gap if len(tokens_a) > len(tokens_b) else 0)
    for tokens, cut in ((tokens_a, cut_a), (tokens_b, excess - cut_a)):
        if cut:
            front = rng.getrandbits(cut).bit_count()  # Binomial(cut, 1/2)
            del tokens[:front]
            del tokens[len(tokens) - (cut - front):]


def _to_arrays(rows, spec: InstanceSpec, sp: Specials, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, L, P = len(rows), spec.max_seq_length, spec.max_predictions
    input_ids = np.zeros((n, L), np.int32)
    segment_ids = np.zeros((n, L), np.int8)
    a_lengths = np.array([len(a) for a, _, _ in rows], np.int64)
    lengths = a_lengths + np.array([len(b) for _, b, _ in rows], np.int64) + 3  # [CLS] A [SEP] B [SEP]
    nsp = np.array([is_random for _, _, is_random in rows], np.int8)
    flat = [sp.cls_id]
    for a, b, _ in rows:
        flat += a
        flat.append(sp.sep_id)
        flat += b
        flat += (sp.sep_id, sp.cls_id)
    cols = np.arange(L)[None, :]
    real = cols < lengths[:, None]
    input_ids[real] = np.array(flat[:-1], np.int32)  # row-major order = the rows one after another
    segment_ids[real & (cols >= a_lengths[:, None] + 2)] = 1
    input_mask = real.astype(np.int8)
    out = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
           "next_sentence_labels": nsp}
    if not spec.static_masking:
        out["word_starts"] = (~sp.continuation[input_ids] & input_mask.astype(bool)).astype(np.int8)
        return out
    maskable = input_mask.astype(bool) & (cols != 0) & (cols != a_lengths[:, None] + 1) & (cols != lengths[:, None] - 1)
    if spec.whole_word_mask:
        positions, labels = np.zeros((n, P), np.int32), np.zeros((n, P), np.int32)
        for r in range(n):
            k = lengths[r]
            masked, pos, lab = mask_tokens(rng, input_ids[r, :k], ~maskable[r, :k], sp.vocab_size, P, sp.mask_id,
                                           ~sp.continuation[input_ids[r, :k]], spec.masked_lm_prob)
            input_ids[r, :k], positions[r, :len(pos)], labels[r, :len(lab)] = masked, pos, lab
    else:
        input_ids, positions, labels = mask_batch(rng, input_ids, maskable, lengths, sp.vocab_size, P,
                                                  sp.mask_id, spec.masked_lm_prob)
    out.update(input_ids=input_ids, masked_lm_positions=positions, masked_lm_ids=labels)
    return out
