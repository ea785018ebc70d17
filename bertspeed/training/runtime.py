"""Where the run executes: one plain process, or a rank of a DeepSpeed / torch.distributed job."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_runtime(deepspeed_config: str | None, local_rank: int = -1) -> Runtime:
    """DeepSpeed when a config is given or the job has several ranks (launched by `deepspeed` or
    torchrun); otherwise plain PyTorch in this process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_deepspeed = deepspeed_config is not None or world_size > 1
    if local_rank < 0:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not use_deepspeed:
        return Runtime(0, 1, 0, device, False)
    # One process without the launcher: DeepSpeed still wants the rendezvous variables.
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": str(local_rank),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": None}
    for name, value in defaults.items():
        if name not in os.environ:
            os.environ[name] = value if value is not None else str(_free_port())
    import deepspeed
    # The shared-memory all-reduce op only serves inference and costs a minute of JIT compile on CPU.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, device, True)
