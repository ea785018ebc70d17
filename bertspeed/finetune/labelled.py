"""The user's own labelled data: TSV, CSV (a header row names the columns) or JSON lines.

Text fields and the label field are chosen by name; when not given, the text fields are the first of
(sentence1, sentence2), (text_a, text_b), (sentence,), (text,) present in the first record, so CLUE's
TNEWS and IFLYTEK JSON lines ({"label": "102", "label_desc": ..., "sentence": ...}) and GLUE-style
headers need no flags. Labels are kept as strings (classification) or parsed as floats (regression).
Every error names the file, the line and the field.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bertspeed.finetune.glue import Example

csv.field_size_limit(sys.maxsize)

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
TEXT_FIELD_DEFAULTS = (("sentence1", "sentence2"), ("text_a", "text_b"), ("sentence",), ("text",))
ID_FIELDS = ("id", "idx", "guid", "index")


@dataclass
class Record(Example):
    line: int = 0  # where it came from, for error messages


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs of a TSV/CSV/JSON-lines file, format from the extension."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown data format {path.suffix!r}; use .tsv, .csv, .jsonl or .json (JSON lines)")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        records = _read_jsonl(path) if fmt == "jsonl" else _read_table(path, "\t" if fmt == "tsv" else ",")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _read_table(path: Path, delimiter: str) -> list[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quotechar=None if delimiter == "\t" else '"')
        rows = [(reader.line_num, row) for row in reader if row]
    if not rows:
        return []
    (_, header), records = rows[0], []
    for line_no, row in rows[1:]:
        if len(row) != len(header):
            raise ValueError(f"{path}:{line_no}: {len(row)} columns, but the header has {len(header)} ({header})")
        records.append((line_no, dict(zip(header, row))))
    return records


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append((line_no, record))
    return records


def text_fields_of(records: list[tuple[int, dict]], path: Path, given: list[str] | None) -> tuple[str, ...]:
    if given:
        if not 1 <= len(given) <= 2:
            raise ValueError(f"--text_fields takes one or two field names, got {given}")
        return tuple(given)
    first = records[0][1]
    for fields in TEXT_FIELD_DEFAULTS:
        if all(name in first for name in fields):
            return fields
    raise ValueError(f"{path}: no text field found (looked for {', '.join('/'.join(f) for f in TEXT_FIELD_DEFAULTS)} "
                     f"in {sorted(first)}); name it with --text_fields")


def read_examples(path, text_fields: list[str] | None, label_field: str | None, regression: bool) -> list[Record]:
    """Examples whose label is the raw string (or a float for regression); None when `label_field` is None."""
    path = Path(path)
    records = read_records(path)
    fields = text_fields_of(records, path, text_fields)
    examples = []
    for line_no, record in records:
        texts = [_field(record, name, path, line_no) for name in fields]
        label = None if label_field is None else _label(_field(record, label_field, path, line_no), regression,
                                                        path, line_no, label_field)
        guid = next((record[name] for name in ID_FIELDS if name in record), len(examples))  # JSON type kept
        examples.append(Record(guid, texts[0], texts[1] if len(texts) > 1 else None, label, line_no))
    return examples


def _field(record: dict, name: str, path: Path, line_no: int):
    if name not in record:
        raise ValueError(f"{path}:{line_no}: field {name!r} missing (fields: {sorted(record)})")
    value = record[name]
    if value is None or isinstance(value, (dict, list)):
        raise ValueError(f"{path}:{line_no}: field {name!r} is {json.dumps(value)}, expected text or a number")
    return str(value)


def _label(value: str, regression: bool, path: Path, line_no: int, name: str):
    if not regression:
        return value.strip()
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path}:{line_no}: field {name!r} = {value!r} is not a number (regression)") from None


def label_names(train: list[Example], given: list[str] | None) -> list[str]:
    """The label set: --label_list as given, else the training labels sorted (numerically when all are numbers)."""
    if given:
        if len(set(given)) != len(given):
            raise ValueError(f"--label_list has duplicates: {given}")
        return list(given)
    labels = {e.label for e in train}
    numeric = all(_is_number(label) for label in labels)
    return sorted(labels, key=(lambda x: (float(x), x)) if numeric else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def index_labels(examples: list[Record], names: list[str], path, label_field: str, source: str) -> None:
    """Replace label strings by their index in `names`, in place; an unknown label names file, line and field."""
    index = {name: i for i, name in enumerate(names)}
    for example in examples:
        if example.label not in index:
            raise ValueError(f"{path}:{example.line}: field {label_field!r} = {example.label!r} is not in the "
                             f"label set {names} ({source})")
        example.label = index[example.label]
