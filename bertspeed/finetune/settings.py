"""The finetuning drivers' settings, each flag declared once (bertspeed.training.settings).

    ModelSettings       model, tokenizer, sequence length, precision, kernels (every driver, predict.py too)
    FinetuneSettings    + output, training and distributed settings (run_glue / run_squad / run_ner)
    SpanSettings        + how answer spans are searched (run_squad, predict.py)

A driver extends these with its own fields and its own defaults (`default_of`), and parses its
command line with `parse_settings`: command line > --settings_file JSON > defaults. Bad values raise
ValueError (FileNotFoundError for a missing file) naming the flag; the drivers' `entry` turns them
into `error: ...` and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bertspeed.model.layers import FUSED_KERNELS_HELP
from bertspeed.training.hardware import PRECISION_HELP, PRECISIONS
from bertspeed.training.settings import from_namespace, parser_for, setting


def default_of(cls, name: str, value):
    """`cls`'s setting `name` (same flag and help text) with a driver's own default."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=value, metadata=field.metadata)


@dataclass(kw_only=True)
class ModelSettings:
    model_dir: str = setting(
        help="Hugging Face BERT folder, or one of our pretraining run dirs (its `latest` checkpoint)")
    vocab_file: str | None = setting(None, help="WordPiece vocab (default: vocab.txt of the model folder)")
    do_lower_case: bool | None = setting(
        None, help="lower-case input (default: tokenizer_config.json of the model folder, else yes)")
    max_seq_length: int = setting(128, help="tokens per sequence")
    precision: str = setting("auto", help=PRECISION_HELP, choices=PRECISIONS)
    fused_kernels: bool = setting(False, help=FUSED_KERNELS_HELP)

    def __post_init__(self):
        if self.max_seq_length < 8 or self.max_seq_length > 4096:
            raise ValueError(f"--max_seq_length {self.max_seq_length} is out of range [8, 4096]")


@dataclass(kw_only=True)
class FinetuneSettings(ModelSettings):
    # model and output
    output_dir: str = setting(help="where eval_results.json, metrics.jsonl, model/ go")
    no_save_model: bool = setting(False, help="do not write the finetuned model to OUT/model")
    # training
    num_train_epochs: float = setting(3.0, help="0 evaluates the model as loaded")
    learning_rate: float = setting(5e-5, help="peak learning rate (linear warm-up, then linear decay to 0)")
    train_batch_size: int = setting(32, help="global batch: micro batch x gradient accumulation x ranks")
    eval_batch_size: int = setting(64, help="per-rank prediction batch")
    gradient_accumulation_steps: int = setting(1, help="micro batches per optimizer step")
    warmup_proportion: float = setting(0.1, help="share of steps with linear warm-up")
    weight_decay: float = setting(0.01, help="AdamW weight decay (not on biases and LayerNorm)")
    max_grad_norm: float = setting(1.0, help="gradient clipping; 0 disables")
    seed: int = setting(42, help="seed of initialisation, data order and dropout")
    no_group_by_length: bool = setting(False, help="plain shuffled batches")
    logging_steps: int = setting(50, help="optimizer steps between metrics lines")
    eval_steps: int = setting(0, help="optimizer steps between evaluations during training, logged as eval/ "
                                      "metrics lines (0: evaluate only at the end)")
    max_train_samples: int | None = setting(None, help="use only the first N training examples")
    max_eval_samples: int | None = setting(None, help="use only the first N evaluation (and test) examples")
    # distributed
    deepspeed_config: str | None = setting(None, help="DeepSpeed JSON; batch flags above override its batch keys")
    deepspeed: bool = setting(False, help="accepted for launcher compatibility")
    dist_timeout: float = setting(
        600.0, help="seconds a collective may wait before the run fails instead of hanging")
    local_rank: int = setting(-1, help="set by the deepspeed launcher", aliases=("--local-rank",))

    def __post_init__(self):
        super().__post_init__()
        if self.num_train_epochs < 0 or self.learning_rate <= 0 or self.train_batch_size <= 0:
            raise ValueError("--num_train_epochs must be >= 0, --learning_rate and --train_batch_size > 0")
        for flag in ("gradient_accumulation_steps", "eval_batch_size", "logging_steps"):
            if getattr(self, flag) <= 0:
                raise ValueError(f"--{flag} must be > 0")
        if not 0 <= self.warmup_proportion < 1:
            raise ValueError("--warmup_proportion must be in [0, 1)")
        if self.eval_steps < 0:
            raise ValueError("--eval_steps must be >= 0")
        for flag in ("max_train_samples", "max_eval_samples"):
            if getattr(self, flag) is not None and getattr(self, flag) <= 0:
                raise ValueError(f"--{flag} must be positive")
        if self.dist_timeout <= 0:
            raise ValueError(f"--dist_timeout must be positive, got {self.dist_timeout}")
        if self.deepspeed_config and not Path(self.deepspeed_config).is_file():
            raise FileNotFoundError(f"--deepspeed_config {self.deepspeed_config} not found")

    def micro_batch_size(self, world_size: int) -> int:
        per_step = self.gradient_accumulation_steps * world_size
        if self.train_batch_size % per_step:
            raise ValueError(f"--train_batch_size {self.train_batch_size} is not a multiple of "
                             f"--gradient_accumulation_steps x ranks = {per_step}")
        return self.train_batch_size // per_step


@dataclass(kw_only=True)
class SpanSettings(ModelSettings):
    doc_stride: int = setting(128, help="tokens between context window starts")
    max_query_length: int = setting(64, help="question tokens kept")
    n_best_size: int = setting(20, help="answer candidates kept per question")
    max_answer_length: int = setting(30, help="longest answer, in tokens")

    def __post_init__(self):
        super().__post_init__()
        for flag in ("doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
            if getattr(self, flag) <= 0:
                raise ValueError(f"--{flag} must be positive")


def build_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
    """The generated parser plus what it cannot express: --bf16 / --fp16 as shorthands of --precision."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_for(cls, parser=parser)
    for name in ("bf16", "fp16"):
        parser.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                            default=argparse.SUPPRESS, help=f"--precision {name}")
    return parser


def parse_settings(cls, argv=None, description: str | None = None):
    """`cls` from the command line `argv`; bad values raise ValueError / FileNotFoundError."""
    return from_namespace(cls, build_parser(cls, description).parse_args(argv))
