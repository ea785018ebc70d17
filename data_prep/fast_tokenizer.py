"""Fast BERT WordPiece ids: BasicTokenizer splitting in Python regex + a word -> ids cache.

Ids are identical to bert.tokenizer.BertTokenizer (and so to Hugging Face's
BertTokenizerFast); tests/test_data_prep_tokenizer.py checks this on real text and
adversarial strings. Why it is faster: most text is ASCII, where BERT's normalisation
reduces to "drop control characters, lowercase" and its pre-tokenisation to
"runs of letters/digits, or one punctuation character"; both are single C-level
string/regex calls. Other text is normalised by the reference normaliser itself
(Rust), then split by a regex built from BERT's punctuation definition. Each distinct
word is run through the reference WordPiece model once and cached.
"""
from __future__ import annotations

import functools
import re
import unicodedata

from bert.tokenizer import BertTokenizer

# After BERT's clean_text: ASCII is letters/digits, whitespace, or punctuation
# (every printable ASCII symbol counts as punctuation for BERT).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")


def _is_bert_punctuation(cp: int) -> bool:
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(chr(cp)).startswith("P")


# Unicode assigns no punctuation beyond plane 2 (tests check this against a full scan).
PUNCTUATION_SCAN_END = 0x30000


def _char_class(predicate, end: int = PUNCTUATION_SCAN_END) -> str:
    """A regex character class body for all code points below `end` satisfying predicate."""
    ranges, start = [], None
    for cp in range(end + 1):
        inside = cp < end and predicate(cp)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)


@functools.cache
def _unicode_words() -> re.Pattern:
    """Built on first use (~0.05 s); ASCII-only text never needs it."""
    punct = _char_class(_is_bert_punctuation)
    # After the reference normaliser every whitespace character has become a plain space.
    return re.compile(f"[^ {punct}]+|[{punct}]")


class _WordCache(dict):
    """word -> WordPiece ids; a miss runs the reference WordPiece model once."""

    def __init__(self, model, max_size: int):
        super().__init__()
        self.model, self.max_size = model, max_size

    def __missing__(self, word: str) -> list[int]:
        if len(self) >= self.max_size:  # bounds memory on corpora with endless distinct words
            self.clear()
        ids = self[word] = [t.id for t in self.model.tokenize(word)]
        return ids


class FastWordPiece:
    """token_ids(text) == BertTokenizer.token_ids([text])[0], several times faster."""

    def __init__(self, tokenizer: BertTokenizer, max_cache: int = 300_000):
        self.tokenizer = tokenizer
        self.lower = tokenizer.do_lower_case
        self._normalizer = tokenizer.backend.normalizer
        self._lookup = _WordCache(tokenizer.backend.model, max_cache).__getitem__

    @classmethod
    def from_vocab_file(cls, vocab_file, do_lower_case: bool = True) -> "FastWordPiece":
        return cls(BertTokenizer.from_vocab_file(vocab_file, do_lower_case))

    def words(self, text: str) -> list[str]:
        """BERT BasicTokenizer output (normalised words and punctuation)."""
        if text.isascii():
            if not text.isprintable():  # only then can it hold control characters
                text = _ASCII_CONTROL.sub("", text)
            return _ASCII_WORDS.findall(text.lower() if self.lower else text)
        text = self._normalizer.normalize_str(text)
        if text.isascii():
            return _ASCII_WORDS.findall(text)
        return _unicode_words().findall(text)

    def token_ids(self, text: str) -> list[int]:
        return [i for ids in map(self._lookup, self.words(text)) for i in ids]

    def word_token_ids(self, text: str) -> list[list[int]]:
        """WordPiece ids grouped by word (for whole-word masking)."""
        return list(map(self._lookup, self.words(text)))
