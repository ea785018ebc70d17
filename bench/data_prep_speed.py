"""Benchmark: create_pretraining_data throughput (MB/s per core) and peak RSS at two corpus sizes.

    python bench/data_prep_speed.py [--sizes_mb 10 50] [--work_dir /tmp/bertspeed-bench]

Corpus: the `context` paragraphs of SQuAD v1.1 train (real Wikipedia text, about 14 MB),
one document per article, sentence-split once with data_prep's Punkt (trained offline on
the corpus; splitting is not timed, as in NVIDIA's recipe whose create_pretraining_data.py
also reads pre-split text). A size above 14 MB repeats whole articles in order
(copies are identical text: no new words after the first copy).
Each size runs `python -m bertspeed.data_prep.create_pretraining_data` in a fresh process with
phase-1 settings (128/20, dupe factor 1, static masking, --workers 1); MB/s is raw
input bytes over wall time and over the process's CPU time. Peak RSS is the child's own
VmHWM, written at exit: wait4's ru_maxrss would report at least the forking parent's
high-water mark (Linux records the old address space's peak at exec), i.e. this script's.
--corpus FILE [FILE ...] replaces the SQuAD text with your own (NVIDIA format: one
sentence per line, blank line between documents); sizes are prefixes of their concatenation,
so text that never repeats shows speed and memory where most words are new.
Side by side, in the same run: `tokenizers` encode_batch alone on the first size, so the
ratio stays meaningful on a busy machine; with --nvidia_bert_dir, NVIDIA's pipeline too
(bench/nvidia_reference.py), interleaved with ours on the first size: the speed ratio per core.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's bertspeed
SHARED = Path(os.environ.get("BERTSPEED_SHARED_DATA", ROOT.parent / "shared" / "data"))
SQUAD_TRAIN = SHARED / "squad" / "v1.1" / "train-v1.1.json.gz"
VOCAB = SHARED / "vocab" / "bert-base-uncased-vocab.txt"


def split_articles(work: Path) -> list[str]:
    """SQuAD train articles as NVIDIA-format documents (one sentence per line), cached."""
    cache = work / "squad_train_sentences.txt"
    if not cache.exists():
        from bertspeed.data_prep import sentences
        data = json.load(gzip.open(SQUAD_TRAIN, "rt", encoding="utf-8"))["data"]
        articles = ["\n".join(p["context"] for p in a["paragraphs"]) for a in data]
        splitter = sentences.sentence_splitter(str(work / "punkt.json"), lambda: iter(articles))
        docs = ["\n".join(sentences.split_document(splitter, a)) for a in articles]
        tmp = cache.with_suffix(".tmp")
        tmp.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        tmp.rename(cache)
    return cache.read_text(encoding="utf-8").split("\n\n")


def own_documents(files: list[str]) -> list[str]:
    return [d for f in files for d in Path(f).read_text(encoding="utf-8").split("\n\n") if d.strip()]


def corpus_of(docs: list[str], megabytes: float, path: Path) -> int:
    """Write whole documents (cycling) until the size is reached; returns bytes."""
    target, size, i = int(megabytes * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            doc = docs[i % len(docs)].strip() + "\n\n"
            f.write(doc)
            size += len(doc.encode())
            i += 1
    return size


# Runs the module as `python -m` would and writes the process's peak RSS (VmHWM, kB) to argv[1] at exit.
PEAK_RSS_LAUNCHER = """import atexit, runpy, sys
out = sys.argv.pop(1)
def write_peak():
    with open(out, "w") as f:
        f.write(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
atexit.register(write_peak)
runpy.run_module("bertspeed.data_prep.create_pretraining_data", run_name="__main__", alter_sys=True)
"""


def run_pipeline(corpus: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    peak_file = out.with_suffix(".peak_kb")
    cmd = [sys.executable, "-c", PEAK_RSS_LAUNCHER, str(peak_file), "--input", str(corpus),
           "--vocab_file", str(VOCAB), "--output_dir", str(out), "--max_seq_length", "128",
           "--max_predictions_per_seq", "20", "--dupe_factor", "1", "--num_shards", "8", "--workers", "1"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{proc.stderr.read().decode()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": int(peak_file.read_text()) / 1024,
            "instances": manifest["num_instances"]}


def run_nvidia(corpus: Path, bert_dir: str, out: Path) -> dict:
    """NVIDIA's pipeline (bench/nvidia_reference.py) on the same corpus and settings, in a fresh process."""
    cmd = [sys.executable, str(ROOT / "bench" / "nvidia_reference.py"), "--bert_dir", bert_dir, "--input_file",
           str(corpus), "--vocab_file", str(VOCAB), "--output_file", str(out), "--max_seq_length", "128",
           "--max_predictions_per_seq", "20", "--dupe_factor", "1"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"NVIDIA reference failed:\n{proc.stderr.read().decode()[-2000:]}")
    out.unlink(missing_ok=True)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def compare_nvidia(corpus: Path, bert_dir: str, work: Path, rounds: int) -> None:
    """Ours and NVIDIA's, interleaved (ours, NVIDIA, ours, ...), on the same corpus: speed ratios per core."""
    mb = corpus.stat().st_size / 1e6
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(run_pipeline(corpus, work / "out_vs_nvidia"))
        theirs.append(run_nvidia(corpus, bert_dir, work / "nvidia.hdf5"))
    for key, label in (("cpu_s", "MB per CPU-second"), ("wall_s", "MB/s per core (wall)")):
        a, b = (sum(r[key] for r in rows) / rounds for rows in (ours, theirs))
        print(f"vs NVIDIA on {mb:.1f} MB, {rounds} interleaved rounds: ours {mb / a:.2f}, NVIDIA {mb / b:.2f} {label}; "
              f"speed ratio {b / a:.1f}x")


def tokenizers_alone(corpus: Path) -> float:
    """Seconds for `tokenizers` encode_batch over the corpus lines (the reference tokenizer alone)."""
    from bertspeed.model.tokenizer import BertTokenizer
    tok = BertTokenizer.from_vocab_file(VOCAB)
    lines = [line for line in corpus.read_text(encoding="utf-8").split("\n") if line]
    start = time.perf_counter()
    for i in range(0, len(lines), 4096):
        tok.token_ids(lines[i:i + 4096])
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes_mb", type=float, nargs="+", default=[10, 50])
    p.add_argument("--work_dir", default="/tmp/bertspeed-bench-data-prep")
    p.add_argument("--corpus", nargs="+", help="your own pre-split text instead of SQuAD's contexts")
    p.add_argument("--nvidia_bert_dir", help="folder holding bert/ of the bert-tensorflow 1.0.4 wheel: also run "
                                             "NVIDIA's pipeline (bench/nvidia_reference.py) on the first size")
    p.add_argument("--nvidia_rounds", type=int, default=2, help="interleaved rounds of ours vs NVIDIA's")
    args = p.parse_args()
    if not VOCAB.exists() or not (args.corpus or SQUAD_TRAIN.exists()):
        raise SystemExit(f"needs {VOCAB} and --corpus or {SQUAD_TRAIN}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    docs = own_documents(args.corpus) if args.corpus else split_articles(work)
    source = "own" if args.corpus else "squad"
    from bertspeed.training.hardware import host_label
    print(f"host: {host_label()} (the pipeline runs one worker)")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall figures assume an idle machine; "
          "MB per CPU-second is less sensitive to other load)")
    rows = []
    for mb in args.sizes_mb:
        corpus = work / f"corpus_{source}_{mb:g}MB.txt"
        size = corpus_of(docs, mb, corpus)
        r = run_pipeline(corpus, work / f"out_{mb:g}MB")
        r.update(size_mb=size / 1e6, mb_per_s_wall=size / 1e6 / r["wall_s"], mb_per_cpu_s=size / 1e6 / r["cpu_s"])
        rows.append(r)
        print(f"{size / 1e6:6.1f} MB: {r['instances']} instances, wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, "
              f"{r['mb_per_s_wall']:.2f} MB/s per core (wall), {r['mb_per_cpu_s']:.2f} MB per CPU-second, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    first = work / f"corpus_{source}_{args.sizes_mb[0]:g}MB.txt"
    ref = tokenizers_alone(first)
    mb = first.stat().st_size / 1e6
    print(f"side by side on {mb:.1f} MB: tokenizers encode_batch alone {mb / ref:.2f} MB/s; "
          f"whole pipeline / encode_batch speed = {rows[0]['mb_per_s_wall'] / (mb / ref):.2f}x")
    if args.nvidia_bert_dir:
        compare_nvidia(first, args.nvidia_bert_dir, work, args.nvidia_rounds)
    if len(rows) > 1:
        print(f"peak RSS {rows[-1]['size_mb']:.0f} MB vs {rows[0]['size_mb']:.0f} MB: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}x")


if __name__ == "__main__":
    main()
