"""finetune.metrics against independent implementations (scikit-learn, SciPy, seqeval) and SQuAD
cases worked out by hand from the official evaluation scripts' definitions."""
from __future__ import annotations

import random

import numpy as np
import pytest

from bertspeed.finetune import metrics as m

sklearn_metrics = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")
seqeval_metrics = pytest.importorskip("seqeval.metrics")


def _binary_cases():
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 2, n), rng.integers(0, 2, n)) for n in (1, 2, 7, 50, 333)]
    cases += [(np.zeros(5, int), np.zeros(5, int)), (np.ones(5, int), np.zeros(5, int)),
              (np.array([1, 1, 0]), np.array([1, 1, 0])), (np.zeros(4, int), np.array([1, 0, 1, 0]))]
    return cases


@pytest.mark.parametrize("preds,labels", _binary_cases())
def test_classification_metrics_match_sklearn(preds, labels):
    assert m.accuracy(preds, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    assert m.binary_f1(preds, labels) == pytest.approx(sklearn_metrics.f1_score(labels, preds, zero_division=0))
    assert m.matthews_corrcoef(preds, labels) == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, preds))


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    for n in (3, 10, 200):
        x = rng.normal(size=n)
        y = np.round(x + rng.normal(size=n), 1)  # rounding makes ties
        ties = rng.integers(0, 4, n).astype(float)
        assert m.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
        assert m.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
        assert m.spearman(ties, y) == pytest.approx(stats.spearmanr(ties, y)[0])
    assert m.average_ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_glue_metric_names():
    p, y = [1, 0, 1, 1], [1, 0, 0, 1]
    assert set(m.glue_metrics("cola", p, y)) == {"mcc"}
    assert m.glue_metrics("mrpc", p, y) == pytest.approx({"acc": 0.75, "f1": 0.8, "acc_and_f1": 0.775})
    assert set(m.glue_metrics("sts-b", [0.1, 2.0, 3.5], [0.0, 2.5, 3.0])) == {"pearson", "spearmanr", "corr"}
    for task in ("sst-2", "mnli", "qnli", "rte", "wnli"):
        assert m.glue_metrics(task, p, y) == {"acc": 0.75}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        m.glue_metrics("squad", p, y)


# ---------------------------------------------------------------- SQuAD, worked out by hand

@pytest.mark.parametrize("text,normalized", [
    ("The Denver Broncos", "denver broncos"),
    ("  Santa Clara,  California. ", "santa clara california"),
    ("an apple a day", "apple day"),
    ("Theatre of the Absurd", "theatre of absurd"),  # 'The' inside a word stays
    ("A", ""),
    ("rock-'n'-roll", "rocknroll"),
])
def test_normalize_answer(text, normalized):
    assert m.normalize_answer(text) == normalized


def test_squad_exact_and_f1_by_hand():
    assert m.squad_exact("the Denver Broncos!", "Denver Broncos") == 1
    assert m.squad_exact("Denver", "Denver Broncos") == 0
    # pred {broncos, of, denver}, gold {denver, broncos}: precision 2/3, recall 1 -> F1 0.8
    assert m.squad_f1("Broncos of Denver", "Denver Broncos") == pytest.approx(0.8)
    # repeated tokens count once per occurrence: pred {a1,b,b}, gold {b}: p = 1/3, r = 1 -> 0.5
    assert m.squad_f1("x b b", "b") == pytest.approx(0.5)
    assert m.squad_f1("cat", "dog") == 0.0
    # empty answers: v2.0 scores '' against '' as 1, v1.1 as 0 (no common token)
    assert m.squad_f1("", "the", version_2=True) == 1.0
    assert m.squad_f1("", "the", version_2=False) == 0.0
    assert m.squad_f1("cat", "", version_2=True) == 0.0


def _dataset(qas):
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


def test_squad_v1_max_over_ground_truths_and_missing_predictions():
    data = _dataset([
        {"id": "q1", "question": "?", "answers": [{"text": "Denver Broncos", "answer_start": 0},
                                                   {"text": "Broncos", "answer_start": 0}]},
        {"id": "q2", "question": "?", "answers": [{"text": "Santa Clara, California", "answer_start": 0}]},
        {"id": "q3", "question": "?", "answers": [{"text": "1999", "answer_start": 0}]},
        {"id": "q4", "question": "?", "answers": [{"text": "blue", "answer_start": 0}]},
    ])
    preds = {"q1": "the Broncos", "q2": "Santa Clara", "q3": "in 1999 and 2000"}  # q4 missing: scores 0
    # q1: EM 1 (second truth) F1 1; q2: EM 0, F1 p=1 r=2/3 -> 0.8; q3: EM 0, F1 p=1/4 r=1 -> 0.4
    result = m.squad_v1_evaluate(data, preds)
    assert result["exact_match"] == pytest.approx(100 * 1 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 0.8 + 0.4 + 0) / 4)


def test_squad_v2_scores_and_best_threshold_by_hand():
    data = _dataset([
        {"id": "a", "question": "?", "answers": [{"text": "cat", "answer_start": 0}]},
        {"id": "b", "question": "?", "answers": [], "is_impossible": True},
        {"id": "c", "question": "?", "answers": [{"text": "big dog", "answer_start": 0}]},
        {"id": "d", "question": "?", "answers": [], "is_impossible": True},
    ])
    preds = {"a": "cat", "b": "", "c": "dog", "d": "bird"}
    result = m.squad_v2_evaluate(data, preds)
    # exact: a 1, b 1, c 0, d 0; f1: a 1, b 1, c (p 1, r 1/2) 2/3, d 0
    assert result["exact"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (2 + 2 / 3) / 4)
    assert (result["HasAns_exact"], result["NoAns_exact"]) == (pytest.approx(50.0), pytest.approx(50.0))
    assert result["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert (result["HasAns_total"], result["NoAns_total"], result["total"]) == (2, 2, 4)

    # Threshold search over best non-null answers, in increasing no-answer score:
    # start at 2 (all abstain: b, d right); a(-2) +1 -> 3; c(-1) +2/3 (f1) or +0 (em); b(0.5) -1; d(3) -1.
    non_null = {"a": "cat", "b": "fish", "c": "dog", "d": "bird"}
    odds = {"a": -2.0, "b": 0.5, "c": -1.0, "d": 3.0}
    result = m.squad_v2_evaluate(data, preds, na_probs=odds, threshold_predictions=non_null)
    assert result["best_exact"] == pytest.approx(75.0) and result["best_exact_thresh"] == -2.0
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4) and result["best_f1_thresh"] == -1.0


# ---------------------------------------------------------------- NER against seqeval

def _random_sequences(rng, schemes):
    types = ["PER", "LOC", "ORG"]
    sequences = []
    for _ in range(40):
        labels = []
        for _ in range(rng.randint(0, 12)):
            prefix = rng.choice(schemes)
            labels.append("O" if prefix == "O" else f"{prefix}-{rng.choice(types)}")
        sequences.append(labels)
    return sequences


@pytest.mark.parametrize("schemes", [("O", "B", "I"), ("O", "I"), ("O", "B", "I", "E", "S")])
def test_entity_scores_match_seqeval(schemes):
    rng = random.Random(len(schemes))
    for _ in range(20):
        gold = _random_sequences(rng, schemes)
        pred = [[rng.choice([label, "O", "B-PER", "I-LOC"]) for label in seq] for seq in gold]
        ours = m.entity_scores(gold, pred)
        assert ours["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred, zero_division=0))
        assert ours["recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred, zero_division=0))
        assert ours["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred, zero_division=0))


def test_entities_by_hand_and_length_errors():
    assert m.get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
    perfect = m.entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])
    assert perfect == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    with pytest.raises(ValueError, match="sentence 0"):
        m.entity_scores([["O", "O"]], [["O"]])
