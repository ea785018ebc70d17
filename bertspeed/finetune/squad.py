"""SQuAD v1.1 / v2.0: reading, windowed features, and n-best span decoding.

Features follow BERT's run_squad.py: [CLS] question [SEP] context window [SEP], the question cut to
max_query_length tokens, the context cut into windows of the remaining length that advance by
doc_stride tokens; a token seen in several windows is only scored in the window where it has the
most context. Answers are cut from the original context through the tokenizer's character offsets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SquadExample:
    qid: str
    question: str
    context_id: int  # index into the list of contexts
    answers: list  # [{"text", "answer_start"}]; empty when unanswerable
    is_impossible: bool


def read_squad(path) -> tuple[list, list[str], list[SquadExample]]:
    """(the file's "data" list, contexts, examples). Errors name the file and the bad field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file not found: {path}")
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a SQuAD file (expected JSON with a 'data' list: {e})") from None
    contexts, examples = [], []
    for a, article in enumerate(dataset):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph.get("context"), str) or not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"{where}: needs a 'context' string and a 'qas' list")
            contexts.append(paragraph["context"])
            for q, qa in enumerate(paragraph["qas"]):
                if "id" not in qa or "question" not in qa:
                    raise ValueError(f"{where}.qas[{q}]: needs 'id' and 'question'")
                answers = qa.get("answers", [])
                for answer in answers:
                    if "text" not in answer or not isinstance(answer.get("answer_start"), int):
                        raise ValueError(f"{where}.qas[{q}] ({qa['id']}): answers need 'text' and integer "
                                         "'answer_start'")
                examples.append(SquadExample(str(qa["id"]), qa["question"], len(contexts) - 1, answers,
                                             bool(qa.get("is_impossible", False)) or not answers))
    if not examples:
        raise ValueError(f"{path}: no questions")
    return dataset, contexts, examples


def doc_windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of the context windows."""
    windows, start = [], 0
    while True:
        length = min(num_tokens - start, window)
        windows.append((start, length))
        if start + length >= num_tokens:
            return windows
        start += min(length, stride)


def max_context_flags(windows, w: int) -> list[bool]:
    """For each token of window w: is w the window where it has the most context (BERT's rule)."""
    start, length = windows[w]
    flags = []
    for position in range(start, start + length):
        best, best_w = None, None
        for i, (s, n) in enumerate(windows):
            if s <= position < s + n:
                score = min(position - s, s + n - 1 - position) + 0.01 * n
                if best is None or score > best:
                    best, best_w = score, i
        flags.append(best_w == w)
    return flags


def answer_token_span(offsets, start_char: int, end_char: int) -> tuple[int, int]:
    """First and last context token covering characters [start_char, end_char)."""
    start = max((i for i, (s, _) in enumerate(offsets) if s <= start_char), default=0)
    end = min((i for i, (_, e) in enumerate(offsets) if e >= end_char), default=len(offsets) - 1)
    return start, max(start, end)


def featurize(examples, contexts, tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int,
              training: bool) -> tuple[list[dict], list]:
    """(features, context token offsets). Training features carry start/end positions (0 = [CLS] when
    the answer is outside the window or the question is unanswerable; questions whose answer_start does
    not point at their text are left out, as BERT does); every feature carries metadata (keys
    starting with "_") for decoding."""
    ctx = tokenizer.encode_batch(contexts, padding=False)
    ctx_ids = [ids[1:-1] for ids in ctx["input_ids"]]
    ctx_offsets = [offs[1:-1] for offs in ctx["offsets"]]
    questions = tokenizer.encode_batch([e.question for e in examples], padding=False)["input_ids"]
    features = []
    for n, example in enumerate(examples):
        q_ids = questions[n][1:-1][:max_query_length]
        doc_ids, offsets = ctx_ids[example.context_id], ctx_offsets[example.context_id]
        window = max_seq_length - len(q_ids) - 3
        if window <= 0:
            raise ValueError(f"--max_seq_length {max_seq_length} leaves no room for the context after a "
                             f"question of {len(q_ids)} tokens (lower --max_query_length)")
        windows = doc_windows(len(doc_ids), window, doc_stride)
        span = None
        if training and not example.is_impossible:
            if not answer_is_aligned(example, contexts):
                continue
            answer = example.answers[0]
            start_char = answer["answer_start"]
            span = answer_token_span(offsets, start_char, start_char + len(answer["text"]))
        for w, (start, length) in enumerate(windows):
            prefix = len(q_ids) + 2
            feature = {
                "input_ids": [tokenizer.cls_id, *q_ids, tokenizer.sep_id, *doc_ids[start:start + length],
                              tokenizer.sep_id],
                "token_type_ids": [0] * prefix + [1] * (length + 1),
                "_example": n, "_prefix": prefix, "_doc_start": start,
            }
            if not training:  # only decoding needs it
                feature["_max_context"] = max_context_flags(windows, w)
            else:
                inside = span is not None and start <= span[0] and span[1] < start + length
                s, e = (span[0] - start + prefix, span[1] - start + prefix) if inside else (0, 0)
                feature["start_positions"], feature["end_positions"] = s, e
            features.append(feature)
    return features, ctx_offsets


def answer_is_aligned(example: SquadExample, contexts) -> bool:
    """Does the first answer's answer_start point at its text (whitespace differences ignored)?"""
    answer = example.answers[0]
    found = contexts[example.context_id][answer["answer_start"]:answer["answer_start"] + len(answer["text"])]
    return found.split() == answer["text"].split()


def _softmax(scores):
    scores = np.asarray(scores, dtype=np.float64)
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def decode(examples, contexts, features, ctx_offsets, logits, n_best_size: int = 20,
           max_answer_length: int = 30, version_2: bool = False, null_score_diff_threshold: float = 0.0):
    """n-best span decoding. `logits[i]` is (start_logits, end_logits) of feature i.
    Returns predictions (what is written to predictions.json), n-best lists, and for v2.0 the
    null-minus-best score per question (null_odds) and the best non-null answers."""
    by_example = {}
    for i, f in enumerate(features):
        by_example.setdefault(f["_example"], []).append(i)
    predictions, nbest_all, null_odds, best_non_null = {}, {}, {}, {}
    for n, example in enumerate(examples):
        offsets, context = ctx_offsets[example.context_id], contexts[example.context_id]
        candidates, null_score = [], None
        for i in by_example.get(n, []):
            f, (start_logits, end_logits) = features[i], logits[i]
            feature_null = (float(start_logits[0]), float(end_logits[0]))
            if null_score is None or sum(feature_null) < sum(null_score):
                null_score = feature_null
            candidates += _feature_spans(f, start_logits, end_logits, n_best_size, max_answer_length)
        nbest, seen = [], set()
        for score, s_logit, e_logit, first, last in sorted(candidates, key=lambda c: -c[0]):
            text = context[offsets[first][0]:offsets[last][1]]
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": s_logit, "end_logit": e_logit})
            if len(nbest) == n_best_size:
                break
        if version_2 and null_score is not None:  # the null answer joins the list with its score
            nbest.append({"text": "", "start_logit": null_score[0], "end_logit": null_score[1]})
            nbest.sort(key=lambda c: -(c["start_logit"] + c["end_logit"]))
        if not any(c["text"] for c in nbest):  # no valid span at all: a placeholder, as BERT does
            nbest.append({"text": "empty", "start_logit": 0.0, "end_logit": 0.0})
        probabilities = _softmax([c["start_logit"] + c["end_logit"] for c in nbest])
        for c, p in zip(nbest, probabilities):
            c["probability"] = float(p)
        nbest_all[example.qid] = nbest
        best = next(c for c in nbest if c["text"])
        best_non_null[example.qid] = best["text"]
        if not version_2:
            predictions[example.qid] = nbest[0]["text"]
            continue
        diff = sum(null_score) - best["start_logit"] - best["end_logit"]
        null_odds[example.qid] = diff
        predictions[example.qid] = "" if diff > null_score_diff_threshold else best["text"]
    return predictions, nbest_all, null_odds, best_non_null


def _feature_spans(f, start_logits, end_logits, n_best_size, max_answer_length):
    """(score, start logit, end logit, first context token, last context token) of valid spans."""
    prefix, doc_start, max_context = f["_prefix"], f["_doc_start"], f["_max_context"]
    doc_len = len(max_context)
    tops = lambda x: np.argsort(x)[::-1][:n_best_size]  # noqa: E731
    spans = []
    for s in tops(start_logits):
        for e in tops(end_logits):
            if not (prefix <= s < prefix + doc_len and prefix <= e < prefix + doc_len):
                continue
            if e < s or e - s + 1 > max_answer_length or not max_context[s - prefix]:
                continue
            spans.append((float(start_logits[s] + end_logits[e]), float(start_logits[s]),
                          float(end_logits[e]), int(s - prefix + doc_start), int(e - prefix + doc_start)))
    return spans
