"""data_prep/create_datasets.sh: --help, and the whole pipeline from a file:// URL (an archive of
books, downloaded with curl and unpacked) plus a local file, in paths with spaces; rerun is a no-op."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_prep" / "create_datasets.sh"


def run_script(*args, cwd=ROOT):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_help():
    result = run_script("--help")
    assert result.returncode == 0 and "Usage:" in result.stdout and "--input" in result.stdout


def test_missing_arguments_and_input():
    assert "--output is required" in run_script("--input", "x").stderr
    bad = run_script("--output", "/tmp/never used", "--input", "/no/such/file.txt")
    assert bad.returncode == 2 and "input not found: /no/such/file.txt" in bad.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_whole_pipeline_with_spaces_and_file_url(tmp_path, squad_dev):
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"]
    books = [" ".join(p["context"] for p in a["paragraphs"]) for a in data[:6]]
    src = tmp_path / "my sources"
    src.mkdir()
    with tarfile.open(src / "books.tar.gz", "w:gz") as tar:
        for i, text in enumerate(books[:4]):
            blob = text.encode()
            info = tarfile.TarInfo(f"books/book {i}.txt")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (src / "more text.txt").write_text("\n\n".join(books[4:]), encoding="utf-8")
    out = tmp_path / "out dir"
    args = ["--output", out, "--input", (src / "books.tar.gz").as_uri(), "--input", src / "more text.txt",
            "--vocab_size", "3000", "--phases", "64:10 128:20", "--num_shards", "2", "--num_text_shards", "2",
            "--workers", "1"]
    result = run_script(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "download" / "books.tar.gz.d" / "books" / "book 3.txt").exists()
    extract = json.loads((out / "text" / "extract.json").read_text())
    assert extract["documents"] == 6
    for phase in ("seq_len_64_max_pred_10", "seq_len_128_max_pred_20"):
        manifest = json.loads((out / "hdf5" / phase / "manifest.json").read_text())
        assert manifest["num_shards"] == 2 and manifest["num_instances"] > 50
    stamp = (out / "hdf5" / "seq_len_64_max_pred_10" / "training_00000.hdf5").stat().st_mtime_ns
    again = run_script(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "hdf5" / "seq_len_64_max_pred_10" / "training_00000.hdf5").stat().st_mtime_ns == stamp
