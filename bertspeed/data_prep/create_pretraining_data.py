"""Text (one sentence per line, blank line between documents) -> balanced HDF5 pretraining shards.

    python -m bertspeed.data_prep.create_pretraining_data --input corpus/ --vocab_file vocab.txt \\
        --output_dir out --phases 128:20 512:80 --num_shards 64 --workers 2

Two passes, both resumable. Pass 1 groups the document stream into blocks of about
--block_bytes of text (a fixed rule, so blocks do not depend on --workers); workers
tokenize each block and create its instances for every phase into a part file in the
work directory (bertspeed/data_prep/parts.py). Pass 2 cuts the instance stream into --num_shards contiguous, balanced
ranges and writes each as an HDF5 shard (temp name, then rename); manifest.json last.
A rerun skips finished parts and shards. Output identical for any --workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Before numpy is imported: data prep runs one thread per worker process, and OpenBLAS would start a thread
# per core in every one of them (0.05 CPU-seconds of start-up each on a 2-core host; oversubscription with
# --workers on a many-core node).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from tqdm import tqdm  # noqa: E402

from bertspeed.data_prep import schema  # noqa: E402
from bertspeed.data_prep.instances import InstanceSpec  # noqa: E402
from bertspeed.data_prep.parts import init_worker, make_all_parts, part_path  # noqa: E402
from bertspeed.data_prep.shards import (  # noqa: E402
    OutputDir,
    fields_for,
    read_done_marker,
    read_piece,
    sha256_file,
    shard_name,
    shard_ranges,
    write_json_atomic,
    write_shard,
)
from bertspeed.data_prep.storage import StorageError, check_bucket, is_s3, list_files, open_binary
from bertspeed.model.tokenizer import BertTokenizer
from bertspeed.training.pathcheck import check_input_file, check_output_dir, check_output_file
from bertspeed.training.settings import as_dict, parse, setting

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.bz2")  # taken from folders and s3 prefixes


@dataclass(kw_only=True)
class CreateDataSettings:
    input: list[str] = setting(aliases=("--input_file",),
                               help="text files, directories or s3:// prefixes (.gz/.bz2 ok); one sentence per line, "
                                    "blank line between documents")
    vocab_file: str = setting(help="WordPiece vocab.txt")
    output_dir: str | None = setting(None, help="local directory or s3://bucket/prefix")
    output_file: str | None = setting(None, help="NVIDIA drop-in: one shard at this .hdf5 path "
                                                 "(manifest: PATH.manifest.json)")
    do_lower_case: bool = setting(True, help="lower-case and strip accents (uncased vocab)")
    max_seq_length: int = setting(128, help="tokens per instance incl. [CLS]/[SEP]")
    max_predictions_per_seq: int = setting(20, help="masked positions per instance, at most")
    phases: list[str] | None = setting(None, metavar="LEN:PRED",
                                       help="several sets from one tokenization, e.g. 128:20 512:80; each goes to "
                                            "OUTPUT_DIR/seq_len_LEN_max_pred_PRED (overrides --max_seq_length/"
                                            "--max_predictions_per_seq)")
    masking: str = setting("static", choices=("static", "dynamic"),
                           help="static: NVIDIA masked shards; dynamic: unmasked shards + word_starts, masked by the "
                                "loader")
    do_whole_word_mask: bool = setting(False, help="static masking of whole words")
    masked_lm_prob: float = setting(schema.MASKED_LM_PROB, help="share of tokens masked")
    short_seq_prob: float = setting(0.1, help="share of documents with a shorter target")
    dupe_factor: int = setting(1, help="passes over the data with different masks/pairs")
    random_seed: int = setting(12345, help="same seed, same bytes (any --workers)")
    num_shards: int = setting(1, help="HDF5 files per phase (sizes differ by at most one)")
    workers: int = setting(1, help="processes (results do not depend on it)")
    block_bytes: int = setting(1 << 20, help="text per work unit")
    work_dir: str | None = setting(None, help="intermediate parts (default OUTPUT_DIR/.work, or a temp dir for s3)")
    keep_work: bool = setting(False, help="keep intermediate parts after success")
    bert_model: str | None = setting(None, help="ignored (NVIDIA compatibility): the vocab comes from --vocab_file")

    def __post_init__(self):
        if (self.output_dir is None) == (self.output_file is None):
            raise ValueError("give exactly one of --output_dir or --output_file")
        if self.output_file and (self.phases or self.num_shards != 1):
            raise ValueError("--output_file writes a single shard: no --phases, --num_shards 1")
        for name in ("dupe_factor", "num_shards", "workers", "block_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.short_seq_prob <= 1:
            raise ValueError(f"--short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0 < self.masked_lm_prob < 1:
            raise ValueError(f"--masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        self.check_paths()

    def check_paths(self):
        """The vocab is a text file; outputs are a folder (or a file) somewhere writable."""
        check_input_file("--vocab_file", self.vocab_file, text=True)
        if self.output_dir is not None:
            check_output_dir("--output_dir", self.output_dir)
        if self.output_file is not None:
            check_output_file("--output_file", self.output_file)
        if self.work_dir is not None:
            check_output_dir("--work_dir", self.work_dir)

    @property
    def destination(self) -> str:
        """Where the shards go: --output_dir, or the folder of --output_file."""
        if self.output_file is None:
            return self.output_dir
        return self.output_file.rsplit("/", 1)[0] if "/" in self.output_file else "."


def phase_specs(args: CreateDataSettings) -> list[tuple[InstanceSpec, str]]:
    """(spec, output directory) per phase."""
    pairs = []
    for item in args.phases or [f"{args.max_seq_length}:{args.max_predictions_per_seq}"]:
        try:
            length, pred = (int(x) for x in item.split(":"))
        except ValueError:
            raise ValueError(f"--phases entries look like 128:20, got {item!r}") from None
        spec = InstanceSpec(length, pred, args.short_seq_prob, args.masked_lm_prob, args.do_whole_word_mask,
                            args.masking == "static")
        out = args.destination.rstrip("/")
        pairs.append((spec, f"{out}/{schema.phase_dir_name(length, pred)}" if args.phases else out))
    return pairs


def output_names(args: CreateDataSettings) -> tuple[list[str], str]:
    """Shard file names and the manifest name of each phase directory."""
    if args.output_file:
        name = args.output_file.rsplit("/", 1)[-1]
        return [name], f"{name}.manifest.json"
    return [shard_name(s) for s in range(args.num_shards)], schema.MANIFEST


def result_config(args: CreateDataSettings, files: list[str], vocab_sha: str) -> dict:
    """Everything that determines the output bytes (not --workers or paths of work); local inputs
    also by size and modification time, so edited inputs are never mixed with old parts."""
    keys = ("do_lower_case", "max_seq_length", "max_predictions_per_seq", "phases", "masking",
            "do_whole_word_mask", "masked_lm_prob", "short_seq_prob", "dupe_factor", "random_seed",
            "num_shards", "block_bytes")
    stamps = [None if is_s3(f) else [os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]
    return {"inputs": files, "input_stamps": stamps, "vocab_sha256": vocab_sha, **{k: getattr(args, k) for k in keys}}


# ---------------------------------------------------------------- pass 2: parts -> shards

def _write_one_shard(part_dir, slices, name, num_rows, spec: InstanceSpec, out_uri, marker):
    fields = list(fields_for(spec.static_masking))
    tmp = Path(part_dir) / f".tmp-{name}"
    pieces = (read_piece(part_path(part_dir, b), lo, hi, fields) for b, lo, hi in slices)
    try:
        write_shard(tmp, pieces, num_rows, spec.max_seq_length, spec.max_predictions, spec.static_masking)
    except OSError as e:  # e.g. the disk is full: no partial shard stays behind
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write shard {name} ({tmp}): {e}") from None
    sha, size = sha256_file(tmp), os.path.getsize(tmp)
    OutputDir(out_uri).publish(tmp, name)
    write_json_atomic(Path(marker), {"num_instances": num_rows, "sha256": sha, "bytes": size})
    return name


def shard_slices(counts: list[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(block, start row, end row) pieces covering global instances [lo, hi)."""
    out, offset = [], 0
    for block, n in enumerate(counts):
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            out.append((block, a - offset, b - offset))
        offset += n
    return out


def write_phase(spec, out_uri, part_dir: Path, counts, num_shards: int, pool, names: list[str]) -> list[dict]:
    total = sum(counts)
    if total < num_shards:
        raise ValueError(f"only {total} instances at seq length {spec.max_seq_length}: fewer than "
                         f"--num_shards {num_shards}")
    out = OutputDir(out_uri)
    ranges = shard_ranges(total, num_shards)
    jobs = []
    for (lo, hi), name in zip(ranges, names):
        marker = part_dir / f"{name}.done.json"
        done = read_done_marker(marker)
        if done and done["num_instances"] == hi - lo and out.exists(name):
            continue
        job = (str(part_dir), shard_slices(counts, lo, hi), name, hi - lo, spec, out_uri, str(marker))
        jobs.append(pool.submit(_write_one_shard, *job) if pool else job)
    for job in tqdm(jobs, desc=f"pass 2: shards seq {spec.max_seq_length}", unit="shard"):
        job.result() if pool else _write_one_shard(*job)
    markers = [read_done_marker(part_dir / f"{name}.done.json") for name in names]
    return [dict(file=name, num_instances=hi - lo, sha256=m["sha256"], bytes=m["bytes"])
            for name, (lo, hi), m in zip(names, ranges, markers)]


# ---------------------------------------------------------------- driver

def default_work_dir(args: CreateDataSettings, config) -> Path:
    if not is_s3(args.destination):
        return Path(args.destination) / (f".{output_names(args)[1]}.work" if args.output_file else ".work")
    key = hashlib.sha256(json.dumps([args.destination, config], sort_keys=True).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"bertspeed-data-prep-{key}"


def prepare_work_dir(work: Path, config: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    stored = work / "config.json"
    if stored.exists():
        if json.loads(stored.read_text()) != config:
            raise ValueError(f"{work} holds unfinished work from different arguments or inputs; "
                             "delete it or choose another --output_dir/--work_dir")
    else:
        write_json_atomic(stored, config)


def start_pool(workers: int, init: tuple):
    """Worker processes (imported here: one worker, the common case, does not pay for the import)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    ctx = get_context("spawn")  # no fork of a process holding tokenizers' threads
    return ProcessPoolExecutor(workers, ctx, init_worker, init)


def run(args: CreateDataSettings) -> list[dict]:
    phases = phase_specs(args)
    files = list_files(args.input, TEXT_SUFFIXES)
    if not os.path.isfile(args.vocab_file):
        raise ValueError(f"--vocab_file {args.vocab_file}: not found")
    tokenizer = BertTokenizer.from_vocab_file(args.vocab_file, args.do_lower_case)
    vocab_sha = sha256_file(args.vocab_file)
    if is_s3(args.destination):
        check_bucket(args.destination)
    config = result_config(args, files, vocab_sha)
    names, manifest_name = output_names(args)
    finished = [finished_manifest(out_uri, config, manifest_name) for _, out_uri in phases]
    if all(finished):
        print("all phases already complete (manifest.json with the same arguments); nothing to do",
              file=sys.stderr)
        return finished
    work = Path(args.work_dir) if args.work_dir else default_work_dir(args, config)
    prepare_work_dir(work, config)
    part_dirs = [work / schema.phase_dir_name(s.max_seq_length, s.max_predictions) for s, _ in phases]
    for d in part_dirs:
        d.mkdir(exist_ok=True)
    started = time.time()
    init = (args.vocab_file, args.do_lower_case, [s for s, _ in phases], part_dirs, args.random_seed,
            args.dupe_factor)
    pool = start_pool(args.workers, init) if args.workers > 1 else None
    if pool is None:
        init_worker(*init, tok=tokenizer)
    try:
        counts, num_docs, num_bytes = make_all_parts(files, args, part_dirs, pool)
        manifests = []
        for (spec, out_uri), part_dir, phase_counts in zip(phases, part_dirs, counts):
            shards = write_phase(spec, out_uri, part_dir, phase_counts, args.num_shards, pool, names)
            manifests.append(write_manifest(out_uri, manifest_name, spec, shards, tokenizer, config, args,
                                            num_docs, num_bytes, time.time() - started))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return manifests


def read_manifest(out_uri: str, manifest_name: str) -> dict | None:
    target = OutputDir(out_uri).target(manifest_name)
    try:
        if is_s3(out_uri):
            if not OutputDir(out_uri).exists(manifest_name):
                return None
            with open_binary(target) as f:
                return json.load(f)
        return json.loads(Path(target).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finished_manifest(out_uri: str, config: dict, manifest_name: str) -> dict | None:
    """The manifest of a completed run with the same arguments, if all its shards are present.
    Refuses an output directory holding shards of a run with other arguments or inputs."""
    manifest = read_manifest(out_uri, manifest_name)
    if manifest is None:
        return None
    old = manifest.get("config", {})
    if old != config:
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise ValueError(f"{OutputDir(out_uri).target(manifest_name)} is from a run with different "
                         f"{', '.join(changed)}; use another --output_dir or delete that run's files")
    out = OutputDir(out_uri)
    for shard in manifest["shards"]:
        if not out.exists(shard["file"]):
            return None
        if not is_s3(out_uri) and os.path.getsize(out.target(shard["file"])) != shard["bytes"]:
            return None
    return manifest


def write_manifest(out_uri, manifest_name, spec, shards, tokenizer, config, args: CreateDataSettings, num_docs,
                   num_bytes, seconds) -> dict:
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "masking": "static" if spec.static_masking else "dynamic",
        "fields": list(fields_for(spec.static_masking)),
        "max_seq_length": spec.max_seq_length,
        "max_predictions_per_seq": spec.max_predictions,
        "masked_lm_prob": spec.masked_lm_prob,
        "whole_word_mask": spec.whole_word_mask,
        "num_instances": sum(s["num_instances"] for s in shards),
        "num_shards": len(shards),
        "num_documents": num_docs,
        "input_bytes": num_bytes,
        "vocab_sha256": config["vocab_sha256"],
        "vocab_size": tokenizer.vocab_size,
        "do_lower_case": args.do_lower_case,
        "special_ids": {n: getattr(tokenizer, f"{n}_id") for n in ("pad", "unk", "cls", "sep", "mask")},
        "arguments": as_dict(args),
        "config": config,
        "seconds": round(seconds, 2),
        "shards": shards,
    }
    out = OutputDir(out_uri)
    if is_s3(out_uri):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / manifest_name
            write_json_atomic(local, manifest)
            out.publish(local, manifest_name)
    else:
        write_json_atomic(Path(out.target(manifest_name)), manifest)
    return manifest


def main(argv=None) -> int:
    args = parse(CreateDataSettings, argv, prog="python -m bertspeed.data_prep.create_pretraining_data",
                 description=__doc__.split("\n\n")[0])
    try:
        manifests = run(args)
    except (StorageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for m in manifests:
        print(f"{m['num_instances']} instances of length {m['max_seq_length']} in {m['num_shards']} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
