"""pretrain.metrics.MetricsWriter: resume truncation survives a torn last line."""
import json

import pytest

from bertspeed.training.metrics import MetricsWriter


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_truncate_after_drops_later_steps_and_a_torn_last_line(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True)
    for step in (1, 2, 3):
        writer.write(step, {"train/loss": 1.0 / step})
    writer._file.write('{"step": 4, "train/lo')  # killed mid-write
    writer._file.flush()
    writer.truncate_after(2)
    writer.write(3, {"train/loss": 0.5})
    writer._file.close()
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_truncate_after_refuses_a_corrupt_line_in_the_middle(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    writer = MetricsWriter(tmp_path, enabled=True)
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        writer.truncate_after(1)
