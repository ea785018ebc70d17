"""Export a pretraining run's checkpoint as a Hugging Face folder (config.json, model.safetensors,
vocab.txt) that transformers.BertForPreTraining.from_pretrained and our finetuning load.

    python -m bertspeed.pretrain.export RUN_DIR --output_dir HF_DIR [--tag global_stepN]

The old name of `python -m bertspeed.convert` (which reads any checkpoint, run directories included).
"""
from __future__ import annotations

import sys

from bertspeed import convert


def main(argv=None) -> int:
    return convert.main(argv, prog="python -m bertspeed.pretrain.export", error_prefix="pretrain.export: error")


if __name__ == "__main__":
    sys.exit(main())
