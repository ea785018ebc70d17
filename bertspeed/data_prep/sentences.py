"""Sentence splitting with NLTK Punkt, offline.

Uses NLTK's installed punkt_tab English model when present. Otherwise trains Punkt on
the corpus itself (PunktTrainer, a bounded sample), adds common English abbreviations
that a small corpus misses (Mr., Dr., e.g., ...), and caches the parameters as JSON
(never pickle). Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer

from bertspeed.training.atomic import write_json_atomic

# Lower-case, without the final period, as Punkt stores them.
ENGLISH_ABBREVIATIONS = (
    "mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e cf al approx dept est fig gen gov inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec no nos vol vols pp ed eds rev col lt capt sgt maj "
    "u.s u.k u.n a.m p.m ph.d b.c a.d b.a m.a rep sen hon messrs jr sr bros ave blvd rd mon tue wed thu fri"
).split()
TRAIN_SAMPLE_CHARS = 20_000_000


def installed_punkt() -> PunktSentenceTokenizer | None:
    """NLTK's own English model if its data is installed locally (no download is attempted)."""
    import nltk
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return None
    from nltk.tokenize.punkt import PunktTokenizer
    return PunktTokenizer("english")


def train_punkt(texts: Iterable[str], sample_chars: int = TRAIN_SAMPLE_CHARS) -> PunktParameters:
    trainer = PunktTrainer()
    seen = 0
    for text in texts:
        trainer.train(text, finalize=False)
        seen += len(text)
        if seen >= sample_chars:
            break
    if seen == 0:
        raise ValueError("no text to train the Punkt sentence splitter on")
    trainer.finalize_training()
    params = trainer.get_params()
    params.abbrev_types.update(ENGLISH_ABBREVIATIONS)
    return params


def save_params(params: PunktParameters, path: str | os.PathLike) -> None:
    data = {"abbrev_types": sorted(params.abbrev_types),
            "collocations": sorted(list(c) for c in params.collocations),
            "sent_starters": sorted(params.sent_starters),
            "ortho_context": dict(sorted(params.ortho_context.items()))}
    write_json_atomic(path, data, indent=None)


def load_params(path: str | os.PathLike) -> PunktParameters:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        params = PunktParameters()
        params.abbrev_types = set(data["abbrev_types"])
        params.collocations = {tuple(c) for c in data["collocations"]}
        params.sent_starters = set(data["sent_starters"])
        for word, flags in data["ortho_context"].items():
            params.ortho_context[word] = int(flags)
        return params
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a Punkt parameter file written by data_prep ({err})") from None


def sentence_splitter(model_path: str | None, training_texts=None) -> PunktSentenceTokenizer:
    """Cached model at model_path, else NLTK's installed model, else train on training_texts()
    (a callable returning an iterable of documents) and cache it at model_path."""
    if model_path and os.path.exists(model_path):
        return PunktSentenceTokenizer(load_params(model_path))
    installed = installed_punkt()
    if installed is not None:
        return installed
    if training_texts is None:
        raise ValueError("no Punkt model installed and nothing to train one on")
    params = train_punkt(training_texts())
    if model_path:
        save_params(params, model_path)
    return PunktSentenceTokenizer(params)


# Punkt only ends sentences at "." "?" "!" followed by a space; CJK text ends them at full-width
# marks with no space after (unless a closing quote or bracket follows).
_CJK_SENTENCE_END = re.compile(r"(?<=[。！？])(?=[^”’」』）》\s])")


def split_document(splitter: PunktSentenceTokenizer, text: str) -> list[str]:
    """Sentences of a document, paragraph by paragraph, one line each."""
    out = []
    for paragraph in text.split("\n"):
        paragraph = " ".join(paragraph.split())
        if paragraph:
            for sentence in splitter.tokenize(paragraph):
                out += [s.strip() for s in _CJK_SENTENCE_END.split(sentence) if s.strip()]
    return out
