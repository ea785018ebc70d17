"""NER data: CoNLL-2003 text files, CLUENER-style JSON lines and MSRA, first-sub-token labelling.

CoNLL: one token per line, the label in the last column, blank lines between sentences,
`-DOCSTART-` lines skipped. CLUENER: one JSON object per line, {"text": ..., "label": {type:
{entity text: [[first char, last char], ...]}}}; each character is a token, tagged B-/I-type.
MSRA (`msra`): one character and its tag per line (BIO, BIOES or the MindSpore seed's S_/B_/M_/E_),
blank lines between sentences; `msra_xml`: the seed's XML (sentences of phrases, entities as
<NAMEX TYPE="PERSON">...</NAMEX> elements), tagged by character as the seed does. The seed's
S_/B_/M_/E_ tags are read in seqeval's IOBES spelling S-/B-/I-/E- (M = inside), so that entity scores
are seqeval's own.
Only the first WordPiece of each word carries a label; the others (and words cut off by
max_seq_length, or made of no WordPiece at all) take no part in the loss and are predicted "O".
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from bertspeed.training.atomic import open_atomic


@dataclass
class Sentence:
    words: list[str]
    labels: list[str] | None  # None for unlabelled test data
    guid: str = ""


FORMATS = ("conll", "cluener", "msra", "msra_xml")
SEED_PREFIXES = ("S_", "B_", "M_", "E_")  # the MindSpore seed's BMES tags, in its label2id order
IOBES_OF_SEED = {"S_": "S-", "B_": "B-", "M_": "I-", "E_": "E-"}


def detect_format(path: Path) -> str:
    suffix = Path(path).suffix
    return "cluener" if suffix in (".json", ".jsonl") else "msra_xml" if suffix == ".xml" else "conll"


def read_sentences(path, fmt: str | None = None, class_filter: list[str] | None = None) -> list[Sentence]:
    """The sentences of an NER file; with `class_filter`, entities of other types are tagged O (for the
    seed's XML an element name such as NAMEX also matches, as in the seed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NER file not found: {path}")
    fmt = fmt or detect_format(path)
    if fmt == "msra_xml":
        sentences = read_msra_xml(path, class_filter)
    else:
        sentences = {"cluener": read_cluener, "msra": read_msra}.get(fmt, read_conll)(path)
        if class_filter:
            apply_class_filter(sentences, class_filter)
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


def read_msra(path: Path) -> list[Sentence]:
    """Character-per-line MSRA: exactly `char tag` on every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip() and len(line.split()) != 2:
                raise ValueError(f"{path}:{line_no}: expected 'character tag', got {line.strip()!r}")
    sentences = read_conll(path)
    for sentence in sentences:
        sentence.labels = [iobes_of_seed(tag) for tag in sentence.labels]
    return sentences


def iobes_of_seed(tag: str) -> str:
    """S_PER -> S-PER, M_PER -> I-PER ...; any other tag unchanged."""
    return IOBES_OF_SEED[tag[:2]] + tag[2:] if tag[:2] in IOBES_OF_SEED else tag


def read_msra_xml(path: Path, class_filter: list[str] | None = None) -> list[Sentence]:
    """The seed's MSRA XML: root > sentence > phrase; a phrase is plain text or holds entity elements
    (element name = kind such as NAMEX, attribute TYPE = entity type)."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        raise ValueError(f"{path}: not well-formed XML ({e})") from None
    sentences = []
    for n, element in enumerate(root):
        chars, tags = [], []
        for phrase in element:
            parts = [(e.text or "", e.get("TYPE") or e.tag, e.tag) for e in phrase] or [(phrase.text or "", None, None)]
            for text, kind, element_name in parts:
                if kind and class_filter and kind not in class_filter and element_name not in class_filter:
                    kind = None
                chars += list(text)
                tags += _bmes(len(text), kind)
        sentences.append(Sentence(chars, tags, f"{path.name}:{n}"))
    return sentences


def _bmes(length: int, kind: str | None) -> list[str]:
    if kind is None or length == 0:
        return ["O"] * length
    return [f"S-{kind}"] if length == 1 else [f"B-{kind}"] + [f"I-{kind}"] * (length - 2) + [f"E-{kind}"]


def entity_type(tag: str) -> str | None:
    """PER of B-PER, I-PER, S_PER, M_PER ...; None for O."""
    return None if tag == "O" else tag[2:] if len(tag) > 2 and tag[1] in "-_" else tag


def apply_class_filter(sentences: list[Sentence], keep: list[str]) -> None:
    """Tags of entity types outside `keep` become O (the seed's --class_filter), in place."""
    for sentence in sentences:
        if sentence.labels is not None:
            sentence.labels = [t if entity_type(t) in keep else "O" for t in sentence.labels]


def read_label_file(path) -> list[str]:
    """The seed's label2id list: one entity type per line -> O + S/B/M/E of each, in the seed's order
    (spelled S-/B-/I-/E-); or, if the lines carry prefixes (B-PER, S_LOC, O ...), the tags as listed."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"--label_file {path}: no labels")
    if "O" in lines or all(entity_type(line) != line for line in lines):
        labels = ["O"] + [iobes_of_seed(t) for t in lines if t != "O"]
    else:
        labels = ["O"] + [IOBES_OF_SEED[prefix] + kind for kind in lines for prefix in SEED_PREFIXES]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--label_file {path}: duplicate labels in {labels}")
    return labels


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
    """CoNLL and MSRA: `word<space>label` lines, blank between sentences. CLUENER: JSON lines with label spans."""
    with open_atomic(path) as f:
        for sentence, tags in zip(sentences, predictions):
            if fmt != "cluener":
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
