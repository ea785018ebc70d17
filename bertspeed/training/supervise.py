"""A process that outlives the ranks it supervises: run a launcher command under it where the signal
goes to one process only and that process must stay until the job has checkpointed (a container's
PID 1, a wrapper whose own exit would tear the job down).

    bertspeed supervise [--grace_seconds S] -- deepspeed --num_gpus 8 pretrain/run_pretraining.py ...

On SIGTERM/SIGINT it sends SIGTERM to the launcher process only (DeepSpeed's runner then exits and
the ranks, which watch it, stop at the next step with a checkpoint: bertspeed.training.signals; the
per-node launcher stays, so its 30 s SIGKILL never starts). It is a child subreaper: the orphaned
ranks become its children, and it exits only when every one of them has, with 143 if any exited 143
or it was signalled and all exited cleanly, else the launcher's code. Ranks still running
--grace_seconds after the signal are SIGKILLed (0: never).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

from bertspeed.training.signals import EXIT_SIGNALLED

PR_SET_CHILD_SUBREAPER = 36


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bertspeed supervise", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grace_seconds", type=float, default=0.0,
                        help="SIGKILL what still runs this long after the signal (0: wait for the checkpoint)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the launcher command, after --")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("no command given: bertspeed supervise [--grace_seconds S] -- deepspeed ...")
    if args.grace_seconds < 0:
        parser.error(f"--grace_seconds must be >= 0, got {args.grace_seconds}")
    return args


def reap_all(launcher: subprocess.Popen, signalled: dict, grace: float) -> tuple[int | None, set[int]]:
    """Wait for every descendant (ours as subreaper); returns (launcher's code, codes of the others)."""
    launcher_code, others = None, set()
    while True:
        if signalled and grace and time.monotonic() - signalled["at"] > grace:
            try:
                os.killpg(launcher.pid, signal.SIGKILL)
            except ProcessLookupError:  # the group is gone; its zombies are reaped below
                pass
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return launcher_code, others
        if pid == 0:
            time.sleep(0.1)
            continue
        code = os.waitstatus_to_exitcode(status)
        if pid == launcher.pid:
            launcher_code = code
            launcher.returncode = code
        else:
            others.add(code)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        print("bertspeed supervise: cannot become a child subreaper (Linux only)", file=sys.stderr)
        return 2
    try:
        launcher = subprocess.Popen(args.command, process_group=0)  # its own group, for the grace-period SIGKILL
    except OSError as e:
        print(f"bertspeed supervise: cannot start {args.command[0]!r}: {e}", file=sys.stderr)
        return 2
    signalled = {}

    def forward(signum, frame):
        if not signalled:
            signalled["at"] = time.monotonic()
            print(f"bertspeed supervise: {signal.Signals(signum).name}: stopping the job at its next step",
                  file=sys.stderr, flush=True)
            if launcher.returncode is None:
                launcher.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    launcher_code, others = reap_all(launcher, signalled, args.grace_seconds)
    if EXIT_SIGNALLED in others or (signalled and launcher_code in (0, -signal.SIGTERM) and others <= {0}):
        return EXIT_SIGNALLED
    return launcher_code if launcher_code and launcher_code > 0 else (1 if launcher_code else 0)


if __name__ == "__main__":
    sys.exit(main())
