"""Command-line flags, model / tokenizer loading and error reporting shared by the drivers."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bertspeed.finetune.trainer import TrainConfig, Trainer, set_seed
from bertspeed.model.checkpoint import from_pretrained, resolve_model_dir
from bertspeed.model.tokenizer import BertTokenizer
from bertspeed.training.atomic import write_json_atomic
from bertspeed.training.distributed import Runtime, setup_runtime, shutdown_distributed
from bertspeed.training.hardware import PRECISIONS, Precision, choose_precision, host_info


def add_common_args(parser: argparse.ArgumentParser, *, learning_rate: float, epochs: float,
                    batch_size: int, max_seq_length: int) -> None:
    g = parser.add_argument_group("model and output")
    g.add_argument("--model_dir", required=True,
                   help="Hugging Face BERT folder, or one of our pretraining run dirs (its `latest` checkpoint)")
    g.add_argument("--output_dir", required=True, help="where eval_results.json, metrics.jsonl, model/ go")
    g.add_argument("--vocab_file", help="WordPiece vocab (default: vocab.txt of the model folder)")
    g.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None,
                   help="lower-case input (default: tokenizer_config.json of the model folder, else yes)")
    g.add_argument("--max_seq_length", type=int, default=max_seq_length, help="tokens per sequence")
    g.add_argument("--no_save_model", action="store_true", help="do not write the finetuned model to OUT/model")
    g = parser.add_argument_group("training")
    g.add_argument("--num_train_epochs", type=float, default=epochs, help="0 evaluates the model as loaded")
    g.add_argument("--learning_rate", type=float, default=learning_rate)
    g.add_argument("--train_batch_size", type=int, default=batch_size,
                   help="global batch: micro batch x gradient accumulation x ranks")
    g.add_argument("--eval_batch_size", type=int, default=64, help="per-rank prediction batch")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--warmup_proportion", type=float, default=0.1, help="share of steps with linear warm-up")
    g.add_argument("--weight_decay", type=float, default=0.01)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping; 0 disables")
    g.add_argument("--seed", type=int, default=42)
    add_precision_args(g)
    g.add_argument("--no_group_by_length", action="store_true", help="plain shuffled batches")
    g.add_argument("--logging_steps", type=int, default=50, help="optimizer steps between metrics lines")
    g.add_argument("--eval_steps", type=int, default=0,
                   help="optimizer steps between evaluations during training, logged as eval/ metrics lines "
                        "(0: evaluate only at the end)")
    g.add_argument("--max_train_samples", type=int, help="use only the first N training examples")
    g.add_argument("--max_eval_samples", type=int, help="use only the first N evaluation (and test) examples")
    g = parser.add_argument_group("distributed")
    g.add_argument("--deepspeed_config", help="DeepSpeed JSON; batch flags above override its batch keys")
    g.add_argument("--deepspeed", action="store_true", help="accepted for launcher compatibility")
    g.add_argument("--dist_timeout", type=float, default=600.0,
                   help="seconds a collective may wait before the run fails instead of hanging (default: 600)")
    g.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")


def add_precision_args(group) -> None:
    group.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: bf16 where it is native and faster (CUDA with bf16; a CPU where oneDNN reports "
                            "native bf16 and a timing probe confirms), fp16 on other CUDA devices, fp32 otherwise. "
                            "An explicit value overrides the DeepSpeed config's bf16/fp16 sections, which otherwise "
                            "win over auto. Autocast without DeepSpeed (fp16 with a gradient scaler), DeepSpeed's "
                            "bf16/fp16 modes with it (default: %(default)s)")
    group.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="--precision bf16")
    group.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="--precision fp16")


def resolve_precision(flag: str, deepspeed_config: str | None, device: torch.device) -> Precision:
    ds_config = json.loads(Path(deepspeed_config).read_text()) if deepspeed_config else None
    return choose_precision(flag, ds_config, device.type, config_name=f"--deepspeed_config {deepspeed_config}")


def check_common_args(args) -> None:
    if args.max_seq_length < 8 or args.max_seq_length > 4096:
        raise ValueError(f"--max_seq_length {args.max_seq_length} is out of range [8, 4096]")
    for flag in ("max_train_samples", "max_eval_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise ValueError(f"--{flag} must be positive")
    if args.dist_timeout <= 0:
        raise ValueError(f"--dist_timeout must be positive, got {args.dist_timeout}")
    if args.deepspeed_config and not Path(args.deepspeed_config).is_file():
        raise FileNotFoundError(f"--deepspeed_config {args.deepspeed_config} not found")


def train_config(args, precision: str) -> TrainConfig:
    return TrainConfig(
        num_train_epochs=args.num_train_epochs, learning_rate=args.learning_rate,
        train_batch_size=args.train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_proportion=args.warmup_proportion, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, precision=precision,
        group_by_length=not args.no_group_by_length, logging_steps=args.logging_steps,
        eval_steps=args.eval_steps, deepspeed_config=args.deepspeed_config)


def load_tokenizer(folder: Path, vocab_file=None, do_lower_case=None) -> tuple[BertTokenizer, Path]:
    vocab = Path(vocab_file) if vocab_file else folder / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"vocab file not found: {vocab} (pass --vocab_file)")
    if do_lower_case is None:
        tok_config = folder / "tokenizer_config.json"
        do_lower_case = json.loads(tok_config.read_text()).get("do_lower_case", True) if tok_config.is_file() else True
    return BertTokenizer.from_vocab_file(vocab, do_lower_case=do_lower_case), vocab


def start(args, model_class, **config_changes):
    """Runtime, seed, model (task head created when absent, reported), tokenizer and trainer."""
    check_common_args(args)
    rt: Runtime = setup_runtime(args.deepspeed_config, args.dist_timeout, args.local_rank)
    set_seed(args.seed)
    folder = resolve_model_dir(args.model_dir)
    tokenizer, vocab = load_tokenizer(folder, args.vocab_file, args.do_lower_case)
    model, report = from_pretrained(model_class, folder, **config_changes)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"{vocab} has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(args.precision, args.deepspeed_config, rt.device)
    if rt.is_main:
        print(report.summary())
        print(f"precision: {precision}", flush=True)
        write_json_atomic(output_dir / "run_config.json", {
            "args": vars(args), "precision": precision.as_dict(), "host": host_info(precision.name),
            "world_size": rt.world_size, "deepspeed": rt.use_deepspeed}, default=str)
    trainer = Trainer(model, train_config(args, precision.name), rt, output_dir)
    return trainer, tokenizer, vocab


def main_guard(main, argv=None) -> int:
    """Run `main(argv)`; bad input (missing file, bad value) ends with a one-line error and exit code 2."""
    try:
        main(argv)
        shutdown_distributed()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
