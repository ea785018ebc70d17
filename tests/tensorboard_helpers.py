"""TensorBoard event files read back with tensorboard's own EventAccumulator, compared with metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import pytest

from bertspeed.training.metrics import TENSORBOARD_DIR, read_metrics


def tensorboard_matches_metrics(out: Path) -> set[str]:
    """Every numeric metrics.jsonl value is a TensorBoard scalar of the same name and step, and
    nothing else is (events of steps an interrupted attempt redid are purged); returns the names."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    expected: dict[str, list] = {}
    for record in read_metrics(out):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(key, []).append((record["step"], value))
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, values in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in values], key
        assert [v for _, v in got] == pytest.approx([v for _, v in values], rel=1e-6), key
    return set(expected)
