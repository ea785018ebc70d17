"""`python -m pretrain.export RUN_DIR --output_dir HF_DIR` from the repository root, as before the
move to the bertspeed package: the same as `bertspeed export` (bertspeed/convert.py)."""
import sys

from bertspeed.pretrain.export import main

if __name__ == "__main__":
    sys.exit(main())
