"""Test-only fault injection for the kill-and-resume tests (tests/test_finetune_resume.py): with
BERTSPEED_FAULT_KILL_AT=POINT@STEP in the environment, the process SIGKILLs itself when it reaches
`kill_point(POINT, STEP)`. Inert unless set."""
from __future__ import annotations

import os
import signal

FAULT_KILL_AT = "BERTSPEED_FAULT_KILL_AT"


def kill_point(point: str, step: int) -> None:
    if os.environ.get(FAULT_KILL_AT) == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
