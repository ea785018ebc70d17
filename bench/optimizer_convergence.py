"""Steps and wall time to a held-out masked-LM accuracy with THOR, our LAMB and AdamW, from the same
initial weights, data and batch (one process each, ZeRO 0, fp32), in one invocation: one after the other, or
with --side_by_side all at once on one thread each, so that their step times are taken under the same load.

    python bench/optimizer_convergence.py --work_dir bench_out/convergence32 --batch 64 --steps 2000 \
        --eval_interval 200 --target 0.15 --warmup_proportion 0.1 --lr lamb=5e-3 adamw=2e-3 --side_by_side

Data: the demo's (SQuAD Wikipedia paragraphs, our 8k vocab, its phase-1 shards, seq demo_plan.PHASE1_SEQ; built
once in --work_dir and reused: an older work_dir keeps the length it was built with). The model is the demo's
(demo_plan.model_config). Each optimizer gets its own peak learning rate (--lr NAME=VALUE; defaults are ones that train this
model) and warmup; THOR's other settings are MindSpore's BERT-THOR ones except `frequency` (--thor_frequency)
and damping. Prints, per optimizer: the first evaluated step at which held-out MLM accuracy reaches --target,
the training seconds up to that step (sum of the logged step times, evaluation excluded), the final
accuracies, and the ratios to LAMB. The host line names the hardware.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertspeed.data_prep.schema import phase_seq_len  # noqa: E402
from bertspeed.pretrain import demo, demo_plan  # noqa: E402
from bertspeed.pretrain.report import unigram_baseline  # noqa: E402
from bertspeed.pretrain.sample_data import prepare_sample_data  # noqa: E402
from bertspeed.training.hardware import host_info, host_label  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LR = {"lamb": 2e-3, "adamw": 1e-3, "thor": 5e-3}


def shards(work: Path, articles: int, seq: int) -> tuple[Path, Path, Path]:
    """The demo's data prep on `articles` SQuAD articles (a twentieth as many held out), with shards at `seq`
    (and at the demo's other phase length)."""
    heldout = demo_plan.heldout_articles(articles)
    data = prepare_sample_data(work / "data", corpus_articles=articles, heldout_articles=heldout, squad_questions=1)
    second = demo_plan.PHASE2_SEQ if seq == demo_plan.PHASE1_SEQ else seq  # data_prep_stage builds PHASE1_SEQ and this
    demo.data_prep_stage(work, data, demo_plan.CorpusPlan(articles, heldout, second))
    dirs = json.loads((work / "shards" / ".done").read_text())["phase_dirs"]
    phase = next((d for d in dirs if phase_seq_len(d) == seq), None)
    if phase is None:
        raise SystemExit(f"{work} holds shards of {dirs}, not seq {seq}: choose another --work_dir")
    return work / "shards" / "train" / phase, work / "shards" / "heldout" / phase, work / "shards" / "vocab.txt"


def launch(work: Path, name: str, lr: float, args, train: Path, heldout: Path, vocab: Path):
    """Starts one optimizer's run (unless it finished before): (its run folder, its process or None)."""
    out = work / f"run_{name}{args.tag}"
    params = {"lr": lr, "weight_decay": 0.01}
    if name == "thor":
        params.update(damping=args.thor_damping, damping_min=args.thor_damping / 100, damping_power=1.0,
                      frequency=args.thor_frequency, split_dim=128, weight_decay=0.0)
    config = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1,
              "train_batch_size": args.batch, "gradient_clipping": 1.0 if name != "thor" else 0.0,
              "steps_per_print": 10 ** 9, "zero_optimization": {"stage": 0},
              "optimizer": {"type": {"lamb": "Lamb", "adamw": "AdamW", "thor": "THOR"}[name], "params": params}}
    ds = work / f"ds_{name}{args.tag}.json"
    ds.write_text(json.dumps(config))
    if (out / "summary.json").is_file():
        return out, None
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.side_by_side else None
    return out, subprocess.Popen([sys.executable, str(ROOT / "pretrain" / "run_pretraining.py"), "--deepspeed_config",
                        str(ds), "--input_dir", str(train), "--eval_dir", str(heldout),
                        "--eval_interval", str(args.eval_interval), "--eval_samples", "512", "--config_file",
                        str(work / f"model{args.tag}.json"), "--vocab_file", str(vocab), "--output_dir", str(out),
                        "--max_steps", str(args.steps), "--warmup_proportion", str(args.warmup_proportion), "--precision", "fp32",
                        "--seed", "7", "--log_interval", "1", "--checkpoint_interval", str(args.steps),
                        "--disable_progress_bar"], env=env)


def run_all(work: Path, lrs: dict, args, train: Path, heldout: Path, vocab: Path) -> dict:
    """Every optimizer's run folder; one after another, or all at once on one thread each (--side_by_side:
    the OS shares the cores evenly between them, so their step times compare under the same load)."""
    model = demo_plan.model_config(args.hidden, args.layers)
    if args.initializer_range:
        model.initializer_range = args.initializer_range
    model.to_json_file(work / f"model{args.tag}.json")  # once: the runs read it as they start
    outs, procs = {}, []
    for name in args.optimizers:
        outs[name], proc = launch(work, name, lrs[name], args, train, heldout, vocab)
        procs.append(proc)
        if not args.side_by_side:
            wait_for(name, proc, outs[name])
    for name, proc in zip(args.optimizers, procs):
        wait_for(name, proc, outs[name])  # at once when each already ended
    return outs


def wait_for(name: str, proc, out: Path) -> None:
    if proc is not None and proc.wait() != 0:
        raise SystemExit(f"the {name} run failed: see {out}")


def time_to_target(out: Path, target: float) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    seconds, reached = 0.0, None
    evals = []
    for record in records:
        seconds += record.get("perf/step_time_s") or 0.0
        if "eval/mlm_acc" in record:
            evals.append(record)
            if reached is None and record["eval/mlm_acc"] >= target:
                reached = {"step": record["step"], "seconds": seconds}
    last = evals[-1] if evals else {}
    return {"reached": reached, "final_mlm_acc": last.get("eval/mlm_acc"),
            "final_mlm_acc_at_mask": last.get("eval/mlm_acc_at_mask"), "train_seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, default=Path("bench_out/convergence"))
    parser.add_argument("--optimizers", nargs="+", default=["lamb", "adamw", "thor"], choices=sorted(LR))
    parser.add_argument("--lr", nargs="*", default=[], metavar="NAME=VALUE", help="peak learning rates")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval_interval", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seq", type=int, default=demo_plan.PHASE1_SEQ, help="sequence length of the shards")
    parser.add_argument("--articles", type=int, default=60, help="SQuAD train articles in the corpus")
    parser.add_argument("--initializer_range", type=float, help="default: the demo model's, 1/sqrt(hidden)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.10, help="held-out MLM accuracy to reach")
    parser.add_argument("--thor_frequency", type=int, default=20)
    parser.add_argument("--thor_damping", type=float, default=0.05)
    parser.add_argument("--warmup_proportion", type=float, default=0.05)
    parser.add_argument("--side_by_side", action="store_true",
                        help="run the optimizers at once, one thread each (wall-time ratios under equal load)")
    parser.add_argument("--tag", default="", help="suffix of the run folders (compare other settings in one work_dir)")
    args = parser.parse_args(argv)
    lrs = {**LR, **{k: float(v) for k, v in (item.split("=") for item in args.lr)}}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(host_label(host_info("fp32")))
    train, heldout, vocab = shards(args.work_dir, args.articles, args.seq)
    outs = run_all(args.work_dir, lrs, args, train, heldout, vocab)
    results = {name: time_to_target(out, args.target) for name, out in outs.items()}
    base = (results.get("lamb") or {}).get("reached")
    unigram = unigram_baseline(train, heldout)
    print(f"target held-out MLM accuracy {args.target}, batch {args.batch}, seq {args.seq}, model {args.layers}x{args.hidden}, "
          f"warmup {args.warmup_proportion}; unigram baseline {unigram:.4f}")
    for name, r in results.items():
        reached = r["reached"]
        where = f"step {reached['step']}, {reached['seconds']:.0f} s" if reached else "not reached"
        ratio = (f", {reached['step'] / base['step']:.2f}x LAMB's steps, {reached['seconds'] / base['seconds']:.2f}x "
                 f"its time" if reached and base else "")
        print(f"  {name:6s} lr {lrs[name]:g}: {where}{ratio}; final acc {r['final_mlm_acc']:.4f}, "
              f"at [MASK] {r['final_mlm_acc_at_mask']:.4f}, {r['train_seconds']:.0f} s training")
    settings = {**vars(args), "work_dir": str(args.work_dir)}
    (args.work_dir / f"results{args.tag}.json").write_text(json.dumps({"host": host_label(host_info("fp32")), "args": settings,
                                                            "lr": lrs, "unigram_mlm_acc": unigram,
                                                                          "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
