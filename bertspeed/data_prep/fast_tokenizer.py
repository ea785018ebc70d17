"""Fast BERT WordPiece ids with BasicTokenizer semantics, identical to the reference tokenizer.

Ids equal bert.tokenizer.BertTokenizer's (and so Hugging Face BertTokenizerFast's);
tests/test_data_prep_tokenizer.py checks this on real text (SQuAD, a raw Wikipedia dump)
and adversarial strings, cased and uncased. Why it is fast:
- normalisation: ASCII text needs only "drop control characters, lowercase" (C string
  methods); other text goes through str.translate with a per-character table filled from
  the reference normaliser itself (Rust), except the rare text where canonical reordering
  of combining marks makes BERT's normalisation depend on neighbours (the Rust normaliser
  then does the whole string);
- the compiled module _wordpiece.c normalises lines (other characters than ASCII by the same per-character
  table), splits at whitespace and punctuation and runs greedy WordPiece over a hash table of the vocab, in C;
- without it, each whitespace-delimited chunk ("(u.s.)," or "the") is looked up in a dict; only a miss
  splits it at BERT punctuation and runs its words through the reference WordPiece model.
"""
from __future__ import annotations

import re
import unicodedata
import warnings
from itertools import chain, pairwise

import numpy as np

from bertspeed.model.tokenizer import BertTokenizer

try:
    from bertspeed.data_prep import _wordpiece
except ImportError:  # not built: `pip install -e .` compiles it
    _wordpiece = None

# After BERT's clean_text: ASCII is letters/digits, whitespace, or punctuation
# (every printable ASCII symbol counts as punctuation for BERT).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")


def _is_bert_punctuation(cp: int) -> bool:
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(chr(cp)).startswith("P")


class _PerCharacter(dict):
    """character -> test(character), computed the first time the character is met: text meets a few
    thousand distinct characters, so this beats scanning all of Unicode up front (about 0.1 s per process)."""

    def __init__(self, test):
        super().__init__()
        self.test = test

    def __missing__(self, char: str) -> bool:
        out = self[char] = self.test(char)
        return out


_PUNCTUATION = _PerCharacter(lambda char: _is_bert_punctuation(ord(char)))
# Marks that survive accent stripping yet take part in canonical reordering (ccc > 0, not Mn): only with
# these does BERT's normalisation depend on neighbouring characters.
_REORDERING_MARK = _PerCharacter(lambda char: unicodedata.combining(char) > 0 and unicodedata.category(char) != "Mn")


class _CharMap(dict):
    """code point -> the reference normaliser's output for that character alone (for str.translate).
    BERT's normalisation is per character (clean, CJK padding, NFD + drop Mn, per-character
    lowercase) except for canonical reordering, which FastWordPiece.normalize routes around."""

    def __init__(self, normalizer):
        super().__init__()
        self.normalizer = normalizer

    def __missing__(self, code_point: int) -> str:
        out = self[code_point] = self.normalizer.normalize_str(chr(code_point))
        return out


class _Cache(dict):
    """key -> WordPiece ids, computed on a miss by `compute`; emptied when it reaches max_size, so
    memory is bounded whatever the corpus (refilling costs one miss per key in use), and refilled at
    once with `seed` (entries known up front: the vocab's whole words), which are never missed.
    The default bound, 16,384 keys beyond the seed (about 3 MB per cache), fills within the first MB of any
    text, so peak RSS is flat from there on. 65,536 keys (about 10 MB per cache) filled within a few MB of
    SQuAD prose but needed over 35 MB of mixed text (news, dictionary, speeches, tweets), so the peak grew
    with the input (bench/data_prep_memory.py: 1.15x from 7 to 35 MB with 65,536; see the README).
    """

    def __init__(self, compute, max_size: int, seed: dict):
        super().__init__(seed)
        self.compute, self.seed, self.max_size = compute, seed, max_size + len(seed)

    def __missing__(self, key: str) -> tuple[int, ...]:
        if len(self) >= self.max_size:
            self.clear()
            self.update(self.seed)
        ids = self[key] = self.compute(key)
        return ids


LINE_BREAK = "\x00"
CHARS_PER_BATCH = 1 << 16


def _split_punctuation(chunk: str) -> list[str]:
    """BERT's punctuation split of one whitespace-free, normalised chunk ("(u.s.)" -> "(", "u", ".", ...)."""
    if chunk.isascii():
        return _ASCII_WORDS.findall(chunk)
    out, start = [], 0
    for i, char in enumerate(chunk):
        if _PUNCTUATION[char]:
            if start < i:
                out.append(chunk[start:i])
            out.append(char)
            start = i + 1
    if start < len(chunk):
        out.append(chunk[start:])
    return out


class FastWordPiece:
    """token_ids(text) == BertTokenizer.token_ids([text])[0], several times faster.

    With `compiled` (the default) the lines go to _wordpiece.c, which normalises them itself (characters
    above ASCII from the same per-character table as `normalize`), splits at whitespace and BERT punctuation
    and runs greedy WordPiece over a hash table of the vocab. Without it (or where the module is not built):
    text is normalised, split on whitespace, and each whitespace-delimited chunk is looked up in a cache; a
    miss splits the chunk at punctuation and runs each word through a second cache over the reference
    WordPiece model. Both splits are context-free, so caching by chunk is exact."""

    def __init__(self, tokenizer: BertTokenizer, max_cache: int = 16_384, compiled: bool = True):
        self.tokenizer = tokenizer
        self.lower = tokenizer.do_lower_case
        self._normalizer = tokenizer.backend.normalizer
        self._char_map = _CharMap(self._normalizer)
        self._compiled = self._chunk_ids = None
        if compiled and _wordpiece is not None:
            self._compiled = _wordpiece.Vocab(tokenizer.vocab, tokenizer.unk_id,
                                              tokenizer.backend.model.max_input_chars_per_word)
            return
        if compiled:
            warnings.warn("bertspeed.data_prep._wordpiece is not built (`pip install -e .` compiles it): "
                          "tokenizing in Python, same ids, several times slower", stacklevel=2)
        self._chunk_ids = self._python_chunk_ids(max_cache)

    def _python_chunk_ids(self, max_cache: int):
        """chunk -> its ids, through two bounded caches over the reference WordPiece model."""
        model, vocab = self.tokenizer.backend.model, self.tokenizer.vocab
        ints = list(range(self.tokenizer.vocab_size))  # one int object per id, shared by all cache entries

        def wordpiece(word: str) -> tuple[int, ...]:
            whole = vocab.get(word)  # greedy longest match takes a whole in-vocab word at once
            if whole is not None:
                return (ints[whole],)
            return tuple([ints[t.id] for t in model.tokenize(word)])

        # A whole letters/digits word of the vocab is its own chunk and word: one id, no lookup needed.
        seed = {word: (ints[i],) for word, i in vocab.items() if word.isalnum()}
        word_ids = _Cache(wordpiece, max_cache, seed).__getitem__

        def chunk_ids(chunk: str) -> tuple[int, ...]:
            if chunk.isalnum():  # letters/digits only: no BERT punctuation inside, one word
                return wordpiece(chunk)
            return tuple(chain.from_iterable(map(word_ids, _split_punctuation(chunk))))

        # The line break of lines_ids: BERT's normalisation drops NUL, so no normalised chunk is one.
        if any(LINE_BREAK in self.normalize(f"{c}{LINE_BREAK}b") for c in ("a", "\xe9")):
            raise ValueError("the tokenizer's normaliser keeps NUL characters; FastWordPiece needs it to drop them")
        return _Cache(chunk_ids, max_cache, {**seed, LINE_BREAK: (-1,)}).__getitem__

    @classmethod
    def from_vocab_file(cls, vocab_file, do_lower_case: bool = True) -> "FastWordPiece":
        return cls(BertTokenizer.from_vocab_file(vocab_file, do_lower_case))

    def normalize(self, text: str) -> str:
        """BERT's normalisation; afterwards the only whitespace left is ASCII whitespace."""
        if text.isascii():
            if not text.isprintable():  # only then can it hold control characters
                text = _ASCII_CONTROL.sub("", text)
            return text.lower() if self.lower else text
        if self.lower and any(map(_REORDERING_MARK.__getitem__, set(text))):
            return self._normalizer.normalize_str(text)
        return text.translate(self._char_map)

    def _char_info(self, char: str) -> tuple[str, bool]:
        """For the compiled path: one character's normalisation alone, and whether a text holding it must be
        normalised whole (as `normalize` decides)."""
        return self._char_map[ord(char)], self.lower and _REORDERING_MARK[char]

    def words(self, text: str) -> list[str]:
        """BERT BasicTokenizer output (normalised words and punctuation)."""
        return [w for chunk in self.normalize(text).split() for w in _split_punctuation(chunk)]

    def token_ids(self, text: str) -> list[int]:
        if self._compiled is not None:
            return self.lines_ids([text])[0].tolist()
        return [i for ids in map(self._chunk_ids, self.normalize(text).split()) for i in ids]

    def lines_ids(self, lines: list[str], batch_chars: int = CHARS_PER_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """token_ids of many lines at once: (all their ids one after another [int32], ids per line [int64])."""
        if self._compiled is not None:
            ids, lengths = self._compiled.encode_lines(lines, self.lower, self.normalize, self._char_info,
                                                       _PUNCTUATION.__getitem__)
            return np.frombuffer(ids, np.int32), np.frombuffer(lengths, np.int64)
        return self._python_lines_ids(lines, batch_chars)

    def _python_lines_ids(self, lines: list[str], batch_chars: int) -> tuple[np.ndarray, np.ndarray]:
        """lines_ids without the compiled module. The lines are joined with a break chunk and looked up in one
        pass of C-level calls (split, map over the cache, chain), about `batch_chars` characters of lines at a
        time: the chunk strings of a batch take about 50 bytes per character, so they stay a small, fixed amount
        of memory whatever the block."""
        ids, lengths = [], []
        ends = np.cumsum(np.fromiter(map(len, lines), np.int64, len(lines)))
        cuts = [0, *np.unique(np.searchsorted(ends, np.arange(batch_chars, ends[-1] if len(ends) else 0,
                                                             batch_chars), side="right")).tolist(), len(lines)]
        for lo, hi in pairwise(cuts):
            if lo == hi:
                continue
            chunks = f" {LINE_BREAK} ".join(map(self.normalize, lines[lo:hi])).split()
            flat = np.array(list(chain.from_iterable(map(self._chunk_ids, chunks))), np.int32)
            breaks = np.flatnonzero(flat < 0)
            lengths.append(np.diff(breaks, prepend=-1, append=len(flat)) - 1)
            ids.append(flat[flat >= 0])
        if not ids:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return np.concatenate(ids), np.concatenate(lengths).astype(np.int64)
