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

A block's tokens are one flat array (TokenizedBlock); the segments of a document lie one after
another in it, so A and B of every instance are each one contiguous range of that array. The
per-document loop only decides ranges from segment lengths (same random draws as on token lists);
the rows are then gathered and masked with NumPy, ARRAY_ROWS at a time.
"""
from __future__ import annotations

import random
from array import array
from dataclasses import dataclass

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


@dataclass
class TokenizedBlock:
    """A block's documents as one flat token array: document d is segments doc_segments[d]..doc_segments[d+1]-1,
    segment s is tokens[starts[s]:starts[s] + lengths[s]]. Only non-empty segments and documents are kept;
    numbers[d] is document d's global index (empty documents still count); first is the global index of the
    block's first document, empty or not."""
    tokens: np.ndarray  # [T] int32
    starts: list[int]
    lengths: list[int]
    doc_segments: list[int]  # [D + 1]
    numbers: list[int]  # [D]
    first: int

    @classmethod
    def from_lengths(cls, tokens: np.ndarray, line_lengths: np.ndarray, lines_per_doc, first_doc_index: int):
        """From the ids of all lines one after another, each line's id count and each document's line count."""
        line_lengths = np.asarray(line_lengths, np.int64)
        line_starts = np.cumsum(line_lengths) - line_lengths
        doc_of_line = np.repeat(np.arange(len(lines_per_doc)), lines_per_doc)
        keep = line_lengths > 0
        kept_docs, per_doc = np.unique(doc_of_line[keep], return_counts=True)
        doc_segments = np.concatenate(([0], np.cumsum(per_doc)))
        return cls(np.asarray(tokens, np.int32), line_starts[keep].tolist(), line_lengths[keep].tolist(),
                   doc_segments.tolist(), (kept_docs + first_doc_index).tolist(), first_doc_index)

    @classmethod
    def from_lists(cls, docs: list[list[list[int]]], first_doc_index: int = 0) -> "TokenizedBlock":
        """From documents given as lists of segments of ids."""
        lines = [seg for doc in docs for seg in doc]
        flat = np.array([i for seg in lines for i in seg], np.int32)
        return cls.from_lengths(flat, [len(s) for s in lines], [len(d) for d in docs], first_doc_index)

    def __len__(self) -> int:
        return len(self.numbers)


def create_block_instances(block: TokenizedBlock, spec: InstanceSpec, specials: Specials, seed: int,
                           dupe_factor: int, store=None) -> dict[str, np.ndarray]:
    """All instances of a block of documents, as arrays in the HDF5 schema; store(name, array) -> array, if given,
    turns each batch's arrays into the form kept (e.g. narrower dtypes) before the batches are joined."""
    rows = array("q")  # per instance: a start, a length, b start, b length, is_random_next
    for dupe in range(dupe_factor):
        for index, number in enumerate(block.numbers):
            rng = random.Random(document_seed(seed, dupe, number))
            _document_instances(block, index, spec, rng, rows)
    rng = np.random.default_rng([seed, dupe_factor, block.first])
    ranges = np.frombuffer(rows, np.int64).reshape(-1, 5).astype(np.int32)  # int32: small [rows, L] temporaries
    del rows
    batches = []
    for i in range(0, max(len(ranges), 1), ARRAY_ROWS):
        arrays = _to_arrays(block.tokens, ranges[i:i + ARRAY_ROWS], spec, specials, rng)
        batches.append({k: store(k, v) for k, v in arrays.items()} if store else arrays)
    if len(batches) == 1:
        return batches[0]
    return {k: np.concatenate([b.pop(k) for b in batches]) for k in list(batches[0])}


def _randint(rng: random.Random, low: int, high: int) -> int:
    """Uniform in [low, high]; several times cheaper than Random.randint."""
    return low + int(rng.random() * (high - low + 1))


def _document_instances(block: TokenizedBlock, index: int, spec: InstanceSpec, rng: random.Random, out: array):
    """Append the document's instances to `out`, five numbers each: a start, a length, b start, b length,
    is_random."""
    first, end = block.doc_segments[index], block.doc_segments[index + 1]
    starts, lengths = block.starts, block.lengths
    max_num_tokens = spec.max_seq_length - 3
    target = max_num_tokens
    if rng.random() < spec.short_seq_prob:
        target = _randint(rng, 2, max_num_tokens)
    chunk_first, length, i = first, 0, first
    while i < end:
        length += lengths[i]
        if i == end - 1 or length >= target:
            pieces = [lengths[s] for s in range(chunk_first, i + 1)]
            lone = len(pieces) == 1 and pieces[0] >= 2
            if lone:  # cut a lone segment so it can still get a true next half (see module doc)
                cut = _randint(rng, 1, pieces[0] - 1)
                pieces = [cut, pieces[0] - cut]
            a_end = _randint(rng, 1, len(pieces) - 1) if len(pieces) >= 2 else 1
            a_start, a_len = starts[chunk_first], sum(pieces[:a_end])
            if len(pieces) == 1 or rng.random() < 0.5:
                b_start, b_len, is_random = _random_segment(block, index, target - a_len, rng)
                if not lone:
                    i -= len(pieces) - a_end  # put the unused segments back
            else:
                b_start, b_len, is_random = a_start + a_len, length - a_len, False
            a_start, a_len, b_start, b_len = _truncate_pair(a_start, a_len, b_start, b_len, max_num_tokens, rng)
            out.extend((a_start, a_len, b_start, b_len, is_random))
            chunk_first, length = i + 1, 0
        i += 1


def _random_segment(block: TokenizedBlock, index: int, target_length: int, rng: random.Random):
    """(start, length, is_random) of a span of another document: segments from a random one on, until
    target_length is reached (at least one segment)."""
    other = index
    for _ in range(10):
        other = _randint(rng, 0, len(block) - 1)
        if other != index:
            break
    first, end = block.doc_segments[other], block.doc_segments[other + 1]
    seg = first + _randint(rng, 0, end - first - 1)
    start, length = block.starts[seg], 0
    for s in range(seg, end):
        length += block.lengths[s]
        if length >= target_length:
            break
    return start, length, other != index


def _truncate_pair(a_start: int, a_len: int, b_start: int, b_len: int, max_num_tokens: int, rng: random.Random):
    """BERT's truncation in closed form: repeatedly drop a token from the longer span (B on ties), from its
    front or back with probability 1/2 each. Returns the new (a start, a length, b start, b length)."""
    excess = a_len + b_len - max_num_tokens
    if excess <= 0:
        return a_start, a_len, b_start, b_len
    gap = min(abs(a_len - b_len), excess)
    cut_a = (excess - gap) // 2 + (gap if a_len > b_len else 0)
    cut_b = excess - cut_a
    if cut_a:
        a_start += rng.getrandbits(cut_a).bit_count()  # tokens dropped at the front: Binomial(cut, 1/2)
    if cut_b:
        b_start += rng.getrandbits(cut_b).bit_count()
    return a_start, a_len - cut_a, b_start, b_len - cut_b


def _to_arrays(tokens: np.ndarray, ranges: np.ndarray, spec: InstanceSpec, sp: Specials,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] B [SEP] rows gathered from the block's tokens (ranges: [n, 5] as in _document_instances),
    padded to the sequence length, then masked."""
    n, L, P = len(ranges), spec.max_seq_length, spec.max_predictions
    a_start, a_len, b_start, b_len = (ranges[:, k, None] for k in range(4))
    lengths = (a_len + b_len + 3)[:, 0]
    cols = np.arange(L, dtype=np.int32)[None, :]
    in_b = cols >= a_len + 2
    source = np.where(in_b, b_start + cols - a_len - 2, a_start + cols - 1)
    real = cols < lengths[:, None]
    inside = real & (cols != 0) & (cols != a_len + 1) & (cols != lengths[:, None] - 1)
    input_ids = np.where(inside, tokens[np.where(inside, source, 0)], 0).astype(np.int32)
    input_ids[:, 0] = sp.cls_id
    input_ids[real & ~inside & (cols > 0)] = sp.sep_id
    input_mask = real.astype(np.int8)
    segment_ids = (real & in_b).astype(np.int8)
    out = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
           "next_sentence_labels": ranges[:, 4].astype(np.int8)}
    if not spec.static_masking:
        out["word_starts"] = (~sp.continuation[input_ids] & real).astype(np.int8)
        return out
    maskable = inside
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
