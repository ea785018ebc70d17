"""Test-only fault injection for the kill-and-resume tests (tests/test_finetune_resume.py): with
BERTSPEED_FAULT_KILL_AT=POINT@STEP in the environment, the process SIGKILLs itself when it reaches
`kill_point(POINT, STEP)`; with POINT@STEP:TERM it sends itself SIGTERM there instead (a scheduler's
preemption notice, at a known moment). Inert unless set."""
from __future__ import annotations

import os
import signal

FAULT_KILL_AT = "BERTSPEED_FAULT_KILL_AT"


def kill_point(point: str, step: int) -> None:
    wanted = os.environ.get(FAULT_KILL_AT)
    if wanted == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{point}@{step}:TERM":
        os.kill(os.getpid(), signal.SIGTERM)
