"""Convert any checkpoint we can read into a Hugging Face folder.

    python -m bertspeed.convert SRC --output_dir HF_DIR [--vocab_file vocab.txt]

SRC: a Hugging Face folder (safetensors or pytorch_model.bin, with or without the
`bert.` prefix, legacy gamma/beta names), one of our pretraining run directories
(its latest checkpoint), or a weights file together with --config_file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertspeed.model.checkpoint import (
    CheckpointError,
    find_vocab,
    load_state_dict_into,
    read_state_dict,
    resolve_model_dir,
    save_pretrained,
)
from bertspeed.model.config import BertConfig
from bertspeed.model.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from bertspeed.model.model import BertForPreTraining, BertModel


def model_class_for(keys: set[str], config: BertConfig):
    """The model whose heads the checkpoint holds."""
    if any(k.startswith("cls.predictions") for k in keys):
        return BertForPreTraining
    if any(k.startswith("qa_outputs.") for k in keys):
        return BertForQuestionAnswering
    if any(k.startswith("classifier.") for k in keys):
        token_level = "BertForTokenClassification" in config.extra.get("architectures", [])
        return BertForTokenClassification if token_level else BertForSequenceClassification
    return BertModel


def convert(src, output_dir, config_file=None, vocab_file=None) -> str:
    src = Path(src)
    if src.is_file():
        if config_file is None:
            raise CheckpointError(f"{src}: a weights file needs --config_file")
        weights, folder = src, src.parent
    else:
        folder = weights = resolve_model_dir(src)
    config = BertConfig.from_json_file(config_file or folder / "config.json")
    state = read_state_dict(weights)
    model = model_class_for(set(state), config)(config)
    report = load_state_dict_into(model, state, str(weights))
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    vocab = vocab_file or find_vocab(folder)
    save_pretrained(model, output_dir, vocab)
    return f"{report.summary()}\nwrote {type(model).__name__} to {output_dir}" + ("" if vocab else " (no vocab.txt found)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertspeed.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="Hugging Face folder, pretraining run directory, or weights file")
    parser.add_argument("--output_dir", required=True, help="Hugging Face folder to write")
    parser.add_argument("--config_file", help="config.json, when SRC is a bare weights file")
    parser.add_argument("--vocab_file", help="vocab.txt to copy (default: the one beside SRC)")
    args = parser.parse_args(argv)
    try:
        print(convert(args.src, args.output_dir, args.config_file, args.vocab_file))
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
