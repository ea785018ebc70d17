"""Export a pretraining run's checkpoint as a Hugging Face folder (config.json, model.safetensors,
vocab.txt) that transformers.BertForPreTraining.from_pretrained and our finetuning load.

    python -m bertspeed.pretrain.export OUT --output_dir HF_DIR [--tag global_stepN]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertspeed.model.checkpoint import CheckpointError, find_vocab, read_state_dict, resolve_model_dir, save_hf_folder
from bertspeed.model.config import BertConfig


def export(run_dir, output_dir, tag: str | None = None) -> Path:
    folder = Path(run_dir) / tag if tag else resolve_model_dir(run_dir)
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder}: no model.safetensors (is this a checkpoint of pretrain/run_pretraining.py?)")
    config = BertConfig.from_json_file(folder / "config.json")
    state = read_state_dict(folder / "model.safetensors")
    return save_hf_folder(output_dir, config, state, find_vocab(folder))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the latest (or --tag) checkpoint of a pretraining "
                                                 "run as a Hugging Face BERT folder.")
    parser.add_argument("run_dir", help="output_dir of run_pretraining.py (holds 'latest'), or a tag folder")
    parser.add_argument("--output_dir", required=True, help="Hugging Face folder to write")
    parser.add_argument("--tag", default=None, help="a checkpoint tag such as global_step1000 (default: latest)")
    args = parser.parse_args(argv)
    try:
        out = export(args.run_dir, args.output_dir, args.tag)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"pretrain.export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
