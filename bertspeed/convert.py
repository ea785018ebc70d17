"""Convert any checkpoint we can read into a Hugging Face folder (config.json, model.safetensors, vocab.txt).

    python -m bertspeed.convert SRC --output_dir HF_DIR [--tag global_stepN] [--vocab_file vocab.txt]
    python -m bertspeed.convert WEIGHTS --config_file config.json --output_dir HF_DIR

SRC: a Hugging Face folder (safetensors or pytorch_model.bin, with or without the `bert.` prefix, legacy
gamma/beta names), one of our pretraining run directories (its latest checkpoint, or the one --tag names),
or a weights file together with --config_file. The model class is the one config.json's `architectures`
names (else the one the checkpoint's keys suggest); heads that do not fit it are an error naming the keys.
`python -m bertspeed.pretrain.export` is this command under its old name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertspeed.model.architectures import build_model
from bertspeed.model.checkpoint import CheckpointError, find_vocab, read_state_dict, resolve_model_dir, save_pretrained
from bertspeed.model.config import BertConfig
from bertspeed.training.runs import list_tags


def checkpoint_folder(src: Path, tag: str | None) -> Path:
    """The folder holding the weights: SRC resolved (a run directory's latest), or SRC/TAG."""
    if tag is None:
        return resolve_model_dir(src)
    if not tag or Path(tag).name != tag:
        raise CheckpointError(f"--tag {tag!r}: expected the name of a checkpoint folder such as global_step1000")
    if not (src / tag).is_dir():
        tags = ", ".join(name for _, name in list_tags(src)) or "none"
        raise FileNotFoundError(f"{src}: no checkpoint {tag!r} (checkpoints there: {tags})")
    return resolve_model_dir(src / tag)


def locate(src: Path, config_file, tag) -> tuple[Path, Path]:
    """(weights file or folder, folder beside it that holds config.json / vocab.txt)."""
    if not src.is_file():
        folder = checkpoint_folder(src, tag)
        return folder, folder
    if config_file is None:
        raise CheckpointError(f"{src}: a weights file needs --config_file")
    if tag is not None:
        raise CheckpointError(f"{src}: --tag needs a run directory, not a weights file")
    return src, src.parent


def convert(src, output_dir, config_file=None, vocab_file=None, tag=None) -> str:
    weights, folder = locate(Path(src), config_file, tag)
    if vocab_file is not None and not Path(vocab_file).is_file():
        raise FileNotFoundError(f"--vocab_file {vocab_file} not found")
    config = BertConfig.from_json_file(config_file or folder / "config.json")
    model, report = build_model(config, read_state_dict(weights), str(weights))
    vocab = vocab_file or find_vocab(folder)
    save_pretrained(model, output_dir, vocab)
    return f"{report.summary()}\nwrote {type(model).__name__} to {output_dir}" + ("" if vocab else " (no vocab.txt found)")


def main(argv=None, prog: str = "python -m bertspeed.convert", error_prefix: str = "error") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="Hugging Face folder, pretraining run directory, or weights file")
    parser.add_argument("--output_dir", required=True, help="Hugging Face folder to write")
    parser.add_argument("--tag", help="a run directory's checkpoint such as global_step1000 (default: latest)")
    parser.add_argument("--config_file", help="config.json, when SRC is a bare weights file")
    parser.add_argument("--vocab_file", help="vocab.txt to copy (default: the one beside SRC)")
    args = parser.parse_args(argv)
    try:
        print(convert(args.src, args.output_dir, args.config_file, args.vocab_file, args.tag))
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"{error_prefix}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
