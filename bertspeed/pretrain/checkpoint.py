"""Checkpoints of a pretraining run.

OUT/global_stepN/ is DeepSpeed's tag folder (engine and optimizer state, all ranks) and also
holds config.json + model.safetensors (fp32 weights gathered at any ZeRO stage) + vocab.txt.
OUT/latest names the newest complete checkpoint (the run-folder format: bertspeed/training/runs.py);
it is replaced only after every rank has finished writing, so a crash mid-save leaves the previous
checkpoint in force. `load` resumes on the same world size and ZeRO stage through DeepSpeed, and on
another one (ZeRO 0-2, the same global batch) by re-partitioning the saved state (reshard.py).
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from bertspeed.model.checkpoint import TIED_KEYS, CheckpointError, save_hf_folder
from bertspeed.model.config import BertConfig
from bertspeed.model.tokenizer_config import SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG
from bertspeed.pretrain import reshard
from bertspeed.training.runs import list_tags, read_latest, tag_for, write_latest

# The Hugging Face files of a checkpoint; the tokenizer files carry the vocab's casing (save_hf_folder).
HF_FILES = ("config.json", "model.safetensors", "vocab.txt", TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps",
                       "position_embedding_type", "max_relative_position")
# Test-only fault injection (tests/test_faults*.py): "POINT@STEP" SIGKILLs the process at POINT of
# the save of step STEP. Inert unless set. POINT is one of SAVE_POINTS.
FAULT_KILL_IN_SAVE = "BERTSPEED_FAULT_KILL_IN_SAVE"
SAVE_POINTS = ("start", "after_deepspeed_save", "after_weights", "before_latest", "after_latest")


def _fault_point(point: str, step: int) -> None:
    if os.environ.get(FAULT_KILL_IN_SAVE) == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fp32_copy_of(engine, param: torch.nn.Parameter) -> torch.Tensor:
    """The fp32 master value of one parameter; a collective call under ZeRO 1-3 and bf16."""
    from deepspeed.utils import safe_get_full_fp32_param

    value = safe_get_full_fp32_param(param)  # ZeRO 1-3 and DeepSpeed's bf16 optimizer
    if value is not None:
        return value
    optimizer = engine.optimizer
    if hasattr(optimizer, "fp16_groups") and hasattr(optimizer, "fp32_groups"):  # fp16/bf16 at ZeRO 0
        for low, high in zip(optimizer.fp16_groups, optimizer.fp32_groups):
            for lp, hp in zip(low, high):
                if lp is param:
                    return hp
    return param.detach()


def gather_fp32_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """fp32 weights under Hugging Face names (tied aliases dropped), complete on rank 0 and None
    elsewhere. Every rank must call it (it gathers partitions)."""
    module = engine.module
    names = {}
    for name, p in module.named_parameters():  # each tied tensor once, under its first name
        names.setdefault(id(p), name)
    state = {}
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    for p in {id(p): p for p in module.parameters()}.values():
        value = _fp32_copy_of(engine, p)
        if rank0:
            shape = getattr(p, "ds_shape", p.shape)  # ZeRO 3 keeps the full shape in ds_shape
            state[names[id(p)]] = value.detach().to("cpu", torch.float32).reshape(shape).clone()
    if not rank0:
        return None
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().cpu()
    return {k: v.contiguous() for k, v in state.items() if k not in TIED_KEYS}


def write_weights(folder: Path, config: BertConfig, state: dict, vocab_file=None) -> None:
    """Add the HF_FILES to an existing folder (each file appears whole)."""
    staging = Path(tempfile.mkdtemp(prefix=".hf.", dir=folder))
    try:
        written = save_hf_folder(staging / "hf", config, state, vocab_file)
        for name in HF_FILES:
            if (written / name).exists():
                os.replace(written / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prune(output_dir, keep: int) -> list[str]:
    """Delete all but the newest `keep` checkpoints; never the one `latest` names."""
    latest = read_latest(output_dir)
    tags = list_tags(output_dir)
    removed = []
    for _, tag in tags[:-keep] if keep > 0 else []:
        if tag != latest:
            shutil.rmtree(Path(output_dir) / tag, ignore_errors=True)
            removed.append(tag)
    return removed


def barrier():
    if dist.is_initialized():
        dist.barrier()


def save(engine, output_dir, step: int, client_state: dict, config: BertConfig, vocab_file=None,
         keep: int = 3) -> str:
    """Collective: every rank calls it. Returns the tag written."""
    tag = tag_for(step)
    _fault_point("start", step)
    engine.save_checkpoint(str(output_dir), tag=tag, client_state=client_state, save_latest=False)
    _fault_point("after_deepspeed_save", step)
    state = gather_fp32_state_dict(engine)
    if state is not None:
        write_weights(Path(output_dir) / tag, config, state, vocab_file)
    _fault_point("after_weights", step)
    barrier()  # every rank has written its part
    _fault_point("before_latest", step)
    if state is not None:
        write_latest(output_dir, tag)
        _fault_point("after_latest", step)
        prune(output_dir, keep)
    barrier()
    return tag


def check_config(folder: Path, config: BertConfig) -> None:
    """The checkpoint's config.json must describe the model being resumed (dropout may change)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {folder} is not a complete checkpoint")
    saved, current = BertConfig.from_json_file(path).to_dict(), config.to_dict()
    differ = [k for k in ARCHITECTURE_FIELDS if saved.get(k) != current.get(k)]
    if differ:
        raise CheckpointError(f"{path} does not match the model config: " + ", ".join(
            f"{k} {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differ))


def check_batch(folder: Path, states: dict, global_batch: int) -> None:
    """The data position and the schedule count optimizer steps of one global batch: it must not change."""
    saved = states["ds_config"].get("train_batch_size")
    if saved != global_batch:
        raise CheckpointError(f"{folder} was trained with a global batch of {saved} sequences (train_batch_size); "
                              f"this run's is {global_batch}: resume with the same global batch (any world size "
                              f"and micro-batch whose product with gradient_accumulation_steps gives {saved}), or "
                              f"start a new run from its weights (--init_checkpoint {folder})")


def same_layout(folder: Path, states: dict, engine) -> bool:
    """Whether DeepSpeed's own load applies: the same ZeRO stage and, if partitioned, world size.
    (An unpartitioned ZeRO 0 checkpoint loads on any world size.)"""
    stage, world = reshard.saved_stage(states), states["dp_world_size"]
    if stage != engine.zero_optimization_stage():
        return False
    return not reshard.partition_files(folder) or world == engine.dp_world_size


def load(engine, output_dir, config: BertConfig | None = None) -> dict | None:
    """Restore engine, optimizer, schedule from OUT/latest; returns the client state (or None).
    With `config`, a checkpoint of a different model is refused (CheckpointError) before loading; a
    different global batch too. Another world size or ZeRO stage (0, 1, 2) is re-partitioned (reshard.py)."""
    tag = read_latest(output_dir)
    if tag is None:
        return None
    folder = Path(output_dir) / tag
    if config is not None:
        check_config(folder, config)
    states = reshard.read_model_states(folder)
    check_batch(folder, states, engine.train_batch_size())
    if not same_layout(folder, states, engine):
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"resuming {folder} (ZeRO {reshard.saved_stage(states)}, {states['dp_world_size']} ranks) on "
                  f"ZeRO {engine.zero_optimization_stage()}, {engine.dp_world_size} ranks: re-partitioning its "
                  "weights and optimizer state", flush=True)
        return reshard.load_resharded(engine, folder, states)
    del states
    path, client_state = engine.load_checkpoint(str(output_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {folder}")
    return client_state
