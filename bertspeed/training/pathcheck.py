"""Up-front checks of the local paths a command takes, so that a wrong one ends in one line naming the
flag and the path (and exit 2 from the caller) before anything is read or written:

    check_input_file("--vocab_file", path, text=True)   # exists, a file, readable, (text: not binary)
    check_input_dir("--input_dir", path)                # exists, a folder
    check_output_dir("--output_dir", path)              # a folder or nothing yet, somewhere writable
    check_output_file("--output", path)                 # a file or nothing yet, in a writable folder
    check_model_path("--model_dir", path)               # a model/run folder, TF prefix or checkpoint file

Each raises PathError (a ValueError). s3:// URIs are left to the storage layer.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

SNIFF_BYTES = 8192  # read from each input file to tell text from binary
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".index")


class PathError(ValueError):
    pass


def is_remote(path) -> bool:
    return str(path).startswith("s3://")


def check_input_file(flag: str, path, text: bool = False) -> Path:
    path = Path(path)
    if not path.exists():
        raise PathError(f"{flag} {path}: does not exist")
    if path.is_dir():
        raise PathError(f"{flag} {path}: is a folder, expected a file")
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise PathError(f"{flag} {path}: cannot be read ({e.strerror})") from None
    if text:
        check_text(flag, path, head)
    return path


def check_text(flag: str, path, head: bytes) -> None:
    """Text means UTF-8 without NUL bytes (a cut multi-byte character at the end of `head` is fine)."""
    if b"\0" in head:
        raise PathError(f"{flag} {path}: a binary file, expected UTF-8 text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:
            raise PathError(f"{flag} {path}: not valid UTF-8 text (byte {e.start} is 0x{head[e.start]:02x})") from None


def check_input_dir(flag: str, path) -> Path:
    path = Path(path)
    if not path.exists():
        raise PathError(f"{flag} {path}: does not exist")
    if not path.is_dir():
        raise PathError(f"{flag} {path}: is a file, expected a folder")
    return path


def check_output_dir(flag: str, path) -> Path | None:
    if is_remote(path):
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{flag} {path}: is a file, expected a folder")
    check_writable(flag, path)
    return path


def check_output_file(flag: str, path) -> Path | None:
    if is_remote(path):
        return None
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{flag} {path}: is a folder, expected a file")
    check_writable(flag, path.parent)
    return path


def check_writable(flag: str, path: Path) -> None:
    """`path` (a folder, existing or to be created) can be written: its nearest existing ancestor is a
    folder where a file can be created (probed with a temporary folder, removed at once)."""
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PathError(f"{flag} {path}: {ancestor} is a file, expected a folder")
    try:
        tempfile.TemporaryDirectory(dir=ancestor, prefix=".bertspeed-probe-").cleanup()
    except OSError as e:
        raise PathError(f"{flag} {path}: cannot write in {ancestor} ({e.strerror})") from None
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {path}: cannot write in {ancestor}")


def check_model_path(flag: str, path) -> None:
    """A model folder or run folder, a TF checkpoint prefix, or a checkpoint file such as NVIDIA's .pt."""
    p = Path(path)
    if p.is_dir() or (p.is_file() and p.suffix in CHECKPOINT_SUFFIXES) or Path(f"{path}.index").is_file():
        return
    if p.is_file():
        raise PathError(f"{flag} {path}: is a file, expected a model folder, a run folder, a TF checkpoint or a "
                        f"checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
    raise PathError(f"{flag} {path}: does not exist")
