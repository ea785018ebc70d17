"""Where a run executes and how its ranks meet: one plain process, or a rank of a DeepSpeed /
torch.distributed job (CPU with gloo or GPU with NCCL, through the launcher or not), with a bounded
collective timeout so a dead or hung rank ends the job instead of stalling it."""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bertspeed.training.cpu_allocator import keep_freed_memory

# exit_process is re-exported: the entry points import it from here
from bertspeed.training.process_exit import exit_process, mark_joined_process_group  # noqa: F401


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
    mark_joined_process_group()
    return dist.get_rank(), dist.get_world_size()


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    use_deepspeed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_dict(self, part: dict) -> dict:
        """Union of every rank's dict (all ranks receive it)."""
        if self.world_size == 1:
            return part
        parts = [None] * self.world_size
        dist.all_gather_object(parts, part)
        merged = {}
        for p in parts:
            merged.update(p)
        return merged

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group before exit: tearing gloo down at interpreter exit can abort
    ("terminate called without an active exception") and fail a finished run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def setup_runtime(deepspeed_config: str | None, timeout_s: float, local_rank: int = -1) -> Runtime:
    """DeepSpeed when a config is given or the job has several ranks (launched by `deepspeed` or
    torchrun); otherwise plain PyTorch in this process. Freed memory stays in the process (cpu_allocator)."""
    keep_freed_memory()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if local_rank < 0:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if deepspeed_config is None and world_size == 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return Runtime(0, 1, 0, device, False)
    rank, world_size = init_distributed(timeout_s)
    return Runtime(rank, world_size, local_rank, device, True)
