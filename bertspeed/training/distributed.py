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
    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # inference-only op, 60 s JIT build
    single_process_env()
    timeout = datetime.timedelta(seconds=timeout_s)
    # DeepSpeed creates its ZeRO groups with torch's new_group(ranks) and no timeout, which torch
    # fills from these module defaults (30 min), not from the world group: without this a hung rank
    # stalls the others for 30 min whatever --dist_timeout says (tests/test_faults_ranks.py).
    distributed_c10d.default_pg_timeout = timeout
    if hasattr(distributed_c10d, "default_pg_nccl_timeout"):
        distributed_c10d.default_pg_nccl_timeout = timeout
    if torch.cuda.is_available():  # before any collective: NCCL needs each rank on its own GPU
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(timeout=timeout, verbose=False)
    return dist.get_rank(), dist.get_world_size()
