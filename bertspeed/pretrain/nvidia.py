"""NVIDIA DeepLearningExamples' run_pretraining.py dialect.

Flags that map onto ours are aliases declared on PretrainArgs (--num_steps_per_checkpoint, --log_freq,
--checkpoint_activations, --resume_from_checkpoint) or fields of their own there (--train_batch_size,
--gradient_accumulation_steps, --fp16/--amp, --loss_scale, --init_loss_scale, --max_seq_length,
--disable_progress_bar). This module holds the rest: flags that are no-ops here (accepted with a printed
note), flags that cannot be honoured (refused), the batch and loss-scale overrides of the DeepSpeed
JSON, and the check that a flag and its alias do not disagree.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields

from bertspeed.training.settings import add_settings, setting

# Used when NVIDIA's command line gives --train_batch_size and no --deepspeed_config: NVIDIA's run is
# plain data parallel (ZeRO 0) with FusedLAMB clipping the global gradient norm at 1.0.
BUILTIN_DS_CONFIG = {"zero_optimization": {"stage": 0}, "gradient_clipping": 1.0, "steps_per_print": 10 ** 9,
                     "optimizer": {"type": "Lamb", "params": {"weight_decay": 0.01}}}
BUILTIN_SOURCE = "the built-in DeepSpeed config (no --deepspeed_config: ZeRO 0, LAMB, gradient clipping 1.0)"


@dataclass(kw_only=True)
class NvidiaFlags:
    """NVIDIA's flags that are no-ops here or refused; command line only (not in --settings_file)."""
    bert_model: str | None = setting(None, help="ignored (NVIDIA: a model name; here the model is --config_file)")
    do_train: bool = setting(False, help="ignored: this command always trains")
    phase2: bool = setting(False, help="accepted with --init_checkpoint PHASE1_RUN (phase 2 is a fresh run "
                                       "from those weights); refused without it")
    phase1_end_step: int | None = setting(None, help="ignored: phase 2 counts its own steps from 0")
    allreduce_post_accumulation: bool = setting(False, help="ignored: DeepSpeed all-reduces once per "
                                                            "optimizer step")
    allreduce_post_accumulation_fp16: bool = setting(False, help="ignored: DeepSpeed's communication dtype "
                                                                 "follows the DeepSpeed config")
    json_summary: str | None = setting(None, aliases=("--json-summary",), metavar="FILE",
                                       help="ignored: metrics go to OUTPUT_DIR/metrics.jsonl and "
                                            "OUTPUT_DIR/summary.json")
    use_env: bool = setting(False, help="ignored: the rank always comes from the environment")
    skip_checkpoint: bool = setting(False, help="refused: checkpoints are how a run resumes (use a large "
                                                "--checkpoint_interval)")
    resume_step: int | None = setting(None, help="refused unless -1: --resume continues from OUTPUT_DIR/latest")
    steps_this_run: int | None = setting(None, help="refused unless equal to --max_steps")


NAMES = tuple(f.name for f in fields(NvidiaFlags))


def add_nvidia_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NVIDIA run_pretraining.py flags that are ignored or refused here")
    add_settings(group, NvidiaFlags)


def nvidia_flags(ns: argparse.Namespace) -> NvidiaFlags:
    """The NVIDIA flags of the namespace (removed from it, so --settings_file never sees them)."""
    given = {name: getattr(ns, name) for name in NAMES if hasattr(ns, name)}
    for name in given:
        delattr(ns, name)
    return NvidiaFlags(**given)


def _flag_name(name: str) -> str:
    return "--json-summary" if name == "json_summary" else f"--{name}"


def check_nvidia_flags(flags: NvidiaFlags, max_steps: int, init_checkpoint: str | None) -> list[str]:
    """Notes for the no-op flags given; ValueError for one that cannot be honoured."""
    if flags.skip_checkpoint:
        raise ValueError("--skip_checkpoint cannot be honoured: checkpoints are how a run resumes; "
                         "use a large --checkpoint_interval instead")
    if flags.resume_step not in (None, -1):
        raise ValueError(f"--resume_step {flags.resume_step} cannot be honoured: --resume (NVIDIA: "
                         "--resume_from_checkpoint) continues from OUTPUT_DIR/latest")
    if flags.steps_this_run is not None and flags.steps_this_run != max_steps:
        raise ValueError(f"--steps_this_run {flags.steps_this_run} cannot be honoured (it must equal --max_steps "
                         f"{max_steps}): stop a run with SIGTERM and continue it with --resume")
    if flags.phase2 and not init_checkpoint:
        raise ValueError("--phase2 needs --init_checkpoint PHASE1_RUN_FOLDER and a new --output_dir: phase 2 "
                         "starts from the phase-1 weights with a fresh optimizer and schedule")
    defaults = NvidiaFlags()
    refused = ("skip_checkpoint", "resume_step", "steps_this_run")
    return [f"NVIDIA's {_flag_name(name)}: {NvidiaFlags.__dataclass_fields__[name].metadata['help']}"
            for name in NAMES if name not in refused and getattr(flags, name) != getattr(defaults, name)]


def alias_conflict(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """An error message if a flag and its alias (e.g. --checkpoint_interval and NVIDIA's
    --num_steps_per_checkpoint) both appear in `argv` with different values."""
    seen: dict[str, tuple[str, object]] = {}
    for i, token in enumerate(argv):
        name, equals, inline = token.partition("=")
        # argparse's own table of option strings (no public equivalent); aliases share one action
        action = parser._option_string_actions.get(name) if token.startswith("--") else None
        if action is None or len(action.option_strings) < 2:
            continue
        if action.nargs == 0:
            value = not name.startswith("--no-") if action.const is None else action.const
        else:
            raw = inline if equals else (argv[i + 1] if i + 1 < len(argv) else None)
            try:
                value = action.type(raw) if action.type and raw is not None else raw
            except (TypeError, ValueError):
                continue  # argparse reports the bad value itself
        earlier = seen.get(action.dest)
        if earlier and earlier[0] != name and earlier[1] != value:
            return (f"{earlier[0]} {earlier[1]} and {name} {value} set the same setting ({action.dest}) "
                    "differently: give one of them")
        seen[action.dest] = (name, value)
    return None


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def note(message: str) -> None:
    if is_main_rank():
        print(f"note: {message}", flush=True)


def batch_override(ds_config: dict, args, world_size: int, source: str, json_batch) -> dict:
    """NVIDIA's --train_batch_size (sequences per GPU per optimizer step, split into
    --gradient_accumulation_steps micro-batches) and --gradient_accumulation_steps replace the
    DeepSpeed config's batch keys; `json_batch` is the config's own BatchSizes (None if it has none).
    Only --gradient_accumulation_steps keeps the config's micro-batch."""
    per_gpu, accum = args.train_batch_size, args.gradient_accumulation_steps
    if per_gpu is None and accum is None:
        return ds_config
    if accum is None:
        accum = json_batch.accumulation if json_batch else 1
    if per_gpu is None:
        if json_batch is None:
            raise ValueError(f"--gradient_accumulation_steps {accum}: {source} sets no micro-batch; "
                             "also give --train_batch_size")
        per_gpu = json_batch.micro * accum
    if per_gpu % accum:
        given = "--gradient_accumulation_steps" if args.gradient_accumulation_steps else f"{source}'s"
        raise ValueError(f"--train_batch_size {per_gpu} is not divisible by {given} gradient_accumulation_steps "
                         f"{accum}")
    micro = per_gpu // accum
    keys = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
            "train_batch_size": micro * accum * world_size}
    was = (f" (the config said {json_batch.micro}, {json_batch.accumulation}, {json_batch.global_})"
           if json_batch else "")
    note(f"NVIDIA's batch flags override {source}: " + ", ".join(f"{k} {v}" for k, v in keys.items()) + was)
    return {**ds_config, **keys}


def loss_scale_override(ds_config: dict, args, precision: str, source: str) -> dict:
    """NVIDIA's --loss_scale (0: dynamic) and --init_loss_scale (a power of 2) into the fp16 section."""
    given = {"--loss_scale": args.loss_scale, "--init_loss_scale": args.init_loss_scale}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return ds_config
    if precision != "fp16":
        note(f"{' and '.join(given)} ignored: the precision is {precision}, loss scaling is for fp16 only")
        return ds_config
    section = dict(ds_config.get("fp16") or {})
    if args.loss_scale is not None:
        section["loss_scale"] = args.loss_scale
    if args.init_loss_scale is not None:
        section["initial_scale_power"] = int(math.log2(args.init_loss_scale))
    note(f"{', '.join(f'{k} {v}' for k, v in given.items())} override the fp16 section of {source}")
    return {**ds_config, "fp16": section}
