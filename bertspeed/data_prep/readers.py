"""Documents from input files: NVIDIA-style text, plain text, JSONL, book folders, Wikipedia dumps.

Every reader streams: one document at a time, whatever the file size (a book file is
one document and is read whole, which bounds memory by the largest book).
"""
from __future__ import annotations

import json
from typing import Iterator

from bertspeed.data_prep.storage import StorageError, list_files, open_text

FORMATS = ("text", "jsonl", "books", "wiki")


def iter_segmented_documents(uri: str) -> Iterator[list[str]]:
    """NVIDIA's create_pretraining_data input: one segment (sentence) per line, blank line
    between documents, file end ends a document. Reads line by line (buffered), holding one line
    plus the current document: a line's string costs 1, 2 or 4 bytes per character after its own
    widest character, so large reads of mixed text (one emoji makes a 1 MB read 4 MB) cost several
    times more memory (issue 20)."""
    with _reading(uri) as stream:
        doc: list[str] = []
        for line in stream:
            line = line.strip()
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
        if doc:
            yield doc


def iter_raw_documents(uri: str, fmt: str, text_field: str = "text") -> Iterator[str]:
    """Documents as found in the input (wiki: raw wikitext; see clean_document)."""
    if fmt == "wiki":
        from bertspeed.data_prep.wiki import iter_wiki_pages
        for _, text in iter_wiki_pages(uri):
            yield text
    elif fmt == "jsonl":
        yield from _iter_jsonl(uri, text_field)
    elif fmt == "books":
        with _reading(uri) as stream:
            text = stream.read().strip()
        if text:
            yield text
    elif fmt == "text":
        for doc in iter_segmented_documents(uri):
            yield "\n".join(doc)
    else:
        raise ValueError(f"--input_format must be one of {FORMATS}, got {fmt!r}")


def clean_document(fmt: str, raw: str) -> str:
    """Plain text of a raw document (the costly wikitext cleaning runs here, in workers)."""
    if fmt == "wiki":
        from bertspeed.data_prep.wiki import clean_wikitext
        return clean_wikitext(raw)
    return raw


def iter_documents(uri: str, fmt: str, text_field: str = "text") -> Iterator[str]:
    """Documents as plain (not sentence-split) text."""
    for raw in iter_raw_documents(uri, fmt, text_field):
        text = clean_document(fmt, raw)
        if text:
            yield text


def _iter_jsonl(uri: str, field: str) -> Iterator[str]:
    with _reading(uri) as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise StorageError(f"{uri}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise StorageError(f"{uri}:{number}: record has no string field {field!r} (--text_field)")
            if record[field].strip():
                yield record[field]


class _reading:
    """Open a text input; turn decoding/decompression failures into errors naming the file."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        self.stream = open_text(self.uri)
        return self.stream

    def __exit__(self, kind, err, tb):
        self.stream.close()
        if isinstance(err, UnicodeDecodeError):
            raise StorageError(f"{self.uri}: not valid UTF-8 text (byte offset {err.start} of a read block)")
        if isinstance(err, (OSError, EOFError)) and not isinstance(err, StorageError):
            raise StorageError(f"{self.uri}: unreadable or corrupt ({err})")
        return False


def input_files(inputs: list[str], fmt: str) -> list[str]:
    suffixes = {"books": (".txt",), "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".json"),
                "wiki": (".xml", ".xml.bz2", ".bz2")}.get(fmt, ())
    return list_files(inputs, suffixes)
