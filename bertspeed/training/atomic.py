"""Files that appear whole or not at all: written under a temporary name in the same folder, then
renamed into place; a failure part-way leaves no file behind."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def open_atomic(path, mode: str = "w", encoding: str = "utf-8"):
    """A file object writing to `path`: renamed into place when the block ends, removed if it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path, data: bytes) -> Path:
    with open_atomic(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> Path:
    with open_atomic(path, "w", encoding) as f:
        f.write(text)
    return Path(path)


def write_lines_atomic(path, lines, encoding: str = "utf-8") -> Path:
    """Each item of `lines` plus a newline, streamed."""
    with open_atomic(path, "w", encoding) as f:
        for line in lines:
            f.write(line + "\n")
    return Path(path)


def write_json_atomic(path, obj, indent: int | None = 2, **dumps_options) -> Path:
    """json.dumps(obj) + newline into `path`, atomically; `dumps_options` as for json.dumps."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_options) + "\n")
