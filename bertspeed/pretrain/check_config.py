"""Check DeepSpeed config files for a target world size before launching a long job.

    python -m bertspeed.pretrain.check_config ds_configs/bert_large_phase1_zero2_fp16.json --world_size 64

Each file is read by DeepSpeed itself (DeepSpeedConfig, with a data-parallel world of the given
size) and by our own checks: batch arithmetic (micro x accumulation x world = global), no
'scheduler' section, a known optimizer, and which LAMB implementation the run would use.
"""
from __future__ import annotations

import argparse
import json
import sys

from bertspeed.pretrain.args import DS_OPTIMIZER_NAMES, read_ds_config, resolve_batch
from bertspeed.training.hardware import ds_config_precision, with_precision
from bertspeed.training.pathcheck import PathError, check_input_file


class _DataParallelWorld:
    """The smallest 'mpu' DeepSpeedConfig accepts: only the data-parallel world size."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def get_data_parallel_world_size(self) -> int:
        return self.world_size


def check(path: str, world_size: int) -> dict:
    from deepspeed.runtime.config import DeepSpeedConfig

    source = f"{path} (world size {world_size})"
    config = read_ds_config(path)
    batch = resolve_batch(config, world_size, source)
    try:
        precision = ds_config_precision(config)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    try:  # an "auto" precision is checked as fp32; the run decides it on its hardware
        ds = DeepSpeedConfig(with_precision(config, precision or "fp32"), mpu=_DataParallelWorld(world_size))
    except Exception as e:  # DeepSpeed raises assorted types for bad configs
        raise ValueError(f"{source}: DeepSpeed rejects it: {e}") from None
    if (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) != (
            batch.micro, batch.accumulation, batch.global_):
        raise ValueError(f"{source}: DeepSpeed resolves the batch to micro {ds.train_micro_batch_size_per_gpu} x "
                         f"accumulation {ds.gradient_accumulation_steps} = {ds.train_batch_size}, we to "
                         f"{batch.micro} x {batch.accumulation} x {world_size} = {batch.global_}")
    optimizer = str(config.get("optimizer", {}).get("type", "Lamb")).lower()
    if optimizer not in DS_OPTIMIZER_NAMES:
        raise ValueError(f"{source}: optimizer.type {optimizer!r} is not one of Lamb, AdamW, Adam")
    stage = ds.zero_optimization_stage
    if DS_OPTIMIZER_NAMES[optimizer] == "lamb" and stage == 3:
        raise ValueError(f"{source}: LAMB under ZeRO stage 3 is refused by run_pretraining.py")
    lamb_impl = None
    if DS_OPTIMIZER_NAMES[optimizer] == "lamb":
        lamb_impl = "DeepSpeed fused Lamb on CUDA, else ours" if stage == 0 else "ours (per-parameter trust ratios)"
    return {"file": path, "world_size": world_size, "micro": batch.micro, "accumulation": batch.accumulation,
            "global": batch.global_, "zero_stage": stage,
            "precision": precision or "auto (bf16 where native and faster, fp16 on other CUDA devices, else fp32)",
            "optimizer": DS_OPTIMIZER_NAMES[optimizer], "lamb": lamb_impl,
            "gradient_clipping": ds.gradient_clipping}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Validate DeepSpeed config files for a world size "
                                                 "(batch arithmetic, DeepSpeed's own parsing, optimizer).")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--world_size", type=int, nargs="+", default=[1],
                        help="data-parallel world sizes to check (e.g. 8 16 64)")
    args = parser.parse_args(argv)
    try:
        for path in args.files:
            check_input_file("files", path, text=True)
    except PathError as e:
        print(f"check_config: error: {e}", file=sys.stderr)
        return 2
    from bertspeed.training.distributed import init_distributed
    init_distributed(60)
    failed = 0
    for path in args.files:
        for world in args.world_size:
            try:
                print(json.dumps(check(path, world)))
            except (ValueError, FileNotFoundError) as e:
                print(f"check_config: error: {e}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
