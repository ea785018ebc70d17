"""Process-group setup shared by the entry points (DeepSpeed on CPU or GPU, launcher or not)."""
from __future__ import annotations

import datetime
import os
import socket


def single_process_env() -> None:
    """Plain `python ...` without the launcher: the environment the launcher would have set."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))


def init_distributed(timeout_s: float) -> tuple[int, int]:
    """deepspeed.init_distributed with a bounded collective timeout; returns (rank, world size).
    A rank that dies leaves the others failing after `timeout_s` instead of hanging forever."""
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # inference-only op, 60 s JIT build
    single_process_env()
    deepspeed.init_distributed(timeout=datetime.timedelta(seconds=timeout_s), verbose=False)
    return dist.get_rank(), dist.get_world_size()
