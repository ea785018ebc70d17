"""Reliability hooks of the training loop: a graceful stop on SIGTERM/SIGINT agreed by all ranks,
and a stop after too many consecutive bad (skipped or non-finite) steps."""
from __future__ import annotations

import math
import signal

import torch
import torch.distributed as dist

EXIT_SIGNALLED = 143  # 128 + SIGTERM: stopped on request after writing a checkpoint
EXIT_DIVERGED = 3  # too many bad steps in a row; OUT/latest is the last good checkpoint


class StopOnSignal:
    """SIGTERM or SIGINT asks for a checkpoint and a clean exit at the next step boundary.
    Repeated SIGTERMs are absorbed (a scheduler signals the process group and the deepspeed
    launcher forwards the signal again; its SIGKILL follows 30 s later); a second SIGINT
    (Ctrl-C twice) interrupts at once."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.flag = False
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def agreed(self, device) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce per step, so all
        ranks stop at the same step and write the same checkpoint)."""
        flag = torch.tensor([1.0 if self.flag else 0.0], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
