"""A graceful stop on SIGTERM/SIGINT agreed by all ranks (preemption), shared by pretraining and
finetuning: the loop asks `agreed()` once per optimizer step, writes a checkpoint of that step and
ends with exit code EXIT_SIGNALLED.

However the signal arrives, the ranks stop at the same step with a checkpoint:
- to every process of the job (a scheduler signalling the process group): each rank's handler;
- to one rank: the all-reduce in `agreed()` carries it to the others;
- to the launcher alone (`deepspeed` as a container's PID 1 or behind a wrapper script), or the
  launcher dies: DeepSpeed's `deepspeed` runner does not forward SIGTERM when it launches locally,
  so a rank watches its launcher processes (LauncherWatch) and treats their exit like SIGTERM. A
  rank never outlives its launcher.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

EXIT_SIGNALLED = 143  # 128 + SIGTERM: stopped on request after writing a checkpoint
# Processes that start ranks: DeepSpeed's runner (`deepspeed`) and per-node launcher, torchrun.
LAUNCHER_MODULES = ("deepspeed.launcher.launch", "deepspeed.launcher.runner", "torch.distributed.run",
                    "torch.distributed.launch")
LAUNCHER_COMMANDS = ("deepspeed", "ds", "torchrun")
PR_SET_PDEATHSIG = 1


def _process(pid: int) -> tuple[int, list[str]] | None:
    """(parent pid, command line) of a live process, from /proc; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and ")"
    return ppid, [a.decode(errors="replace") for a in cmdline if a]


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat; with the pid, its identity),
    None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])  # a zombie has exited
    except (OSError, IndexError, ValueError):
        return None


def is_launcher(cmdline: list[str]) -> bool:
    return any(a in LAUNCHER_MODULES for a in cmdline) or any(Path(a).name in LAUNCHER_COMMANDS
                                                                for a in cmdline[:2])


def launcher_ancestors() -> list[int]:
    """The pids of the launchers above this process, nearest first: the unbroken chain of parents
    that are launchers (rank <- deepspeed.launcher.launch <- deepspeed), empty without a launcher."""
    chain, pid = [], os.getppid()
    while pid > 1:
        info = _process(pid)
        if info is None or not is_launcher(info[1]):
            break
        chain.append(pid)
        pid = info[0]
    return chain


class LauncherWatch:
    """Notices the exit of this rank's launcher processes (pidfds: immune to pid reuse). Also asks
    the kernel for SIGTERM when the parent dies (PR_SET_PDEATHSIG), so a rank outside the training
    loop (starting up, or stuck) ends with its launcher too. Linux only; elsewhere it watches nothing."""

    def __init__(self, ancestors: list[int] | None = None, deathsig: bool = True):
        self.pids, self._poll = [], None
        if not hasattr(os, "pidfd_open") or not sys.platform.startswith("linux"):
            return
        ancestors = launcher_ancestors() if ancestors is None else ancestors
        if not ancestors:
            return
        self._poll, self._fds, self._started = select.poll(), {}, {}
        for pid in ancestors:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:  # already gone: reported by the first check
                self._started[pid] = None
                continue
            except OSError:  # no pidfds (kernel < 5.3, seccomp): fall back to /proc and the start time
                self._started[pid] = _start_time(pid)
                continue
            self._fds[fd] = pid
            self._poll.register(fd, select.POLLIN)
        self.pids = ancestors
        if deathsig:
            try:
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            except (OSError, AttributeError):
                pass
            if os.getppid() != ancestors[0]:  # the parent died before the request took effect
                os.kill(os.getpid(), signal.SIGTERM)

    def gone(self) -> list[int]:
        """The watched launchers that have exited (empty while all run)."""
        if self._poll is None:
            return []
        exited = [self._fds[fd] for fd, _ in self._poll.poll(0)]
        return exited + [pid for pid, started in self._started.items() if started is None or _start_time(pid) != started]

    def close(self) -> None:
        for fd in getattr(self, "_fds", {}):
            os.close(fd)
        self._poll, self._fds = None, {}


class StopOnSignal:
    """SIGTERM or SIGINT (or the launcher's exit, see LauncherWatch) asks for a checkpoint and a
    clean exit at the next step boundary. Repeated SIGTERMs are absorbed (a scheduler signals the
    process group and the deepspeed launcher forwards the signal again; its SIGKILL follows 30 s
    later), also after `restore()` once a stop was requested, so the exit after the checkpoint is
    not cut short; a second SIGINT (Ctrl-C twice) interrupts at once."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), watch_launcher: bool = True):
        self.flag, self.reason = False, None
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        self._launchers = LauncherWatch() if watch_launcher and self._previous else None

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.flag:
            raise KeyboardInterrupt
        self.flag = True
        self.reason = self.reason or signal.Signals(signum).name

    def _check_launchers(self) -> None:
        gone = self._launchers.gone() if self._launchers is not None and not self.flag else []
        if gone:
            self.flag, self.reason = True, f"launcher process {gone[0]} exited"
            print(f"rank pid {os.getpid()}: {self.reason}; stopping with a checkpoint as on SIGTERM",
                  file=sys.stderr, flush=True)

    def agreed(self, device) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce per step, so all
        ranks stop at the same step and write the same checkpoint)."""
        self._check_launchers()
        flag = torch.tensor([1.0 if self.flag else 0.0], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = bool(flag.item())  # the reduced value, never self.flag: a signal landing after the
        if agreed and not self.flag:  # all-reduce must not make this rank stop a step before the others
            self.flag, self.reason = True, "another rank was signalled"
        return agreed

    def restore(self):
        if self._launchers is not None:
            self._launchers.close()
        if self.flag:  # stopping: keep absorbing SIGTERM until the process exits
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StoppedBySignal(Exception):
    """Raised after the checkpoint of a signalled stop is written; the command exits EXIT_SIGNALLED."""
