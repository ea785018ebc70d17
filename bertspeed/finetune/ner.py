"""NER data: CoNLL-2003 text files and CLUENER-style JSON lines, first-sub-token labelling.

CoNLL: one token per line, the label in the last column, blank lines between sentences,
`-DOCSTART-` lines skipped. CLUENER: one JSON object per line, {"text": ..., "label": {type:
{entity text: [[first char, last char], ...]}}}; each character is a token, tagged B-/I-type.
Only the first WordPiece of each word carries a label; the others (and words cut off by
max_seq_length, or made of no WordPiece at all) take no part in the loss and are predicted "O".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertspeed.training.atomic import open_atomic


@dataclass
class Sentence:
    words: list[str]
    labels: list[str] | None  # None for unlabelled test data
    guid: str = ""


FORMATS = ("conll", "cluener")  # CoNLL-2003 columns, CLUENER JSON lines


def detect_format(path: Path) -> str:
    return "cluener" if Path(path).suffix in (".json", ".jsonl") else "conll"


def read_sentences(path, fmt: str | None = None) -> list[Sentence]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NER file not found: {path}")
    fmt = fmt or detect_format(path)
    sentences = read_cluener(path) if fmt == "cluener" else read_conll(path)
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


def read_conll(path: Path) -> list[Sentence]:
    sentences, words, labels = [], [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences.append(Sentence(words, labels, f"{path.name}:{line_no - len(words)}"))
                    words, labels = [], []
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}:{line_no}: expected 'token ... label' columns, got {line.strip()!r}")
            words.append(fields[0])
            labels.append(fields[-1])
    if words:
        sentences.append(Sentence(words, labels, f"{path.name}:end"))
    return sentences


def read_cluener(path: Path) -> list[Sentence]:
    sentences = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{line_no}: expected a JSON object with a 'text' field") from None
            labels = None if "label" not in record else _span_tags(text, record["label"], f"{path}:{line_no}")
            sentences.append(Sentence(list(text), labels, str(record.get("id", line_no - 1))))
    return sentences


def _span_tags(text: str, spans: dict, where: str) -> list[str]:
    tags = ["O"] * len(text)
    for entity_type, entities in (spans or {}).items():
        for surface, positions in entities.items():
            for first, last in positions:
                if text[first:last + 1] != surface:
                    raise ValueError(f"{where}: label {entity_type} span [{first}, {last}] is "
                                     f"{text[first:last + 1]!r}, not {surface!r}")
                if any(t != "O" for t in tags[first:last + 1]):
                    raise ValueError(f"{where}: label {entity_type} span [{first}, {last}] overlaps another")
                tags[first:last + 1] = [f"B-{entity_type}"] + [f"I-{entity_type}"] * (last - first)
    return tags


def label_list(*sentence_sets) -> list[str]:
    """'O' first, then every other label seen, sorted."""
    labels = {label for sentences in sentence_sets for s in sentences if s.labels for label in s.labels}
    return ["O"] + sorted(labels - {"O"})


def featurize(sentences: list[Sentence], tokenizer, max_seq_length: int, label2id: dict | None,
              word_mask: bool = False) -> list[dict]:
    """[CLS] word pieces [SEP]; `labels` on first pieces (-100 elsewhere) when label2id is given;
    `_word_starts[i]` is the position of word i's first piece, or None when it has none."""
    flat = [w for s in sentences for w in s.words]
    pieces = tokenizer.token_ids(flat) if flat else []
    features, k = [], 0
    for n, sentence in enumerate(sentences):
        ids, starts, labels = [tokenizer.cls_id], [], [-100]
        for i, word in enumerate(sentence.words):
            word_pieces = pieces[k + i]
            if not word_pieces or len(ids) + len(word_pieces) > max_seq_length - 1:
                starts.append(None)
                continue
            starts.append(len(ids))
            if label2id is not None and sentence.labels is not None:
                label = sentence.labels[i]
                if label not in label2id:
                    raise ValueError(f"sentence {sentence.guid}: label {label!r} is not among the model's "
                                     f"labels {list(label2id)}")
                labels += [label2id[label]] + [-100] * (len(word_pieces) - 1)
            ids += word_pieces
        k += len(sentence.words)
        ids.append(tokenizer.sep_id)
        feature = {"input_ids": ids, "token_type_ids": [0] * len(ids), "_sentence": n, "_word_starts": starts}
        if label2id is not None and sentence.labels is not None:
            feature["labels"] = labels + [-100]
        if word_mask:
            first_pieces = {p for p in starts if p is not None}
            feature["word_mask"] = [int(p in first_pieces) for p in range(len(ids))]
        features.append(feature)
    return features


def write_predictions(path: Path, sentences: list[Sentence], predictions: list[list[str]], fmt: str) -> None:
    """CoNLL: `word<space>label` lines, blank between sentences. CLUENER: JSON lines with label spans."""
    with open_atomic(path) as f:
        for sentence, tags in zip(sentences, predictions):
            if fmt == "conll":
                f.write("".join(f"{w} {t}\n" for w, t in zip(sentence.words, tags)) + "\n")
            else:
                f.write(json.dumps({"id": sentence.guid, "text": "".join(sentence.words),
                                    "label": _tags_to_spans(sentence.words, tags)}, ensure_ascii=False) + "\n")


def _tags_to_spans(chars, tags) -> dict:
    from bertspeed.finetune.metrics import get_entities
    spans: dict = {}
    for entity_type, first, last in get_entities(tags):
        surface = "".join(chars[first:last + 1])
        spans.setdefault(entity_type, {}).setdefault(surface, []).append([first, last])
    return spans
