"""BERT pretraining with DeepSpeed (phase 1 or 2): `deepspeed --num_gpus N pretrain/run_pretraining.py --deepspeed_config ds_configs/X.json ...`. The code lives in `bertspeed.pretrain.run_pretraining`; this file is the entry point
by path, for the deepspeed launcher and for `python pretrain/run_pretraining.py`."""
import sys
from pathlib import Path

# This checkout's bertspeed (replacing this folder on sys.path, whose files must not shadow anything).
sys.path[0] = str(Path(__file__).resolve().parents[1])
from bertspeed.pretrain.run_pretraining import main  # noqa: E402
from bertspeed.training.distributed import exit_process  # noqa: E402

if __name__ == "__main__":
    exit_process(main())
