"""MetricsWriter's TensorBoard mirror (pretraining's --tensorboard, finetuning's --report_to tensorboard):
events read back with tensorboard's EventAccumulator equal metrics.jsonl, also after a resume has
dropped the steps it redoes (pretraining truncates by step, finetuning by record count)."""
from __future__ import annotations

from tensorboard_helpers import tensorboard_matches_metrics

from bertspeed.training.metrics import MetricsWriter, read_metrics


def write(out, steps, scale: float, resume=None) -> None:
    writer = MetricsWriter(out, enabled=True, tensorboard=True)
    if resume is None:
        writer.truncate_after(0)
    else:
        resume(writer)
    for step in steps:
        writer.write(step, {"train/loss": scale / step, "optim/lr": 1e-4 * step, "perf/note": "x", "eval/f1": None})
    writer.close()


def test_events_equal_metrics_after_resumes_by_step_and_by_record_count(tmp_path):
    write(tmp_path, range(1, 7), 1.0)
    write(tmp_path, range(4, 9), 2.0, resume=lambda w: w.truncate_after(3))  # pretraining: from step 3
    write(tmp_path, range(6, 10), 3.0, resume=lambda w: w.truncate_to(5, 5))  # finetuning: 5 records, step 5
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5), (5, 0.4), (6, 0.5), (7, 3 / 7), (8, 0.375), (9, 1 / 3)]
    assert tensorboard_matches_metrics(tmp_path) == {"train/loss", "optim/lr"}
