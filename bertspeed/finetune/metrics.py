"""Every metric the finetuning drivers report, in one place.

Definitions follow the official ones: GLUE (scikit-learn / SciPy formulas),
SQuAD v1.1 and v2.0 (the official evaluate-v1.1.py / evaluate-v2.0.py scripts),
and entity-level NER scores (seqeval's default, conlleval-style chunking).
Tests compare each of them with an independent implementation.
"""
from __future__ import annotations

import collections
import re
import string

import numpy as np

# ---------------------------------------------------------------- classification / regression

def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean())


def _confusion(preds, labels):
    preds, labels = np.asarray(preds) == 1, np.asarray(labels) == 1
    tp = int((preds & labels).sum())
    tn = int((~preds & ~labels).sum())
    fp = int((preds & ~labels).sum())
    fn = int((~preds & labels).sum())
    return tp, tn, fp, fn


def binary_f1(preds, labels) -> float:
    """F1 of the positive class (label 1); 0 when there is no true positive."""
    tp, _, fp, fn = _confusion(preds, labels)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation of two binary labelings; 0 when undefined (as scikit-learn)."""
    tp, tn, fp, fn = _confusion(preds, labels)
    denominator = np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else float((tp * tn - fp * fn) / denominator)


def _confusion_matrix(preds, labels) -> np.ndarray:
    """Counts [true class, predicted class] over the classes present in either (sorted), as scikit-learn."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (np.searchsorted(classes, labels), np.searchsorted(classes, preds)), 1)
    return matrix


def macro_f1(preds, labels) -> float:
    """Unweighted mean of the per-class F1 over the classes in labels or preds (a class with no true
    positive scores 0), as sklearn.metrics.f1_score(average="macro")."""
    matrix = _confusion_matrix(preds, labels)
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(0) + matrix.sum(1)  # 2 tp + fp + fn
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))


def multiclass_mcc(preds, labels) -> float:
    """Matthews correlation of K classes (Gorodkin's R_K); 0 when undefined, as scikit-learn."""
    matrix = _confusion_matrix(preds, labels).astype(np.float64)
    total, correct = matrix.sum(), np.trace(matrix)
    true_counts, pred_counts = matrix.sum(1), matrix.sum(0)
    denominator = np.sqrt((total ** 2 - pred_counts @ pred_counts) * (total ** 2 - true_counts @ true_counts))
    return 0.0 if denominator == 0 else float((correct * total - pred_counts @ true_counts) / denominator)


def classification_metrics(preds, labels, regression: bool) -> dict:
    """Own-data tasks: accuracy, macro-F1 and MCC, or Pearson and Spearman for regression."""
    if regression:
        return {"pearson": pearson(preds, labels), "spearmanr": spearman(preds, labels)}
    return {"acc": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels), "mcc": multiclass_mcc(preds, labels)}


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float("nan") if denominator == 0 else float((x * y).sum() / denominator)


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(average_ranks(x), average_ranks(y))


# ---------------------------------------------------------------- SQuAD (official evaluation scripts)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, truth: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str, version_2: bool = True) -> float:
    """Token-overlap F1 of normalised answers. evaluate-v2.0.py scores an empty side 1 against another
    empty one and 0 otherwise; evaluate-v1.1.py scores any pair without a common token 0."""
    pred_tokens, true_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if version_2 and (not pred_tokens or not true_tokens):
        return float(pred_tokens == true_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_gold_answers(qa: dict, version_2: bool) -> list[str]:
    """Ground truths of one question; v2.0 scores an unanswerable question against ''."""
    answers = [a["text"] for a in qa.get("answers", [])]
    if version_2:
        answers = [a for a in answers if normalize_answer(a)] or [""]
    return answers


def squad_raw_scores(dataset: list, predictions: dict, version_2: bool):
    """Per-question exact match and F1 (max over ground truths) and which questions have answers.
    `dataset` is the "data" list of a SQuAD file; missing predictions score 0."""
    exact, f1, has_answer = {}, {}, {}
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qid = qa["id"]
                has_answer[qid] = bool(qa.get("answers"))
                golds = squad_gold_answers(qa, version_2)
                prediction = predictions.get(qid)
                if prediction is None:
                    exact[qid], f1[qid] = 0, 0.0
                    continue
                exact[qid] = max(squad_exact(prediction, g) for g in golds)
                f1[qid] = max(squad_f1(prediction, g, version_2) for g in golds)
    return exact, f1, has_answer


def squad_v1_evaluate(dataset: list, predictions: dict) -> dict:
    """{'exact_match', 'f1'} in percent over every question of the dataset (evaluate-v1.1.py)."""
    exact, f1, _ = squad_raw_scores(dataset, predictions, version_2=False)
    total = len(exact)
    return {"exact_match": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total}


def squad_best_threshold(predictions: dict, scores: dict, na_probs: dict, has_answer: dict):
    """Best score over no-answer thresholds (evaluate-v2.0.py's find_best_thresh)."""
    score = best = sum(1 for q in has_answer if not has_answer[q])
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def squad_v2_evaluate(dataset: list, predictions: dict, na_probs: dict | None = None,
                      threshold_predictions: dict | None = None) -> dict:
    """evaluate-v2.0.py: exact/f1 overall and on HasAns/NoAns questions; with `na_probs` (question id ->
    no-answer score) also best_exact/best_f1 and their thresholds, searched over
    `threshold_predictions` (default: `predictions`)."""
    exact, f1, has_answer = squad_raw_scores(dataset, predictions, version_2=True)
    total = len(exact)
    out = {"exact": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total, "total": total}
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in has_answer if has_answer[q] == wanted]
        if ids:
            out[f"{name}_exact"] = 100.0 * sum(exact[q] for q in ids) / len(ids)
            out[f"{name}_f1"] = 100.0 * sum(f1[q] for q in ids) / len(ids)
            out[f"{name}_total"] = len(ids)
    if na_probs is not None:
        preds = threshold_predictions if threshold_predictions is not None else predictions
        t_exact, t_f1, _ = squad_raw_scores(dataset, preds, version_2=True)
        out["best_exact"], out["best_exact_thresh"] = squad_best_threshold(preds, t_exact, na_probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = squad_best_threshold(preds, t_f1, na_probs, has_answer)
    return out


# ---------------------------------------------------------------- NER (entity level, seqeval default)

def _split_tag(label: str):
    return label[0], (label[1:].split("-", maxsplit=1)[-1] or "_")


def _chunk_ends(prev_tag, tag, prev_type, type_) -> bool:
    return (prev_tag in ("E", "S")
            or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _chunk_starts(prev_tag, tag, prev_type, type_) -> bool:
    return (tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def get_entities(labels: list[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) chunks of an IOB1/IOB2/IOBES label sequence (conlleval rules)."""
    chunks, prev_tag, prev_type, begin = [], "O", "", 0
    for i, label in enumerate(list(labels) + ["O"]):
        tag, type_ = _split_tag(label)
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_scores(true_sequences: list[list[str]], pred_sequences: list[list[str]]) -> dict:
    """Micro precision/recall/F1 over exactly matching entities of all sentences."""
    if len(true_sequences) != len(pred_sequences):
        raise ValueError(f"{len(true_sequences)} gold sentences but {len(pred_sequences)} predicted")
    true_set, pred_set = set(), set()
    for n, (gold, pred) in enumerate(zip(true_sequences, pred_sequences)):
        if len(gold) != len(pred):
            raise ValueError(f"sentence {n}: {len(gold)} gold labels but {len(pred)} predicted")
        true_set.update((n, *chunk) for chunk in get_entities(gold))
        pred_set.update((n, *chunk) for chunk in get_entities(pred))
    correct = len(true_set & pred_set)
    precision = correct / len(pred_set) if pred_set else 0.0
    recall = correct / len(true_set) if true_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def glue_metrics(task: str, preds, labels) -> dict:
    """The metrics GLUE reports for `task` (lower-case name); MNLI's mismatched set is scored as 'mnli'."""
    task = task.lower()
    if task == "cola":
        return {"mcc": matthews_corrcoef(preds, labels)}
    if task in ("mrpc", "qqp"):
        acc, f1 = accuracy(preds, labels), binary_f1(preds, labels)
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    if task == "sts-b":
        p, s = pearson(preds, labels), spearman(preds, labels)
        return {"pearson": p, "spearmanr": s, "corr": (p + s) / 2}
    if task in ("sst-2", "mnli", "qnli", "rte", "wnli"):
        return {"acc": accuracy(preds, labels)}
    raise ValueError(f"unknown GLUE task {task!r}")
