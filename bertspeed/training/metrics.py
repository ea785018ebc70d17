"""Run metrics: OUT/metrics.jsonl, one strict-JSON object per line (`step` plus namespaced keys such
as `train/loss`, `optim/lr`, `perf/seq_per_s`, `eval/...`), optionally mirrored to TensorBoard. Only
the main rank writes. Non-finite numbers and missing values are written as null (JSON has no NaN)."""
from __future__ import annotations

import json
import math
import numbers
import sys
import types
from pathlib import Path

from bertspeed.training.atomic import write_lines_atomic

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"  # event files, same scalar names and steps as metrics.jsonl


def json_value(value):
    """A number as JSON can hold it: ints and finite floats as they are, anything else numeric that
    is not finite (or None) as null; 0-d tensors and NumPy scalars become Python numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def summary_writer_class():
    """torch's TensorBoard SummaryWriter, kept from importing TensorFlow: where TensorFlow is installed,
    tensorboard loads all of it (about 7 s per process, and its log noise) for file I/O the event files
    do not need, unless its `tensorboard.compat.notf` marker module exists."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard needs the tensorboard package (pip install bertspeed[tensorboard])") from None
    return SummaryWriter


class MetricsWriter:
    def __init__(self, output_dir, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self.tensorboard_dir = Path(output_dir) / TENSORBOARD_DIR
        self.records: int | None = None  # records in the file, known from the first truncation on
        self._file = None
        self._tb = None
        if not enabled:
            return
        if tensorboard:
            SummaryWriter = summary_writer_class()
            self._summary_writer = SummaryWriter
            self._tb = SummaryWriter(str(self.tensorboard_dir))
        self._file = open(self.path, "a", encoding="utf-8")

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after `step`: 0 for a fresh run, the checkpoint's step on resume
        (those steps will be redone)."""
        if self.enabled:
            self._rewrite([line for line in self._complete_lines() if json.loads(line).get("step", 0) <= step], step)

    def truncate_to(self, records: int, step: int) -> None:
        """Keep the first `records` records (a resumed run: those written before its checkpoint of
        `step`, which may include lines of that step), and hide TensorBoard events after `step`."""
        if self.enabled:
            self._rewrite(self._complete_lines()[:records], step)

    def _rewrite(self, kept: list[str], step: int) -> None:
        self._file.close()
        write_lines_atomic(self.path, kept)
        self.records = len(kept)
        self._file = open(self.path, "a", encoding="utf-8")
        if self._tb is not None:  # TensorBoard hides an earlier attempt's events from step + 1 on
            self._tb.close()
            self._tb = self._summary_writer(str(self.tensorboard_dir), purge_step=step + 1)

    def _complete_lines(self) -> list[str]:
        """The file's records; a torn last line (the process was killed mid-write) is dropped."""
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    return lines[:-1]
                raise ValueError(f"{self.path}:{number}: not a JSON record") from None
        return lines

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{key: json_value(value) for key, value in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self.records is not None:
            self.records += 1
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def flush(self) -> None:
        """Make everything written so far durable against a kill (TensorBoard buffers events): a
        checkpoint calls it, so a resume finds every record up to its step in both outputs."""
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def throughput(global_batch: int, seq_len: int, seconds: float, flops_per_token: float,
               peak_tflops: float, world_size: int) -> dict:
    seq_per_s = global_batch / seconds
    tokens_per_s = seq_per_s * seq_len
    out = {"perf/seq_per_s": seq_per_s, "perf/tokens_per_s": tokens_per_s, "perf/step_time_s": seconds}
    if peak_tflops > 0:
        out["perf/mfu"] = flops_per_token * tokens_per_s / (peak_tflops * 1e12 * world_size)
    return out
