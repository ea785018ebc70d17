"""Plot loss, accuracy and learning-rate curves of one or more runs from their metrics.jsonl.

    python -m bertspeed.training.plot RUN_DIR [RUN_DIR ...] --output curves.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertspeed.training.pathcheck import PathError, check_output_file

PANELS = (("train/loss", "eval/loss"), ("train/mlm_loss", "train/nsp_loss"),
          ("eval/mlm_acc", "eval/nsp_acc"), ("optim/lr",))


def plot(run_dirs: list[str], output: str) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'bertspeed[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bertspeed.training.metrics import read_metrics

    runs = {str(d): read_metrics(d) for d in run_dirs}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for ax, keys in zip(axes, PANELS):
        for name, records in runs.items():
            for key in keys:
                points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
                if points:
                    ax.plot(*zip(*points), label=f"{Path(name).name} {key}", marker="." if len(points) < 50 else None)
        ax.set_title(" / ".join(keys))
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Draw loss/accuracy/lr curves of runs (metrics.jsonl) into one PNG.")
    parser.add_argument("run_dirs", nargs="+", help="output_dir of run_pretraining.py (or a metrics.jsonl)")
    parser.add_argument("--output", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        for run in args.run_dirs:
            if not Path(run).exists():
                raise PathError(f"run_dirs {run}: does not exist")
        check_output_file("--output", args.output)
        print(f"wrote {plot(args.run_dirs, args.output)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"pretrain.plot: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
