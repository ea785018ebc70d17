"""Raw corpora -> sentence-split text shards (one sentence per line, blank line between documents).

    python -m data_prep.extract --input enwiki.xml.bz2 books/ --output_dir text --num_shards 16

Inputs: Wikipedia XML dumps (wiki), JSONL with a text field (jsonl), folders of .txt books,
one document per file (books), plain text with blank lines between documents (text);
local paths or s3:// URIs. Documents go round-robin to the shards by their index in the
stream, so the output does not depend on --workers. Each shard is written under a temporary
name and renamed when complete; a rerun with finished shards does nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import json
import os
import sys
from collections import deque
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from data_prep import sentences
from data_prep.readers import FORMATS, input_files, iter_documents
from data_prep.shards import OutputDir, write_json_atomic
from data_prep.storage import StorageError, check_bucket, is_s3

DOCS_PER_TASK = 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_prep.extract", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="files, folders or s3:// prefixes")
    p.add_argument("--input_format", choices=("auto",) + FORMATS, default="auto",
                   help="auto: wiki for *.xml[.bz2], jsonl for *.jsonl[.gz], books for folders, text otherwise")
    p.add_argument("--text_field", default="text", help="JSONL field holding the document text")
    p.add_argument("--output_dir", required=True, help="local directory or s3://bucket/prefix")
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--punkt_model", help="Punkt parameters JSON: used if present, else trained on the "
                                         "corpus and written here (default OUTPUT_DIR/punkt_english.json)")
    p.add_argument("--no_split", action="store_true", help="keep paragraphs, do not split sentences")
    args = p.parse_args(argv)
    if args.num_shards < 1 or args.workers < 1:
        p.error("--num_shards and --workers must be at least 1")
    return args


def detect_format(uri: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if os.path.isdir(uri):
        return "books"
    name = uri.lower()
    if ".xml" in name or name.endswith(".bz2") and "wiki" in name:
        return "wiki"
    if ".jsonl" in name or name.endswith(".json"):
        return "jsonl"
    return "text"


def iter_corpus(args):
    """Documents of all inputs, in a fixed order."""
    for item in args.input:
        fmt = detect_format(str(item), args.input_format)
        for uri in input_files([item], fmt):
            yield from iter_documents(uri, fmt, args.text_field)


_splitter = None


def _init(model_path: str | None, no_split: bool):
    global _splitter
    _splitter = None if no_split else sentences.sentence_splitter(model_path)


def _split(docs: list[str]) -> list[str]:
    """Each document as its sentence lines, joined."""
    out = []
    for doc in docs:
        lines = ([" ".join(p.split()) for p in doc.split("\n") if p.strip()] if _splitter is None
                 else sentences.split_document(_splitter, doc))
        out.append("\n".join(lines))
    return out


def _tasks(args):
    batch = []
    for doc in iter_corpus(args):
        batch.append(doc)
        if len(batch) == DOCS_PER_TASK:
            yield batch
            batch = []
    if batch:
        yield batch


def run(args) -> dict:
    out = OutputDir(args.output_dir)
    names = [f"text_{i:05d}.txt" for i in range(args.num_shards)]
    local_dir = Path(args.output_dir)
    if is_s3(args.output_dir):
        check_bucket(args.output_dir)
        tag = hashlib.sha256(args.output_dir.encode()).hexdigest()[:16]
        local_dir = Path(tempfile.gettempdir()) / f"bertspeed-extract-{tag}"
    local_dir.mkdir(parents=True, exist_ok=True)
    if all(out.exists(n) for n in names) and out.exists("extract.json"):
        print("all text shards already present; nothing to do", file=sys.stderr)
        return {}
    model_path = args.punkt_model or str(local_dir / "punkt_english.json")
    if not args.no_split:  # train (or load) once here, so workers only load it
        sentences.sentence_splitter(model_path, lambda: iter_corpus(args))
    tmp_paths = [local_dir / f".{n}.tmp" for n in names]
    files = [open(p, "w", encoding="utf-8") for p in tmp_paths]
    counts = [0] * args.num_shards
    ctx = get_context("spawn")
    pool = ctx.Pool(args.workers, _init, (model_path, args.no_split)) if args.workers > 1 else None
    if pool is None:
        _init(model_path, args.no_split)
    index = 0
    try:
        pending: deque = deque()

        def drain(limit):
            nonlocal index
            while len(pending) > limit:
                for doc in pending.popleft().get() if pool else pending.popleft():
                    if doc:
                        files[index % args.num_shards].write(doc + "\n\n")
                        counts[index % args.num_shards] += 1
                        index += 1

        for batch in tqdm(_tasks(args), desc="extract + split", unit=f" x{DOCS_PER_TASK} docs"):
            pending.append(pool.apply_async(_split, (batch,)) if pool else _split(batch))
            drain(2 * args.workers)
        drain(0)
    finally:
        for f in files:
            f.close()
        if pool:
            pool.close()
            pool.join()
    if index == 0:
        for p in tmp_paths:
            p.unlink()
        raise ValueError(f"no documents found in --input {' '.join(map(str, args.input))}")
    for tmp, name in zip(tmp_paths, names):
        out.publish(tmp, name)
    summary = {"documents": index, "shards": dict(zip(names, counts)), "arguments": vars(args)}
    marker = local_dir / ".extract.json.tmp"
    write_json_atomic(marker, summary)
    out.publish(marker, "extract.json")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (StorageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary:
        print(f"{summary['documents']} documents in {len(summary['shards'])} text shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
