"""The demo's results report: a Markdown table and PNG curves, drawn only from the files
the stages wrote (manifest/.done markers, metrics.jsonl, final_eval/*.json, eval_results.json, HDF5 shards).

    python -m bertspeed.pretrain.report DEMO_DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from bertspeed.data_prep.schema import MANIFEST, phase_seq_len, valid_predictions
from bertspeed.pretrain.demo_plan import PHASE1_MICRO, PHASE2_BATCH, WORLD_SIZE
from bertspeed.training.atomic import write_json_atomic, write_text_atomic
from bertspeed.training.hardware import host_label
from bertspeed.training.metrics import read_metrics
from bertspeed.training.pathcheck import PathError, check_input_dir
from bertspeed.training.plot import plot

REPORT = "report.md"


def masked_ids(shard_dir: Path) -> np.ndarray:
    """Original ids of every masked position in a directory of static-masked shards."""
    chunks = []
    for path in sorted(shard_dir.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            positions, ids = f["masked_lm_positions"][:], f["masked_lm_ids"][:]
        chunks.append(ids[valid_predictions(positions)])
    if not chunks:
        raise FileNotFoundError(f"no .hdf5 shards in {shard_dir}")
    return np.concatenate(chunks)


def unigram_baseline(train_dir: Path, heldout_dir: Path) -> float:
    """MLM accuracy of always predicting the token most often masked in training."""
    most_common = Counter(masked_ids(train_dir).tolist()).most_common(1)[0][0]
    return float(np.mean(masked_ids(heldout_dir) == most_common))


def last(records: list[dict], key: str):
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return values[-1] if values else None


def median(records: list[dict], key: str):
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return float(np.median(values)) if values else None


def phase_done(demo: Path, name: str) -> dict:
    """What a pretraining phase's `.done` marker recorded: its steps, seconds, whether it was stopped."""
    return json.loads((demo / name / ".done").read_text())


def run_facts(demo: Path) -> dict:
    """Budget, hardware, precision and the sizes the demo chose (plan.json), and whether a phase
    was stopped at its time share."""
    plan = json.loads((demo / "plan.json").read_text())
    phase1, phase2, squad = plan["phase1"], plan["phase2"], plan["squad"]
    stopped = [name for name in ("phase1", "phase2") if phase_done(demo, name).get("stopped_at_deadline")]
    return {"budget_minutes": plan["budget_minutes"], "host": host_label(plan["host"]),
            "precision": plan["precision"]["precision"], "precision_reason": plan["precision"]["reason"],
            "model": f"{phase1['num_hidden_layers']} layers, hidden {phase1['hidden_size']}",
            "planned_steps": f"phase 1 {phase1['steps']} (global batch {PHASE1_MICRO * WORLD_SIZE}), phase 2 "
                             f"{phase2['steps']} (seq {phase2['seq_len']}, global batch {PHASE2_BATCH})",
            "squad_questions": f"{squad['train_questions']} train, {squad['eval_questions']} dev",
            "stopped_at_deadline": stopped}


def collect(demo: Path) -> dict:
    prep = json.loads((demo / "shards" / ".done").read_text())
    phase1, phase2 = read_metrics(demo / "phase1"), read_metrics(demo / "phase2")
    final1, final2 = (json.loads((demo / "final_eval" / f"{name}.json").read_text()) for name in ("phase1", "phase2"))
    p1_dir, p2_dir = prep["phase_dirs"]
    squad = json.loads((demo / "squad" / "eval_results.json").read_text())
    squad_random = json.loads((demo / "squad_random_init" / "eval_results.json").read_text())
    instances = json.loads((demo / "shards" / "train" / p1_dir / MANIFEST).read_text())
    return {
        "corpus_mb": prep["corpus_mb"], "prep_mb_per_s": prep["mb_per_s"],
        "phase1_instances": instances.get("num_instances", instances.get("total_instances")),
        # steps as the phases ended (a phase stopped at its time share ends between two logged steps)
        **{f"{name}_steps": phase_done(demo, name)["steps"] for name in ("phase1", "phase2")},
        "phase1_seq_per_s": median(phase1, "perf/seq_per_s"), "phase2_seq_per_s": median(phase2, "perf/seq_per_s"),
        "phase1_seq_len": phase_seq_len(p1_dir), "phase2_seq_len": phase_seq_len(p2_dir),
        "phase1_mlm_acc": final1["mlm_acc"], "phase1_nsp_acc": final1["nsp_acc"],
        "phase1_mlm_acc_at_mask": final1["mlm_acc_at_mask"],
        "phase1_unigram_mlm_acc": unigram_baseline(demo / "shards" / "train" / p1_dir, demo / "shards" / "heldout" / p1_dir),
        "mlm_acc": final2["mlm_acc"], "nsp_acc": final2["nsp_acc"], "mlm_acc_at_mask": final2["mlm_acc_at_mask"],
        "unigram_mlm_acc": unigram_baseline(demo / "shards" / "train" / p2_dir, demo / "shards" / "heldout" / p2_dir),
        "squad_exact_match": squad["exact_match"], "squad_f1": squad["f1"],
        "squad_random_init_exact_match": squad_random["exact_match"], "squad_random_init_f1": squad_random["f1"],
        **run_facts(demo),
    }


CONTEXT_FACTOR = 1.5  # [MASK]-position accuracy above this multiple of the unigram baseline counts as using context


def context_verdict(readings: list[tuple[str, float, float]]) -> str:
    """(when, at-[MASK] accuracy, its unigram baseline) for each evaluated phase -> one sentence."""
    parts = [f"{fmt(at_mask)} {when}, {at_mask / max(unigram, 1e-9):.1f}x its unigram baseline {fmt(unigram)}"
             + (" (from context)" if at_mask > CONTEXT_FACTOR * unigram else
                f" (under {CONTEXT_FACTOR}x: not clearly from context yet; from-scratch BERT's early plateau, see the README)")
             for when, at_mask, unigram in readings]
    return (" At [MASK] positions alone, where the token can only come from context (elsewhere the model can copy "
            f"the visible one), accuracy is {'; '.join(parts)}.") if parts else ""


def fmt(value, pattern="{:.3f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def render(r: dict, minutes: float | None, curves: str = "![curves](curves.png)") -> str:
    learned = r["mlm_acc"] is not None and r["mlm_acc"] > 2 * r["unigram_mlm_acc"]
    verdict = (f"The model learned: held-out MLM accuracy {fmt(r['mlm_acc'])} is "
               f"{r['mlm_acc'] / max(r['unigram_mlm_acc'], 1e-9):.1f}x the unigram baseline "
               f"{fmt(r['unigram_mlm_acc'])}." if learned else
               f"The model did NOT clearly learn: held-out MLM accuracy {fmt(r['mlm_acc'])} against a unigram "
               f"baseline of {fmt(r['unigram_mlm_acc'])}.")
    at_mask, at_mask1 = r.get("mlm_acc_at_mask"), r.get("phase1_mlm_acc_at_mask")
    readings = []
    if at_mask1 is not None and "phase1_unigram_mlm_acc" in r:
        readings.append((f"after phase 1 (seq {r['phase1_seq_len']})", at_mask1, r["phase1_unigram_mlm_acc"]))
    if at_mask is not None:
        readings.append((f"after phase 2 (seq {r.get('phase2_seq_len', '?')})", at_mask, r["unigram_mlm_acc"]))
    verdict += context_verdict(readings)
    random_f1 = r.get("squad_random_init_f1")
    if random_f1 is not None:
        gain = r["squad_f1"] - random_f1
        verdict += (f" SQuAD F1 after the same finetuning: {fmt(r['squad_f1'], '{:.2f}')} from our pretrained checkpoint "
                    f"against {fmt(random_f1, '{:.2f}')} from a randomly initialised model "
                    + (f"(+{gain:.2f}: pretraining helps)." if gain > 0 else "(pretraining did not help here)."))
    rows = [
        ("data prep throughput (extract + vocab + shards, 2 workers)", f"{fmt(r['prep_mb_per_s'], '{:.2f}')} MB/s "
                                                               f"over {fmt(r['corpus_mb'], '{:.1f}')} MB"),
        (f"phase 1 pretraining (seq {r.get('phase1_seq_len', 128)})", f"{fmt(r['phase1_seq_per_s'], '{:.1f}')} "
                                                                      f"seq/s, {r['phase1_steps']} steps"),
        (f"phase 2 pretraining (seq {r.get('phase2_seq_len', '?')})", f"{fmt(r['phase2_seq_per_s'], '{:.1f}')} seq/s, "
                                                                    f"{r['phase2_steps']} steps"),
        ("held-out MLM accuracy after phase 1", fmt(r["phase1_mlm_acc"])),
        ("held-out MLM accuracy at [MASK] positions after phase 1", fmt(at_mask1)),
        ("unigram MLM baseline, phase 1 shards (most frequent masked token)", fmt(r.get("phase1_unigram_mlm_acc"))),
        ("held-out MLM accuracy (final)", fmt(r["mlm_acc"])),
        ("held-out MLM accuracy at [MASK] positions (final)", fmt(at_mask)),
        ("unigram MLM baseline, phase 2 shards", fmt(r["unigram_mlm_acc"])),
        ("held-out NSP accuracy (final; chance 0.5)", fmt(r["nsp_acc"])),
        ("SQuAD v1.1 dev subset exact match", fmt(r["squad_exact_match"], "{:.2f}")),
        ("SQuAD v1.1 dev subset F1", fmt(r["squad_f1"], "{:.2f}")),
        ("SQuAD v1.1 dev subset exact match, same finetuning from random init",
         fmt(r.get("squad_random_init_exact_match"), "{:.2f}")),
        ("SQuAD v1.1 dev subset F1, same finetuning from random init", fmt(random_f1, "{:.2f}")),
    ]
    lines = ["# bertspeed demo report", ""]
    if minutes is not None:
        budget = f" (budget {r['budget_minutes']:g} minutes)" if "budget_minutes" in r else ""
        lines += [f"Whole demo run: {minutes:.1f} minutes{budget}.", ""]
    if "host" in r:
        lines += ["| run | |", "|---|---|", f"| hardware | {r['host']} |",
                  f"| precision | {r['precision']}: {r['precision_reason']} |", f"| model | {r['model']} |",
                  f"| steps (sized to the budget) | {r['planned_steps']} |",
                  f"| SQuAD questions | {r['squad_questions']} |"]
        if r["stopped_at_deadline"]:
            lines.append(f"| stopped at their time share | {', '.join(r['stopped_at_deadline'])} |")
        lines.append("")
    lines += ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", verdict, "", curves, ""]
    return "\n".join(lines)


def write_report(demo: Path, minutes: float | None = None) -> str:
    demo = Path(demo)
    results = collect(demo)
    try:
        plot([str(demo / "phase1"), str(demo / "phase2")], str(demo / "curves.png"))
        curves = "![curves](curves.png)"
    except ImportError as e:  # matplotlib is an extra
        curves = f"(no curves: {e})"
    write_json_atomic(demo / "results.json", results)
    text = render(results, minutes, curves)
    write_text_atomic(demo / REPORT, text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertspeed.pretrain.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        check_input_dir("demo_dir", args.demo_dir)
        print(write_report(args.demo_dir))
    except (FileNotFoundError, KeyError, PathError) as e:
        print(f"pretrain.report: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
