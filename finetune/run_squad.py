"""SQuAD v1.1/v2.0 finetuning: `python finetune/run_squad.py --train_file ... --predict_file ...`. The code lives in `bertspeed.finetune.run_squad`; this file is the entry point
by path, for the deepspeed launcher and for `python finetune/run_squad.py`."""
import sys
from pathlib import Path

# This checkout's bertspeed (replacing this folder on sys.path, whose files must not shadow anything).
sys.path[0] = str(Path(__file__).resolve().parents[1])
from bertspeed.finetune.run_squad import entry  # noqa: E402
from bertspeed.training.distributed import exit_process  # noqa: E402

if __name__ == "__main__":
    exit_process(entry())
