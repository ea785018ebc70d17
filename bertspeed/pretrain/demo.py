"""The whole pipeline on a laptop CPU, sized to a wall-time budget: sample data -> data prep (own
8k WordPiece vocab) -> phase 1 and phase 2 pretraining (two local ranks through the deepspeed
launcher) -> SQuAD finetuning of the pretrained model and, as the control, of a randomly
initialised one -> report.

    python -m bertspeed.pretrain.demo [--budget_minutes 20] [--output_dir demo_out/default] [--precision auto]

The budget covers everything after set-up. The demo measures this machine's training throughput
and picks the model size and the step counts of every stage to fit (bertspeed/pretrain/demo_plan.py); a
pretraining phase that still runs past its share is stopped at a checkpoint. Every stage writes
OUTPUT_DIR/<stage>/ and a `.done` marker last; a second run reuses the plan and the finished stages,
and an interrupted pretraining phase resumes from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from bertspeed import paths
from bertspeed.data_prep.schema import phase_dir_name
from bertspeed.model.tokenizer import read_vocab
from bertspeed.pretrain import demo_plan, report
from bertspeed.pretrain.sample_data import prepare_sample_data
from bertspeed.training.atomic import write_json_atomic
from bertspeed.training.hardware import PRECISIONS, choose_precision, host_info
from bertspeed.training.metrics import read_metrics

PLAN = "plan.json"
DEFAULT_BUDGET = 20.0
WORLD_SIZE = demo_plan.WORLD_SIZE


def stage_done(path: Path) -> bool:
    return (path / ".done").is_file()


def mark_done(path: Path, info: dict) -> None:
    write_json_atomic(path / ".done", info)


class Clock:
    """Seconds of the budget spent: this invocation's, plus those of stages an earlier one finished."""

    def __init__(self, out: Path, budget_minutes: float):
        self.started = time.perf_counter()
        self.budget = 60 * budget_minutes
        self.earlier = sum(json.loads(p.read_text()).get("seconds", 0.0) for p in out.glob("*/.done"))

    def spent(self) -> float:
        return self.earlier + time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.spent() - demo_plan.REPORT_SECONDS


def run(cmd: list, log: Path, deadline: float | None = None, show: bool = True,
        threads: int | None = None) -> tuple[float, bool]:
    """Run a command with its output shown live (unless `show` is false) and kept in `log`; returns
    (seconds taken, whether it was stopped). After `deadline` seconds its process group gets SIGTERM: a
    pretraining run's ranks then write a checkpoint and exit. `threads` caps its torch threads."""
    print(f"\n$ {' '.join(map(str, cmd))}" + ("" if show else f"  (output in {log})"), flush=True)
    start, stopped = time.perf_counter(), threading.Event()
    with open(log, "a", encoding="utf-8") as sink:
        proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None)

        def stop():
            if proc.poll() is None:
                print(f"\ndemo: over its time share ({deadline:.0f} s): stopping at a checkpoint", flush=True)
                stopped.set()
                os.killpg(proc.pid, signal.SIGTERM)

        timer = threading.Timer(deadline, stop) if deadline is not None else None
        try:
            timer and timer.start()
            for line in proc.stdout:
                show and sys.stdout.write(line)
                sink.write(line)
            code = proc.wait()
        except BaseException:  # Ctrl-C: the command runs in its own session, so stop it here
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        finally:
            timer and timer.cancel()
    if code != 0 and not stopped.is_set():
        raise SystemExit(f"demo: command failed (exit {code}); its output is in {log}")
    return time.perf_counter() - start, stopped.is_set()


def data_prep_stage(out: Path, data: dict, corpus: demo_plan.CorpusPlan) -> None:
    """Sentences (Punkt trained on the corpus), an 8k WordPiece vocab trained on them, then the
    phase-1 and phase-2 shards of the training and held-out text."""
    stage = out / "shards"
    if stage_done(stage):
        return
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    log, py, seconds = stage / "log.txt", sys.executable, 0.0
    phases = [(n, demo_plan.max_predictions(n)) for n in (demo_plan.PHASE1_SEQ, corpus.phase2_seq_len)]
    for split in ("train", "heldout"):
        seconds += run([py, "-m", "bertspeed.data_prep.extract", "--input", data[f"{split}_corpus"], "--input_format", "text",
                        "--output_dir", stage / f"{split}_sentences", "--workers", WORLD_SIZE, "--num_shards", 2],
                       log)[0]
    vocab = stage / "vocab.txt"
    seconds += run([py, "-m", "bertspeed.data_prep.vocab", "--input", stage / "train_sentences", "--output", vocab,
                    "--vocab_size", demo_plan.VOCAB_SIZE], log)[0]
    for split in ("train", "heldout"):
        seconds += run([py, "-m", "bertspeed.data_prep.create_pretraining_data", "--input", stage / f"{split}_sentences",
                        "--vocab_file", vocab, "--output_dir", stage / split,
                        "--phases", *(f"{n}:{p}" for n, p in phases), "--do_lower_case",
                        "--dupe_factor", 1 if split == "heldout" else 3,
                        "--num_shards", 2 * WORLD_SIZE if split == "train" else WORLD_SIZE,
                        "--workers", WORLD_SIZE, "--random_seed", 12345], log)[0]
    corpus_mb = data["train_corpus"].stat().st_size / 1e6 + data["heldout_corpus"].stat().st_size / 1e6
    mark_done(stage, {"corpus_mb": corpus_mb, "seconds": seconds, "mb_per_s": corpus_mb / seconds,
                      "phase_dirs": [phase_dir_name(n, p) for n, p in phases]})


def free_port() -> int:
    """A port nothing listens on now: two demos (or a demo and the tests) on one host must not meet."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ds_config(out: Path, name: str, micro_batch: int, lr: float) -> Path:
    """Precision is left to run_pretraining.py's --precision."""
    config = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
              "train_batch_size": micro_batch * WORLD_SIZE, "gradient_clipping": 1.0,
              "steps_per_print": 10 ** 9,
              "optimizer": {"type": demo_plan.OPTIMIZER, "params": {"lr": lr, "weight_decay": 0.01,
                                                        "betas": [0.9, 0.999], "eps": 1e-6}},
              "zero_optimization": {"stage": 1}}
    path = out / f"ds_{name}.json"
    write_json_atomic(path, config)
    return path


def pretrain_stage(out: Path, name: str, shards: Path, eval_shards: Path, ds: Path, steps: int,
                   precision: str, deadline: float, init: Path | None = None) -> None:
    run_dir = out / name
    if stage_done(run_dir):
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed",
           "--num_gpus", WORLD_SIZE, "--master_port", free_port(),
           paths.folder("pretrain") / "run_pretraining.py", "--deepspeed_config", ds, "--input_dir", shards,
           "--eval_dir", eval_shards, "--eval_interval", max(steps // demo_plan.EVALUATIONS, 1) if init is None else steps,
           "--eval_samples", demo_plan.EVAL_SAMPLES, "--config_file", out / "model_config.json",
           "--vocab_file", out / "shards" / "vocab.txt", "--output_dir", run_dir, "--max_steps", steps,
           "--checkpoint_interval", max(steps // 3, 1), "--log_interval", max(steps // 40, 1),
           "--warmup_proportion", 0.1, "--precision", precision]
    if (run_dir / "latest").is_file():
        cmd.append("--resume")
    elif init is not None:
        cmd += ["--init_checkpoint", init]
    seconds, stopped = run(cmd, run_dir / "log.txt", deadline=max(deadline, 30.0))
    if not (run_dir / "summary.json").is_file():
        raise SystemExit(f"demo: {name} stopped without a summary; its output is in {run_dir / 'log.txt'}")
    summary = json.loads((run_dir / "summary.json").read_text())
    # a run that ended its steps as its time share ran out got the signal in its teardown: not stopped
    mark_done(run_dir, {"seconds": seconds, "train_seconds": summary["seconds"], "steps": summary["steps"],
                        "stopped_at_deadline": stopped and summary["stopped_by_signal"]})


def final_eval_stage(out: Path, heldout: Path, phase_dirs: list[str]) -> None:
    """Each phase's last checkpoint scored on its held-out shards (`bertspeed evaluate`): a phase stopped at its
    time share has no evaluation of its own at the step it ended."""
    stage = out / "final_eval"
    if stage_done(stage):
        return
    stage.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for name, phase_dir in zip(("phase1", "phase2"), phase_dirs):
        seconds += run([sys.executable, "-m", "bertspeed.pretrain.evaluate", "--model", out / name,
                        "--eval_dir", heldout / phase_dir, "--eval_samples", demo_plan.EVAL_SAMPLES,
                        "--output_file", stage / f"{name}.json"], stage / "log.txt", show=False)[0]
    mark_done(stage, {"seconds": seconds})


def random_init_stage(out: Path, seed: int = 42) -> Path:
    """A randomly initialised model of the demo's shape and vocab (our initialisation, as pretraining
    starts from), saved as a model folder: the control run of SQuAD finetuning."""
    import torch

    from bertspeed.model.checkpoint import save_pretrained
    from bertspeed.model.config import BertConfig
    from bertspeed.model.model import BertForPreTraining

    stage = out / "random_init"
    if not stage_done(stage):
        torch.manual_seed(seed)
        model = BertForPreTraining(BertConfig.from_json_file(out / "model_config.json"))
        save_pretrained(model, stage, vocab_file=out / "shards" / "vocab.txt", do_lower_case=True)
        mark_done(stage, {"seconds": 0.0, "seed": seed})
    return stage


def squad_stages(out: Path, data: dict, plan: dict) -> None:
    """SQuAD finetuning of the pretrained model and of a randomly initialised one, side by side (each
    start-up, mostly single-threaded imports, overlaps the other run; the cores are split between them);
    the first one's output is shown."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [("squad", out / "phase2", True), ("squad_random_init", random_init_stage(out), False)]
    with ThreadPoolExecutor(len(runs)) as pool:
        threads = max(1, (os.cpu_count() or 2) // len(runs))
        for future in [pool.submit(squad_stage, out, data, plan, *r, threads=threads) for r in runs]:
            future.result()


def squad_stage(out: Path, data: dict, plan: dict, name: str, model_dir: Path, primary: bool = True,
                threads: int | None = None) -> None:
    """SQuAD finetuning of `model_dir` into OUTPUT_DIR/<name>; every run gets the same settings. A run that
    is not `primary` runs beside the primary one: its output goes to its log only and its seconds are not
    added to the budget spent."""
    stage = out / name
    if stage_done(stage):
        return
    stage.mkdir(parents=True, exist_ok=True)
    squad = plan["squad"]
    seconds, _ = run([sys.executable, paths.folder("finetune") / "run_squad.py", "--train_file", data["squad_train"],
                      "--predict_file", data["squad_dev"], "--model_dir", model_dir, "--output_dir", stage,
                      "--max_seq_length", demo_plan.SQUAD_SEQ, "--doc_stride", 128,
                      "--max_train_samples", squad["train_questions"],
                      "--max_eval_samples", squad["eval_questions"], "--num_train_epochs", 1,
                      "--learning_rate", demo_plan.SQUAD_LR, "--train_batch_size", demo_plan.SQUAD_BATCH,
                      "--precision", plan["precision"]["precision"], "--no_save_model"], stage / "log.txt",
                     show=primary, threads=threads)
    mark_done(stage, {"seconds": seconds if primary else 0.0, "run_seconds": seconds})


def measured_phase1(out: Path) -> tuple[float, float]:
    """Phase 1 as it really ran: median seq/s over both ranks, and its start-up cost in seconds."""
    done = json.loads((out / "phase1" / ".done").read_text())
    speeds = sorted(r["perf/seq_per_s"] for r in read_metrics(out / "phase1") if "perf/seq_per_s" in r)
    return speeds[len(speeds) // 2], max(0.0, done["seconds"] - done["train_seconds"])


def load_plan(out: Path, budget: float, precision_flag: str) -> dict:
    path = out / PLAN
    if path.is_file():
        plan = json.loads(path.read_text())
        if plan["budget_minutes"] != budget:
            raise SystemExit(f"demo: {out} was planned for a {plan['budget_minutes']}-minute budget; "
                             f"choose another --output_dir for {budget} minutes")
        if "phase1" in plan and set(plan["phase1"]) != {f.name for f in fields(demo_plan.Phase1Plan)}:
            raise SystemExit(f"demo: {path} was planned by another bertspeed version; choose another --output_dir")
        return plan
    precision = choose_precision(precision_flag)
    print(f"demo: precision {precision}", flush=True)
    return {"budget_minutes": budget, "precision": precision.as_dict(), "host": host_info(precision.name)}


def plan_stage(out: Path, plan: dict, key: str, make) -> dict:
    """The plan of stage `key`, made (and saved) the first time it is needed."""
    if key not in plan:
        plan[key] = demo_plan.as_dict(make())
        write_json_atomic(out / PLAN, plan)
        print(f"demo: plan {key}: {plan[key]}", flush=True)
    return plan[key]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertspeed.pretrain.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_minutes", type=float, default=DEFAULT_BUDGET,
                        help="wall time for the whole demo after set-up (default: %(default)s)")
    parser.add_argument("--output_dir", type=Path, help="default: demo_out/default, or demo_out/budget_Nmin")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 where native and faster, else fp32 (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.budget_minutes <= 0:
        parser.error("--budget_minutes must be positive")
    default_dir = "default" if args.budget_minutes == DEFAULT_BUDGET else f"budget_{args.budget_minutes:g}min"
    out = (args.output_dir or Path("demo_out") / default_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(out, args.budget_minutes)
    plan = load_plan(out, args.budget_minutes, args.precision)
    precision = plan["precision"]["precision"]

    corpus = demo_plan.CorpusPlan(**plan_stage(out, plan, "corpus", lambda: demo_plan.corpus_plan(args.budget_minutes)))
    data = prepare_sample_data(out / "data", corpus.corpus_articles, corpus.heldout_articles,
                               demo_plan.SQUAD_MAX_QUESTIONS)
    data_prep_stage(out, data, corpus)
    phase_dirs = json.loads((out / "shards" / ".done").read_text())["phase_dirs"]
    vocab_size = len(read_vocab(out / "shards" / "vocab.txt"))

    def measure(config, seq, batch):
        from bertspeed.pretrain.calibrate import training_seq_per_s
        return training_seq_per_s(config, batch, seq, demo_plan.max_predictions(seq), precision,
                                  steps=8)  # short steps: the fastest of 8 is steadier on a busy host

    phase1 = plan_stage(out, plan, "phase1", lambda: demo_plan.phase1_plan(clock.left, vocab_size, measure))
    config = demo_plan.model_config(phase1["hidden_size"], phase1["num_hidden_layers"], vocab_size)
    config.to_json_file(out / "model_config.json")
    shards, heldout = out / "shards" / "train", out / "shards" / "heldout"
    pretrain_stage(out, "phase1", shards / phase_dirs[0], heldout / phase_dirs[0],
                   ds_config(out, "phase1", demo_plan.PHASE1_MICRO, demo_plan.PHASE1_LR), phase1["steps"],
                   precision, deadline=1.1 * phase1["seconds"] + 10)

    speed, start_seconds = measured_phase1(out)
    phase2 = plan_stage(out, plan, "phase2", lambda: demo_plan.phase2_plan(
        clock.left(), config, speed, demo_plan.Phase1Plan(**phase1), start_seconds))
    pretrain_stage(out, "phase2", shards / phase_dirs[1], heldout / phase_dirs[1],
                   ds_config(out, "phase2", demo_plan.PHASE2_MICRO, demo_plan.PHASE2_LR), phase2["steps"],
                   precision, deadline=1.1 * phase2["seconds"] + 10, init=out / "phase1")
    final_eval_stage(out, heldout, phase_dirs)
    plan_stage(out, plan, "squad", lambda: demo_plan.squad_plan(clock.left(), config, speed, start_seconds / 2))
    squad_stages(out, data, plan)
    text = report.write_report(out, minutes=clock.spent() / 60)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
