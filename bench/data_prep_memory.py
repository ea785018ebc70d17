"""Benchmark: create_pretraining_data's peak RSS across input sizes, on mixed real text and on text that never repeats.

    python bench/data_prep_memory.py --mixed news.txt dict.txt squad.txt ... [--sizes_mb 7 35 100]

Two corpora, each written at every size as a prefix of one stream:
- mixed: the documents of the --mixed files (blank line between documents, one sentence per line) interleaved
  round-robin, so every prefix holds all kinds; when every file is used up the stream starts again (the script
  prints where). The README names the files used (news, encyclopedia, dictionary, parliament speeches in four
  languages, tweets) and how to get them offline.
- generated: text that never repeats: sentences of 4-30 words, each word either a random whole word of the
  vocab or a new pseudo-word of 2-6 random syllables (half each, so about one word in two is one the tokenizer
  has probably never seen), numbers and punctuation; documents of 1-40 sentences; numpy seed 0.
Each size runs the pipeline in a fresh process (bench/data_prep_speed.py's run_pipeline: one worker, 128/20,
dupe factor 1, 8 shards) and reads the child's own peak RSS (VmHWM). Prints each size's peak and the ratio of
every size's peak to the smallest size's; with --nvidia_bert_dir, also NVIDIA's pipeline on the same prefix
right after ours, and the speed ratio per core (CPU-seconds).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_prep_speed import ROOT, VOCAB, run_nvidia, run_pipeline  # noqa: E402

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou", "ai", "ee")]


def mixed_stream(files: list[str]):
    """Documents of the files interleaved round-robin, restarting when all are used up."""
    first = True
    while True:
        streams = [_documents(f) for f in files]
        while streams:
            for s in list(streams):
                doc = next(s, None)
                if doc is None:
                    streams.remove(s)
                else:
                    yield doc
        if first:
            print("mixed: every document used once; the stream repeats from here", flush=True)
            first = False


def _documents(path: str):
    doc: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                doc.append(line)
            elif doc:
                yield "\n".join(doc)
                doc = []
    if doc:
        yield "\n".join(doc)


def generated_stream(vocab_file: Path, seed: int = 0):
    """Documents of random sentences that never repeat (see the module doc)."""
    words = [w for w in vocab_file.read_text(encoding="utf-8").split("\n") if w.isalpha()]
    rng = np.random.default_rng(seed)
    punct = [",", ";", ":", " -", ""]
    while True:
        sentences = []
        for _ in range(int(rng.integers(1, 41))):
            n = int(rng.integers(4, 31))
            kinds = rng.random(n)
            out = []
            for k in kinds:
                if k < 0.5:
                    out.append(words[int(rng.integers(len(words)))])
                elif k < 0.95:
                    out.append("".join(SYLLABLES[i] for i in rng.integers(len(SYLLABLES), size=rng.integers(2, 7))))
                else:
                    out.append(str(int(rng.integers(10 ** 6))) + punct[int(rng.integers(len(punct)))])
            sentences.append(" ".join(out).capitalize() + ".")
        yield "\n".join(sentences)


def write_prefix(stream, megabytes: float, path: Path, state: dict) -> int:
    """Extend `path` (shared prefix across sizes) with documents until it holds `megabytes`; returns bytes."""
    target = int(megabytes * 1e6)
    with open(path, "a", encoding="utf-8") as f:
        while state["bytes"] < target:
            doc = next(stream) + "\n\n"
            f.write(doc)
            state["bytes"] += len(doc.encode())
    return state["bytes"]


def measure(name: str, stream, sizes: list[float], work: Path, nvidia_bert_dir: str | None = None) -> None:
    base = work / f"{name}.txt"
    base.unlink(missing_ok=True)
    state, rows = {"bytes": 0}, []
    for mb in sorted(sizes):
        size = write_prefix(stream, mb, base, state)
        r = run_pipeline(base, work / f"out_{name}_{mb:g}MB")
        rows.append((size / 1e6, r["peak_rss_mb"], r["instances"], size / 1e6 / r["cpu_s"]))
        print(f"{name:9s} {size / 1e6:6.1f} MB: peak RSS {r['peak_rss_mb']:6.1f} MB, {r['instances']} instances, "
              f"{size / 1e6 / r['cpu_s']:.2f} MB per CPU-second", flush=True)
        if nvidia_bert_dir:
            theirs = run_nvidia(base, nvidia_bert_dir, work / "nvidia.hdf5")
            print(f"{name:9s} {size / 1e6:6.1f} MB: NVIDIA {size / 1e6 / theirs['cpu_s']:.2f} MB per CPU-second, "
                  f"right after ours: ours / NVIDIA per core = {theirs['cpu_s'] / r['cpu_s']:.1f}x", flush=True)
    for size, peak, _, _ in rows[1:]:
        print(f"{name:9s} peak RSS {size:.0f} MB / {rows[0][0]:.0f} MB: {peak / rows[0][1]:.3f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mixed", nargs="+", required=True, help="text files (blank line between documents)")
    p.add_argument("--sizes_mb", type=float, nargs="+", default=[7, 35, 100])
    p.add_argument("--work_dir", default="/tmp/bertspeed-bench-data-prep-memory")
    p.add_argument("--only", choices=("mixed", "generated"), help="run one corpus only")
    p.add_argument("--nvidia_bert_dir", help="folder holding bert/ of the bert-tensorflow 1.0.4 wheel: also run "
                   "NVIDIA's pipeline on every size, right after ours (bench/nvidia_reference.py), for the ratio")
    args = p.parse_args()
    for f in args.mixed:
        if not os.path.isfile(f):
            raise SystemExit(f"--mixed {f}: not found")
    if not VOCAB.exists():
        raise SystemExit(f"needs {VOCAB}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    from bertspeed.training.hardware import host_label
    print(f"host: {host_label()} (one worker; checkout {ROOT})")
    if args.only != "generated":
        measure("mixed", mixed_stream(args.mixed), args.sizes_mb, work, args.nvidia_bert_dir)
    if args.only != "mixed":
        measure("generated", generated_stream(VOCAB), args.sizes_mb, work, args.nvidia_bert_dir)


if __name__ == "__main__":
    main()
