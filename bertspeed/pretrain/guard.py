"""Reliability hooks of the training loop: a stop after too many consecutive bad (skipped or
non-finite) steps. The graceful stop on SIGTERM/SIGINT (StopOnSignal, EXIT_SIGNALLED) lives in
bertspeed.training.signals, shared with finetuning, and is re-exported here."""
from __future__ import annotations

import math

from bertspeed.training.signals import EXIT_SIGNALLED, StopOnSignal  # noqa: F401 (moved to bertspeed.training)

EXIT_DIVERGED = 3  # too many bad steps in a row; OUT/latest is the last good checkpoint


class TrainingDiverged(RuntimeError):
    pass


class BadStepCounter:
    """Counts consecutive steps whose update was skipped (fp16 overflow) or whose loss is not
    finite; raises TrainingDiverged after `limit` of them (0: never), or at once when an fp16 step
    overflows with the loss scale already at its floor (halving it further is impossible, so the
    run would only skip from then on). Inputs are identical on every rank (all-reduced loss,
    DeepSpeed's skipped-step count and loss scale), so all ranks stop together."""

    def __init__(self, limit: int, skipped: int = 0):
        self.limit, self.run, self._skipped = limit, 0, skipped
        self.all_skipped = True  # every bad step of the current run was skipped: weights untouched

    def update(self, step: int, loss: float, skipped_total: int, loss_scale: float | None = None,
               scale_floor: float | None = None) -> None:
        skipped = skipped_total > self._skipped
        self._skipped = skipped_total
        if skipped or not math.isfinite(loss):
            self.all_skipped = self.all_skipped and skipped
            self.run += 1
        else:
            self.run, self.all_skipped = 0, True
        if skipped and loss_scale is not None and scale_floor is not None and loss_scale <= scale_floor:
            raise TrainingDiverged(f"step {step} overflowed and the fp16 loss scale is at its floor "
                                   f"({loss_scale:g}, fp16.min_loss_scale)")
        if self.limit and self.run >= self.limit:
            raise TrainingDiverged(f"{self.run} bad steps in a row (skipped for overflow or non-finite loss) "
                                   f"up to step {step}")
