"""Raw corpora -> sentence-split text shards (one sentence per line, blank line between documents).

    python -m bertspeed.data_prep.extract --input enwiki.xml.bz2 books/ --output_dir text --num_shards 16

Inputs: Wikipedia XML dumps (wiki), JSONL with a text field (jsonl), folders of .txt books,
one document per file (books), plain text with blank lines between documents (text);
local paths or s3:// URIs. Documents go round-robin to the shards by their index in the
stream, so the output does not depend on --workers. Each shard is written under a temporary
name and renamed when complete; a rerun with finished shards does nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from bertspeed.data_prep import sentences
from bertspeed.data_prep.readers import FORMATS, clean_document, input_files, iter_raw_documents
from bertspeed.data_prep.shards import OutputDir, write_json_atomic
from bertspeed.data_prep.storage import StorageError, check_bucket, is_s3
from bertspeed.training.pathcheck import check_input_file, check_output_dir, check_output_file
from bertspeed.training.settings import as_dict, parse, setting


@dataclass(kw_only=True)
class ExtractSettings:
    input: list[str] = setting(help="files, folders or s3:// prefixes")
    input_format: str = setting("auto", choices=("auto",) + FORMATS,
                                help="auto: wiki for *.xml[.bz2], jsonl for *.jsonl[.gz], books for folders, "
                                     "text otherwise")
    text_field: str = setting("text", help="JSONL field holding the document text")
    output_dir: str = setting(help="local directory or s3://bucket/prefix")
    num_shards: int = setting(1, help="text files to write (documents round-robin)")
    workers: int = setting(1, help="processes (results do not depend on it)")
    punkt_model: str | None = setting(None, help="Punkt parameters JSON: used if present, else trained on the "
                                                 "corpus and written here (default OUTPUT_DIR/punkt_english.json)")
    no_split: bool = setting(False, help="keep paragraphs, do not split sentences")
    docs_per_task: int = setting(64, help="documents per worker task")
    checkpoint_every: int = setting(64, help="tasks between resume checkpoints")

    def __post_init__(self):
        for name in ("num_shards", "workers", "docs_per_task", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        check_output_dir("--output_dir", self.output_dir)
        if self.punkt_model and Path(self.punkt_model).exists():
            check_input_file("--punkt_model", self.punkt_model, text=True)
        elif self.punkt_model:
            check_output_file("--punkt_model", self.punkt_model)

    def output_config(self) -> dict:
        """The settings that determine the output (a resume must find the same), as JSON values."""
        return {k: v for k, v in as_dict(self).items() if k not in ("workers", "checkpoint_every")}


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


def iter_corpus(args: ExtractSettings):
    """(format, raw document) of all inputs, in a fixed order."""
    for item in args.input:
        fmt = detect_format(str(item), args.input_format)
        for uri in input_files([item], fmt):
            for raw in iter_raw_documents(uri, fmt, args.text_field):
                yield fmt, raw


def _plain_texts(args: ExtractSettings):
    return (text for fmt, raw in iter_corpus(args) for text in [clean_document(fmt, raw)] if text)


_splitter = None


def _init(model_path: str | None, no_split: bool):
    global _splitter
    _splitter = None if no_split else sentences.sentence_splitter(model_path)


def _process(batch: list[tuple[str, str]]) -> list[str]:
    """Clean and sentence-split raw documents: one line per sentence, "" for an empty document."""
    out = []
    for fmt, raw in batch:
        doc = clean_document(fmt, raw)
        lines = ([" ".join(p.split()) for p in doc.split("\n") if p.strip()] if _splitter is None
                 else sentences.split_document(_splitter, doc))
        out.append("\n".join(lines))
    return out


def _tasks(args: ExtractSettings, skip: int):
    batch = []
    for number, item in enumerate(iter_corpus(args)):
        if number < skip:
            continue
        batch.append(item)
        if len(batch) == args.docs_per_task:
            yield batch
            batch = []
    if batch:
        yield batch


class ShardWriter:
    """Round-robin documents into temp text shards, with checkpoints a rerun resumes from."""

    def __init__(self, local_dir: Path, names: list[str], config: dict):
        self.paths = [local_dir / f".{n}.tmp" for n in names]
        self.progress_path = local_dir / ".extract-progress.json"
        self.config = config
        state = {"raw_docs": 0, "documents": 0, "offsets": [0] * len(names), "counts": [0] * len(names)}
        if self.progress_path.exists():
            saved = json.loads(self.progress_path.read_text())
            if saved["config"] != config:
                raise ValueError(f"{self.progress_path} is from different arguments; delete it to start over")
            state = saved
        self.raw_docs, self.documents = state["raw_docs"], state["documents"]
        self.counts = state["counts"]
        self.files = []
        for path, offset in zip(self.paths, state["offsets"]):
            f = open(path, "r+b" if offset else "wb")
            f.truncate(offset)
            f.seek(offset)
            self.files.append(f)

    def write(self, docs: list[str]) -> None:
        for doc in docs:
            if doc:
                shard = self.documents % len(self.files)
                self.files[shard].write(doc.encode("utf-8") + b"\n\n")
                self.counts[shard] += 1
                self.documents += 1
        self.raw_docs += len(docs)

    def checkpoint(self) -> None:
        for f in self.files:
            f.flush()
        write_json_atomic(self.progress_path, {
            "config": self.config, "raw_docs": self.raw_docs, "documents": self.documents,
            "offsets": [f.tell() for f in self.files], "counts": self.counts})

    def close(self) -> None:
        for f in self.files:
            f.flush()
            os.fsync(f.fileno())
            f.close()


def run(args: ExtractSettings) -> dict:
    for item in args.input:  # every input found and readable before anything is written
        input_files([item], detect_format(str(item), args.input_format))
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
        sentences.sentence_splitter(model_path, lambda: _plain_texts(args))
    writer = ShardWriter(local_dir, names, args.output_config())
    pool = (ProcessPoolExecutor(args.workers, get_context("spawn"), _init, (model_path, args.no_split))
            if args.workers > 1 else None)
    if pool is None:
        _init(model_path, args.no_split)
    try:
        pending: deque = deque()
        written = 0
        for batch in tqdm(_tasks(args, writer.raw_docs), desc="extract + split", unit=" tasks"):
            pending.append(pool.submit(_process, batch) if pool else _process(batch))
            while len(pending) > 2 * args.workers or (pending and not pool):
                writer.write(pending.popleft().result() if pool else pending.popleft())
                written += 1
                if written % args.checkpoint_every == 0:
                    writer.checkpoint()
        while pending:
            writer.write(pending.popleft().result() if pool else pending.popleft())
    finally:
        writer.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    if writer.documents == 0:
        for p in writer.paths + [writer.progress_path]:
            p.unlink(missing_ok=True)
        raise ValueError(f"no documents found in --input {' '.join(map(str, args.input))}")
    for tmp, name in zip(writer.paths, names):
        out.publish(tmp, name)
    summary = {"documents": writer.documents, "shards": dict(zip(names, writer.counts)), "arguments": as_dict(args)}
    marker = local_dir / ".extract.json.tmp"
    write_json_atomic(marker, summary)
    out.publish(marker, "extract.json")
    writer.progress_path.unlink(missing_ok=True)
    return summary


def main(argv=None) -> int:
    args = parse(ExtractSettings, argv, prog="python -m bertspeed.data_prep.extract",
                 description=__doc__.split("\n\n")[0])
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
