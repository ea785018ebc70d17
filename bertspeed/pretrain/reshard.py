"""Resume a DeepSpeed checkpoint on another world size or ZeRO stage (0, 1, 2) by re-partitioning it.

DeepSpeed loads a ZeRO 1/2 checkpoint only on the data-parallel world size that wrote it (its universal
checkpoint is an offline conversion into one folder per parameter). Here every rank reads the saved
optimizer state whole (every zero_pp_rank_R file, or the stage-0 optimizer's state_dict), assembles each
parameter's fp32 master value and optimizer tensors by name (DeepSpeed's own `param_slice_mappings`),
and copies its own part into the running engine: the flat partitions of a ZeRO 1/2 optimizer (located
by DeepSpeed's `_hp_mapping`) or the parameters of an unpartitioned one. Values are copied, never
recomputed, so the resumed state is bit-identical to the saved one.

Optimizer state: entries shaped like the parameter (LAMB's and AdamW's exp_avg, exp_avg_sq) are
re-partitioned; scalars (step) are copied per parameter group. THOR runs at ZeRO 0 only, where nothing
is partitioned and DeepSpeed's own load serves any world size. Refused with a message: ZeRO 3, and
fp16/bf16 wrappers at ZeRO 0 (their state has another layout).
"""
from __future__ import annotations

from pathlib import Path

import torch

from bertspeed.model.checkpoint import CheckpointError
from bertspeed.training.params import param_groups

MODEL_STATES = "mp_rank_00_model_states.pt"
MASTER = "fp32"  # key of the master weights next to the optimizer state keys
# Keys DeepSpeed writes into the model-states file; every other key is the client state (ours).
DEEPSPEED_KEYS = {"module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
                  "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
                  "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size",
                  "checkpoint_parallel_dimensions", "ds_config", "ds_version"}


def load_file(path: Path, mmap: bool = False) -> dict:
    """torch.load with weights_only, allowing the few DeepSpeed classes its checkpoints hold (no other
    code of the file is ever run)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_model_states(folder: Path) -> dict:
    path = folder / MODEL_STATES
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {folder} is not a complete checkpoint")
    return load_file(path, mmap=True)


def saved_stage(states: dict) -> int:
    return int(states["ds_config"].get("zero_optimization", {}).get("stage", 0))


def partition_files(folder: Path) -> list[Path]:
    """The zero_pp_rank_R files in rank order."""
    files = list(folder.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    return sorted(files, key=lambda p: int(p.name.split("zero_pp_rank_")[1].split("_")[0]))


def _is_partitioned_tensor(value) -> bool:
    return torch.is_tensor(value) and value.dim() > 0


def from_partitions(files: list[Path]) -> tuple[dict, list[dict], list[dict] | None]:
    """(name -> {MASTER and state key -> flat full tensor}, per group scalars, per group hyperparameters)
    from the zero_pp_rank files of a ZeRO 1/2 checkpoint."""
    if files[0].name.startswith("bf16_"):
        raise CheckpointError(f"{files[0].parent} was written by DeepSpeed's bf16 optimizer at ZeRO 0, whose "
                              "state is not re-partitioned here: resume it on its own world size")
    pieces: dict[str, dict[str, list]] = {}
    scalars, hyper = [], None
    for path in files:
        osd = load_file(path)["optimizer_state_dict"]
        base = osd["base_optimizer_state"]
        groups = range(len(osd["param_slice_mappings"]))
        states = base if isinstance(base, list) else [base["state"].get(i, {}) for i in groups]
        hyper = None if isinstance(base, list) else base["param_groups"]
        scalars = [{k: v for k, v in s.items() if not _is_partitioned_tensor(v)} for s in states]
        for i, mapping in enumerate(osd["param_slice_mappings"]):
            sources = {MASTER: osd["single_partition_of_fp32_groups"][i],
                       **{k: v for k, v in states[i].items() if _is_partitioned_tensor(v)}}
            for name, address in mapping.items():
                entry = pieces.setdefault(name, {})
                for key, flat in sources.items():
                    entry.setdefault(key, []).append(flat.narrow(0, address.start, address.numel))
    full = {name: {key: torch.cat(parts) for key, parts in entry.items()} for name, entry in pieces.items()}
    return full, scalars, hyper


def parameter_names(module: torch.nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (a tied parameter keeps the name it is saved under)."""
    names = {}
    for name, p in module.named_parameters():
        names.setdefault(id(p), name)
    return names


def stage0_names(module: torch.nn.Module, weight_decay: float) -> list[list[str]]:
    """Parameter names in the order of the parameter groups an unpartitioned optimizer holds (optim.py)."""
    names = parameter_names(module)
    return [[names[id(p)] for p in group["params"]] for group in param_groups(module, weight_decay)]


def from_stage0(states: dict, module: torch.nn.Module, folder: Path) -> tuple[dict, list[dict], list[dict]]:
    """The same as from_partitions, from the optimizer state_dict of a ZeRO 0 checkpoint (fp32)."""
    saved = states.get("optimizer")
    if not isinstance(saved, dict) or "state" not in saved or "param_groups" not in saved:
        raise CheckpointError(f"{folder}: its ZeRO 0 optimizer state is not a plain optimizer's (fp16/bf16 "
                              "wrapper?): resume it with the ZeRO stage and world size that wrote it")
    groups = stage0_names(module, saved["param_groups"][0].get("weight_decay", 0.0))
    if [len(g) for g in groups] != [len(g["params"]) for g in saved["param_groups"]]:
        raise CheckpointError(f"{folder}: its optimizer holds parameter groups of sizes "
                              f"{[len(g['params']) for g in saved['param_groups']]}, this model "
                              f"{[len(g) for g in groups]}")
    full, scalars = {}, []
    for names, group in zip(groups, saved["param_groups"]):
        for name, index in zip(names, group["params"]):
            state = saved["state"].get(index, {})
            full[name] = {MASTER: states["module"][name].float().flatten(),
                          **{k: v.flatten() for k, v in state.items() if _is_partitioned_tensor(v)}}
        first = saved["state"].get(group["params"][0], {}) if group["params"] else {}
        scalars.append({k: v for k, v in first.items() if not _is_partitioned_tensor(v)})
    return full, scalars, saved["param_groups"]


def _check_names(full: dict, wanted: set[str], folder: Path) -> None:
    if set(full) != wanted:
        missing, extra = sorted(wanted - set(full)), sorted(set(full) - wanted)
        raise CheckpointError(f"{folder}: parameters differ from this model's (missing {missing[:5]}, "
                              f"unexpected {extra[:5]})")


def _new_state(template: torch.Tensor, keys, scalars: dict) -> dict:
    return {**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in scalars.items()},
            **{k: torch.zeros_like(template) for k in keys}}


@torch.no_grad()
def into_zero(engine, full: dict, scalars: list[dict], folder: Path) -> None:
    """Copy this rank's part of every parameter into the flat partitions of a ZeRO 1/2 optimizer."""
    zero = engine.optimizer
    wanted = {zero.param_names[lp] for group in zero.bit16_groups for lp in group}
    _check_names(full, wanted, folder)
    for i, group in enumerate(zero.bit16_groups):
        flat = zero.single_partition_of_fp32_groups[i]
        keys = [k for k in next(iter(full.values())) if k != MASTER]
        state = _new_state(flat, keys, scalars[i])
        targets = {MASTER: flat, **{k: state[k] for k in keys}}
        for lp in group:
            lp.copy_(full[zero.param_names[lp]][MASTER].view_as(lp))  # every rank holds the whole lp copy
            mapping = lp._hp_mapping
            if mapping is None:  # no slice of this parameter on this rank
                continue
            source, hp, lp_part = full[zero.param_names[lp]], mapping.hp_fragment_address, mapping.lp_fragment_address
            for key, target in targets.items():
                target.narrow(0, hp.start, hp.numel).copy_(source[key].narrow(0, lp_part.start, lp_part.numel))
        zero.optimizer.state[flat] = state


@torch.no_grad()
def into_stage0(engine, full: dict, scalars: list[dict], folder: Path) -> None:
    """Copy every parameter's master value and optimizer state into an unpartitioned fp32 optimizer."""
    optimizer = engine.basic_optimizer
    if engine.optimizer is not optimizer:
        raise CheckpointError(f"{folder}: this run's ZeRO 0 optimizer is wrapped ({type(engine.optimizer).__name__}, "
                              "fp16/bf16): a checkpoint of another ZeRO stage or world size resumes here in fp32 only")
    names = parameter_names(engine.module)
    _check_names(full, {names[id(p)] for g in optimizer.param_groups for p in g["params"]}, folder)
    for group, group_scalars in zip(optimizer.param_groups, scalars):
        for p in group["params"]:
            source = full[names[id(p)]]
            p.copy_(source[MASTER].view_as(p))
            state = _new_state(p, [k for k in source if k != MASTER], group_scalars)
            for key in source:
                if key != MASTER:
                    state[key].copy_(source[key].view_as(p))
            optimizer.state[p] = state


def load_resharded(engine, folder: Path, states: dict) -> dict:
    """Restore weights, optimizer state, schedule and counters of `folder` into an engine of another
    world size or ZeRO stage; returns the client state."""
    source_stage, target_stage = saved_stage(states), engine.zero_optimization_stage()
    if 3 in (source_stage, target_stage):
        raise CheckpointError(f"{folder} was written at ZeRO {source_stage} by {states['dp_world_size']} ranks; "
                              f"this run is ZeRO {target_stage} on {engine.dp_world_size}: a change of world size "
                              "or stage is supported between ZeRO 0, 1 and 2 only")
    if source_stage == 0:
        full, scalars, hyper = from_stage0(states, engine.module, folder)
    else:
        full, scalars, hyper = from_partitions(partition_files(folder))
    engine.module.load_state_dict(states["module"], strict=False)  # buffers; lp weights (= masters in fp32)
    (into_zero if target_stage > 0 else into_stage0)(engine, full, scalars, folder)
    groups = engine.basic_optimizer.param_groups
    for group, saved in zip(groups, hyper or [{}] * len(groups)):
        group.update({k: v for k, v in saved.items() if k != "params"})
    if engine.lr_scheduler is not None and states.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(states["lr_scheduler"])
        for group, lr in zip(groups, engine.lr_scheduler.get_last_lr()):
            group["lr"] = lr
    engine.global_steps, engine.global_samples = states["global_steps"], states["global_samples"]
    engine.skipped_steps = states["skipped_steps"]
    return {k: v for k, v in states.items() if k not in DEEPSPEED_KEYS}
