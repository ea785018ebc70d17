"""Command-line arguments of run_pretraining.py: a typed, validated dataclass, plus the
DeepSpeed config file read once and checked (batch arithmetic, optimizer section)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from bertspeed.pretrain.optim import OPTIMIZERS
from bertspeed.training.hardware import PRECISIONS

DS_OPTIMIZER_NAMES = {"lamb": "lamb", "adamw": "adamw", "adam": "adamw"}


@dataclass
class PretrainArgs:
    """Everything that defines a pretraining run (besides the DeepSpeed JSON and the model
    config). Each field is a command-line flag; HELP below documents them."""
    input_dir: str
    output_dir: str
    max_steps: int
    deepspeed_config: str
    config_file: str | None = None
    model_preset: str | None = None
    vocab_file: str | None = None
    max_predictions_per_seq: int | None = None
    whole_word_mask: bool = False
    init_checkpoint: str | None = None
    resume: bool = False
    eval_dir: str | None = None
    eval_interval: int = 0
    eval_samples: int = 2048
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 3
    log_interval: int = 1
    optimizer: str | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None
    warmup_proportion: float = 0.01
    warmup_steps: int | None = None
    schedule_power: float = 0.5
    use_nvlamb: bool = False
    seed: int = 42
    precision: str = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    peak_tflops: float = 0.0
    tensorboard: bool = False
    max_bad_steps: int = 20
    dist_timeout: float = 600.0
    local_rank: int = -1
    deepspeed: bool = True

    def __post_init__(self):
        for name in ("max_steps", "checkpoint_interval", "keep_checkpoints", "log_interval", "eval_samples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.max_bad_steps < 0:
            raise ValueError(f"--max_bad_steps must be >= 0, got {self.max_bad_steps}")
        if self.eval_interval < 0:
            raise ValueError(f"--eval_interval must be >= 0, got {self.eval_interval}")
        if (self.config_file is None) == (self.model_preset is None) and self.init_checkpoint is None:
            raise ValueError("give exactly one of --config_file and --model_preset (or --init_checkpoint)")
        if self.config_file and self.model_preset:
            raise ValueError("give only one of --config_file and --model_preset")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.warmup_proportion < 1.0:
            raise ValueError(f"--warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"--warmup_steps must be in [0, max_steps], got {self.warmup_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.dist_timeout <= 0:
            raise ValueError(f"--dist_timeout must be positive, got {self.dist_timeout}")
        for name in ("input_dir", "deepspeed_config"):
            if not Path(getattr(self, name)).exists():
                raise FileNotFoundError(f"--{name} {getattr(self, name)} does not exist")

    @property
    def num_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_proportion * self.max_steps)


HELP = {
    "input_dir": "folder of training HDF5 shards (ours or NVIDIA's schema)",
    "output_dir": "run folder: global_stepN/ checkpoints, latest, metrics.jsonl, run_config.json, summary.json",
    "max_steps": "optimizer steps of this phase (also the length of the lr schedule)",
    "config_file": "model config.json (default: the --init_checkpoint's)",
    "model_preset": "or a BertConfig preset: tiny, mini, small, medium, base, large (vocab size from --vocab_file)",
    "vocab_file": "vocab.txt, copied into checkpoints; required for unmasked (dynamic-masking) shards",
    "max_predictions_per_seq": "dynamic masking: masked positions per sequence (default 20 at 128, 80 at 512)",
    "whole_word_mask": "dynamic masking of whole words (uses the shards' word_starts)",
    "init_checkpoint": "phase 2: start from these weights (a run folder or HF folder) with a fresh optimizer and schedule",
    "resume": "continue from OUTPUT_DIR/latest (same world size); start fresh if there is none",
    "eval_dir": "held-out HDF5 shards for MLM/NSP accuracy",
    "eval_interval": "steps between evaluations (0: only at the end)",
    "eval_samples": "sequences per evaluation (over all ranks)",
    "checkpoint_interval": "steps between checkpoints (one is also written at the end and on SIGTERM)",
    "keep_checkpoints": "keep the newest K checkpoint folders",
    "log_interval": "steps between metrics.jsonl records",
    "optimizer": "lamb or adamw (default: optimizer.type of the DeepSpeed config, else lamb)",
    "learning_rate": "peak learning rate (default: optimizer.params.lr of the DeepSpeed config)",
    "weight_decay": "weight decay, not applied to biases and LayerNorm (default: the DeepSpeed config's, else 0.01)",
    "warmup_proportion": "linear warmup over this fraction of --max_steps",
    "warmup_steps": "linear warmup steps (overrides --warmup_proportion)",
    "schedule_power": "degree of the polynomial decay after warmup (NVIDIA: 0.5)",
    "use_nvlamb": "LAMB trust ratio also on parameters without weight decay (apex FusedLAMB use_nvlamb)",
    "seed": "seed of initialisation, data order, masking and dropout",
    "precision": "auto, fp32, bf16 or fp16. auto: bf16 where it is native and faster (CUDA with bf16; a CPU "
                 "where oneDNN reports native bf16 and a timing probe confirms), fp16 on other CUDA devices, fp32 "
                 "otherwise. An explicit value overrides the DeepSpeed config's bf16/fp16 sections, which "
                 "otherwise win over auto",
    "gradient_checkpointing": "recompute encoder layers in backward (activation checkpointing)",
    "compile": "torch.compile each encoder layer (state-dict names unchanged; dropout draws differ from eager)",
    "peak_tflops": "peak TFLOP/s of one device, for the perf/mfu metric (0: no MFU)",
    "tensorboard": "also write TensorBoard events to OUTPUT_DIR/tensorboard (needs the tensorboard package)",
    "max_bad_steps": "stop (exit 3) after this many skipped or non-finite steps in a row (0: never)",
    "dist_timeout": "seconds a collective may wait before the run fails instead of hanging",
}


def build_parser() -> argparse.ArgumentParser:
    import deepspeed  # the launcher's flags (--deepspeed, --deepspeed_config)

    parser = argparse.ArgumentParser(
        description="BERT pretraining (phase 1 or 2) with DeepSpeed: "
                    "deepspeed [--num_gpus N | --hostfile H] pretrain/run_pretraining.py --deepspeed_config X.json ...")
    for f in dataclasses.fields(PretrainArgs):
        if f.name in ("deepspeed_config", "deepspeed", "local_rank"):
            continue
        flag = f"--{f.name}"
        required = f.default is dataclasses.MISSING
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=HELP.get(f.name))
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        default = None if required else f.default
        text = HELP.get(f.name, "") + ("" if required or default is None else f" (default: {default})")
        parser.add_argument(flag, type=kind, required=required, default=default, help=text or None)
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    parser = deepspeed.add_config_arguments(parser)
    return parser


def parse_args(argv=None) -> PretrainArgs:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not ns.deepspeed_config:
        parser.error("--deepspeed_config is required")
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(PretrainArgs) if hasattr(ns, f.name)}
    values["deepspeed"] = True
    try:
        return PretrainArgs(**values)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))


@dataclass(frozen=True)
class BatchSizes:
    micro: int
    accumulation: int
    world: int

    @property
    def global_(self) -> int:
        return self.micro * self.accumulation * self.world


def resolve_batch(ds_config: dict, world_size: int, source: str = "DeepSpeed config") -> BatchSizes:
    """micro x accumulation x world = global, from whichever two or three keys are given."""
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    accum = ds_config.get("gradient_accumulation_steps")
    total = ds_config.get("train_batch_size")
    for key, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum),
                       ("train_batch_size", total)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{source}: {key} must be a positive integer, got {value!r}")
    if micro is None and accum is None and total is None:
        raise ValueError(f"{source}: set train_micro_batch_size_per_gpu (and gradient_accumulation_steps "
                         "or train_batch_size)")
    if micro is not None and accum is None:
        accum = 1 if total is None else total // (micro * world_size)
    elif micro is None and accum is not None:
        micro = total // (accum * world_size) if total is not None else None
    elif micro is None:
        accum = 1
        micro = total // world_size
    if not micro or not accum:
        raise ValueError(f"{source}: train_batch_size {total} is smaller than the {world_size} ranks "
                         "times the other batch settings")
    sizes = BatchSizes(micro, accum, world_size)
    if total is not None and sizes.global_ != total:
        raise ValueError(
            f"{source}: batch arithmetic does not hold: train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accum} x world size {world_size} = {sizes.global_}, "
            f"but train_batch_size is {total}")
    return sizes


@dataclass(frozen=True)
class OptimizerSpec:
    kind: str  # lamb | adamw
    lr: float
    weight_decay: float
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    params: dict = field(default_factory=dict)


def read_ds_config(path: str) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--deepspeed_config {path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--deepspeed_config {path}: expected a JSON object")
    if "scheduler" in config:
        raise ValueError(f"--deepspeed_config {path}: remove the 'scheduler' section; the schedule is "
                         "set by --learning_rate, --warmup_proportion/--warmup_steps and --max_steps")
    return config


def optimizer_spec(ds_config: dict, args: PretrainArgs, source: str) -> OptimizerSpec:
    section = ds_config.get("optimizer", {})
    params = dict(section.get("params", {}))
    kind = args.optimizer
    if kind is None:
        name = str(section.get("type", "lamb")).lower()
        if name not in DS_OPTIMIZER_NAMES:
            raise ValueError(f"{source}: optimizer.type {section.get('type')!r} is not one of Lamb, AdamW, Adam")
        kind = DS_OPTIMIZER_NAMES[name]
    lr = args.learning_rate if args.learning_rate is not None else params.get("lr")
    if lr is None or lr <= 0:
        raise ValueError(f"{source}: no positive learning rate (set optimizer.params.lr or --learning_rate)")
    wd = args.weight_decay if args.weight_decay is not None else params.get("weight_decay", 0.01)
    return OptimizerSpec(kind, float(lr), float(wd), tuple(params.get("betas", (0.9, 0.999))),
                         float(params.get("eps", 1e-6)), params)
