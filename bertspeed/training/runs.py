"""The run-folder format, in one place: OUT/global_stepN/ checkpoint folders (DeepSpeed's tag naming)
and OUT/latest, a one-line file naming the newest complete one. `latest` is replaced by a temporary
file and a rename, only once a checkpoint is complete."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from bertspeed.training.atomic import write_text_atomic

LATEST = "latest"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def is_run_dir(path) -> bool:
    return (Path(path) / LATEST).is_file()


def read_latest(run_dir) -> str | None:
    """The tag `latest` names (None without one); a tag that is not a folder is an error naming both."""
    path = Path(run_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (Path(run_dir) / tag).is_dir():
        raise FileNotFoundError(f"{path} names {tag!r}, which is not a folder in {run_dir}")
    return tag


def write_latest(run_dir, tag: str) -> None:
    write_text_atomic(Path(run_dir) / LATEST, tag + "\n")


def list_tags(run_dir) -> list[tuple[int, str]]:
    """(step, tag) of every checkpoint folder, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted((int(m.group(1)), p.name) for p in run_dir.iterdir()
                  if p.is_dir() and (m := TAG_PATTERN.match(p.name)))


def step_of(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if match is None:
        raise ValueError(f"{tag!r} is not a checkpoint tag (global_stepN)")
    return int(match.group(1))


def prune(run_dir, keep: int | None) -> list[str]:
    """Delete all but the newest `keep` checkpoints (None: keep all); never the one `latest` names."""
    if keep is None:
        return []
    latest, tags = read_latest(run_dir), list_tags(run_dir)
    doomed = [tag for _, tag in tags[:max(0, len(tags) - keep)] if tag != latest]
    for tag in doomed:
        shutil.rmtree(Path(run_dir) / tag, ignore_errors=True)
    return doomed


def remove_checkpoints(run_dir, after_step: int = -1) -> list[str]:
    """Delete the checkpoint folders of steps after `after_step` (-1: every one, and `latest`):
    what a resumed run will write again, or what --overwrite_output_dir replaces."""
    removed = [tag for step, tag in list_tags(run_dir) if step > after_step]
    for tag in removed:
        shutil.rmtree(Path(run_dir) / tag, ignore_errors=True)
    if after_step < 0:
        (Path(run_dir) / LATEST).unlink(missing_ok=True)
    return removed
