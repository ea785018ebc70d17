"""Write a file so that it is whole or absent: a temporary name, then a rename."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path, obj, indent: int = 2, **dumps_options) -> Path:
    """json.dumps(obj) + newline into `path`, atomically; `dumps_options` as for json.dumps."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=indent, **dumps_options) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
