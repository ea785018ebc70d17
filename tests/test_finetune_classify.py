"""Own-data classification and regression (run_classify): real GLUE files read as the user's own TSV,
CLUE TNEWS / IFLYTEK JSON lines with no flags, metrics against scikit-learn and SciPy, and bad files
named with their line and field."""
from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bertspeed.finetune import labelled, run_classify
from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.checkpoint import save_pretrained

FAST = ["--num_train_epochs", "1", "--max_seq_length", "64", "--train_batch_size", "16", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, vocab_file):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "hf"
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), folder, vocab_file=vocab_file)
    return folder


def predictions(path):
    return [json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_sst2_tsv_as_own_data_metrics_equal_sklearn(tmp_path, glue_dir, tiny_model):
    out = tmp_path / "out"
    run_classify.main(["--train_file", str(glue_dir / "SST-2" / "train.tsv"), "--max_train_samples", "400",
                       "--validation_file", str(glue_dir / "SST-2" / "dev.tsv"), "--max_eval_samples", "200",
                       "--model_dir", str(tiny_model), "--output_dir", str(out), *FAST])
    gold = [int(e.label) for e in labelled.read_examples(glue_dir / "SST-2" / "dev.tsv", None, "label", False)][:200]
    predicted = [int(p) for p in predictions(out / "eval_predictions.jsonl")]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["acc"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
    assert results["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro"), abs=1e-12)
    assert results["mcc"] == pytest.approx(matthews_corrcoef(gold, predicted), abs=1e-12)
    assert json.loads((out / "model" / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}


def test_stsb_regression_equals_scipy(tmp_path, glue_dir, tiny_model):
    out = tmp_path / "out"
    run_classify.main(["--train_file", str(glue_dir / "STS-B" / "train.tsv"), "--max_train_samples", "200",
                       "--validation_file", str(glue_dir / "STS-B" / "dev.tsv"), "--max_eval_samples", "100",
                       "--label_field", "score", "--task_type", "regression",
                       "--model_dir", str(tiny_model), "--output_dir", str(out), *FAST])
    dev = labelled.read_examples(glue_dir / "STS-B" / "dev.tsv", None, "score", True)[:100]
    assert dev[0].text_b is not None  # sentence1 + sentence2 found without flags
    predicted = predictions(out / "eval_predictions.jsonl")
    results = json.loads((out / "eval_results.json").read_text())
    assert results["pearson"] == pytest.approx(pearsonr([e.label for e in dev], predicted)[0], abs=1e-6)
    assert results["spearmanr"] == pytest.approx(spearmanr([e.label for e in dev], predicted)[0], abs=1e-6)


TNEWS = [{"label": "102", "label_desc": "news_entertainment", "sentence": "江疏影甜甜圈自拍，迷之角度竟这么好看", "keywords": "江疏影"},
         {"label": "110", "label_desc": "news_military", "sentence": "以色列大规模空袭开始，伊朗已在战略上全面失败", "keywords": ""},
         {"label": "104", "label_desc": "news_finance", "sentence": "出栏一头猪亏损300元，究竟谁能笑到最后！", "keywords": ""}]
IFLYTEK = [{"label": "11", "label_des": "薅羊毛", "sentence": "领红包，每天都可以领取现金 App 2.0 版"},
           {"label": "26", "label_des": "银行", "sentence": "手机银行客户端，转账汇款 24 小时"}]


def test_clue_json_lines_need_no_flags(tmp_path, tiny_model):
    tnews = tmp_path / "tnews"
    tnews.mkdir()
    (tnews / "train.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TNEWS * 4), "utf-8")
    (tnews / "dev.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TNEWS), "utf-8")
    (tnews / "test.json").write_text("".join(json.dumps({"id": i, "sentence": r["sentence"], "keywords": ""},
                                                        ensure_ascii=False) + "\n" for i, r in enumerate(TNEWS)), "utf-8")
    out = tmp_path / "out"
    run_classify.main(["--train_file", str(tnews / "train.json"), "--validation_file", str(tnews / "dev.json"),
                       "--test_file", str(tnews / "test.json"), "--model_dir", str(tiny_model),
                       "--output_dir", str(out), "--max_steps", "2", "--train_batch_size", "4"])
    test = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in test] == [0, 1, 2] and {r["label"] for r in test} <= {"102", "104", "110"}
    config = json.loads((out / "model" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["102", "104", "110"]  # numeric labels sorted as numbers
    iflytek = tmp_path / "iflytek.json"
    iflytek.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in IFLYTEK), encoding="utf-8")
    examples = labelled.read_examples(iflytek, None, "label_des", False)
    assert [e.label for e in examples] == ["薅羊毛", "银行"] and examples[1].text_a.startswith("手机银行")


def test_bad_files_name_file_line_and_field(tmp_path, tiny_model, capsys):
    csv = tmp_path / "tickets.csv"
    csv.write_text('subject,body,queue\n"Refund","card charged twice",billing\nLogin,"cannot, sign in",tech\n'
                   'Hi,hello,sales\n', encoding="utf-8")
    out = tmp_path / "out"
    code = run_classify.entry(["--train_file", str(csv), "--text_fields", "subject", "body", "--label_field", "queue",
                               "--label_list", "billing", "tech", "--model_dir", str(tiny_model),
                               "--output_dir", str(out), "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"{csv}:4: field 'queue' = 'sales' is not in the label set" in err
    assert not (out / "model").exists()
    examples = labelled.read_examples(csv, ["subject", "body"], "queue", False)
    assert examples[1].text_b == "cannot, sign in"  # CSV quoting
    with pytest.raises(ValueError, match=r"tickets.csv:2: field 'priority' missing"):
        labelled.read_examples(csv, ["subject"], "priority", False)
    mixed = tmp_path / "mixed.tsv"
    mixed.write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mixed.tsv:3: 3 columns, but the header has 2"):
        labelled.read_examples(mixed, None, "label", False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty.jsonl: no records"):
        labelled.read_examples(empty, None, "label", False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"sentence": "ok", "label": "1"}\n{"sentence": "x", "label": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not a JSON object"):
        labelled.read_examples(broken, None, "label", False)
    regression = tmp_path / "scores.tsv"
    regression.write_text("text\tscore\nfine\t4.5\nmeh\thigh\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"scores.tsv:3: field 'score' = 'high' is not a number"):
        labelled.read_examples(regression, None, "score", True)


def test_two_ranks_through_the_launcher(tmp_path, glue_dir, tiny_model):
    """`deepspeed --num_gpus 2`: every dev row predicted once, in order, and scored as scikit-learn does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pretrain_helpers import ROOT, env
    out = tmp_path / "out"
    dev = glue_dir / "SST-2" / "dev.tsv"
    launcher = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run([str(launcher), "--num_gpus", "2", "--master_port", str(29400 + os.getpid() % 500),
                             str(ROOT / "finetune" / "run_classify.py"), "--train_file", str(glue_dir / "SST-2" / "train.tsv"),
                             "--max_train_samples", "64", "--validation_file", str(dev), "--max_eval_samples", "51",
                             "--model_dir", str(tiny_model), "--output_dir", str(out), "--max_steps", "2",
                             "--per_device_train_batch_size", "8", "--max_seq_length", "48"],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stdout
    gold = [int(e.label) for e in labelled.read_examples(dev, None, "label", False)][:51]
    predicted = [int(p) for p in predictions(out / "eval_predictions.jsonl")]
    assert len(predicted) == 51
    results = json.loads((out / "eval_results.json").read_text())
    assert results["acc"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
    assert results["mcc"] == pytest.approx(matthews_corrcoef(gold, predicted), abs=1e-12)
