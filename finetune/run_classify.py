"""Own-data classification / regression: `python finetune/run_classify.py --train_file train.json
--validation_file dev.json --model_dir MODEL --output_dir OUT`. The code lives in
`bertspeed.finetune.run_classify`; this file is the entry point by path, for the deepspeed launcher
and for `python finetune/run_classify.py`."""
import sys
from pathlib import Path

# This checkout's bertspeed (replacing this folder on sys.path, whose files must not shadow anything).
sys.path[0] = str(Path(__file__).resolve().parents[1])
from bertspeed.finetune.run_classify import entry  # noqa: E402
from bertspeed.training.distributed import exit_process  # noqa: E402

if __name__ == "__main__":
    exit_process(entry())
