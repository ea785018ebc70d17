"""Checkpoints of a finetuning run, for an exact resume (same data order, losses and weights).

OUT/global_stepN/ (the run-folder format of bertspeed/training/runs.py; OUT/latest names the newest
complete one) holds
    finetune_state.json   step, position in the data (micro steps done), counters, the losses and
                          gradient norms not yet logged, metrics.jsonl records written, the settings
    training_state.pt     plain PyTorch: model, optimizer, scheduler and GradScaler state dicts
                          (DeepSpeed: the engine's own files, written by save_checkpoint, instead)
    rng_state_R.pt        rank R's torch RNG state (dropout)
A checkpoint is written into OUT/.global_stepN.partial and renamed into place once every rank has
written its part, then `latest` is replaced: a kill mid-save leaves the previous checkpoint in force.
Our own .pt files are read with torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from bertspeed.training.atomic import write_json_atomic
from bertspeed.training.faults import kill_point
from bertspeed.training.runs import LATEST, list_tags, prune, read_latest, remove_checkpoints, tag_for, write_latest
from bertspeed.training.settings import as_dict

STATE_FILE = "finetune_state.json"  # not HF Trainer's trainer_state.json: another format
TRAINING_FILE = "training_state.pt"
PARTIAL_SUFFIX = ".partial"
# Settings that may differ between a run and its resume: where and how often things are written or
# evaluated, never what is trained.
MAY_CHANGE = frozenset({
    "output_dir", "resume", "overwrite_output_dir", "save_steps", "save_strategy", "save_total_limit", "report_to",
    "logging_steps", "eval_steps", "eval_strategy", "local_rank", "dist_timeout", "deepspeed", "eval_batch_size",
    "max_eval_samples", "do_eval", "do_predict", "no_save_model", "no_test_predictions", "test_file", "predict_file",
    "eval_file", "validation_file", "n_best_size", "max_answer_length", "null_score_diff_threshold"})


def rng_file(rank: int) -> str:
    return f"rng_state_{rank}.pt"


def trajectory_settings(settings) -> dict:
    """The settings that decide the training trajectory, as JSON values."""
    return {k: v for k, v in as_dict(settings).items() if k not in MAY_CHANGE}


def prepare_output_dir(settings, is_main: bool) -> Path | None:
    """For a run that trains: the checkpoint folder to resume from (None: a fresh start). A fresh start
    in a folder holding checkpoints is refused (ValueError naming the folder) unless
    --overwrite_output_dir, which deletes them; a checkpoint of other settings is refused naming them.
    What an interrupted attempt left after the checkpoint (or, fresh, half-written saves) is deleted.
    Call before writing anything."""
    out = Path(settings.output_dir)
    folder = None
    if settings.resume == LATEST:
        tag = read_latest(out) if out.is_dir() else None
        folder = out / tag if tag else None
        if folder is None and is_main:
            print(f"--resume: no checkpoint in {out} yet, starting from the beginning")
    elif settings.resume:
        folder = Path(settings.resume)
    else:
        found = [tag for _, tag in list_tags(out)] + ([LATEST] if (out / LATEST).exists() else [])
        if found and not settings.overwrite_output_dir:
            raise ValueError(f"--output_dir {out} holds checkpoints of an earlier run ({', '.join(found)}): pass "
                             "--resume to continue it or --overwrite_output_dir to start over")
    if folder is None:
        if is_main and out.is_dir():
            discard_later(out, -1)
        return None
    if not (folder / STATE_FILE).is_file():
        hint = " (a Hugging Face Trainer checkpoint? it cannot be resumed here)" if (
            folder / "trainer_state.json").is_file() else ""
        raise FileNotFoundError(f"--resume {folder}: no {STATE_FILE}, not a finetuning checkpoint{hint}")
    state = read_state(folder)
    saved, now = state["settings"], trajectory_settings(settings)
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if differ:
        raise ValueError(f"--resume {folder}: the checkpoint is of another run: " + "; ".join(
            f"--{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ))
    if is_main and folder.parent.resolve() == out.resolve():
        discard_later(out, state["step"])
    return folder


STATE_KEYS = ("step", "micro_step", "seen", "tokens", "running", "grad_norms", "metrics_records", "batch", "settings")


def read_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise ValueError(f"{path}: not a finetuning checkpoint's state (missing {', '.join(missing)})")
    return state


def discard_later(out: Path, step: int) -> None:
    """A resume from step `step` (-1: a fresh start) drops what an interrupted attempt wrote after it:
    later checkpoints and half-written ones."""
    remove_checkpoints(out, after_step=step)
    for partial in out.glob(f".global_step*{PARTIAL_SUFFIX}"):
        shutil.rmtree(partial, ignore_errors=True)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save(out: Path, step: int, state: dict, rt, *, engine=None, model=None, optimizer=None, scheduler=None,
         scaler=None, keep: int | None = None) -> str:
    """Collective: every rank calls it. Writes OUT/global_<step> and points `latest` at it."""
    tag = tag_for(step)
    staging = out / f".{tag}{PARTIAL_SUFFIX}"
    if rt.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    rt.barrier()
    if engine is not None:
        engine.save_checkpoint(str(out), tag=staging.name, client_state={}, save_latest=False)
    elif rt.is_main:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None},
                   staging / TRAINING_FILE)
    torch.save(_rng_state(), staging / rng_file(rt.rank))
    kill_point("save", step)
    rt.barrier()
    if rt.is_main:
        write_json_atomic(staging / STATE_FILE, state)
        shutil.rmtree(out / tag, ignore_errors=True)
        os.replace(staging, out / tag)
        write_latest(out, tag)
        prune(out, keep)
    rt.barrier()
    return tag


def load(folder: Path, rt, *, engine=None, model=None, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Restore weights, optimizer, schedule, loss scale and this rank's RNG from `folder`; returns its
    trainer state. A checkpoint of another world size is refused."""
    state = read_state(folder)
    if state["batch"]["world"] != rt.world_size:
        raise ValueError(f"--resume {folder}: written by {state['batch']['world']} ranks, this run has "
                         f"{rt.world_size}")
    if engine is not None:
        path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name)
        if path is None:
            raise ValueError(f"--resume {folder}: DeepSpeed found no checkpoint there")
    else:
        blob = torch.load(folder / TRAINING_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        if scaler is not None and blob["scaler"] is not None:
            scaler.load_state_dict(blob["scaler"])
    rng = torch.load(folder / rng_file(rt.rank), weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
