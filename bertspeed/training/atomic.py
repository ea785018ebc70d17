"""Files that appear whole or not at all: write to a temporary name in the same folder, then rename."""
from __future__ import annotations

import json
import os
from pathlib import Path


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path, data: bytes) -> Path:
    path = Path(path)
    tmp = _temporary(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path, obj, indent: int | None = 2, **dumps_options) -> Path:
    """json.dumps(obj) + newline into `path`, atomically; `dumps_options` as for json.dumps."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_options) + "\n")


def write_lines_atomic(path, lines, encoding: str = "utf-8") -> Path:
    """Each item of `lines` plus a newline (for large files: streamed to the temporary file)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "w", encoding=encoding) as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
