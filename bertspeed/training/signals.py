"""A graceful stop on SIGTERM/SIGINT agreed by all ranks (preemption), shared by pretraining and
finetuning: the loop asks `agreed()` once per optimizer step, writes a checkpoint of that step and
ends with exit code EXIT_SIGNALLED."""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

EXIT_SIGNALLED = 143  # 128 + SIGTERM: stopped on request after writing a checkpoint


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


class StoppedBySignal(Exception):
    """Raised after the checkpoint of a signalled stop is written; the command exits EXIT_SIGNALLED."""
