"""How a command run as a program ends (torch-free, so `bertspeed --help` never loads torch)."""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

_joined_process_group = False


def mark_joined_process_group() -> None:
    """Called once this process has joined a torch.distributed process group (training.distributed)."""
    global _joined_process_group
    _joined_process_group = True


def exit_process(code: int | None) -> NoReturn:
    """The end of a command run as a program: sys.exit(code); but a process that joined a process group
    leaves by os._exit once its output is flushed. Interpreter teardown destroys the process-group objects
    DeepSpeed still holds, and there gloo aborted ranks that had finished and left the group ("terminate
    called without an active exception", exit -6; pytorch/pytorch#190489): about one CI run in three. By
    then every file is written and closed (metrics are flushed per record)."""
    code = int(code or 0)
    if not _joined_process_group:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(code)
