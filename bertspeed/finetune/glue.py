"""The nine GLUE tasks in the standard `glue_data` layout (download_glue_data.py).

Column positions follow the reference GLUE processors (BERT's run_classifier.py): TSV without
quoting, a header line in every file except CoLA's train/dev. Test predictions are written in the
GLUE submission format (`index<TAB>prediction`, one file per task named as the leaderboard expects).
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from bertspeed.training.atomic import open_atomic

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class GlueTask:
    name: str  # canonical name, e.g. "SST-2"
    labels: tuple | None  # None for regression (STS-B)
    columns: tuple  # train/dev: (text_a, text_b or None, label)
    test_columns: tuple  # test: (text_a, text_b or None); the index is column 0
    dev_files: tuple = ("dev.tsv",)
    test_files: tuple = ("test.tsv",)
    submission_files: tuple = ()
    header: bool = True  # CoLA train/dev have none
    skip_short_rows: bool = False  # QQP has a few broken rows; the reference processor skips them

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def metric_name(self) -> str:
        return self.name.lower()


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
TASKS = {t.name: t for t in (
    GlueTask("CoLA", BINARY, (3, None, 1), (1, None), header=False, submission_files=("CoLA.tsv",)),
    GlueTask("SST-2", BINARY, (0, None, 1), (1, None), submission_files=("SST-2.tsv",)),
    GlueTask("MRPC", BINARY, (3, 4, 0), (3, 4), submission_files=("MRPC.tsv",)),
    GlueTask("STS-B", None, (7, 8, -1), (7, 8), submission_files=("STS-B.tsv",)),
    GlueTask("QQP", BINARY, (3, 4, 5), (1, 2), skip_short_rows=True, submission_files=("QQP.tsv",)),
    GlueTask("MNLI", ("contradiction", "entailment", "neutral"), (8, 9, -1), (8, 9),
             dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
             test_files=("test_matched.tsv", "test_mismatched.tsv"),
             submission_files=("MNLI-m.tsv", "MNLI-mm.tsv")),
    GlueTask("QNLI", NLI2, (1, 2, -1), (1, 2), submission_files=("QNLI.tsv",)),
    GlueTask("RTE", NLI2, (1, 2, -1), (1, 2), submission_files=("RTE.tsv",)),
    GlueTask("WNLI", BINARY, (1, 2, -1), (1, 2), submission_files=("WNLI.tsv",)),
)}


def get_task(name: str) -> GlueTask:
    key = name.upper().replace("_", "-")
    aliases = {"SST2": "SST-2", "STSB": "STS-B", "COLA": "CoLA", "MNLI-M": "MNLI"}
    task = TASKS.get(aliases.get(key, key))
    if task is None:
        raise ValueError(f"--task_name {name!r} is not a GLUE task; choose from {', '.join(TASKS)}")
    return task


@dataclass
class Example:
    guid: str
    text_a: str
    text_b: str | None
    label: object  # label index, float score, or None (test)


def read_tsv(path: Path, header: bool) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quotechar=None))
    return rows[1:] if header else rows


def read_examples(task: GlueTask, path: Path, test: bool = False) -> list[Example]:
    """Examples of one GLUE file; labels as indices (classification) or floats (STS-B)."""
    a, b, label_col = (*task.test_columns, None) if test else task.columns
    needed = max(c for c in (a, b, label_col, 0) if c is not None and c >= 0) + 1
    examples = []
    for line_no, row in enumerate(read_tsv(path, header=task.header or test), start=1 + (task.header or test)):
        if len(row) < needed or (label_col == -1 and len(row) < 2):
            if task.skip_short_rows:
                continue
            raise ValueError(f"{path}:{line_no}: expected at least {needed} tab-separated fields, got {len(row)}")
        label = None
        if not test:
            label = _parse_label(task, row[label_col], path, line_no)
        examples.append(Example(row[0] if test else str(len(examples)), row[a],
                                row[b] if b is not None else None, label))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _parse_label(task: GlueTask, value: str, path: Path, line_no: int):
    value = value.strip()
    if task.is_regression:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{path}:{line_no}: score {value!r} is not a number") from None
    if value not in task.labels:
        raise ValueError(f"{path}:{line_no}: label {value!r} is not one of {list(task.labels)}")
    return task.labels.index(value)


def featurize(examples: list[Example], tokenizer, max_seq_length: int) -> list[dict]:
    texts = [e.text_a for e in examples]
    pairs = [e.text_b for e in examples] if examples[0].text_b is not None else None
    enc = tokenizer.encode_batch(texts, pairs, max_length=max_seq_length, padding=False)
    features = []
    for i, example in enumerate(examples):
        feature = {"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i]}
        if example.label is not None:
            feature["labels"] = example.label
        features.append(feature)
    return features


def write_submission(path: Path, task: GlueTask, examples: list[Example], predictions, decimals: int = 3) -> None:
    """`index<TAB>prediction` lines after a header; label names for NLI tasks, scores for STS-B."""
    with open_atomic(path) as f:
        f.write("index\tprediction\n")
        for example, pred in zip(examples, predictions):
            value = f"{float(pred):.{decimals}f}" if task.is_regression else task.labels[int(pred)]
            f.write(f"{example.guid}\t{value}\n")
