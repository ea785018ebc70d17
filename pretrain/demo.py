"""The whole pipeline on a laptop CPU: sample data -> data prep -> phase 1 and phase 2
pretraining (two local ranks through the deepspeed launcher) -> SQuAD finetuning -> report.

    python -m pretrain.demo [--output_dir demo_out] [--size default|ci]

Every stage writes OUTPUT_DIR/<stage>/ and a `.done` marker last; a second run reuses
finished stages, and an interrupted pretraining phase resumes from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bert.atomic import write_json_atomic
from bert.tokenizer import read_vocab
from data_prep.schema import phase_dir_name
from pretrain import report
from pretrain.sample_data import prepare_sample_data

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoSize:
    """How much of everything the demo does. `default` fits 20 minutes on 2 cores."""
    corpus_articles: int  # SQuAD train articles used as the pretraining corpus (held-out ones excluded)
    heldout_articles: int
    hidden_size: int
    num_hidden_layers: int
    phase1_steps: int
    phase1_micro_batch: int
    phase1_learning_rate: float
    phase2_steps: int
    phase2_micro_batch: int
    phase2_seq_len: int
    squad_train_questions: int
    squad_eval_questions: int
    squad_epochs: float


SIZES = {
    "default": DemoSize(corpus_articles=400, heldout_articles=20, hidden_size=256, num_hidden_layers=4,
                        phase1_steps=600, phase1_micro_batch=32, phase1_learning_rate=5e-3,
                        phase2_steps=30, phase2_micro_batch=4, phase2_seq_len=512,
                        squad_train_questions=2500, squad_eval_questions=1000, squad_epochs=1.0),
    "ci": DemoSize(corpus_articles=40, heldout_articles=4, hidden_size=64, num_hidden_layers=2,
                   phase1_steps=60, phase1_micro_batch=16, phase1_learning_rate=5e-3,
                   phase2_steps=6, phase2_micro_batch=4, phase2_seq_len=256,
                   squad_train_questions=300, squad_eval_questions=100, squad_epochs=1.0),
}
WORLD_SIZE = 2


def stage_done(path: Path) -> bool:
    return (path / ".done").is_file()


def mark_done(path: Path, info: dict) -> None:
    write_json_atomic(path / ".done", info)


def run(cmd: list[str], log: Path) -> float:
    """Run a command with its output shown live and kept in `log`; returns seconds taken."""
    print(f"\n$ {' '.join(map(str, cmd))}", flush=True)
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as sink:
        proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, cwd=ROOT)
        for line in proc.stdout:
            sys.stdout.write(line)
            sink.write(line)
        if proc.wait() != 0:
            raise SystemExit(f"demo: command failed (exit {proc.returncode}); its output is in {log}")
    return time.perf_counter() - start


def data_prep_stage(out: Path, data: dict, size: DemoSize) -> None:
    stage = out / "shards"
    if stage_done(stage):
        return
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    log, py = stage / "log.txt", sys.executable
    seconds = 0.0
    phases = [(128, 20), (size.phase2_seq_len, size.phase2_seq_len * 20 // 128)]
    for split in ("train", "heldout"):
        sentences = stage / f"{split}_sentences"
        seconds += run([py, "-m", "data_prep.extract", "--input", data[f"{split}_corpus"], "--input_format", "text",
                        "--output_dir", sentences, "--workers", WORLD_SIZE, "--num_shards", 2], log)
        seconds += run([py, "-m", "data_prep.create_pretraining_data", "--input", sentences,
                        "--vocab_file", data["vocab"], "--output_dir", stage / split, "--phases", *(f"{n}:{p}" for n, p in phases),
                        "--do_lower_case", "--dupe_factor", 1 if split == "heldout" else 3,
                        "--num_shards", 2 * WORLD_SIZE if split == "train" else WORLD_SIZE,
                        "--workers", WORLD_SIZE, "--random_seed", 12345], log)
    corpus_mb = data["train_corpus"].stat().st_size / 1e6 + data["heldout_corpus"].stat().st_size / 1e6
    mark_done(stage, {"corpus_mb": corpus_mb, "seconds": seconds, "mb_per_s": corpus_mb / seconds,
                      "phase_dirs": [phase_dir_name(n, p) for n, p in phases]})


def model_config(out: Path, size: DemoSize, vocab_size: int) -> Path:
    from bert import BertConfig
    heads = max(1, size.hidden_size // 64)
    # No dropout: a run this short underfits, and dropout only slows it down (and costs ~15 % of a CPU step).
    config = BertConfig(vocab_size=vocab_size, hidden_size=size.hidden_size,
                        num_hidden_layers=size.num_hidden_layers, num_attention_heads=heads,
                        intermediate_size=4 * size.hidden_size, max_position_embeddings=512,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = out / "model_config.json"
    config.to_json_file(path)
    return path


def ds_config(out: Path, name: str, micro_batch: int, lr: float) -> Path:
    config = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
              "train_batch_size": micro_batch * WORLD_SIZE, "gradient_clipping": 1.0,
              "steps_per_print": 10 ** 9, "bf16": {"enabled": True},
              "optimizer": {"type": "Lamb", "params": {"lr": lr, "weight_decay": 0.01,
                                                        "betas": [0.9, 0.999], "eps": 1e-6}},
              "zero_optimization": {"stage": 1}}
    path = out / f"ds_{name}.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def pretrain_stage(out: Path, name: str, shards: Path, eval_shards: Path, config: Path, ds: Path,
                   steps: int, vocab: Path, init: Path | None = None) -> None:
    run_dir = out / name
    if stage_done(run_dir):
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed",
           "--num_gpus", WORLD_SIZE, "--master_port", 29700 if name == "phase1" else 29701,
           ROOT / "pretrain" / "run_pretraining.py", "--deepspeed_config", ds, "--input_dir", shards,
           "--eval_dir", eval_shards, "--eval_interval", max(steps // 4, 1) if init is None else steps,
           "--config_file", config,
           "--vocab_file", vocab, "--output_dir", run_dir, "--max_steps", steps,
           "--checkpoint_interval", max(steps // 3, 1), "--log_interval", max(steps // 40, 1),
           "--warmup_proportion", 0.1]
    if (run_dir / "latest").is_file():
        cmd.append("--resume")
    elif init is not None:
        cmd += ["--init_checkpoint", init]
    seconds = run(cmd, run_dir / "log.txt")
    mark_done(run_dir, {"seconds": seconds})


def squad_stage(out: Path, data: dict, size: DemoSize) -> None:
    stage = out / "squad"
    if stage_done(stage):
        return
    stage.mkdir(parents=True, exist_ok=True)
    seconds = run([sys.executable, ROOT / "finetune" / "run_squad.py", "--train_file", data["squad_train"],
                   "--predict_file", data["squad_dev"], "--model_dir", out / "phase2", "--output_dir", stage,
                   "--vocab_file", data["vocab"], "--max_seq_length", 256, "--doc_stride", 128,
                   "--max_train_samples", size.squad_train_questions,
                   "--max_eval_samples", size.squad_eval_questions, "--num_train_epochs", size.squad_epochs,
                   "--learning_rate", 1e-4, "--train_batch_size", 32, "--bf16", "--no_save_model"],
                  stage / "log.txt")
    mark_done(stage, {"seconds": seconds})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, help="default: demo_out/SIZE")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="default: about 15 minutes on 2 cores; ci: about 2 minutes")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    out = (args.output_dir or ROOT / "demo_out" / args.size).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    write_json_atomic(out / "demo_size.json", {"size": args.size, **asdict(size)})
    started = time.perf_counter()

    data = prepare_sample_data(out / "data", size.corpus_articles, size.heldout_articles,
                               size.squad_train_questions)
    data_prep_stage(out, data, size)
    phase_dirs = json.loads((out / "shards" / ".done").read_text())["phase_dirs"]
    config = model_config(out, size, vocab_size=len(read_vocab(data["vocab"])))
    pretrain_stage(out, "phase1", out / "shards" / "train" / phase_dirs[0],
                   out / "shards" / "heldout" / phase_dirs[0], config,
                   ds_config(out, "phase1", size.phase1_micro_batch, size.phase1_learning_rate),
                   size.phase1_steps, data["vocab"])
    pretrain_stage(out, "phase2", out / "shards" / "train" / phase_dirs[1],
                   out / "shards" / "heldout" / phase_dirs[1], config,
                   ds_config(out, "phase2", size.phase2_micro_batch, 1e-3), size.phase2_steps, data["vocab"],
                   init=out / "phase1")
    squad_stage(out, data, size)
    text = report.write_report(out, minutes=(time.perf_counter() - started) / 60)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
