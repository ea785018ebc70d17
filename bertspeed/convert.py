"""Convert any checkpoint we can read into a Hugging Face folder (config.json, model.safetensors, vocab.txt,
tokenizer_config.json, special_tokens_map.json).

    python -m bertspeed.convert SRC --output_dir HF_DIR [--tag global_stepN] [--vocab_file vocab.txt]
    python -m bertspeed.convert WEIGHTS --config_file config.json --output_dir HF_DIR
    python -m bertspeed.convert uncased_L-12_H-768_A-12/bert_model.ckpt --output_dir HF_DIR   # Google TF
    python -m bertspeed.convert bert_large_qa.pt --config_file bert_config.json --vocab_file vocab.txt --output_dir HF_DIR

SRC: a Hugging Face folder (safetensors or pytorch_model.bin, with or without the `bert.` prefix, legacy
gamma/beta names), one of our pretraining run directories (its latest checkpoint, or the one --tag names),
a Google BERT TensorFlow checkpoint (its prefix, .index file or folder; read without TensorFlow), an NVIDIA
DeepLearningExamples .pt (or any torch.save file; objects other than tensors are not loaded, and reported),
or a weights file. config.json or bert_config.json is taken from beside SRC unless --config_file names one.
The model class is the one config.json's `architectures` names (else the one the checkpoint's keys
suggest); heads that do not fit it are an error naming the keys. The casing (do_lower_case) is the flag,
else the source's tokenizer_config.json, else what the vocab says; it is written to tokenizer_config.json.
`python -m bertspeed.pretrain.export` is this command under its old name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertspeed.model.architectures import build_model
from bertspeed.model.checkpoint import CheckpointError, resolve_model_dir, save_pretrained
from bertspeed.model.foreign import Opened, check_complete, open_checkpoint
from bertspeed.model.tokenizer import read_vocab
from bertspeed.model.tokenizer_config import decide_do_lower_case
from bertspeed.training.pathcheck import PathError, check_input_file, check_output_dir
from bertspeed.training.runs import list_tags


def checkpoint_folder(src: Path, tag: str) -> Path:
    """The folder holding the weights of the run directory's checkpoint TAG."""
    if not tag or Path(tag).name != tag:
        raise CheckpointError(f"--tag {tag!r}: expected the name of a checkpoint folder such as global_step1000")
    if not (src / tag).is_dir():
        tags = ", ".join(name for _, name in list_tags(src)) or "none"
        raise FileNotFoundError(f"{src}: no checkpoint {tag!r} (checkpoints there: {tags})")
    return resolve_model_dir(src / tag)


def open_source(src: Path, config_file, tag) -> Opened:
    if tag is not None:
        if src.is_file():
            raise CheckpointError(f"{src}: --tag needs a run directory, not a weights file")
        return open_checkpoint(checkpoint_folder(src, tag), config_file)
    return open_checkpoint(src, config_file)


def build(opened: Opened):
    """(model, LoadReport): the class config.json names (else the keys suggest); a foreign checkpoint must
    fill it exactly (errors name the source's variable)."""
    check_complete(opened)
    return build_model(opened.config, opened.state, opened.source)


def convert(src, output_dir, config_file=None, vocab_file=None, tag=None, do_lower_case=None) -> str:
    if vocab_file is not None and not Path(vocab_file).is_file():
        raise FileNotFoundError(f"--vocab_file {vocab_file} not found")
    opened = open_source(Path(src), config_file, tag)
    model, report = build(opened)
    vocab = Path(vocab_file) if vocab_file else opened.vocab
    if vocab is not None:
        do_lower_case = decide_do_lower_case(read_vocab(vocab), vocab, do_lower_case, opened.folder)
    save_pretrained(model, output_dir, vocab, do_lower_case)
    lines = [*opened.notes, report.summary(), f"wrote {type(model).__name__} to {output_dir}"
             + (f" (do_lower_case {str(do_lower_case).lower()})" if vocab else " (no vocab.txt found)")]
    return "\n".join(lines)


def main(argv=None, prog: str = "python -m bertspeed.convert", error_prefix: str = "error") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="Hugging Face folder, pretraining run directory, Google TF checkpoint, NVIDIA .pt, "
                                    "or weights file")
    parser.add_argument("--output_dir", required=True, help="Hugging Face folder to write")
    parser.add_argument("--tag", help="a run directory's checkpoint such as global_step1000 (default: latest)")
    parser.add_argument("--config_file", help="config.json or bert_config.json (default: the one beside SRC)")
    parser.add_argument("--vocab_file", help="vocab.txt to copy (default: the one beside SRC)")
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None,
                        help="casing to record (default: the source's tokenizer_config.json, else the vocab's)")
    args = parser.parse_args(argv)
    try:
        check_output_dir("--output_dir", args.output_dir)
        for flag, path in (("--vocab_file", args.vocab_file), ("--config_file", args.config_file)):
            if path:
                check_input_file(flag, path, text=True)
    except PathError as e:
        print(f"{error_prefix}: {e}", file=sys.stderr)
        return 2
    try:
        print(convert(args.src, args.output_dir, args.config_file, args.vocab_file, args.tag, args.do_lower_case))
    except (CheckpointError, FileNotFoundError, ValueError) as e:  # what was read: the source
        message = str(e) if str(e).startswith("--") else f"src {args.src}: {e}"
        print(f"{error_prefix}: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
