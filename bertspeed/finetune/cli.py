"""Start-up shared by the drivers (runtime, model, tokenizer, trainer) and their error reporting.
Their flags are the settings dataclasses of bertspeed.finetune.settings."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bertspeed.finetune.checkpoint import prepare_output_dir
from bertspeed.finetune.settings import FinetuneSettings, ModelSettings
from bertspeed.finetune.trainer import Trainer, set_seed
from bertspeed.model.foreign import from_opened, open_checkpoint
from bertspeed.model.layers import use_fused_kernels
from bertspeed.model.tokenizer import BertTokenizer, read_vocab
from bertspeed.model.tokenizer_config import decide_do_lower_case
from bertspeed.model.unpad import set_pack, set_unpad
from bertspeed.training.atomic import write_json_atomic
from bertspeed.training.distributed import Runtime, setup_runtime, shutdown_distributed
from bertspeed.training.hardware import Precision, choose_precision, host_info
from bertspeed.training.metrics import summary_writer_class
from bertspeed.training.settings import as_dict
from bertspeed.training.signals import EXIT_SIGNALLED, StoppedBySignal


def resolve_precision(flag: str, deepspeed_config: str | None, device: torch.device) -> Precision:
    ds_config = json.loads(Path(deepspeed_config).read_text()) if deepspeed_config else None
    return choose_precision(flag, ds_config, device.type, config_name=f"--deepspeed_config {deepspeed_config}")


def use_requested_kernels(settings: ModelSettings) -> None:
    """--fused_kernels switches the model's LayerNorm and attention to bertspeed's fused ops."""
    if settings.fused_kernels:
        use_fused_kernels(True)


def load_tokenizer(folder: Path, vocab_file=None, do_lower_case=None) -> tuple[BertTokenizer, Path]:
    """The model folder's vocab.txt (or --vocab_file) with its casing: --do_lower_case, else the folder's
    tokenizer_config.json, else the vocab's own (a cased vocab stays cased); a contradiction is warned about."""
    vocab = Path(vocab_file) if vocab_file else folder / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"vocab file not found: {vocab} (pass --vocab_file)")
    tokens = read_vocab(vocab)
    return BertTokenizer(tokens, decide_do_lower_case(tokens, vocab, do_lower_case, folder)), vocab


def start(settings: FinetuneSettings, model_class, trains: bool = True, **config_changes):
    """Runtime, seed, model (task head created when absent, reported), tokenizer and trainer. A run
    that `trains` checks --output_dir for checkpoints (refused, overwritten or resumed)."""
    rt: Runtime = setup_runtime(settings.deepspeed_config, settings.dist_timeout, settings.local_rank)
    settings.batch_sizes(rt.world_size)  # a batch that does not fit the ranks fails before anything is written
    check_report_to(settings.report_to)
    resume_from = prepare_output_dir(settings, rt.is_main) if trains else None
    use_requested_kernels(settings)
    set_seed(settings.seed)
    source = open_checkpoint(settings.model_dir)  # any checkpoint we read, converted in memory
    tokenizer, vocab = load_tokenizer(source.folder, settings.vocab_file, settings.do_lower_case)
    model, report = from_opened(model_class, source, **config_changes)
    set_unpad(model, settings.unpad)
    set_pack(model, settings.max_seq_length if settings.pack else None)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"{vocab} has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}")
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(settings.precision, settings.deepspeed_config, rt.device)
    if rt.is_main:
        print("\n".join([*source.notes, report.summary()]))
        print(f"precision: {precision}", flush=True)
        write_json_atomic(output_dir / "run_config.json", {
            "args": as_dict(settings), "precision": precision.as_dict(), "host": host_info(precision.name),
            "world_size": rt.world_size, "deepspeed": rt.use_deepspeed})
    trainer = Trainer(model, settings, rt, precision.name, resume_from)
    return trainer, tokenizer, vocab


def check_report_to(report_to: str) -> None:
    if report_to == "tensorboard":
        try:
            summary_writer_class()
        except ImportError:
            raise ValueError("--report_to tensorboard needs the tensorboard package "
                             "(pip install bertspeed[tensorboard])") from None


def main_guard(main, argv=None) -> int:
    """Run `main(argv)`; bad input (missing file, bad value) ends with a one-line error and exit code 2,
    a stop by SIGTERM/SIGINT (after its checkpoint) with EXIT_SIGNALLED."""
    try:
        main(argv)
        shutdown_distributed()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StoppedBySignal as e:
        print(str(e), file=sys.stderr)
        shutdown_distributed()
        return EXIT_SIGNALLED
    return 0
