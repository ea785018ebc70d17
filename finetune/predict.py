"""Inference with a finetuned model: `python finetune/predict.py --model_dir OUT --sentence ...`. The code lives in `bertspeed.finetune.predict`; this file is the entry point
by path, for the deepspeed launcher and for `python finetune/predict.py`."""
import sys
from pathlib import Path

# This checkout's bertspeed (replacing this folder on sys.path, whose files must not shadow anything).
sys.path[0] = str(Path(__file__).resolve().parents[1])
from bertspeed.finetune.predict import entry  # noqa: E402
from bertspeed.training.distributed import exit_process  # noqa: E402

if __name__ == "__main__":
    exit_process(entry())
