"""Pass 1 of create_pretraining_data: the document stream in blocks, each block tokenized and turned into
every phase's instances, written as a part file (.npz) in the work directory.

Blocks follow a fixed rule (about --block_bytes of text, at least MIN_BLOCK_DOCS documents, at most
MAX_BLOCK_DOCS), so they do not depend on --workers. A block's instances are shuffled with a generator seeded
by (seed, block, sequence length); a part that exists already is counted, not remade (resume).
"""
from __future__ import annotations

import functools
from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bertspeed.data_prep.fast_tokenizer import FastWordPiece
from bertspeed.data_prep.instances import Specials, TokenizedBlock, create_block_instances
from bertspeed.data_prep.masking import continuation_table
from bertspeed.data_prep.readers import iter_segmented_documents
from bertspeed.model.tokenizer import BertTokenizer
from bertspeed.training.atomic import open_atomic

MIN_BLOCK_DOCS = 32  # so that "another document" for NSP has a real choice
MAX_BLOCK_FACTOR = 16  # a block never exceeds 16 x --block_bytes (huge single documents)
# A block also ends at 2,048 documents: short documents (dictionary entries, tweets) give several times the
# instances per MB of prose, and a block's memory follows its instances (peak RSS 1.3x at 100 MB of mixed text).
MAX_BLOCK_DOCS = 2048


def iter_blocks(files: list[str], block_bytes: int):
    """(block index, global index of its first document, documents); independent of workers."""
    docs, size, first, index = [], 0, 0, 0
    for uri in files:
        for doc in iter_segmented_documents(uri):
            docs.append(doc)
            size += sum(map(len, doc)) + len(doc)
            if ((size >= block_bytes and len(docs) >= MIN_BLOCK_DOCS) or size >= MAX_BLOCK_FACTOR * block_bytes
                    or len(docs) >= MAX_BLOCK_DOCS):
                yield index, first, docs, size
                first, index, docs, size = first + len(docs), index + 1, [], 0
    if docs:
        yield index, first, docs, size


_worker: dict = {}


def init_worker(vocab_file, lower, specs, part_dirs, seed, dupe_factor, tok=None):
    tok = tok or BertTokenizer.from_vocab_file(vocab_file, lower)
    id_to_token = [""] * tok.vocab_size
    for token, i in tok.vocab.items():
        id_to_token[i] = token
    specials = Specials(tok.cls_id, tok.sep_id, tok.mask_id, tok.vocab_size, continuation_table(id_to_token))
    _worker.update(fast=FastWordPiece(tok), specs=specs, part_dirs=part_dirs, seed=seed, dupe=dupe_factor,
                   specials=specials)


def part_path(part_dir: Path, block: int) -> Path:
    return Path(part_dir) / f"part-{block:07d}.npz"


def _make_parts(block: int, first_doc: int, docs: list[list[str]]) -> list[int]:
    w = _worker
    tokens, lengths = w["fast"].lines_ids([line for doc in docs for line in doc])
    tokenized = TokenizedBlock.from_lengths(tokens, lengths, [len(doc) for doc in docs], first_doc)
    counts = []
    for spec, part_dir in zip(w["specs"], w["part_dirs"]):
        compact = functools.partial(_compact, vocab_size=w["specials"].vocab_size)
        arrays = create_block_instances(tokenized, spec, w["specials"], w["seed"], w["dupe"], store=compact)
        order = np.random.default_rng([w["seed"], block, spec.max_seq_length]).permutation(len(arrays["input_ids"]))
        for name in list(arrays):  # one field at a time, so only one field is ever held twice
            arrays[name] = arrays[name][order]
        _save_part(part_path(part_dir, block), arrays)
        counts.append(len(order))
    return counts


def _compact(name: str, values: np.ndarray, vocab_size: int) -> np.ndarray:
    """Parts are scratch space: ids and positions fit 16 bits for vocabularies up to 65,536
    (the HDF5 writer converts back to the schema's int32)."""
    if name == "masked_lm_positions" or (name in ("input_ids", "masked_lm_ids") and vocab_size <= 1 << 16):
        return values.astype(np.uint16)
    return values


def _save_part(path: Path, arrays: dict) -> None:
    with open_atomic(path, "wb") as f:
        np.savez(f, **arrays)


def _part_count(path: Path) -> int | None:
    try:
        with np.load(path, allow_pickle=False) as part:
            return int(part["next_sentence_labels"].shape[0])
    except (FileNotFoundError, ValueError, OSError):
        return None


def make_all_parts(files, args, part_dirs, pool) -> tuple[list[list[int]], int, int]:
    """Counts[phase][block], number of documents, bytes of text (args: CreateDataSettings)."""
    counts: dict[int, list[int]] = {}
    pending: deque = deque()
    num_docs = total = 0
    bar = tqdm(desc="pass 1: tokenize + instances", unit="B", unit_scale=True, mininterval=1)
    for block, first, docs, size in iter_blocks(files, args.block_bytes):
        num_docs, total = first + len(docs), total + size
        done = [_part_count(part_path(d, block)) for d in part_dirs]
        if None not in done:
            counts[block] = done
        elif pool is None:
            counts[block] = _make_parts(block, first, docs)
        else:
            while len(pending) >= 2 * args.workers:
                b, result = pending.popleft()
                counts[b] = result.result()
            pending.append((block, pool.submit(_make_parts, block, first, docs)))
        bar.update(size)
    for b, result in pending:
        counts[b] = result.result()
    bar.close()
    if num_docs == 0:
        raise ValueError(f"no documents in --input {' '.join(args.input)} (all files empty?)")
    per_phase = [[counts[b][i] for b in range(len(counts))] for i in range(len(part_dirs))]
    return per_phase, num_docs, total
