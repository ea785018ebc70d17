"""FastWordPiece must give ids identical to Hugging Face's BertTokenizerFast."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bertspeed.data_prep import fast_tokenizer
from bertspeed.data_prep.fast_tokenizer import FastWordPiece

ADVERSARIAL = [
    "Héllo Wörld, naïve café — «quotes» “curly” ‘single’ … ellipsis",
    "İstanbul ΣΊΣΥΦΟΣ ὈΔΥΣΣΕΎΣ straße ß ǅ ﬁne ﬀ",
    "中文分词测试：北京欢迎你！日本語のテキスト、한국어 텍스트",
    "control\x00chars\x01here\x7f and\x0bvertical\x0cfeed\x85nel\u200bzero\u00adsoft\ufffdrepl",
    "tabs\tand\nnewlines\r\nand\u3000ideographic\u00a0nbsp\u2028line\u2029para",
    "emoji 😀👍🏽 👨‍👩‍👧 flags 🇫🇷 and symbols ©®™ ° ± × ÷ € £ ¥ ₹ ← → ∑ ∞ √",
    "x" * 99 + " " + "y" * 100 + " " + "z" * 101 + " " + "é" * 101,
    "snake_case under_score a~b a`b a^b a|b a\\b a{b}c [x] <tag> @user #hash $5 100% a&b *",
    "numbers 3.14159 1,000,000 10:30pm 2020-01-01 +1-555-0100 e=mc^2",
    "Ａｒｅ ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ ＯＫ？ ①②③ ⅣⅤ ²³",
    "combining a\u0301 e\u0308 o\u0303 hangul \u1100\u1161 arabic العربية hebrew עברית",
    "thai ภาษาไทย devanagari हिन्दी ᚠᚢᚦ runes 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math",
    "",
    "   ",
    "\x00\x01",
    "reorder \U0001D16D\U0001D165 \u1B44\u0301\u1B44 a\u0323\u0301 \u1715\u302E",
    "file\x1cgroup\x1drecord\x1eunit\x1fsep a\u0085b é\x1cè",
    "«word»,(paren)\"quote\"--dash...dots U.S.A.-based e-mail 3.5% $1,000.00 naïve-café",
    "'quoted' \"double\" (paren) don't won't it's U.S.A. e.g. i.e.",
    "ASCII only\x1cFile\x1dGroup\x0bVT\x0cFF\x7fDEL\x00NUL\tTab\rCR\x1f \x1e\x1c x",
]


def reference(vocab_file, lower):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast(vocab=str(vocab_file), do_lower_case=lower)


def ref_ids(ref, texts):
    ids = ref(texts, add_special_tokens=False)["input_ids"]
    assert len({i for row in ids for i in row}) > 20, "reference tokenizer degenerate (vocab not loaded?)"
    return ids


def fast_of(vocab_file, lower=True, compiled=True) -> FastWordPiece:
    return FastWordPiece(FastWordPiece.from_vocab_file(vocab_file, do_lower_case=lower).tokenizer, compiled=compiled)


def test_compiled_wordpiece_is_built():
    assert fast_tokenizer._wordpiece is not None, "bertspeed/data_prep/_wordpiece.c is not built: pip install -e ."


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("lower", [True, False])
def test_adversarial_strings_match_reference(vocab_file, lower, compiled):
    fast = fast_of(vocab_file, lower, compiled)
    expected = ref_ids(reference(vocab_file, lower), ADVERSARIAL)
    for text, want in zip(ADVERSARIAL, expected):
        assert fast.token_ids(text) == want, repr(text)


@pytest.mark.parametrize("compiled", [True, False])
def test_long_words_become_unk(vocab_file, compiled):
    fast = fast_of(vocab_file, compiled=compiled)
    unk = fast.tokenizer.unk_id
    assert fast.token_ids("a" * 101) == [unk]
    assert fast.token_ids("a" * 100) != [unk]
    # far beyond the limit, in a one-byte string and beside a character that makes the string four bytes wide
    x = fast.tokenizer.vocab["x"]
    assert fast.token_ids("b" * 300 + " x") == fast.token_ids("b" * 300 + " x \U0001F600")[:2] == [unk, x]


ASCII_ALPHABET = "abcdefghijkABC019 .,-'!$\t\n\r\x0b\x1c\x00\x7f"
UNICODE_ALPHABET = ASCII_ALPHABET + "éèüßçñ中文ΣσЖж«»—…’€😀ﬁ\u00a0\u3000\u0301\u302e\u200b"


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("alphabet", [ASCII_ALPHABET, UNICODE_ALPHABET], ids=["ascii", "unicode"])
def test_random_text_with_a_small_vocab_matches_reference(tmp_path, alphabet, lower):
    """A vocab of a few hundred pieces makes most words several pieces and many unmatchable ([UNK]): greedy
    longest match over UTF-8, its give-up rule, the character limit and punctuation splitting of the compiled
    path against Hugging Face's."""
    rng = np.random.default_rng(0)
    letters = list("abcdefghijéüßñ中σж")
    pieces = sorted({"".join(rng.choice(letters, rng.integers(1, 4))) for _ in range(400)})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,-'!$«—’", *pieces, *("##" + p for p in pieces[::2]),
             "a", "##a", "é", "##é", "中"]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    chars = np.array(list(alphabet))
    texts = ["".join(rng.choice(chars, rng.integers(0, 80))) for _ in range(2000)]
    texts += ["é" * 100, "é" * 101, "中" * 101, "a" * 100 + "é"]  # the limit counts characters, not bytes
    expected = ref_ids(reference(vocab_file, lower), texts)
    fast = fast_of(vocab_file, lower)
    assert fast._compiled is not None
    assert [t for t, want in zip(texts, expected) if fast.token_ids(t) != want] == []
    assert sum(row.count(1) for row in expected) > 500  # many words were unmatchable
    assert expected[-4] != [1] and expected[-3] == [1]  # 100 characters are tokenized, 101 are [UNK]


@pytest.mark.parametrize("lower", [True, False])
def test_real_text_matches_reference_byte_for_byte(vocab_file, squad_dev, lower):
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"]
    texts = [p["context"] for a in data for p in a["paragraphs"]]
    texts += [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]][:3000]
    assert len(texts) > 4000
    fast = FastWordPiece.from_vocab_file(vocab_file, do_lower_case=lower)
    expected = ref_ids(reference(vocab_file, lower), texts)
    mismatches = [t for t, want in zip(texts, expected) if fast.token_ids(t) != want]
    assert mismatches == []


def test_cache_stays_bounded_and_exact_when_it_overflows(vocab_file, wiki_dump):
    """A 64-key cache (beyond the vocab's whole words it starts with) is emptied thousands of times on
    this text; ids must not change."""
    import bz2
    raw = bz2.open(wiki_dump, "rt", encoding="utf-8").read(300_000)
    texts = [raw[i:i + 1500] for i in range(0, len(raw), 1500)]
    small = FastWordPiece(FastWordPiece.from_vocab_file(vocab_file).tokenizer, max_cache=64, compiled=False)
    expected = ref_ids(reference(vocab_file, True), texts)
    assert [small.token_ids(t) for t in texts] == expected
    cache = small._chunk_ids.__self__
    assert len(cache.seed) > 20_000 and cache.items() >= cache.seed.items()  # refilled after every emptying
    assert 0 < len(cache) - len(cache.seed) <= 64


@pytest.mark.parametrize(("lower", "compiled"), [(True, True), (False, True), (True, False)])
def test_raw_wikipedia_dump_matches_reference(vocab_file, wiki_dump, lower, compiled):
    """Raw XML + wikitext: markup, entities, many scripts and symbols."""
    import bz2
    raw = bz2.open(wiki_dump, "rt", encoding="utf-8").read(4_000_000)
    texts = [raw[i:i + 1500] for i in range(0, len(raw), 1500)]
    fast = fast_of(vocab_file, lower, compiled)
    expected = ref_ids(reference(vocab_file, lower), texts)
    assert [t for t, want in zip(texts, expected) if fast.token_ids(t) != want] == []
    # Many lines at once (data prep's path), batches included, with lines that give no ids at all
    texts = texts + ["", "\x00 \x01", "x"]
    expected = expected + [[], [], fast.token_ids("x")]
    ids, lengths = fast.lines_ids(texts, batch_chars=4000)
    assert lengths.tolist() == [len(e) for e in expected] and ids.tolist() == [i for e in expected for i in e]


def test_per_character_tables_and_the_alnum_fast_path():
    import sys

    from bertspeed.data_prep import fast_tokenizer as ft
    chars = [chr(cp) for cp in range(sys.maxunicode + 1)]
    punctuation = [c for c in chars if ft._PUNCTUATION[c]]
    assert len(punctuation) > 700 and all(ft._is_bert_punctuation(ord(c)) for c in punctuation)
    assert "ab" not in ft._PUNCTUATION and ft._split_punctuation("«é»,x") == ["«", "é", "»", ",", "x"]
    # the chunk fast path relies on this: a letter/digit is never BERT punctuation
    assert not [c for c in punctuation if c.isalnum()]
