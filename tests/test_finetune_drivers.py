"""End-to-end runs of the drivers: real data from ../shared/data, hand-made fixtures in official
formats, checkpoint sources (Hugging Face folder, pretraining run dir), DeepSpeed, predict.py.
Scores written by the drivers are recomputed from their prediction files with scikit-learn / SciPy."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertspeed.finetune import predict, run_glue, run_ner, run_squad
from bertspeed.finetune.batches import length_grouped_batches, shard_batches
from bertspeed.finetune.metrics import squad_v1_evaluate, squad_v2_evaluate
from bertspeed.finetune.trainer import linear_schedule
from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.checkpoint import save_pretrained
from bertspeed.model.layers import fused_kernels_enabled, use_fused_kernels

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "finetune"
sklearn_metrics = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")


def run_script(*args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, vocab_file):
    """A randomly initialised 2-layer BERT as a Hugging Face folder and as a pretraining run dir."""
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("tiny"))
    root = tmp_path_factory.mktemp("tiny")
    save_pretrained(model, root / "hf", vocab_file=vocab_file)
    save_pretrained(model, root / "run" / "global_step12", vocab_file=vocab_file)
    (root / "run" / "latest").write_text("global_step12\n")
    return root


def read_tsv_predictions(path):
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "index\tprediction"
    return [line.split("\t")[1] for line in lines[1:]]


def dev_labels(path, column, header=True, cast=int):
    rows = [line.split("\t") for line in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    return [cast(r[column]) for r in rows[1 if header else 0:]]


# ---------------------------------------------------------------- trainer pieces

def test_batches_cover_every_example_and_ranks_get_equal_counts():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 4, 6, 1]
    batches = length_grouped_batches(lengths, 3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(11))
    shards = [shard_batches(batches, r, 3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert batches != length_grouped_batches(lengths, 3, seed=1)
    factor = linear_schedule(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]


# ---------------------------------------------------------------- settings

REQUIRED = {"glue": ["--task_name", "RTE", "--data_dir", "d"], "squad": ["--predict_file", "p"],
            "ner": ["--eval_file", "e"]}
MODEL_AND_OUTPUT = ["--model_dir", "m", "--output_dir", "o"]


def test_each_driver_has_its_defaults_and_accepts_the_launcher_flags():
    glue = run_glue.parse_args([*REQUIRED["glue"], *MODEL_AND_OUTPUT])
    squad = run_squad.parse_args([*REQUIRED["squad"], *MODEL_AND_OUTPUT])
    ner = run_ner.parse_args([*REQUIRED["ner"], *MODEL_AND_OUTPUT])
    batch_settings = ("learning_rate", "num_train_epochs", "max_seq_length")
    assert [getattr(glue, k) for k in batch_settings] == [2e-5, 3, 128]
    assert [getattr(squad, k) for k in batch_settings] == [3e-5, 2, 384]
    assert [getattr(ner, k) for k in batch_settings] == [5e-5, 3, 128]
    assert [s.batch_sizes(1)["global"] for s in (glue, squad, ner)] == [32, 32, 32]
    assert (squad.doc_stride, squad.max_query_length, squad.n_best_size, squad.max_answer_length) == (128, 64, 20, 30)
    assert (glue.precision, glue.do_lower_case, glue.dist_timeout, glue.local_rank, glue.fused_kernels) == (
        "auto", None, 600.0, -1, False)
    launched = run_glue.parse_args([*REQUIRED["glue"], *MODEL_AND_OUTPUT, "--deepspeed", "--local_rank=1", "--bf16",
                                    "--no-do_lower_case", "--fused_kernels"])
    assert (launched.deepspeed, launched.deepspeed_config, launched.local_rank, launched.precision,
            launched.do_lower_case, launched.fused_kernels) == ("", None, 1, "bf16", False, True)
    other = run_ner.parse_args([*REQUIRED["ner"], *MODEL_AND_OUTPUT, "--local-rank", "0", "--fp16", "--do_lower_case"])
    assert (other.local_rank, other.precision, other.do_lower_case) == (0, "fp16", True)
    served = predict.parse_args(["--model_dir", "m", "--sentence", "s", "--precision", "fp32"])
    assert (served.max_seq_length, served.n_best_size, served.precision, served.sentence) == (384, 20, "fp32", "s")


@pytest.mark.parametrize("driver, argv, message", [
    (run_glue, [*REQUIRED["glue"], *MODEL_AND_OUTPUT, "--dist_timeout", "0"], "--dist_timeout must be positive"),
    (run_glue, [*REQUIRED["glue"], *MODEL_AND_OUTPUT, "--eval_steps", "-1"], "--eval_steps must be >= 0"),
    (run_squad, [*REQUIRED["squad"], *MODEL_AND_OUTPUT, "--doc_stride", "0"], "--doc_stride must be positive"),
    (run_ner, [*REQUIRED["ner"], *MODEL_AND_OUTPUT, "--max_seq_length", "5000"], "--max_seq_length 5000 is out"),
    (run_ner, ["--eval_file", "e", "--model_dir", "m"], "missing required setting(s) --output_dir"),
    (predict, ["--model_dir", "m", "--max_answer_length", "0"], "--max_answer_length must be positive"),
])
def test_bad_settings_raise_from_main_and_exit_2_from_entry(driver, argv, message, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        driver.main(argv)
    assert driver.entry(argv) == 2 and f"error: {message}" in capsys.readouterr().err.replace("command line: ", "")


def _mrpc_settings_file(path: Path, glue_dir, tiny_model) -> Path:
    path.write_text(json.dumps({"task_name": "MRPC", "data_dir": str(glue_dir / "MRPC"),
                                "model_dir": str(tiny_model / "hf"), "num_train_epochs": 0, "max_eval_samples": 16,
                                "max_seq_length": 32, "no_test_predictions": True}))
    return path


def test_a_driver_reads_its_settings_file(tmp_path, glue_dir, tiny_model):
    """Values come from --settings_file; flags on the command line override them."""
    settings_file = _mrpc_settings_file(tmp_path / "mrpc.json", glue_dir, tiny_model)
    out = tmp_path / "out"
    run_glue.main(["--settings_file", str(settings_file), "--output_dir", str(out), "--max_eval_samples", "8"])
    assert json.loads((out / "eval_results.json").read_text())["eval_examples"] == 8
    recorded = json.loads((out / "run_config.json").read_text())["args"]
    assert (recorded["task_name"], recorded["max_seq_length"], recorded["max_eval_samples"]) == ("MRPC", 32, 8)
    assert not (out / "submission").exists()


def test_fused_kernels_flag_switches_the_model_ops(tmp_path, glue_dir, tiny_model):
    """--fused_kernels routes LayerNorm and attention through bertspeed's ops (their CPU reference
    path here): same scores as PyTorch's ops."""
    settings_file = _mrpc_settings_file(tmp_path / "mrpc.json", glue_dir, tiny_model)
    before = fused_kernels_enabled()
    try:
        use_fused_kernels(False)
        run_glue.main(["--settings_file", str(settings_file), "--output_dir", str(tmp_path / "torch_ops")])
        assert not fused_kernels_enabled()
        run_glue.main(["--settings_file", str(settings_file), "--output_dir", str(tmp_path / "fused"),
                       "--fused_kernels"])
        assert fused_kernels_enabled()
    finally:
        use_fused_kernels(before)
    scores = [json.loads((tmp_path / name / "eval_results.json").read_text()) for name in ("torch_ops", "fused")]
    assert scores[0] == pytest.approx(scores[1])


# ---------------------------------------------------------------- GLUE

def test_run_glue_sst2_minilm_script(tmp_path, glue_dir, minilm_dir):
    """The interface the issue names, as a script, on real SST-2 with the real MiniLM checkpoint."""
    out = tmp_path / "out"
    result = run_script("finetune/run_glue.py", "--task_name", "SST-2", "--data_dir", glue_dir / "SST-2",
                        "--model_dir", minilm_dir, "--output_dir", out, "--num_train_epochs", "1",
                        "--learning_rate", "5e-5", "--max_seq_length", "64", "--train_batch_size", "16",
                        "--seed", "1", "--max_train_samples", "64", "--max_eval_samples", "120", "--logging_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "newly initialised (not in checkpoint): classifier.weight, classifier.bias" in result.stdout
    scores = json.loads((out / "eval_results.json").read_text())
    preds = [int(p) for p in read_tsv_predictions(out / "dev_predictions.tsv")]
    labels = dev_labels(glue_dir / "SST-2" / "dev.tsv", 1)[:120]
    assert scores["acc"] == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    assert len(read_tsv_predictions(out / "submission" / "SST-2.tsv")) == 120
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/loss" in x] == [1, 2, 3, 4]
    assert [x["eval/acc"] for x in lines if "eval/acc" in x] == [scores["acc"]]
    assert lines[-1]["train/examples"] == 64 and lines[-1]["perf/train_seconds"] > 0
    predicted = run_script("finetune/predict.py", "--model_dir", out, "--sentence", "a gripping , moving film")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout)["label"] in ("0", "1")


def test_run_glue_stsb_and_cola_scores_match_scipy_sklearn(tmp_path, glue_dir, tiny_model):
    common = ["--model_dir", str(tiny_model / "hf"), "--num_train_epochs", "1", "--train_batch_size", "16",
              "--max_train_samples", "64", "--max_eval_samples", "200", "--max_seq_length", "64",
              "--learning_rate", "1e-3", "--no_test_predictions", "--no_save_model"]
    run_glue.main(["--task_name", "STS-B", "--data_dir", str(glue_dir / "STS-B"), "--output_dir", str(tmp_path / "sts"),
                   *common])
    scores = json.loads((tmp_path / "sts" / "eval_results.json").read_text())
    preds = [float(p) for p in read_tsv_predictions(tmp_path / "sts" / "dev_predictions.tsv")]
    gold = dev_labels(glue_dir / "STS-B" / "dev.tsv", 9, cast=float)[:200]
    assert len(set(preds)) > 1
    assert scores["pearson"] == pytest.approx(stats.pearsonr(preds, gold)[0], abs=1e-4)
    assert scores["spearmanr"] == pytest.approx(stats.spearmanr(preds, gold)[0], abs=1e-3)

    run_glue.main(["--task_name", "CoLA", "--data_dir", str(glue_dir / "CoLA"), "--output_dir", str(tmp_path / "cola"),
                   *common])
    scores = json.loads((tmp_path / "cola" / "eval_results.json").read_text())
    preds = [int(p) for p in read_tsv_predictions(tmp_path / "cola" / "dev_predictions.tsv")]
    gold = dev_labels(glue_dir / "CoLA" / "dev.tsv", 1, header=False)[:200]
    assert set(scores) == {"mcc", "eval_examples"}
    assert scores["mcc"] == pytest.approx(sklearn_metrics.matthews_corrcoef(gold, preds))


def _mnli_dir(root: Path) -> Path:
    """A hand-made MNLI folder in the glue_data layout (12 columns, gold label last)."""
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2")
    pairs = [("The cat sat on the mat.", "A cat is sitting.", "entailment"),
             ("The cat sat on the mat.", "No animal is on the mat.", "contradiction"),
             ("A man plays guitar.", "The man is a famous musician.", "neutral"),
             ("Kids run in the park.", "Children are outside.", "entailment"),
             ("Kids run in the park.", "The kids are asleep.", "contradiction"),
             ("She bought bread.", "She bought bread for her mother.", "neutral")]

    def rows(with_label):
        return "".join(f"{i}\t{i}\t{i}n\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t{a}\t{b}"
                       + (f"\t{label}\t{label}" if with_label else "") + "\n" for i, (a, b, label) in enumerate(pairs))
    folder = root / "MNLI"
    folder.mkdir()
    for name in ("train", "dev_matched", "dev_mismatched"):
        (folder / f"{name}.tsv").write_text(header + "\tlabel1\tgold_label\n" + rows(True))
    for name in ("test_matched", "test_mismatched"):
        (folder / f"{name}.tsv").write_text(header + "\n" + rows(False))
    return folder


def test_run_glue_mnli_matched_and_mismatched(tmp_path, tiny_model):
    """From a pretraining run dir (`latest` -> global_step12/) on a hand-made MNLI folder."""
    out = tmp_path / "out"
    run_glue.main(["--task_name", "MNLI", "--data_dir", str(_mnli_dir(tmp_path)), "--model_dir",
                   str(tiny_model / "run"), "--output_dir", str(out), "--num_train_epochs", "2",
                   "--train_batch_size", "2"])
    scores = json.loads((out / "eval_results.json").read_text())
    labels = ["entailment", "contradiction", "neutral", "entailment", "contradiction", "neutral"]
    for suffix, name in (("", "dev_matched"), ("_mm", "dev_mismatched")):
        preds = read_tsv_predictions(out / f"{name}_predictions.tsv")
        assert scores[f"acc{suffix}"] == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    for name in ("MNLI-m.tsv", "MNLI-mm.tsv"):
        assert set(read_tsv_predictions(out / "submission" / name)) <= set(labels)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}
    assert config["architectures"] == ["BertForSequenceClassification"]


def test_bad_input_exits_with_a_clear_error(tmp_path, tiny_model):
    result = run_script("finetune/run_glue.py", "--task_name", "RTE", "--data_dir", tmp_path / "nowhere",
                        "--model_dir", tiny_model / "hf", "--output_dir", tmp_path / "out")
    assert result.returncode == 2 and "error: --data_dir" in result.stderr and "does not exist" in result.stderr
    result = run_script("finetune/run_squad.py", "--predict_file", FIXTURES / "squad_v2_tiny.json",
                        "--model_dir", tmp_path / "no_model", "--output_dir", tmp_path / "out")
    assert result.returncode == 2 and "error: --model_dir" in result.stderr and "does not exist" in result.stderr
    for script in ("run_glue", "run_squad", "run_ner", "predict"):
        assert run_script(f"finetune/{script}.py", "--help").returncode == 0


# ---------------------------------------------------------------- SQuAD

def _squad_subset(source: Path, target: Path, articles: slice, questions_per_paragraph: int = 2):
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as f:
        data = json.load(f)["data"][articles]
    for article in data:
        article["paragraphs"] = [{**p, "qas": p["qas"][:questions_per_paragraph]} for p in article["paragraphs"][:6]]
    target.write_text(json.dumps({"version": "1.1", "data": data}))
    return target


def test_run_squad_v1_real_data(tmp_path, squad_dev, tiny_model):
    train = _squad_subset(squad_dev.parent / "train-v1.1.json.gz", tmp_path / "train.json", slice(0, 4))
    dev = _squad_subset(squad_dev, tmp_path / "dev.json", slice(0, 3))
    out = tmp_path / "out"
    run_squad.main(["--train_file", str(train), "--predict_file", str(dev), "--model_dir", str(tiny_model / "hf"),
                    "--output_dir", str(out), "--num_train_epochs", "1", "--train_batch_size", "16",
                    "--max_seq_length", "192", "--doc_stride", "64", "--learning_rate", "1e-3"])
    dataset = json.loads(dev.read_text())["data"]
    predictions = json.loads((out / "predictions.json").read_text())
    qids = {qa["id"] for a in dataset for p in a["paragraphs"] for qa in p["qas"]}
    assert set(predictions) == qids and all(isinstance(v, str) and v for v in predictions.values())
    contexts = " ".join(p["context"] for a in dataset for p in a["paragraphs"])
    assert all(v in contexts for v in predictions.values())
    scores = json.loads((out / "eval_results.json").read_text())
    assert scores == pytest.approx(squad_v1_evaluate(dataset, predictions))
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    assert set(nbest) == qids and all(len(v) <= 20 for v in nbest.values())
    context = dataset[0]["paragraphs"][0]["context"]
    predicted = run_script("finetune/predict.py", "--model_dir", out / "model", "--question",
                           dataset[0]["paragraphs"][0]["qas"][0]["question"], "--context", context)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout)["answer"] in context


def test_run_squad_v2_fixture(tmp_path, tiny_model):
    out = tmp_path / "out"
    fixture = FIXTURES / "squad_v2_tiny.json"
    run_squad.main(["--train_file", str(fixture), "--predict_file", str(fixture), "--version_2_with_negative",
                    "--model_dir", str(tiny_model / "hf"), "--output_dir", str(out), "--num_train_epochs", "2",
                    "--train_batch_size", "4", "--max_seq_length", "64", "--doc_stride", "24"])
    dataset = json.loads(fixture.read_text())["data"]
    predictions = json.loads((out / "predictions.json").read_text())
    null_odds = json.loads((out / "null_odds.json").read_text())
    assert set(predictions) == set(null_odds) == {f"v2q{i}" for i in range(1, 7)}
    assert all((predictions[q] == "") == (null_odds[q] > 0) for q in predictions)  # default threshold 0
    scores = json.loads((out / "eval_results.json").read_text())
    reference = squad_v2_evaluate(dataset, predictions)
    for key in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_total"):
        assert scores[key] == pytest.approx(reference[key])
    assert scores["exact_match"] == scores["exact"]
    assert {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= set(scores)
    assert scores["best_f1"] >= 50.0  # abstaining on every question already scores 3 of 6


def test_squad_v1_rejects_unanswerable_training_data(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="--version_2_with_negative"):
        run_squad.main(["--train_file", str(FIXTURES / "squad_v2_tiny.json"), "--predict_file",
                        str(FIXTURES / "squad_v2_tiny.json"), "--model_dir", str(tiny_model / "hf"),
                        "--output_dir", str(tmp_path)])


# ---------------------------------------------------------------- NER

@pytest.mark.parametrize("fmt,crf", [("conll", False), ("cluener", True)])
def test_run_ner_learns_the_fixture(tmp_path, tiny_model, fmt, crf):
    """Trained on a hand-made file and scored on the same file, the model must fit it: entity F1 1.0
    (checks labels stay aligned with first sub-tokens through training and decoding)."""
    train = FIXTURES / ("conll_train.txt" if fmt == "conll" else "cluener_train.json")
    test = FIXTURES / ("conll_dev.txt" if fmt == "conll" else "cluener_test.json")
    out = tmp_path / "out"
    run_ner.main(["--train_file", str(train), "--eval_file", str(train), "--test_file", str(test),
                  "--model_dir", str(tiny_model / "hf"), "--output_dir", str(out),
                  "--num_train_epochs", "40" if crf else "30", "--learning_rate", "3e-3", "--train_batch_size", "4",
                  "--warmup_proportion", "0",
                  *(["--use_crf"] if crf else [])])
    scores = json.loads((out / "eval_results.json").read_text())
    assert scores["f1"] == 1.0 and scores["precision"] == 1.0 and scores["recall"] == 1.0
    suffix = ".txt" if fmt == "conll" else ".json"
    assert (out / f"test_predictions{suffix}").is_file()
    if crf:
        assert json.loads((out / "model" / "config.json").read_text())["architectures"] == [
            "BertCRFForTokenClassification"]
    # Evaluating the saved model on held-out sentences reproduces the score computed from its own
    # written predictions (seqeval as the reference).
    seqeval = pytest.importorskip("seqeval.metrics")
    dev = FIXTURES / ("conll_dev.txt" if fmt == "conll" else "cluener_dev.json")
    run_ner.main(["--eval_file", str(dev), "--model_dir", str(out / "model"), "--output_dir", str(tmp_path / "eval"),
                  "--num_train_epochs", "0"])  # the CRF comes back from config.json
    from bertspeed.finetune import ner
    gold = [s.labels for s in ner.read_sentences(dev)]
    predicted = [s.labels for s in ner.read_sentences(tmp_path / "eval" / f"eval_predictions{suffix}")]
    scores = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert scores["f1"] == pytest.approx(seqeval.f1_score(gold, predicted))
    assert scores["precision"] == pytest.approx(seqeval.precision_score(gold, predicted))
    assert scores["recall"] == pytest.approx(seqeval.recall_score(gold, predicted))


# ---------------------------------------------------------------- DeepSpeed

def test_deepspeed_zero2_single_process(tmp_path, glue_dir, tiny_model):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    out = tmp_path / "out"
    result = run_script("finetune/run_glue.py", "--task_name", "MRPC", "--data_dir", glue_dir / "MRPC",
                        "--model_dir", tiny_model / "run", "--output_dir", out, "--deepspeed_config", config,
                        "--max_train_samples", "32", "--max_eval_samples", "40", "--train_batch_size", "8",
                        "--num_train_epochs", "1", "--no_test_predictions")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((out / "eval_results.json").read_text())
    # Re-evaluating the saved model in plain PyTorch gives the same scores.
    run_glue.main(["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_dir", str(out / "model"),
                   "--output_dir", str(tmp_path / "again"), "--num_train_epochs", "0", "--max_eval_samples", "40",
                   "--no_test_predictions"])
    assert json.loads((tmp_path / "again" / "eval_results.json").read_text()) == pytest.approx(scores)


def run_glue_two_ranks_zero3(tmp_path, glue_dir, tiny_model, *extra_args) -> Path:
    """run_glue.py on 32 STS-B rows through `deepspeed --num_gpus 2` with ZeRO-3; returns its output dir."""
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    out = tmp_path / "out"
    launcher = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run([str(launcher), "--num_gpus", "2", "--master_port", str(29500 + os.getpid() % 1000),
                             "finetune/run_glue.py", "--task_name", "STS-B", "--data_dir", str(glue_dir / "STS-B"),
                             "--model_dir", str(tiny_model / "hf"), "--output_dir", str(out), "--deepspeed_config",
                             str(config), "--max_train_samples", "32", "--max_eval_samples", "50",
                             "--train_batch_size", "8", "--num_train_epochs", "1", "--no_test_predictions",
                             *extra_args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_deepspeed_launcher_two_ranks_zero3(tmp_path, glue_dir, tiny_model):
    """`deepspeed --num_gpus 2` (two CPU ranks), ZeRO-3: partitioned weights are gathered for saving
    and predictions from both ranks are merged in order."""
    out = run_glue_two_ranks_zero3(tmp_path, glue_dir, tiny_model)
    scores = json.loads((out / "eval_results.json").read_text())
    run_glue.main(["--task_name", "STS-B", "--data_dir", str(glue_dir / "STS-B"), "--model_dir", str(out / "model"),
                   "--output_dir", str(tmp_path / "again"), "--num_train_epochs", "0", "--max_eval_samples", "50",
                   "--no_test_predictions"])
    again = json.loads((tmp_path / "again" / "eval_results.json").read_text())
    assert again == pytest.approx(scores, abs=1e-5)
