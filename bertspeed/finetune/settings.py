"""The finetuning drivers' settings, each flag declared once (bertspeed.training.settings).

    ModelSettings       model, tokenizer, sequence length, precision, kernels (every driver, predict.py too)
    FinetuneSettings    + output, training and distributed settings (run_glue / run_squad / run_ner)
    SpanSettings        + how answer spans are searched (run_squad, predict.py)

Hugging Face's run_glue / run_qa / run_ner spellings are accepted in one style: where a setting exists
in both, our name is primary and HF's an alias (--model_name_or_path, --per_device_eval_batch_size,
--warmup_ratio, --validation_file); settings new here take HF's names (--do_train, --max_steps,
--save_steps, --report_to, ...). --train_batch_size is the global batch, --per_device_train_batch_size
the micro batch (`batch_sizes`).

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
from typing import ClassVar

from bertspeed.model.layers import FUSED_KERNELS_HELP
from bertspeed.model.unpad import check_one_layout
from bertspeed.training.hardware import PRECISION_HELP, PRECISIONS
from bertspeed.training.pathcheck import check_input_dir, check_input_file, check_model_path, check_output_dir
from bertspeed.training.runs import LATEST
from bertspeed.training.settings import from_namespace, parser_for, setting

DEFAULT_GLOBAL_BATCH = 32
REPORT_TO = ("none", "tensorboard")
OPTIMS = ("adamw", "thor", "momentum")  # Hugging Face's --optim names the optimizer
STRATEGIES = ("no", "steps", "epoch")  # Hugging Face's --eval_strategy / --save_strategy values


def default_of(cls, name: str, value):
    """`cls`'s setting `name` (same flag and help text) with a driver's own default."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=value, metadata=field.metadata)


@dataclass(kw_only=True)
class ModelSettings:
    model_dir: str = setting(
        help="Hugging Face BERT folder, one of our pretraining run dirs (its `latest` checkpoint), a Google TF "
             "checkpoint or an NVIDIA DeepLearningExamples .pt (converted on the fly)",
        aliases=("--model_name_or_path",))
    vocab_file: str | None = setting(None, help="WordPiece vocab (default: vocab.txt of the model folder)")
    do_lower_case: bool | None = setting(
        None, help="lower-case input (default: tokenizer_config.json of the model folder, else the vocab's casing)")
    max_seq_length: int = setting(128, help="tokens per sequence")
    precision: str = setting("auto", help=PRECISION_HELP, choices=PRECISIONS)
    fused_kernels: bool = setting(False, help=FUSED_KERNELS_HELP)
    unpad: bool = setting(False, help="run the encoder on real tokens only (no padding FLOPs; same results)")

    def __post_init__(self):
        if self.max_seq_length < 8 or self.max_seq_length > 4096:
            raise ValueError(f"--max_seq_length {self.max_seq_length} is out of range [8, 4096]")

    INPUT_FILES: ClassVar[tuple[str, ...]] = ("vocab_file",)  # a driver adds its data files
    INPUT_DIRS: ClassVar[tuple[str, ...]] = ()

    def check_paths(self) -> None:
        """Inputs exist and are of the right kind, the output can be written: called by the commands before
        they read or write anything (a PathError names the flag and the path)."""
        check_model_path("--model_dir", self.model_dir)
        for name in self.INPUT_FILES:
            if getattr(self, name):
                check_input_file(f"--{name}", getattr(self, name), text=True)
        for name in self.INPUT_DIRS:
            check_input_dir(f"--{name}", getattr(self, name))


@dataclass(kw_only=True)
class FinetuneSettings(ModelSettings):
    # steps (Hugging Face's switches; none given: train when there is training data, then evaluate and predict)
    do_train: bool = setting(False, help="train (on the driver's training data)")
    do_eval: bool = setting(False, help="score the dev / evaluation set")
    do_predict: bool = setting(False, help="predict the test set (SQuAD: same as --do_eval, on --predict_file)")
    # model and output
    output_dir: str = setting(help="where eval_results.json, metrics.jsonl, model/ and checkpoints go")
    overwrite_output_dir: bool = setting(False, help="start over in an --output_dir holding another run's "
                                                     "checkpoints (they are deleted)")
    no_save_model: bool = setting(False, help="do not write the finetuned model to OUT/model")
    pack: bool = setting(False, help="pack each batch's sequences into as few rows of --max_seq_length as fit "
                                     "(block-diagonal attention, positions per sequence; same results); batches "
                                     "mix lengths (not grouped by length) so that rows fill")
    # training
    num_train_epochs: float = setting(3.0, help="0 evaluates the model as loaded")
    max_steps: int = setting(-1, help="optimizer steps to train; overrides --num_train_epochs (-1: off)")
    learning_rate: float = setting(5e-5, help="peak learning rate (linear warm-up, then linear decay to 0)")
    train_batch_size: int | None = setting(
        None, help=f"GLOBAL batch per optimizer step, all ranks together (DeepSpeed's train_batch_size; NVIDIA's "
                   f"run_squad.py means per GPU): micro batch x --gradient_accumulation_steps x ranks "
                   f"(default: {DEFAULT_GLOBAL_BATCH} unless --per_device_train_batch_size is given)")
    per_device_train_batch_size: int | None = setting(
        None, help="micro batch: sequences per rank per forward pass (Hugging Face's meaning); the global batch is "
                   "this x --gradient_accumulation_steps x ranks")
    eval_batch_size: int = setting(64, help="prediction batch per rank", aliases=("--per_device_eval_batch_size",))
    gradient_accumulation_steps: int = setting(1, help="micro batches per optimizer step")
    warmup_proportion: float = setting(0.1, help="share of steps with linear warm-up", aliases=("--warmup_ratio",))
    weight_decay: float = setting(0.01, help="weight decay (not on biases and LayerNorm)")
    optim: str = setting("adamw", choices=OPTIMS, help="adamw; thor (THOR with the MindSpore BERT-THOR settings "
                                                      "but --learning_rate; fp32, without ZeRO); momentum (SGD, 0.9)")
    max_grad_norm: float = setting(1.0, help="gradient clipping; 0 disables")
    seed: int = setting(42, help="seed of initialisation, data order and dropout")
    no_group_by_length: bool = setting(False, help="plain shuffled batches")
    max_train_samples: int | None = setting(None, help="use only the first N training examples")
    max_eval_samples: int | None = setting(None, help="use only the first N evaluation (and test) examples")
    # logging, evaluation, checkpoints
    logging_steps: int = setting(50, help="optimizer steps between metrics lines")
    eval_steps: int = setting(0, help="optimizer steps between evaluations during training, logged as eval/ "
                                      "metrics lines (0: evaluate only at the end)")
    eval_strategy: str = setting("steps", choices=STRATEGIES, aliases=("--evaluation_strategy",),
                                 help="when to evaluate during training: every --eval_steps, after each epoch, or "
                                      "not (the final evaluation runs anyway)")
    save_strategy: str = setting("steps", choices=STRATEGIES, help="when to write checkpoints: every --save_steps, "
                                                                   "after each epoch, or not (SIGTERM still does)")
    report_to: str = setting("none", help="also write the metrics as TensorBoard events to OUT/tensorboard",
                             choices=REPORT_TO)
    save_steps: int = setting(0, help="optimizer steps between checkpoints OUT/global_stepN (0: only when stopped "
                                      "by SIGTERM/SIGINT)")
    save_total_limit: int | None = setting(None, help="checkpoints kept (the oldest are deleted; default: all)")
    resume: str | None = setting(
        None, optional_value=LATEST, aliases=("--resume_from_checkpoint",), metavar="CHECKPOINT",
        help="continue the run in --output_dir exactly (same data order, losses and weights): alone, from its "
             "newest checkpoint (a fresh start if it has none yet); or from the checkpoint folder given")
    # distributed
    deepspeed_config: str | None = setting(None, help="DeepSpeed JSON; batch flags above override its batch keys")
    deepspeed: str | None = setting(
        None, optional_value="", metavar="CONFIG.json",
        help="Hugging Face's spelling of --deepspeed_config; alone, the launcher's switch (ignored)")
    dist_timeout: float = setting(
        600.0, help="seconds a collective may wait before the run fails instead of hanging")
    local_rank: int = setting(-1, help="set by the deepspeed launcher", aliases=("--local-rank",))

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.deepspeed, bool):  # a settings file from when --deepspeed was only a switch
            self.deepspeed = "" if self.deepspeed else None
        if self.deepspeed:  # one source: the config path lives in deepspeed_config
            if not Path(self.deepspeed).is_file():
                raise FileNotFoundError(f"--deepspeed {self.deepspeed} not found")
            if self.deepspeed_config and self.deepspeed_config != self.deepspeed:
                raise ValueError(f"--deepspeed {self.deepspeed} and --deepspeed_config {self.deepspeed_config} "
                                 "name different files: give one")
            self.deepspeed_config = self.deepspeed
        check_one_layout(self.unpad, self.pack)
        if self.num_train_epochs < 0:
            raise ValueError(f"--num_train_epochs must be >= 0, got {self.num_train_epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be positive (or -1: off), got {self.max_steps}")
        for flag in ("gradient_accumulation_steps", "eval_batch_size", "logging_steps"):
            if getattr(self, flag) <= 0:
                raise ValueError(f"--{flag} must be > 0, got {getattr(self, flag)}")
        if not 0 <= self.warmup_proportion < 1:
            raise ValueError(f"--warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        for flag in ("eval_steps", "save_steps"):
            if getattr(self, flag) < 0:
                raise ValueError(f"--{flag} must be >= 0, got {getattr(self, flag)}")
        for flag in ("max_train_samples", "max_eval_samples", "save_total_limit", "train_batch_size",
                     "per_device_train_batch_size"):
            if getattr(self, flag) is not None and getattr(self, flag) <= 0:
                raise ValueError(f"--{flag} must be positive, got {getattr(self, flag)}")
        if self.dist_timeout <= 0:
            raise ValueError(f"--dist_timeout must be positive, got {self.dist_timeout}")
        if self.deepspeed_config and not Path(self.deepspeed_config).is_file():
            raise FileNotFoundError(f"--deepspeed_config {self.deepspeed_config} not found")
        if self.resume and self.overwrite_output_dir:
            raise ValueError("--resume and --overwrite_output_dir contradict each other: give one")
        if self.resume not in (None, LATEST) and not Path(self.resume).is_dir():
            raise FileNotFoundError(f"--resume {self.resume}: no such checkpoint folder")

    INPUT_FILES: ClassVar[tuple[str, ...]] = ("vocab_file", "deepspeed_config")

    def check_paths(self) -> None:
        super().check_paths()
        check_output_dir("--output_dir", self.output_dir)

    def steps(self, has_train_data: bool) -> tuple[bool, bool, bool]:
        """(train, evaluate, predict): the --do_* switches given, else train when there is training
        data (and epochs or steps to run), evaluate and predict."""
        if self.do_train or self.do_eval or self.do_predict:
            if self.do_train and not has_train_data:
                raise ValueError("--do_train needs training data (the driver's training file)")
            steps = self.do_train, self.do_eval, self.do_predict
        else:
            steps = has_train_data and (self.num_train_epochs > 0 or self.max_steps > 0), True, True
        if self.resume and not steps[0]:
            raise ValueError("--resume continues training, and this run does not train (to score a finished "
                             "run, point --model_name_or_path at its OUT/model)")
        return steps

    def batch_sizes(self, world_size: int) -> dict:
        """micro (per rank), accumulation, world and global batch, from either batch flag; a pair that
        disagrees, or a global batch that does not divide, is an error naming the flags."""
        per_step = self.gradient_accumulation_steps * world_size
        micro = self.per_device_train_batch_size
        if micro is not None:
            if self.train_batch_size is not None and self.train_batch_size != micro * per_step:
                raise ValueError(f"--train_batch_size {self.train_batch_size} (global) disagrees with "
                                 f"--per_device_train_batch_size {micro} x --gradient_accumulation_steps "
                                 f"{self.gradient_accumulation_steps} x {world_size} ranks = {micro * per_step}")
        else:
            total = self.train_batch_size or DEFAULT_GLOBAL_BATCH
            if total % per_step:
                raise ValueError(f"--train_batch_size {total} is not a multiple of "
                                 f"--gradient_accumulation_steps x ranks = {per_step}")
            micro = total // per_step
        return {"micro": micro, "accumulation": self.gradient_accumulation_steps, "world": world_size,
                "global": micro * per_step}

    def micro_batch_size(self, world_size: int) -> int:
        return self.batch_sizes(world_size)["micro"]


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
                raise ValueError(f"--{flag} must be positive, got {getattr(self, flag)}")


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
